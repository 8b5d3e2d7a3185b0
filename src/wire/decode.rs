//! Decoding, guest side: the host's bytes into lines, lines into a
//! [`Message`]. Gives the same result however the bytes are split across
//! reads.
//!
//! Two kinds of host:
//! - framed (`send` of this crate): the message ends with
//!   `end:<N> <sha256>` ([`super::end`]); it is complete the moment that line
//!   arrives and matches, and a line that does not match is discarded with
//!   everything before it;
//! - unframed (patchviasocket.py): `pubkey:` and `cmdline:` lines; the
//!   caller decides when they are complete (the host disconnected, or went
//!   quiet) and then calls [`Decoder::finish`].
//!
//! The merge rule, for both: a line whose text holds `cmdline:` or `pubkey:`
//! after its start is a cut line that ran into the host's resend (the guest
//! cannot always see the disconnect in between: virtio_console reports the
//! host's state late, and sometimes reports it gone while it is not). The
//! text from the last such prefix on is the resent line; what came before it,
//! and every line of the cut message, is dropped.

use std::fmt;

use super::end::{parse_end, verify, END_PREFIX};
use super::{is_openssh_public_key, Message, CMDLINE_PREFIX, MAX_LINE, MAX_MESSAGE, PUBKEY_PREFIX};

/// Why the host's bytes were refused. The message is then not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    LineTooLong {
        line: usize,
    },
    MessageTooLarge,
    Nul {
        line: usize,
    },
    BareCarriageReturn {
        line: usize,
    },
    InvalidUtf8 {
        line: usize,
    },
    EmptyCmdline {
        line: usize,
    },
    BadPubkey {
        line: usize,
    },
    /// A framed message whose end line matched, but that holds no cmdline.
    FramedWithoutCmdline,
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
            Self::FramedWithoutCmdline => {
                write!(f, "the message's end line matched, but it holds no cmdline line")
            }
        }
    }
}

/// What a complete line was, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Cmdline,
    Pubkey,
    /// Empty lines in a row, counted as one entry: a message of 1-byte
    /// lines would otherwise cost 32 bytes of log a byte (the decoder
    /// fuzz target found 8 MiB for 256 KiB of newlines).
    Empty {
        lines: usize,
    },
    Unknown(String),
    /// A cut line ran into a resend: `dropped` bytes before the resent
    /// line's prefix were thrown away, with the cut message's earlier lines.
    Joined {
        dropped: usize,
    },
    /// The end line matched: the message is complete.
    End {
        len: usize,
    },
    /// The end line did not match; `discarded` bytes went with it.
    EndMismatch {
        why: String,
        discarded: usize,
    },
    /// A line refused (kept as the verdict unless an end line overrules it).
    Refused(ProtocolError),
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
    /// The first refused line of the current unframed message. Not final at
    /// once: an end line that follows can show it was a cut or corrupted
    /// copy, which is discarded.
    refused: Option<ProtocolError>,
    received: bool,
    seen: Vec<Line>,
    /// The bytes of complete lines (endings included) since the last
    /// discard, the last [`MAX_MESSAGE`] of them at least (at most twice
    /// that): what an end line counts back over.
    raw: Vec<u8>,
    /// Inside a framed body end lines are just unknown lines.
    in_frame: bool,
    framed: Option<Message>,
    /// Bytes that came after a matching end line.
    after_end: usize,
    /// Bumped whenever bytes of a cmdline, pubkey or end line arrive: what
    /// counts as the host making progress, unlike ignored lines.
    progress: u64,
    /// The unfinished line already holds a prefix after its start (found
    /// as bytes arrive, so a line read a byte at a time is scanned once).
    partial_joined: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes as they came from one read. An error is final: the
    /// message is refused as a whole. Once a framed message is complete,
    /// further bytes are only counted ([`Decoder::after_end`]).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        if !bytes.is_empty() {
            self.received = true;
        }
        while !bytes.is_empty() {
            if self.framed.is_some() {
                self.after_end += bytes.len();
                return Ok(());
            }
            let line_no = self.lines + 1;
            let (chunk, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if chunk.contains(&0) {
                return Err(ProtocolError::Nul { line: line_no });
            }
            let before = self.partial.len();
            self.partial.extend_from_slice(chunk);
            if !self.partial_joined {
                let from = before.saturating_sub(CMDLINE_PREFIX.len() - 1).max(1);
                self.partial_joined = prefix_from(&self.partial, from);
            }
            if !chunk.is_empty() && self.pending_meaningful() {
                self.progress += 1;
            }
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
                self.partial_joined = false;
                self.total += line.len() + 1;
                self.lines += 1;
                self.line(line, line_no)?;
            }
            bytes = rest;
        }
        Ok(())
    }

    fn line(&mut self, line: Vec<u8>, line_no: usize) -> Result<(), ProtocolError> {
        let raw_len = line.len() + 1;
        let mut text: &[u8] = &line;
        if let Some(at) = joined_at(text) {
            // The cut message is superseded by its resend, whole from here.
            self.restart();
            self.total = raw_len - at;
            self.seen.push(Line::Joined { dropped: at });
            text = &text[at..];
        }
        if !self.in_frame {
            if let Some(rest) = text.strip_prefix(END_PREFIX.as_bytes()) {
                return self.end_line(rest);
            }
        }
        self.remember(&line);
        let kind = match check_line(text, line_no) {
            Ok(kind) => kind,
            Err(e) => {
                self.refused.get_or_insert(e.clone());
                self.seen.push(Line::Refused(e));
                return Ok(());
            }
        };
        match &kind {
            Checked::Cmdline(c) => {
                // A later cmdline line replaces an earlier one, as it did in
                // cloud-early-config (each line overwrote the file).
                self.cmdline = Some(c.clone());
                self.progress += 1;
                self.seen.push(Line::Cmdline);
            }
            Checked::Pubkey(k) => {
                self.pubkey = Some(k.clone());
                self.progress += 1;
                self.seen.push(Line::Pubkey);
            }
            Checked::Empty => match self.seen.last_mut() {
                Some(Line::Empty { lines }) => *lines += 1,
                _ => self.seen.push(Line::Empty { lines: 1 }),
            },
            Checked::Unknown(start) => self.seen.push(Line::Unknown(start.clone())),
        }
        Ok(())
    }

    fn end_line(&mut self, rest: &[u8]) -> Result<(), ProtocolError> {
        self.progress += 1;
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        let verified = std::str::from_utf8(rest)
            .map_err(|_| "malformed end line (not UTF-8)".to_owned())
            .and_then(parse_end)
            .and_then(|end| verify(&end, &self.raw).map(<[u8]>::to_vec));
        match verified {
            Ok(body) => {
                let mut inner = Decoder {
                    in_frame: true,
                    ..Decoder::default()
                };
                inner.feed(&body)?;
                let m = inner.finish()?.ok_or(ProtocolError::FramedWithoutCmdline)?;
                self.seen.push(Line::End { len: body.len() });
                self.framed = Some(m);
            }
            Err(why) => {
                let discarded = self.raw.len();
                self.seen.push(Line::EndMismatch { why, discarded });
                self.restart();
                self.raw.clear();
            }
        }
        Ok(())
    }

    /// Forgets the current message's lines (not the raw bytes: an end line
    /// may still count back over them).
    fn restart(&mut self) {
        self.cmdline = None;
        self.pubkey = None;
        self.refused = None;
        self.total = 0;
    }

    fn remember(&mut self, line: &[u8]) {
        self.raw.extend_from_slice(line);
        self.raw.push(b'\n');
        // Trimmed in batches: trimming to the limit on every line would move
        // the whole window once per line.
        if self.raw.len() > 2 * MAX_MESSAGE {
            let excess = self.raw.len() - MAX_MESSAGE;
            self.raw.drain(..excess);
        }
    }

    /// The verdict on what has arrived, for when the caller holds it whole
    /// (the host disconnected or went quiet, or a deadline): the framed
    /// message if one matched; else the first refused line; else the
    /// unframed message once a cmdline line has arrived. An unfinished
    /// trailing line is not part of it.
    pub fn finish(&mut self) -> Result<Option<Message>, ProtocolError> {
        if let Some(m) = self.framed.take() {
            return Ok(Some(m));
        }
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let Some(cmdline) = self.cmdline.take() else {
            return Ok(None);
        };
        Ok(Some(Message {
            cmdline,
            pubkey: self.pubkey.take(),
        }))
    }

    /// A framed message whose end line matched is here.
    pub fn framed(&self) -> bool {
        self.framed.is_some()
    }

    /// Bytes that came after the matching end line; not part of the message.
    pub fn after_end(&self) -> usize {
        self.after_end
    }

    /// An unframed message could be concluded now: a cmdline line or a
    /// refused line has arrived, and no line that may still change the
    /// verdict (a cmdline, pubkey or end line, or a resend running into a
    /// cut line) is half-way.
    pub fn can_conclude(&self) -> bool {
        (self.cmdline.is_some() || self.refused.is_some()) && !self.pending_meaningful()
    }

    pub fn has_cmdline(&self) -> bool {
        self.cmdline.is_some() || self.framed.is_some()
    }

    /// Whether any byte has arrived at all.
    pub fn received_any(&self) -> bool {
        self.received
    }

    /// Bytes of an unfinished line waiting for its newline.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The unfinished line may become a cmdline, pubkey or end line.
    pub fn pending_meaningful(&self) -> bool {
        let p = &self.partial;
        let could_be = |prefix: &str| {
            let n = p.len().min(prefix.len());
            p[..n] == prefix.as_bytes()[..n]
        };
        !p.is_empty()
            && (self.partial_joined
                || could_be(CMDLINE_PREFIX)
                || could_be(PUBKEY_PREFIX)
                || could_be(END_PREFIX))
    }

    /// Goes up whenever bytes of a cmdline, pubkey or end line arrive.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// The kinds of complete lines seen since the last call, for logging.
    pub fn drain_lines(&mut self) -> Vec<Line> {
        std::mem::take(&mut self.seen)
    }
}

enum Checked {
    Cmdline(String),
    Pubkey(String),
    Empty,
    Unknown(String),
}

fn check_line(text: &[u8], line_no: usize) -> Result<Checked, ProtocolError> {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() > MAX_LINE {
        return Err(ProtocolError::LineTooLong { line: line_no });
    }
    if text.contains(&b'\r') {
        return Err(ProtocolError::BareCarriageReturn { line: line_no });
    }
    let text =
        std::str::from_utf8(text).map_err(|_| ProtocolError::InvalidUtf8 { line: line_no })?;
    // Only the prefix is stripped: the rest of the line is kept as it is.
    Ok(if let Some(cmdline) = text.strip_prefix(CMDLINE_PREFIX) {
        if cmdline.trim().is_empty() {
            return Err(ProtocolError::EmptyCmdline { line: line_no });
        }
        Checked::Cmdline(cmdline.to_owned())
    } else if let Some(key) = text.strip_prefix(PUBKEY_PREFIX) {
        if !is_openssh_public_key(key) {
            return Err(ProtocolError::BadPubkey { line: line_no });
        }
        Checked::Pubkey(key.to_owned())
    } else if text.is_empty() {
        Checked::Empty
    } else {
        Checked::Unknown(text.chars().take(40).collect())
    })
}

/// Where the last `cmdline:` or `pubkey:` after the line's start begins: a
/// cut line joined to the resend that follows it.
pub fn joined_at(line: &[u8]) -> Option<usize> {
    [CMDLINE_PREFIX, PUBKEY_PREFIX]
        .iter()
        .filter_map(|p| {
            line.windows(p.len())
                .skip(1)
                .rposition(|w| w == p.as_bytes())
                .map(|i| i + 1)
        })
        .max()
}

/// Whether `cmdline:` or `pubkey:` begins anywhere at or after `from`.
fn prefix_from(buf: &[u8], from: usize) -> bool {
    [CMDLINE_PREFIX, PUBKEY_PREFIX].iter().any(|p| {
        buf.get(from..)
            .is_some_and(|tail| tail.windows(p.len()).any(|w| w == p.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@host";

    fn decode(bytes: &[u8]) -> Result<Option<Message>, ProtocolError> {
        let mut d = Decoder::new();
        d.feed(bytes)?;
        d.finish()
    }

    fn framed(body: &str) -> Vec<u8> {
        format!("{body}{}", crate::wire::end::end_line(body.as_bytes())).into_bytes()
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
        let m = decode(b"cmdline:a=cmdline b:x  c=\"*\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(m.cmdline, "a=cmdline b:x  c=\"*\"");
    }

    #[test]
    fn cut_line_joined_to_its_resend_keeps_only_the_resent_line() {
        // The case seen with a FIFO: the cut line and its resend read as one.
        let mut d = Decoder::new();
        d.feed(b"cmdline:type=secstorage eth0ip=169.2cmdline:type=secstorage eth0ip=169.254.3.4\n")
            .unwrap();
        assert_eq!(
            d.drain_lines(),
            vec![Line::Joined { dropped: 36 }, Line::Cmdline]
        );
        assert_eq!(
            d.finish().unwrap().unwrap().cmdline,
            "type=secstorage eth0ip=169.254.3.4"
        );
    }

    #[test]
    fn cut_line_joined_to_a_resend_over_the_limit_is_refused() {
        // Each part alone is under the line limit; joined they are not, and
        // the line is refused as the bytes arrive, before its newline.
        let cut = format!("cmdline:{}", "a=1 ".repeat((MAX_LINE - 1000) / 4));
        let resend = format!("cmdline:{}\n", "b=2 ".repeat(2000 / 4));
        let mut d = Decoder::new();
        d.feed(cut.as_bytes()).unwrap();
        let err = d.feed(&resend.as_bytes()[..resend.len() - 1]).unwrap_err();
        assert_eq!(err, ProtocolError::LineTooLong { line: 1 });
        assert!(d.pending() <= MAX_LINE + resend.len());
    }

    #[test]
    fn join_drops_the_cut_messages_earlier_lines_too() {
        let cut = format!("pubkey:{KEY}\ncmdline:a=1 b");
        let m = decode(format!("{cut}cmdline:a=1 b=2\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((m.cmdline.as_str(), m.pubkey), ("a=1 b=2", None));
        let m = decode(format!("{cut}pubkey:{KEY}\ncmdline:a=1 b=2\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.cmdline.as_str(), m.pubkey.as_deref()),
            ("a=1 b=2", Some(KEY))
        );
        // Cut inside the pubkey's base64, and in a multi-byte character.
        let m = decode(format!("pubkey:ssh-rsa AAAApubkey:{KEY}\ncmdline:a=1\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(m.pubkey.as_deref(), Some(KEY));
        let mut bytes = "cmdline:x=\u{e9}".as_bytes()[..11].to_vec();
        bytes.extend_from_slice(b"cmdline:x=2\n");
        assert_eq!(decode(&bytes).unwrap().unwrap().cmdline, "x=2");
    }

    #[test]
    fn framed_message_is_complete_at_its_end_line() {
        let body = format!("pubkey:{KEY}\ncmdline:a=1\n");
        let mut d = Decoder::new();
        let bytes = framed(&body);
        d.feed(&bytes[..bytes.len() - 1]).unwrap();
        assert!(!d.framed());
        d.feed(b"\nstray").unwrap();
        assert!(d.framed());
        assert_eq!(d.after_end(), 5);
        let m = d.finish().unwrap().unwrap();
        assert_eq!(
            (m.cmdline.as_str(), m.pubkey.as_deref()),
            ("a=1", Some(KEY))
        );
    }

    #[test]
    fn framed_message_after_a_cut_copy_is_found_by_counting_back() {
        let body = format!("pubkey:{KEY}\ncmdline:a=1 b=2\n");
        let whole = framed(&body);
        for cut in 1..whole.len() {
            let mut bytes = whole[..cut].to_vec();
            bytes.extend_from_slice(&whole);
            let m = decode(&bytes)
                .unwrap()
                .unwrap_or_else(|| panic!("cut at {cut}"));
            assert_eq!(m.cmdline, "a=1 b=2", "cut at {cut}");
            assert_eq!(m.pubkey.as_deref(), Some(KEY), "cut at {cut}");
        }
    }

    #[test]
    fn end_line_that_does_not_match_discards_the_message_and_waits() {
        let mut bytes = framed("cmdline:a=1\n");
        bytes[9] = b'2';
        let mut d = Decoder::new();
        d.feed(&bytes).unwrap();
        assert!(matches!(
            d.drain_lines().as_slice(),
            [Line::Cmdline, Line::EndMismatch { discarded: 12, .. }]
        ));
        assert!(!d.framed() && !d.has_cmdline());
        assert_eq!(d.finish(), Ok(None));
        // The resend after it is taken.
        d.feed(&framed("cmdline:a=1\n")).unwrap();
        assert_eq!(d.finish().unwrap().unwrap().cmdline, "a=1");
    }

    #[test]
    fn refused_line_is_overruled_by_a_mismatching_end_line() {
        // A corrupted copy (invalid UTF-8), then its end line, then a good copy.
        let good = framed("cmdline:a=1\n");
        let mut bad = good.clone();
        bad[9] = 0xff;
        let mut bytes = bad;
        bytes.extend_from_slice(&good);
        assert_eq!(decode(&bytes).unwrap().unwrap().cmdline, "a=1");
        // Unframed, the refusal stands.
        assert_eq!(
            decode(b"cmdline:a=\xff\n"),
            Err(ProtocolError::InvalidUtf8 { line: 1 })
        );
    }

    #[test]
    fn framed_body_without_cmdline_or_with_a_bad_line_is_refused() {
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&framed(&format!("pubkey:{KEY}\n"))),
            Err(ProtocolError::FramedWithoutCmdline)
        );
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&framed("pubkey:nokey\ncmdline:a=1\n")),
            Err(ProtocolError::BadPubkey { line: 1 })
        );
    }

    #[test]
    fn unfinished_meaningful_lines_hold_back_a_conclusion() {
        let mut d = Decoder::new();
        d.feed(b"cmdline:a=1\n").unwrap();
        assert!(d.can_conclude());
        for partial in [&b"en"[..], b"end:12 ab", b"junk pubkey:ss", b"cmdli"] {
            let mut d = Decoder::new();
            d.feed(b"cmdline:a=1\n").unwrap();
            d.feed(partial).unwrap();
            assert!(!d.can_conclude(), "{:?}", String::from_utf8_lossy(partial));
        }
        d.feed(b"junk").unwrap();
        assert!(d.can_conclude(), "junk does not hold it back");
        let before = d.progress();
        d.feed(b" more\nhello:x\n").unwrap();
        assert_eq!(d.progress(), before, "ignored lines are no progress");
    }

    #[test]
    fn a_message_of_newlines_is_logged_as_one_entry() {
        // The decoder fuzz target's find: 256 KiB of newlines in one read
        // made 256 Ki log entries (an 8 MiB allocation).
        let mut d = Decoder::new();
        d.feed(&vec![b'\n'; MAX_MESSAGE - 1]).unwrap();
        assert_eq!(
            d.drain_lines(),
            vec![Line::Empty {
                lines: MAX_MESSAGE - 1
            }]
        );
    }

    #[test]
    fn crlf_endings_and_empty_and_unknown_lines() {
        let mut d = Decoder::new();
        d.feed(b"\r\nhello:x\r\n\n\r\n\ncmdline:a=b\r\n").unwrap();
        assert_eq!(
            d.drain_lines(),
            vec![
                Line::Empty { lines: 1 },
                Line::Unknown("hello:x".into()),
                Line::Empty { lines: 3 },
                Line::Cmdline
            ]
        );
        assert_eq!(d.finish().unwrap().unwrap().cmdline, "a=b");
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
                d.feed(&bytes).and_then(|()| d.finish())
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
            proptest::prop_assert_eq!(whole, split.and_then(|()| d.finish()));
        }
    }
}
