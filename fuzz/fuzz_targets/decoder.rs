//! The line decoder against arbitrary host bytes, cut arbitrarily into
//! reads. Byte 0 steers: its low 3 bits pick the read sizes, bit 6 frames
//! the rest (appends its end line, as `send` does, so that inputs reach the
//! framed path), bit 4 (with bit 6) then puts a cut copy of it in front, bit
//! 3 (with bit 6) a junk line (invalid UTF-8) in front of that, bit 7
//! repeats the rest until it is just past the line limit (bit 5 clear) or
//! the message limit (bit 5 set), or, framed, to 50,000 bytes, so that a
//! cut copy of half of it and its resend make one line over the line limit
//! (a long cut before its resend). A prefix inside a value comes from the
//! seeds (`seed-prefix-inside-a-value`). What must hold whatever the input:
//! - feeding it whole or in pieces gives the same verdict, and the same
//!   message when accepted;
//! - the unfinished line buffered never exceeds a cut part and a resend,
//!   each within the line limit: 2 * (MAX_LINE + 1) bytes;
//! - an accepted message is one line of valid text within the limits;
//! - a framed input (its body ending with a newline, as `send`'s does, and
//!   starting with `cmdline:` or `pubkey:`, as a message does) gives the
//!   same verdict with a cut copy or a junk line in front as without: the
//!   body found by its end line, byte for byte;
//! - a framed body without `cmdline:` or `pubkey:` inside its lines is the
//!   same message as its lines alone, unframed;
//! - an error is one line of text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vport_bootargs::wire::{
    end_line, is_openssh_public_key, Decoder, Message, ProtocolError, MAX_LINE, MAX_MESSAGE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let framed = control & 0x40 != 0;
    let stream = if control & 0x80 != 0 && !payload.is_empty() {
        // Just past one limit or the other: bigger only costs time.
        let limit = if framed {
            50_000
        } else if control & 0x20 != 0 {
            MAX_MESSAGE
        } else {
            MAX_LINE
        };
        payload.repeat((limit + 2).div_ceil(payload.len()))
    } else {
        payload.to_vec()
    };
    let mut stream = stream;
    if framed && stream.last() != Some(&b'\n') {
        // A body ends with a newline, as `send`'s always does
        // (wire::encode): an end line glued to an unfinished last line is
        // not at a line's start, so that stream counts as unframed.
        stream.push(b'\n');
    }
    // A prefix inside a line of the body: unframed, that may read as a cut
    // copy and its resend; framed, it is data.
    let inside = [&b"cmdline:"[..], b"pubkey:"].iter().any(|p| {
        stream
            .windows(p.len())
            .enumerate()
            .any(|(i, w)| w == *p && i > 0 && stream[i - 1] != b'\n')
    });
    let body_alone = framed.then(|| decode(std::iter::once(&stream[..])));
    let mut plain = stream.clone();
    plain.extend_from_slice(end_line(&stream).as_bytes());
    let in_front = framed && control & 0x18 != 0;
    let stream = if in_front {
        let mut framed_stream = Vec::new();
        if control & 0x08 != 0 {
            // A stray writer's junk line.
            framed_stream.extend_from_slice(b"\xff\xfe garbage\n");
        }
        if control & 0x10 != 0 {
            // A cut copy in front, as when the host was cut off mid-send.
            framed_stream.extend_from_slice(&stream[..stream.len() / 2]);
        }
        framed_stream.extend_from_slice(&plain);
        framed_stream
    } else if framed {
        plain.clone()
    } else {
        stream
    };
    let whole = decode(std::iter::once(&stream[..]));

    let mut max_read = [1usize, 2, 7, 64, 4096, 16 * 1024][usize::from(control & 7) % 6];
    if stream.len() > payload.len() {
        // Byte-sized reads over a repeated stream only slow the fuzzer down;
        // short inputs cover them.
        max_read = max_read.max(64);
    }
    let mut seed = u32::from(control) | 0x9e37_79b9;
    let mut rest = &stream[..];
    let pieces = std::iter::from_fn(|| {
        if rest.is_empty() {
            return None;
        }
        // xorshift32: cheap, deterministic read sizes in 1..=max_read.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let (piece, tail) = rest.split_at((seed as usize % max_read + 1).min(rest.len()));
        rest = tail;
        Some(piece)
    });
    let split = decode(pieces);

    assert_eq!(
        whole.is_ok(),
        split.is_ok(),
        "whole {whole:?} split {split:?}"
    );
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b);
    }
    let has_end = payload.windows(4).any(|w| w == b"end:");
    if in_front && !has_end && (plain.starts_with(b"cmdline:") || plain.starts_with(b"pubkey:")) {
        // What came in front changes nothing: the end line finds the body.
        // (Line numbers in a refusal count what came in front.)
        let plain = decode(std::iter::once(&plain[..]));
        assert_eq!(
            plain.as_ref().ok(),
            whole.as_ref().ok(),
            "what came in front changed the framed message"
        );
    }
    // Framed: when the body alone gives a message, the framed stream gives
    // that same message, unless a line holds a prefix inside (unframed, that
    // may be a cut copy and its resend; framed, it is data) or an end line
    // of its own.
    if let (Some(Ok(Some(alone))), Ok(Some(got))) = (&body_alone, &whole) {
        if !has_end && !inside && !in_front {
            assert_eq!(alone, got, "framed and unframed disagree");
        }
    }
    for result in [whole, split] {
        match result {
            Ok(Some(m)) => check_message(&m),
            Ok(None) => {}
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
});

fn decode<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Result<Option<Message>, ProtocolError> {
    let mut d = Decoder::new();
    for piece in pieces {
        d.feed(piece)?;
        assert!(
            d.pending() <= 2 * (MAX_LINE + 1),
            "buffered {} bytes",
            d.pending()
        );
        d.drain_lines();
    }
    d.finish()
}

fn check_message(m: &Message) {
    assert!(m.cmdline.len() <= MAX_LINE);
    assert!(!m.cmdline.trim().is_empty());
    assert!(!m.cmdline.contains(['\0', '\r', '\n']));
    if let Some(key) = &m.pubkey {
        assert!(key.len() <= MAX_LINE);
        assert!(!key.contains(['\0', '\r', '\n']));
        assert!(is_openssh_public_key(key));
    }
}
