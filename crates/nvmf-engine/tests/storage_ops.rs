//! Storage ops for the target through the ring: fallocate (Write Zeroes,
//! deallocate), block-device discard, fdatasync; completions through
//! `Handler::on_storage`.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nvmf_engine::*;

/// Each command is 1 op byte + offset (u64 LE) + length (u64 LE); every
/// completion is answered with its token byte and the 4-byte LE result.
/// Ops: `Z` zero range, `P` punch hole (keep size), `D` discard, `S` fdatasync.
struct Ops {
    fd: RawFd,
}

impl Handler for Ops {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        while io.rx().len() >= 17 {
            let c = io.rx()[..17].to_vec();
            io.consume(17);
            let off = u64::from_le_bytes(c[1..9].try_into().unwrap());
            let len = u64::from_le_bytes(c[9..17].try_into().unwrap());
            let token = c[0] as u64;
            match c[0] {
                b'Z' => io.submit_fallocate(self.fd, libc::FALLOC_FL_ZERO_RANGE, off, len, token),
                b'P' => io.submit_fallocate(
                    self.fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                    token,
                ),
                b'D' => io.submit_discard(self.fd, off, len, token),
                b'S' => io.submit_fsync(self.fd, true, token),
                _ => return Flow::CloseNow,
            }
        }
        Flow::Continue
    }
    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow {
        io.tx().push(token as u8);
        io.tx().extend_from_slice(&result.to_le_bytes());
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _r: CloseReason) {}
}

struct OpsFactory(RawFd);
impl HandlerFactory for OpsFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Ops { fd: self.0 }))
    }
}

fn op(s: &mut std::net::TcpStream, code: u8, off: u64, len: u64) -> i32 {
    let mut c = vec![code];
    c.extend_from_slice(&off.to_le_bytes());
    c.extend_from_slice(&len.to_le_bytes());
    s.write_all(&c).unwrap();
    let mut r = [0u8; 5];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], code, "completion routed with its token");
    i32::from_le_bytes(r[1..].try_into().unwrap())
}

const MIB: usize = 1 << 20;

fn patterned_file(tag: &str) -> (std::fs::File, std::path::PathBuf) {
    let p = std::env::temp_dir().join(format!("nvmf-engine-{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.write_all_at(&vec![0xa5u8; MIB], 0).unwrap();
    f.sync_all().unwrap();
    (f, p)
}

fn read_at(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

#[test]
fn fallocate_zero_range_and_punch_hole_complete_through_on_storage() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (f, path) = patterned_file("falloc");
        let eng = Engine::start(EngineConfig { mode, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), Arc::new(OpsFactory(f.as_raw_fd()))).unwrap().local_addr();
        let mut s = connect(addr);
        assert_eq!(op(&mut s, b'Z', 4096, 8192), 0);
        assert_eq!(op(&mut s, b'P', 65536, 65536), 0);
        assert_eq!(op(&mut s, b'S', 0, 0), 0);
        assert!(read_at(&f, 0, 4096).iter().all(|b| *b == 0xa5));
        assert!(read_at(&f, 4096, 8192).iter().all(|b| *b == 0), "zero range");
        assert!(read_at(&f, 12288, 4096).iter().all(|b| *b == 0xa5));
        assert!(read_at(&f, 65536, 65536).iter().all(|b| *b == 0), "punched hole");
        assert!(read_at(&f, 131072, 4096).iter().all(|b| *b == 0xa5));
        assert_eq!(f.metadata().unwrap().len(), MIB as u64, "sizes kept");
        // An invalid mode is reported, not hidden.
        let bad = op(&mut s, b'P', 0, 0);
        assert_eq!(bad, -libc::EINVAL);
        wait_until("storage stats", || eng.stats()[0].storage_ops == 4);
        eng.shutdown(Duration::from_secs(1));
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn discard_on_a_regular_file_fails_with_an_errno_to_fall_back_on() {
    let (f, path) = patterned_file("discard-file");
    let eng = Engine::start(EngineConfig { mode: Mode::Interrupt, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), Arc::new(OpsFactory(f.as_raw_fd()))).unwrap().local_addr();
    let mut s = connect(addr);
    let r = op(&mut s, b'D', 0, 4096);
    // -EOPNOTSUPP on Linux 6.18: regular files have no uring_cmd.
    assert!([-libc::EOPNOTSUPP, -libc::EINVAL, -libc::ENOTTY].contains(&r), "discard on a file: {r}");
    assert!(read_at(&f, 0, 4096).iter().all(|b| *b == 0xa5), "nothing changed");
    eng.shutdown(Duration::from_secs(1));
    let _ = std::fs::remove_file(&path);
}

/// A loop device over a temp file, detached on drop.
struct LoopDev {
    dev: String,
    path: std::path::PathBuf,
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
#[ignore = "needs root, losetup and a free loop device (run with --ignored)"]
fn discard_on_a_block_device_completes_and_reads_back_zeroes() {
    let (f, path) = patterned_file("discard-loop");
    drop(f);
    let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&path).output().expect("losetup");
    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
    let dev = LoopDev { dev: String::from_utf8(out.stdout).unwrap().trim().to_string(), path };
    let bdev = std::fs::OpenOptions::new().read(true).write(true).open(&dev.dev).unwrap();
    assert!(read_at(&bdev, 65536, 4096).iter().all(|b| *b == 0xa5));
    let eng = Engine::start(EngineConfig { mode: Mode::Interrupt, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), Arc::new(OpsFactory(bdev.as_raw_fd()))).unwrap().local_addr();
    let mut s = connect(addr);
    assert_eq!(op(&mut s, b'D', 65536, 65536), 0, "BLOCK_URING_CMD_DISCARD on {}", dev.dev);
    assert!(read_at(&bdev, 0, 65536).iter().all(|b| *b == 0xa5));
    assert!(read_at(&bdev, 65536, 65536).iter().all(|b| *b == 0), "discarded range reads zeroes");
    assert!(read_at(&bdev, 131072, 4096).iter().all(|b| *b == 0xa5));
    // Unaligned ranges are the kernel's to refuse.
    assert_eq!(op(&mut s, b'D', 1, 4096), -libc::EINVAL);
    eng.shutdown(Duration::from_secs(1));
    drop(bdev);
}
