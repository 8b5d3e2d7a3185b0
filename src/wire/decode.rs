//! Decoding, guest side: the host's bytes into lines, lines into a
//! [`Message`]. Gives the same result however the bytes are split across
//! reads.

use std::fmt;

use super::{is_openssh_public_key, Message, CMDLINE_PREFIX, MAX_LINE, MAX_MESSAGE, PUBKEY_PREFIX};

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
