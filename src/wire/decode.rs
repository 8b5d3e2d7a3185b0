//! Decoding, guest side: the host's bytes into lines, lines into a
//! [`Message`]. Gives the same result however the bytes are split across
//! reads.
//!
//! Two kinds of host:
//! - framed (`send` of this crate): the message ends with
//!   `end:<N> <sha256>` ([`super::end`]); it is complete the moment that line
//!   arrives and matches, and its `N` bytes are then the message, read byte
//!   for byte (no other rule applies to them). A line that does not match is
//!   discarded with everything before it;
//! - unframed (patchviasocket.py): `pubkey:` and `cmdline:` lines; the
//!   caller decides when they are complete (a `cmdline:` line has arrived,
//!   and the host disconnected or went quiet) and then calls
//!   [`Decoder::finish`].
//!
//! The merge rule, for unframed hosts: a host cut off mid-line sends the
//! same message again, and the guest cannot always see the disconnect in
//! between (virtio_console reports the host's state late, and sometimes
//! reports it gone while it is not), so the cut line and the resend can
//! arrive as one line. Such a join has a shape: the text it drops is a cut
//! copy of what was resent, that is a prefix of it. A line is taken for a
//! join only when the text before a `cmdline:` or `pubkey:` inside it is
//! made of such prefixes ([`join_at`]); any other text is data.

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
    /// Lines with an unknown prefix in a row, as one entry: the start of
    /// the first (at most 40 characters) and how many.
    Unknown {
        first: String,
        lines: usize,
    },
    /// A cut line ran into a resend: its first `dropped` bytes, a cut copy
    /// of what was resent, were thrown away.
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

/// How many places inside one line are tried as the start of a resend
/// (the latest first): a real join has one or two; more only cost time.
const JOIN_TRIES: usize = 8;

/// Accumulates the host's bytes into lines and lines into a message.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The bytes of complete lines (endings included) since the last
    /// discard, the last [`MAX_MESSAGE`] of them at least (at most twice
    /// that): what an end line counts back over; then the unfinished line.
    /// Each byte is copied once, here.
    buf: Vec<u8>,
    /// Where the unfinished line starts in `buf`.
    line_start: usize,
    /// Where `cmdline:` or `pubkey:` begins inside the unfinished line
    /// (after its first byte), relative to its start: where a resend may
    /// have run into a cut line. Found as bytes arrive, so a line read a
    /// byte at a time is scanned once.
    inner: Vec<usize>,
    /// Bytes of complete lines counted toward [`MAX_MESSAGE`]: since the
    /// last place a message may have started (the first byte, a discard,
    /// a resend inside a line). End lines do not count.
    total: usize,
    /// Lines completed so far, for error messages (1-based numbering).
    lines: usize,
    cmdline: Option<String>,
    pubkey: Option<String>,
    /// A line starting with `cmdline:` has arrived (valid or refused): what
    /// an unframed message needs to be complete.
    cmdline_line: bool,
    /// The first refused line of the current unframed message. Not final at
    /// once: it is the verdict only once a `cmdline:` line completes the
    /// message, and an end line that follows can show it was a cut or
    /// corrupted copy, which is discarded.
    refused: Option<ProtocolError>,
    received: bool,
    seen: Vec<Line>,
    framed: Option<Message>,
    /// Bytes that came after a matching end line.
    after_end: usize,
    /// Bumped whenever bytes of a cmdline, pubkey or end line arrive: what
    /// counts as the host making progress, unlike ignored lines.
    progress: u64,
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
        // Searched once a read, not once a line (memchr, by `contains`, is
        // the faster on long lines): the line it is in is refused when it
        // is reached.
        let mut nul = bytes.contains(&0).then(|| find_byte(bytes, 0)).flatten();
        while !bytes.is_empty() {
            if self.framed.is_some() {
                self.after_end += bytes.len();
                return Ok(());
            }
            let line_no = self.lines + 1;
            let (chunk, rest, ended) = match find_byte(bytes, b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if nul.is_some_and(|at| at < chunk.len()) {
                return Err(ProtocolError::Nul { line: line_no });
            }
            nul = nul.map(|at| at - (bytes.len() - rest.len()));
            let before = self.pending();
            self.buf.extend_from_slice(chunk);
            self.find_inner(before);
            if !chunk.is_empty() && self.pending_meaningful() {
                self.progress += 1;
            }
            // Checked as bytes arrive, so an endless line is refused without
            // buffering it.
            if !self.may_grow() {
                return Err(ProtocolError::LineTooLong { line: line_no });
            }
            if self.counted(ended) > MAX_MESSAGE {
                return Err(ProtocolError::MessageTooLarge);
            }
            if ended {
                self.buf.push(b'\n');
                self.lines += 1;
                self.line(line_no)?;
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The unfinished line.
    fn partial(&self) -> &[u8] {
        &self.buf[self.line_start..]
    }

    /// Records where `cmdline:` or `pubkey:` begins in the unfinished line's
    /// bytes from `from` on (both end with the line's only `:` among their
    /// bytes, so only a `:` is looked at). One inside the line starts after
    /// its first byte, so its `:` is at index 7 at the earliest (the length
    /// of `pubkey:`, the shorter): a shorter line is not searched.
    fn find_inner(&mut self, from: usize) {
        let line = &self.buf[self.line_start..];
        let mut from = from.max(PUBKEY_PREFIX.len());
        while let Some(at) = line.get(from..).and_then(|rest| find_byte(rest, b':')) {
            let i = from + at;
            for prefix in [CMDLINE_PREFIX, PUBKEY_PREFIX] {
                let n = prefix.len();
                if i >= n && line[i + 1 - n..=i] == *prefix.as_bytes() {
                    self.inner.push(i + 1 - n);
                }
            }
            from = i + 1;
        }
    }

    /// Whether the unfinished line is still within the line limit: at most
    /// [`MAX_LINE`] bytes (one more for a `\r` before the `\n`), or a cut
    /// part and a resend, each within it, when a `cmdline:` or `pubkey:`
    /// inside it may start the resend. Whether it is a join is known only
    /// once the line is whole; until then at most twice the limit is held.
    fn may_grow(&self) -> bool {
        if self.pending() <= MAX_LINE {
            return true;
        }
        let fits = |line: &[u8]| {
            line.len() <= MAX_LINE || (line.len() == MAX_LINE + 1 && line.last() == Some(&b'\r'))
        };
        let line = self.partial();
        if fits(line) {
            return true;
        }
        let from = self
            .inner
            .partition_point(|&p| p + MAX_LINE + 1 < line.len());
        self.inner[from..]
            .iter()
            .take_while(|&&p| p <= MAX_LINE)
            .any(|&p| fits(&line[p..]))
    }

    /// Bytes toward the message limit, the unfinished line's included (and
    /// its newline when `ended`): counted from the latest place a message
    /// may start (a resend inside the unfinished line); an end line does
    /// not count.
    fn counted(&self, ended: bool) -> usize {
        let line = self.partial();
        let line_len = line.len() + usize::from(ended);
        if could_be(line, END_PREFIX) {
            self.total
        } else if let Some(&p) = self.inner.last() {
            line_len - p
        } else {
            self.total + line_len
        }
    }

    /// Handles the line just completed: `buf[line_start..]`, its `\n`
    /// last.
    fn line(&mut self, line_no: usize) -> Result<(), ProtocolError> {
        let start = self.line_start;
        let end = self.buf.len() - 1;
        let line = &self.buf[start..end];
        let joined = join_at(line, &self.inner);
        let text = &line[joined.unwrap_or(0)..];
        if starts_with(text, END_PREFIX) {
            self.inner.clear();
            return self.end_line(start + END_PREFIX.len(), end);
        }
        // A message may start at the last resend inside the line.
        let len = end + 1 - start;
        self.total = match self.inner.last() {
            Some(&p) => len - p,
            None => self.total + len,
        };
        if let Some(dropped) = joined {
            self.seen.push(Line::Joined { dropped });
        }
        self.cmdline_line |= starts_with(text, CMDLINE_PREFIX);
        match check_line(text, line_no) {
            Ok(Checked::Cmdline(c)) => {
                // A later cmdline line replaces an earlier one, as it did in
                // cloud-early-config (each line overwrote the file).
                let kept = self.cmdline.get_or_insert_with(String::new);
                kept.clear();
                kept.push_str(c);
                self.progress += 1;
                self.seen.push(Line::Cmdline);
            }
            Ok(Checked::Pubkey(k)) => {
                self.pubkey = Some(k.to_owned());
                self.progress += 1;
                self.seen.push(Line::Pubkey);
            }
            Ok(Checked::Empty) => match self.seen.last_mut() {
                Some(Line::Empty { lines }) => *lines += 1,
                _ => self.seen.push(Line::Empty { lines: 1 }),
            },
            Ok(Checked::Unknown(text)) => match self.seen.last_mut() {
                Some(Line::Unknown { lines, .. }) => *lines += 1,
                _ => self.seen.push(Line::Unknown {
                    first: text.chars().take(40).collect(),
                    lines: 1,
                }),
            },
            Err(e) => {
                self.refused.get_or_insert(e.clone());
                self.seen.push(Line::Refused(e));
            }
        }
        self.inner.clear();
        self.line_start = self.buf.len();
        // Trimmed in batches: trimming to the limit on every line would
        // move the whole window once per line.
        if self.line_start > 2 * MAX_MESSAGE {
            self.buf.drain(..self.line_start - MAX_MESSAGE);
            self.line_start = self.buf.len();
        }
        Ok(())
    }

    /// The end line `buf[line_start..end]`, whose text after `end:` starts
    /// at `from`: checked against the complete lines before it.
    fn end_line(&mut self, from: usize, end: usize) -> Result<(), ProtocolError> {
        self.progress += 1;
        let rest = &self.buf[from..end];
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        let before = &self.buf[..self.line_start];
        let verified = std::str::from_utf8(rest)
            .map_err(|_| "malformed end line (not UTF-8)".to_owned())
            .and_then(parse_end)
            .and_then(|end| verify(&end, before));
        match verified {
            Ok(body) => {
                let message = parse_body(body)?;
                self.seen.push(Line::End { len: body.len() });
                self.framed = Some(message);
            }
            Err(why) => {
                let discarded = self.line_start;
                self.seen.push(Line::EndMismatch { why, discarded });
                self.restart();
            }
        }
        Ok(())
    }

    /// Forgets everything received: a copy that an end line showed damaged.
    fn restart(&mut self) {
        self.buf.clear();
        self.line_start = 0;
        self.inner.clear();
        self.total = 0;
        self.cmdline = None;
        self.pubkey = None;
        self.cmdline_line = false;
        self.refused = None;
    }

    /// The verdict on what has arrived, for when the caller holds it whole
    /// (the host disconnected or went quiet, or a deadline): the framed
    /// message if one matched; else, once a `cmdline:` line has arrived,
    /// the first refused line or the unframed message; else nothing (a
    /// refused line without a `cmdline:` line decides nothing). An
    /// unfinished trailing line is not part of it.
    pub fn finish(&mut self) -> Result<Option<Message>, ProtocolError> {
        if let Some(m) = self.framed.take() {
            return Ok(Some(m));
        }
        if !self.cmdline_line {
            return Ok(None);
        }
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        Ok(self.cmdline.take().map(|cmdline| Message {
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

    /// An unframed message could be concluded now: a `cmdline:` line has
    /// arrived (valid or refused), and no line that may still change the
    /// verdict (a cmdline, pubkey or end line, or a resend running into a
    /// cut line) is half-way.
    pub fn can_conclude(&self) -> bool {
        self.cmdline_line && !self.pending_meaningful()
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
        self.buf.len() - self.line_start
    }

    /// The unfinished line may become a cmdline, pubkey or end line.
    pub fn pending_meaningful(&self) -> bool {
        let p = self.partial();
        !p.is_empty()
            && (!self.inner.is_empty()
                || could_be(p, CMDLINE_PREFIX)
                || could_be(p, PUBKEY_PREFIX)
                || could_be(p, END_PREFIX))
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

/// `bytes` is `prefix`, or the start of it, or starts with it. (Byte by
/// byte, and inlined: called several times a line, it mostly finds at the
/// first byte that a line is none of these. As memcmp calls it cost more;
/// as calls at all, which the size-optimized build leaves it unless told,
/// 8 % of the instructions of 62,500 short lines.)
#[inline(always)]
fn could_be(bytes: &[u8], prefix: &str) -> bool {
    let prefix = prefix.as_bytes();
    let n = bytes.len().min(prefix.len());
    let mut i = 0;
    while i < n {
        if bytes[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `bytes` starts with `prefix`.
#[inline(always)]
fn starts_with(bytes: &[u8], prefix: &str) -> bool {
    bytes.len() >= prefix.len() && could_be(bytes, prefix)
}

/// Where `byte` first is in `hay`, eight bytes at a time: the release
/// build is optimized for size, which leaves a byte-by-byte search a
/// byte-by-byte loop, and every byte from the host passes here.
fn find_byte(hay: &[u8], byte: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        // A byte equal to `byte` becomes zero; (x - ONES) & !x & HIGH has
        // the high bit of the first zero byte set (later ones may be wrong,
        // the first never is).
        let x = u64::from_le_bytes(word.try_into().unwrap()) ^ (ONES * u64::from(byte));
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == byte)
        .map(|i| at + i)
}

enum Checked<'a> {
    Cmdline(&'a str),
    Pubkey(&'a str),
    Empty,
    Unknown(&'a str),
}

// Every line passes here, most of them ignored ones, so it uses this
// file's byte helpers: the library's strip_suffix and strip_prefix stay
// calls in the size-optimized build, a sixth of the instructions of 62,500
// short lines.
fn check_line(text: &[u8], line_no: usize) -> Result<Checked<'_>, ProtocolError> {
    let text = match text {
        [text @ .., b'\r'] => text,
        _ => text,
    };
    if text.len() > MAX_LINE {
        return Err(ProtocolError::LineTooLong { line: line_no });
    }
    if text.contains(&b'\r') {
        return Err(ProtocolError::BareCarriageReturn { line: line_no });
    }
    let text =
        std::str::from_utf8(text).map_err(|_| ProtocolError::InvalidUtf8 { line: line_no })?;
    // Only the prefix is stripped: the rest of the line is kept as it is.
    Ok(if starts_with(text.as_bytes(), CMDLINE_PREFIX) {
        let cmdline = &text[CMDLINE_PREFIX.len()..];
        if cmdline.trim().is_empty() {
            return Err(ProtocolError::EmptyCmdline { line: line_no });
        }
        Checked::Cmdline(cmdline)
    } else if starts_with(text.as_bytes(), PUBKEY_PREFIX) {
        let key = &text[PUBKEY_PREFIX.len()..];
        if !is_openssh_public_key(key) {
            return Err(ProtocolError::BadPubkey { line: line_no });
        }
        Checked::Pubkey(key)
    } else if text.is_empty() {
        Checked::Empty
    } else {
        Checked::Unknown(text)
    })
}

/// A framed message's body, whose digest matched: its lines as they are,
/// the later of two lines of a kind winning; no other rule. Line numbers
/// count from the body's start.
fn parse_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let (mut cmdline, mut pubkey) = (None, None);
    // The body ends with a newline: the end line starts a line.
    let (mut rest, mut line_no) = (body, 1);
    while let Some(at) = find_byte(rest, b'\n') {
        match check_line(&rest[..at], line_no)? {
            Checked::Cmdline(c) => cmdline = Some(c),
            Checked::Pubkey(k) => pubkey = Some(k),
            Checked::Empty | Checked::Unknown(_) => {}
        }
        rest = &rest[at + 1..];
        line_no += 1;
    }
    Ok(Message {
        cmdline: cmdline
            .ok_or(ProtocolError::FramedWithoutCmdline)?
            .to_owned(),
        pubkey: pubkey.map(str::to_owned),
    })
}

/// Where the resend begins in a line that a resend ran into, if it is one:
/// `inner` are the places where `cmdline:` or `pubkey:` begins inside it.
/// It is one when the text before a resend's start is a cut copy of the
/// resent text (a prefix of it), or several cut copies in a row, each
/// starting where a `cmdline:` or `pubkey:` does (cut, resent, cut again);
/// the latest such start is taken. A cut end line (`end:` and the digits,
/// spaces and hex it is made of) before a resend is dropped too: an end
/// line holds no other `:`. Any other text is data.
pub fn join_at(line: &[u8], inner: &[usize]) -> Option<usize> {
    let &first = inner.first()?;
    if let Some(cut) = line[..first].strip_prefix(END_PREFIX.as_bytes()) {
        let end_line_bytes = |b: &u8| b.is_ascii_digit() || *b == b' ' || (b'a'..=b'f').contains(b);
        return cut
            .iter()
            .all(end_line_bytes)
            .then(|| join_from(line, inner, first).unwrap_or(first));
    }
    join_from(line, inner, 0)
}

/// The latest of `inner` after `base` (of the last [`JOIN_TRIES`]) before
/// which `line[base..]` is cut copies of what follows, and from which the
/// rest is a line the guest takes: a resent line is one the host sent
/// whole (`cmdline:cmdline:` is the cmdline `cmdline:`, not a cut copy of
/// an empty one).
fn join_from(line: &[u8], inner: &[usize], base: usize) -> Option<usize> {
    inner.iter().rev().take(JOIN_TRIES).copied().find(|&r| {
        r > base && cut_copies(line, inner, base, r) && check_line(&line[r..], 0).is_ok()
    })
}

/// Whether `line[base..resent]` is a run of prefixes of `line[resent..]`,
/// each after the first starting at one of `inner`.
fn cut_copies(line: &[u8], inner: &[usize], base: usize, resent: usize) -> bool {
    let whole = &line[resent..];
    let mut from = base;
    loop {
        let same = common_prefix(&line[from..resent], whole);
        if from + same == resent {
            return true;
        }
        // This copy ends where the next begins: at the latest resend start
        // it still agrees up to.
        let upto = inner.partition_point(|&p| p <= from + same);
        match inner[..upto].last() {
            Some(&p) if p > from => from = p,
            _ => return false,
        }
    }
}

/// How many bytes `a` and `b` have in common from their start; compared
/// in blocks, as slices compare (memcmp), then byte by byte in the block
/// that differs.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
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
    fn find_byte_finds_the_first_at_every_offset() {
        for len in 0..40 {
            for at in 0..=len {
                let mut hay = vec![b'x'; len];
                if at < len {
                    hay[at] = b'\n';
                    // A later one, and bytes one apart from it, change nothing.
                    hay.iter_mut()
                        .skip(at + 1)
                        .step_by(3)
                        .for_each(|b| *b = b'\x0b');
                    if at + 2 < len {
                        hay[at + 2] = b'\n';
                    }
                }
                let want = hay.iter().position(|&b| b == b'\n');
                assert_eq!(find_byte(&hay, b'\n'), want, "{hay:?}");
            }
        }
        assert_eq!(find_byte(b"\x01\x00\x80\xff:", b':'), Some(4));
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
    fn cut_line_and_its_resend_over_the_limit_together_give_the_resend() {
        // Each part alone is under the line limit; joined they are not. A
        // join is taken whole; a line as long that is not one is refused.
        let resend = format!("cmdline:{}\n", "a=1 ".repeat((MAX_LINE - 100) / 4));
        let mut d = Decoder::new();
        d.feed(&resend.as_bytes()[..MAX_LINE - 1000]).unwrap();
        d.feed(resend.as_bytes()).unwrap();
        assert_eq!(d.pending(), 0);
        assert_eq!(
            d.drain_lines(),
            vec![
                Line::Joined {
                    dropped: MAX_LINE - 1000
                },
                Line::Cmdline
            ]
        );
        assert_eq!(
            d.finish().unwrap().unwrap().cmdline,
            resend[8..resend.len() - 1]
        );
        let other = format!("cmdline:{}\n", "b=2 ".repeat(2000 / 4));
        let mut d = Decoder::new();
        d.feed(&resend.as_bytes()[..MAX_LINE - 1000]).unwrap();
        d.feed(other.as_bytes()).unwrap();
        assert_eq!(d.finish(), Err(ProtocolError::LineTooLong { line: 1 }));
        // Over twice the limit nothing can be a join: refused as it arrives.
        let whole = format!("cmdline:{}", "a".repeat(MAX_LINE));
        let mut d = Decoder::new();
        d.feed(&whole.as_bytes()[..MAX_LINE]).unwrap();
        let err = d.feed(whole.as_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::LineTooLong { line: 1 });
        assert!(d.pending() <= MAX_LINE + whole.len());
    }

    #[test]
    fn long_cut_then_its_framed_resend_is_the_message() {
        // Issue 19, item 4: 30,000 bytes of a 40,009-byte framed message,
        // then the whole message: one line over the limit, and the resend's
        // digest matches.
        let body = format!("cmdline:{}\n", "k=v ".repeat(9_980));
        let whole = framed(&body);
        let mut bytes = whole[..30_000].to_vec();
        bytes.extend_from_slice(&whole);
        let m = decode(&bytes).unwrap().unwrap();
        assert_eq!(m.cmdline, body[8..body.len() - 1]);
    }

    #[test]
    fn join_of_a_cut_copy_and_its_resend_is_found_in_every_shape() {
        // The resend is the same message, so what the join drops is a
        // prefix of what follows it: cut inside the pubkey's base64, in a
        // multi-byte character, inside the prefix itself, twice in a row,
        // after a prefix inside a value.
        let m = decode(format!("pubkey:ssh-rsa AAAApubkey:{KEY}\ncmdline:a=1\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(m.pubkey.as_deref(), Some(KEY));
        let mut bytes = "cmdline:x=\u{e9}".as_bytes()[..11].to_vec();
        bytes.extend_from_slice("cmdline:x=\u{e9}\n".as_bytes());
        assert_eq!(decode(&bytes).unwrap().unwrap().cmdline, "x=\u{e9}");
        for (bytes, want) in [
            (&b"cmdlcmdline:a=1 b=2\n"[..], "a=1 b=2"),
            (b"cmdline:a=1 b=cmdline:a=cmdline:a=1 b=2\n", "a=1 b=2"),
            (
                b"cmdline:a=1 n=see-cmdline:docmdline:a=1 n=see-cmdline:docs\n",
                "a=1 n=see-cmdline:docs",
            ),
        ] {
            let mut d = Decoder::new();
            d.feed(bytes).unwrap();
            assert!(matches!(d.drain_lines()[0], Line::Joined { .. }), "{want}");
            assert_eq!(d.finish().unwrap().unwrap().cmdline, want);
        }
        // A cut line before a resend that starts with another line: the
        // resend's own lines come later and win.
        let cut = format!("pubkey:{KEY}\ncmdline:a=1 b");
        let m = decode(format!("{cut}pubkey:{KEY}\ncmdline:a=1 b=2\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.cmdline.as_str(), m.pubkey.as_deref()),
            ("a=1 b=2", Some(KEY))
        );
    }

    #[test]
    fn one_byte_cut_before_its_resend_is_a_join() {
        // The earliest a prefix inside a line can start: after one byte,
        // its `:` at index 7 (`pubkey:`) or 8 (`cmdline:`); fed whole and a
        // byte at a time.
        for (bytes, dropped) in [
            (format!("ppubkey:{KEY}\ncmdline:a=1\n"), 1),
            (format!("pubkey:{KEY}\nccmdline:a=1\n"), 1),
        ] {
            let mut d = Decoder::new();
            d.feed(bytes.as_bytes()).unwrap();
            assert!(
                d.drain_lines().contains(&Line::Joined { dropped }),
                "{bytes}"
            );
            let mut one = Decoder::new();
            for b in bytes.as_bytes() {
                one.feed(std::slice::from_ref(b)).unwrap();
            }
            let m = d.finish().unwrap().unwrap();
            assert_eq!(
                (m.cmdline.as_str(), m.pubkey.as_deref()),
                ("a=1", Some(KEY))
            );
            assert_eq!(one.finish().unwrap().unwrap(), m);
        }
    }

    #[test]
    fn prefix_inside_a_value_or_a_key_comment_is_data() {
        // Issue 19, item 2: a legacy host's lines holding a prefix inside;
        // what comes before it is not a copy of what follows, so nothing is
        // dropped.
        let cmdline = "type=secstorage eth0ip=169.254.3.4 note=see-cmdline:docs host=10.1.1.1";
        let m = decode(format!("pubkey:{KEY}\ncmdline:{cmdline}\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.cmdline.as_str(), m.pubkey.as_deref()),
            (cmdline, Some(KEY))
        );
        let key = format!("{KEY} cloud@mgmt cmdline:keyring");
        let m = decode(format!("pubkey:{key}\ncmdline:a=1\n").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(m.pubkey, Some(key));
        for cmdline in [
            "a=1 k=pubkey:x",
            "a=cmdline:a",
            "x cmdline:x",
            "pubkey:cmdline:",
        ] {
            let mut d = Decoder::new();
            d.feed(format!("cmdline:{cmdline}\n").as_bytes()).unwrap();
            assert_eq!(d.drain_lines(), vec![Line::Cmdline], "{cmdline}");
            assert_eq!(d.finish().unwrap().unwrap().cmdline, cmdline);
        }
    }

    #[test]
    fn framed_body_is_the_message_byte_for_byte() {
        // Issue 19, item 1: once the digest matches, no rule rewrites it,
        // even where the unframed rule would see a join.
        for cmdline in [
            "template=domP note=pubkey:and_cmdline:inside zone=1",
            "acmdline:abc",
            "x=1 cmdline:x=1 y=2",
        ] {
            let body = format!("pubkey:{KEY} c@m cmdline:k\ncmdline:{cmdline}\n");
            let m = decode(&framed(&body)).unwrap().unwrap();
            assert_eq!(m.cmdline, cmdline);
            assert_eq!(m.pubkey, Some(format!("{KEY} c@m cmdline:k")));
        }
    }

    #[test]
    fn junk_line_alone_decides_nothing() {
        // Issue 19, item 3: no cmdline line came with it, so the message is
        // not complete by the unframed rules, whatever the timing.
        let mut d = Decoder::new();
        d.feed(b"\xff\xfe garbage\n").unwrap();
        assert!(!d.can_conclude());
        assert_eq!(d.finish(), Ok(None));
        d.feed(&framed("cmdline:a=1\n")).unwrap();
        assert_eq!(d.finish().unwrap().unwrap().cmdline, "a=1");
        // With a cmdline line it is part of the message, and refuses it.
        let mut d = Decoder::new();
        d.feed(b"\xff\xfe garbage\ncmdline:a=1\n").unwrap();
        assert!(d.can_conclude());
        assert_eq!(d.finish(), Err(ProtocolError::InvalidUtf8 { line: 1 }));
    }

    #[test]
    fn end_line_does_not_count_toward_the_message_limit() {
        // Issue 19, item 5: N goes up to MAX_MESSAGE.
        let ignored = format!("x:{}\n", "y".repeat(60_000)).repeat(4);
        for len in [MAX_MESSAGE - 44, MAX_MESSAGE] {
            let rest = len - ignored.len() - "cmdline:\n".len();
            let body = format!("{ignored}cmdline:{}\n", "c".repeat(rest));
            assert_eq!(body.len(), len);
            assert!(decode(&framed(&body)).unwrap().is_some(), "{len}");
        }
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
        // Unframed, the refusal stands once a cmdline line completes it.
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
                Line::Unknown {
                    first: "hello:x".into(),
                    lines: 1
                },
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
        // The NUL is searched once a read: the line it is in is still the
        // one named, in this read or a later one, and none after a
        // matching end line counts.
        assert_eq!(
            decode(b"x:1\n\ny:2\ncmdline:a=1 \0\n"),
            Err(ProtocolError::Nul { line: 4 })
        );
        let mut d = Decoder::new();
        d.feed(b"x:1\ncmdl").unwrap();
        assert_eq!(
            d.feed(b"ine:a=1\ny:\0"),
            Err(ProtocolError::Nul { line: 3 })
        );
        let mut bytes = framed("cmdline:a=1\n");
        bytes.extend_from_slice(b"\0\n");
        assert_eq!(decode(&bytes).unwrap().unwrap().cmdline, "a=1");
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
                    // Prefixes inside a line: data, or a cut copy and its resend.
                    "(cmdline:|pubkey:|end:|cmdl)?[a-z=]{0,4}(cmdline:|pubkey:)[a-z=]{0,6}",
                    proptest::strategy::Just(format!("pubkey:{KEY}")),
                    proptest::strategy::Just(format!("pubkey:ssh-rsa AApubkey:{KEY}")),
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
