//! How an error reaches the user: one line, every cause once.

/// The error and its causes joined by ": ", skipping a cause whose text the
/// line already holds. Many of our error types put their source's text in
/// their own message (`"backend: {0}"`), which anyhow's `{:#}` would repeat
/// ("X: No such file: X: No such file").
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(io).context("cannot read /x: No such file or directory (os error 2)");
        assert_eq!(error_line(&e), "cannot read /x: No such file or directory (os error 2)");
        let e = anyhow::anyhow!("refused").context("admin queue bring-up with 127.0.0.1:4420");
        assert_eq!(error_line(&e), "admin queue bring-up with 127.0.0.1:4420: refused");
    }
}
