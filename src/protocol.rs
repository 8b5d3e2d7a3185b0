//! CloudStack's wire format, host to guest: lines `pubkey:<key>` and
//! `cmdline:<text>`, each ended by `\n` or `\r\n` (patchviasocket.py sends
//! `pubkey:<key>\ncmdline:<text>\n` and closes). Pure: bytes in, a message
//! out; it knows nothing of ports or files, and gives the same result however
//! the bytes are split across reads.

use std::fmt;

/// Longest line accepted, without its line ending.
pub const MAX_LINE: usize = 64 * 1024;
/// Largest message accepted, line endings included.
pub const MAX_MESSAGE: usize = 256 * 1024;

pub const CMDLINE_PREFIX: &str = "cmdline:";
pub const PUBKEY_PREFIX: &str = "pubkey:";
pub const ACK_PREFIX: &str = "ack:";

/// A whole, valid message from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cmdline: String,
    pub pubkey: Option<String>,
}

/// Why the host's bytes were refused. The message is then not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    LineTooLong { line: usize },
    MessageTooLarge,
    Nul { line: usize },
    BareCarriageReturn { line: usize },
    InvalidUtf8 { line: usize },
    EmptyCmdline { line: usize },
    BadPubkey { line: usize },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::LineTooLong { line } => {
                write!(f, "line {line} is longer than {MAX_LINE} bytes")
            }
            Self::MessageTooLarge => write!(f, "message is larger than {MAX_MESSAGE} bytes"),
            Self::Nul { line } => write!(f, "line {line} contains a NUL byte"),
            Self::BareCarriageReturn { line } => {
                write!(f, "line {line} contains a carriage return not followed by a newline")
            }
            Self::InvalidUtf8 { line } => write!(f, "line {line} is not valid UTF-8"),
            Self::EmptyCmdline { line } => write!(f, "line {line}: the cmdline is empty"),
            Self::BadPubkey { line } => write!(
                f,
                "line {line}: the pubkey is not an OpenSSH public key (\"<type> <base64> [comment]\")"
            ),
        }
    }
}

/// What a complete line was, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Cmdline,
    Pubkey,
    Empty,
    Unknown(String),
}

/// Accumulates the host's bytes into lines and lines into a message.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Vec<u8>,
    /// Bytes of complete lines received for the current message.
    total: usize,
    /// Lines completed so far, for error messages (1-based numbering).
    lines: usize,
    cmdline: Option<String>,
    pubkey: Option<String>,
    received: bool,
    seen: Vec<Line>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes as they came from one read. An error is final: the
    /// message is refused as a whole.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        if !bytes.is_empty() {
            self.received = true;
        }
        while !bytes.is_empty() {
            let line_no = self.lines + 1;
            let (chunk, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if chunk.contains(&0) {
                return Err(ProtocolError::Nul { line: line_no });
            }
            self.partial.extend_from_slice(chunk);
            // Checked as bytes arrive, so an endless line is refused without
            // buffering it; one byte of slack for a `\r` before the `\n`.
            if self.partial.len() > MAX_LINE + 1
                || (self.partial.len() == MAX_LINE + 1 && self.partial.last() != Some(&b'\r'))
            {
                return Err(ProtocolError::LineTooLong { line: line_no });
            }
            if self.total + self.partial.len() + usize::from(ended) > MAX_MESSAGE {
                return Err(ProtocolError::MessageTooLarge);
            }
            if ended {
                let line = std::mem::take(&mut self.partial);
                self.total += line.len() + 1;
                self.lines += 1;
                self.line(line, line_no)?;
            }
            bytes = rest;
        }
        Ok(())
    }

    fn line(&mut self, mut line: Vec<u8>, line_no: usize) -> Result<(), ProtocolError> {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_LINE {
            return Err(ProtocolError::LineTooLong { line: line_no });
        }
        if line.contains(&b'\r') {
            return Err(ProtocolError::BareCarriageReturn { line: line_no });
        }
        let text =
            String::from_utf8(line).map_err(|_| ProtocolError::InvalidUtf8 { line: line_no })?;
        // Only the prefix is stripped: the rest of the line is kept as it is.
        let kind = if let Some(cmdline) = text.strip_prefix(CMDLINE_PREFIX) {
            if cmdline.trim().is_empty() {
                return Err(ProtocolError::EmptyCmdline { line: line_no });
            }
            // A later cmdline line replaces an earlier one, as it did in
            // cloud-early-config (each line overwrote the file).
            self.cmdline = Some(cmdline.to_owned());
            Line::Cmdline
        } else if let Some(key) = text.strip_prefix(PUBKEY_PREFIX) {
            if !is_openssh_public_key(key) {
                return Err(ProtocolError::BadPubkey { line: line_no });
            }
            self.pubkey = Some(key.to_owned());
            Line::Pubkey
        } else if text.is_empty() {
            Line::Empty
        } else {
            Line::Unknown(text.chars().take(40).collect())
        };
        self.seen.push(kind);
        Ok(())
    }

    /// The host disconnected: a line it did not finish is dropped, since the
    /// host will have to send it again whole. Returns how many bytes went.
    pub fn disconnect(&mut self) -> usize {
        let dropped = self.partial.len();
        self.partial.clear();
        dropped
    }

    pub fn has_cmdline(&self) -> bool {
        self.cmdline.is_some()
    }

    /// Whether any byte has arrived at all.
    pub fn received_any(&self) -> bool {
        self.received
    }

    /// Bytes of an unfinished line waiting for its newline.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The kinds of complete lines seen since the last call, for logging.
    pub fn drain_lines(&mut self) -> Vec<Line> {
        std::mem::take(&mut self.seen)
    }

    /// The message, once a cmdline line has arrived. An unfinished trailing
    /// line is not part of it.
    pub fn take(&mut self) -> Option<Message> {
        let cmdline = self.cmdline.take()?;
        Some(Message {
            cmdline,
            pubkey: self.pubkey.take(),
        })
    }
}

/// A light check that a pubkey line carries one OpenSSH public key:
/// `<type> <base64> [comment]`, as in an authorized_keys line without
/// options (what patchviasocket.py reads from id_rsa.pub.cloud).
pub fn is_openssh_public_key(key: &str) -> bool {
    let mut fields = key.split_ascii_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
        return false;
    };
    let known_kind = ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|p| kind.starts_with(p) && kind.len() > p.len());
    let base64 = blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    known_kind && base64 && blob.len() >= 16
}

/// The acknowledgement line the guest writes back after storing `cmdline`:
/// `ack:<lowercase hex sha256 of the cmdline text>\n`.
pub fn ack_line(cmdline: &str) -> String {
    format!("{ACK_PREFIX}{}\n", sha256_hex(cmdline.as_bytes()))
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@host";

    fn decode(bytes: &[u8]) -> Result<Option<Message>, ProtocolError> {
        let mut d = Decoder::new();
        d.feed(bytes)?;
        Ok(d.take())
    }

    #[test]
    fn cloudstack_message_gives_cmdline_and_pubkey() {
        let m = decode(format!("pubkey:{KEY}\ncmdline:type=secstorage name=s-1-VM\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(m.cmdline, "type=secstorage name=s-1-VM");
        assert_eq!(m.pubkey.as_deref(), Some(KEY));
    }

    #[test]
    fn only_the_prefix_is_stripped() {
        let m = decode(b"cmdline:a=cmdline:b  c=\"*\"\n").unwrap().unwrap();
        assert_eq!(m.cmdline, "a=cmdline:b  c=\"*\"");
    }

    #[test]
    fn crlf_endings_and_empty_and_unknown_lines() {
        let mut d = Decoder::new();
        d.feed(b"\r\nhello:x\r\n\ncmdline:a=b\r\n").unwrap();
        assert_eq!(
            d.drain_lines(),
            vec![
                Line::Empty,
                Line::Unknown("hello:x".into()),
                Line::Empty,
                Line::Cmdline
            ]
        );
        assert_eq!(d.take().unwrap().cmdline, "a=b");
    }

    #[test]
    fn no_cmdline_means_no_message() {
        assert_eq!(decode(format!("pubkey:{KEY}\n").as_bytes()).unwrap(), None);
        assert_eq!(decode(b"cmdline:a=b").unwrap(), None, "unterminated line");
    }

    #[test]
    fn later_cmdline_wins() {
        let m = decode(b"cmdline:a=1\ncmdline:a=2\n").unwrap().unwrap();
        assert_eq!(m.cmdline, "a=2");
    }

    #[test]
    fn partial_line_then_disconnect_is_dropped() {
        let mut d = Decoder::new();
        d.feed(b"cmdline:a=1 b=").unwrap();
        assert_eq!(d.disconnect(), 14);
        d.feed(b"cmdline:a=1 b=2\n").unwrap();
        assert_eq!(d.take().unwrap().cmdline, "a=1 b=2");
    }

    #[test]
    fn line_limit_is_exact() {
        let ok = format!("cmdline:{}\n", "x".repeat(MAX_LINE - 8));
        assert!(decode(ok.as_bytes()).unwrap().is_some());
        let ok_crlf = format!("cmdline:{}\r\n", "x".repeat(MAX_LINE - 8));
        assert!(decode(ok_crlf.as_bytes()).unwrap().is_some());
        let long = format!("cmdline:{}\n", "x".repeat(MAX_LINE - 7));
        assert_eq!(
            decode(long.as_bytes()),
            Err(ProtocolError::LineTooLong { line: 1 })
        );
    }

    #[test]
    fn endless_line_is_refused_before_its_newline() {
        let mut d = Decoder::new();
        let chunk = vec![b'x'; 4096];
        let err = (0..100).find_map(|_| d.feed(&chunk).err()).unwrap();
        assert_eq!(err, ProtocolError::LineTooLong { line: 1 });
        assert!(d.pending() <= MAX_LINE + 4096);
    }

    #[test]
    fn message_limit() {
        let line = format!("x:{}\n", "y".repeat(1000));
        let mut d = Decoder::new();
        let err = (0..300)
            .find_map(|_| d.feed(line.as_bytes()).err())
            .unwrap();
        assert_eq!(err, ProtocolError::MessageTooLarge);
    }

    #[test]
    fn nul_invalid_utf8_and_bare_cr_are_refused() {
        assert_eq!(
            decode(b"cmdline:a\0b\n"),
            Err(ProtocolError::Nul { line: 1 })
        );
        assert_eq!(
            decode(b"\ncmdline:a\xffb\n"),
            Err(ProtocolError::InvalidUtf8 { line: 2 })
        );
        assert_eq!(
            decode(b"cmdline:a\rb\n"),
            Err(ProtocolError::BareCarriageReturn { line: 1 })
        );
    }

    #[test]
    fn empty_cmdline_and_bad_pubkey_are_refused() {
        assert_eq!(
            decode(b"cmdline: \n"),
            Err(ProtocolError::EmptyCmdline { line: 1 })
        );
        assert_eq!(
            decode(b"pubkey:not a key\ncmdline:a=b\n"),
            Err(ProtocolError::BadPubkey { line: 1 })
        );
    }

    #[test]
    fn ack_is_sha256_of_cmdline_text() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            ack_line("abc"),
            "ack:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
        );
    }

    #[test]
    fn openssh_key_shapes() {
        assert!(is_openssh_public_key(KEY));
        assert!(is_openssh_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx"
        ));
        assert!(!is_openssh_public_key("ssh-rsa"));
        assert!(!is_openssh_public_key("rsa AAAAB3NzaC1yc2EAAAADAQAB"));
        assert!(!is_openssh_public_key("ssh-rsa AAAA$(reboot)AAAAAAAAAA"));
    }

    proptest::proptest! {
        #[test]
        fn result_does_not_depend_on_read_boundaries(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "cmdline:[a-z=. ]{1,30}",
                    proptest::strategy::Just(format!("pubkey:{KEY}")),
                    "[a-z]{0,5}:?[ -~]{0,20}",
                    proptest::strategy::Just(String::new()),
                ], 0..8),
            crlf in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let bytes: Vec<u8> = lines.iter().flat_map(|l| format!("{l}{end}").into_bytes()).collect();
            let whole = {
                let mut d = Decoder::new();
                d.feed(&bytes).map(|()| d.take())
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut d = Decoder::new();
            let mut start = 0;
            let mut split = Ok(());
            for cut in cuts.into_iter().chain([bytes.len()]) {
                if split.is_ok() {
                    split = d.feed(&bytes[start..cut]);
                }
                start = cut;
            }
            proptest::prop_assert_eq!(whole, split.map(|()| d.take()));
        }
    }
}
