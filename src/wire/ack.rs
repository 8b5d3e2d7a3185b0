//! Guest to host: `ack:<lowercase hex sha256 of the cmdline text>\n`, written
//! by the guest once the files are stored, and `nak:<reason>\n` when a
//! framed message's end line did not match (the host should send it again);
//! [`ReplyScanner`] picks them out of the guest's bytes on the host.

use sha2::{Digest, Sha256};

use super::{ACK_PREFIX, NAK_PREFIX};

/// Longest line from the guest we look at; an ack is 68 bytes.
pub const MAX_REPLY_LINE: usize = 1024;

/// The acknowledgement line the guest writes back after storing `cmdline`.
pub fn ack_line(cmdline: &str) -> String {
    format!("{ACK_PREFIX}{}\n", digest_hex(cmdline.as_bytes()))
}

/// The line the guest writes back when it discarded a framed message.
pub fn nak_line(reason: &str) -> String {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    format!("{NAK_PREFIX}{reason}\n")
}

/// Lowercase hex SHA-256 of `data`.
pub fn digest_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// One line the guest wrote back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ack:<hex>`, the hex lowercased.
    Ack(String),
    /// `nak:<reason>`: the guest discarded what it got; send again.
    Nak(String),
    /// Anything else (its start, for the log).
    Other(String),
}

/// Splits the guest's bytes into lines, however they are cut across reads,
/// and picks out the acks. A line longer than [`MAX_REPLY_LINE`] is skipped
/// up to its newline without being buffered.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    partial: Vec<u8>,
    skipping: bool,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ended) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.skipping {
                self.partial.extend_from_slice(body);
                if self.partial.len() > MAX_REPLY_LINE {
                    self.partial.clear();
                    self.skipping = true;
                    replies.push(Reply::Other(format!(
                        "(a line longer than {MAX_REPLY_LINE} bytes)"
                    )));
                }
            }
            if ended {
                if !self.skipping {
                    replies.push(classify(&std::mem::take(&mut self.partial)));
                }
                self.skipping = false;
            }
        }
        replies
    }
}

fn classify(line: &[u8]) -> Reply {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if let Some(hex) = text.strip_prefix(ACK_PREFIX) {
        return Reply::Ack(hex.trim().to_ascii_lowercase());
    }
    if let Some(reason) = text.strip_prefix(NAK_PREFIX) {
        return Reply::Nak(reason.chars().take(200).collect());
    }
    Reply::Other(text.chars().take(40).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_sha256_of_cmdline_text() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            ack_line("abc"),
            "ack:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
    }

    #[test]
    fn replies_are_acks_or_ignored_lines() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            s.feed(b"hello\r\nack:ABC\nnak:x y\nack:de"),
            vec![
                Reply::Other("hello".into()),
                Reply::Ack("abc".into()),
                Reply::Nak("x y".into())
            ]
        );
        assert_eq!(s.feed(b"f\r\n"), vec![Reply::Ack("def".into())]);
    }

    #[test]
    fn overlong_reply_line_is_skipped_to_its_newline() {
        let mut s = ReplyScanner::new();
        let long = vec![b'x'; MAX_REPLY_LINE + 10];
        let replies = s.feed(&long);
        assert!(matches!(replies.as_slice(), [Reply::Other(_)]));
        assert!(s.partial.is_empty());
        assert_eq!(s.feed(b"xxx\nack:1\n"), vec![Reply::Ack("1".into())]);
    }

    proptest::proptest! {
        #[test]
        fn replies_do_not_depend_on_read_boundaries(
            lines in proptest::collection::vec("(ack:)?[0-9a-f]{0,8}", 0..6),
            cuts in proptest::collection::vec(0usize..80, 0..8),
        ) {
            let bytes: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let whole = ReplyScanner::new().feed(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut s = ReplyScanner::new();
            let mut split = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                split.extend(s.feed(&bytes[start..cut]));
                start = cut;
            }
            proptest::prop_assert_eq!(whole, split);
        }
    }
}
