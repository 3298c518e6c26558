//! Secrets from the configuration: given inline or as a file.
//!
//! A key file readable by group or others is refused (as ssh refuses a
//! private key that others can read): a secret that every local user can
//! read is no secret. Values never reach logs or error text: errors name the
//! file and the problem only.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest key file read (an NVMe secret in its text form is < 200 bytes).
pub const KEY_FILE_BYTES_MAX: u64 = 4096;

/// Read a secret given as `inline` text or in `file` (trimmed of the
/// trailing newline editors add). `None` when neither is given.
pub fn load(inline: Option<&str>, file: Option<&str>) -> io::Result<Option<String>> {
    match (inline, file) {
        (Some(s), None) => Ok(Some(s.trim().to_string())),
        (None, Some(f)) => read_key_file(Path::new(f)).map(Some),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "a secret is given inline and as a file"))
        }
    }
}

/// Read a key file that only its owner may read.
pub fn read_key_file(path: &Path) -> io::Result<String> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("key file {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(ctx)?;
    if !meta.is_file() {
        return Err(ctx(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(ctx(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("readable by others (mode {:o}); chmod 600 it", meta.mode() & 0o777),
        )));
    }
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(ctx(io::Error::new(io::ErrorKind::InvalidData, "larger than a key can be")));
    }
    let text = std::fs::read_to_string(path).map_err(ctx)?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host.key");
        std::fs::write(&p, "DHHC-1:00:c2VjcmV0:\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&p).unwrap_err().to_string();
        assert!(e.contains("readable by others") && e.contains("host.key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "the error never shows the secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&p).unwrap(), "DHHC-1:00:c2VjcmV0:");
        assert_eq!(load(Some(" k "), None).unwrap().as_deref(), Some("k"));
        assert!(load(Some("k"), Some("f")).is_err());
        assert_eq!(load(None, None).unwrap(), None);
        assert!(read_key_file(dir.path()).is_err(), "a directory is refused");
    }
}
