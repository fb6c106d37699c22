//! Short, printable excerpts of venue payloads for logs and error messages: a hostile or huge
//! frame must not flood the log.

/// At most this many characters of a payload are shown.
pub const MAX_EXCERPT_CHARS: usize = 200;

/// The first [`MAX_EXCERPT_CHARS`] characters of `bytes` (lossy UTF-8, control characters
/// escaped), with `…(N bytes)` when cut.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (shown, c) in text.chars().enumerate() {
        if shown == MAX_EXCERPT_CHARS {
            out.push_str(&format!("…({} bytes)", bytes.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_payloads_and_escapes_control_characters() {
        assert_eq!(excerpt(b"a\x00b\n"), "a\\u{0}b\\n");
        let long = vec![b'x'; 1000];
        let e = excerpt(&long);
        assert!(e.ends_with("…(1000 bytes)"), "{e}");
        assert_eq!(e.chars().filter(|c| *c == 'x').count(), MAX_EXCERPT_CHARS);
    }
}
