//! The line decoder against arbitrary host bytes, cut arbitrarily into
//! reads. Byte 0 steers: its low 3 bits pick the read sizes, bit 6 frames
//! the rest (appends its end line, as `send` does, so that inputs reach the
//! framed path), bit 4 (with bit 6) then puts a cut copy of it in front, bit 7
//! repeats the rest until it is just past the line limit (bit 5 clear) or
//! the message limit (bit 5 set), so that a small input can make an
//! oversized line or message. What must hold whatever the input:
//! - feeding it whole or in pieces gives the same verdict, and the same
//!   message when accepted;
//! - the unfinished line buffered never exceeds MAX_LINE + 1 bytes;
//! - an accepted message is one line of valid text within the limits;
//! - a framed input (its body ending with a newline, as `send`'s does) is
//!   decoded as the same message as its body alone, a cut copy in front or
//!   not (the join is never taken);
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
    let stream = if control & 0x80 != 0 && !payload.is_empty() {
        // Just past one limit or the other: bigger only costs time.
        let limit = if control & 0x20 != 0 {
            MAX_MESSAGE
        } else {
            MAX_LINE
        };
        payload.repeat((limit + 2).div_ceil(payload.len()))
    } else {
        payload.to_vec()
    };
    let framed = control & 0x40 != 0;
    let mut stream = stream;
    if framed && stream.last() != Some(&b'\n') {
        // A body ends with a newline, as `send`'s always does
        // (wire::encode): an end line glued to an unfinished last line is
        // not at a line's start, so that stream counts as unframed.
        stream.push(b'\n');
    }
    let body_alone = framed.then(|| decode(std::iter::once(&stream[..])));
    let stream = if framed {
        let mut framed_stream = Vec::new();
        if control & 0x10 != 0 {
            // A cut copy in front, as when the host was cut off mid-send.
            framed_stream.extend_from_slice(&stream[..stream.len() / 2]);
        }
        framed_stream.extend_from_slice(&stream);
        framed_stream.extend_from_slice(end_line(&stream).as_bytes());
        framed_stream
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
    // Framed: when the body alone gives a message, the framed stream gives
    // that same message, with or without a cut copy in front (bodies that
    // hold end lines of their own are left out: unframed, those count).
    let has_end = payload.windows(4).any(|w| w == b"end:");
    if let (Some(Ok(Some(alone))), Ok(Some(got))) = (&body_alone, &whole) {
        if !has_end {
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
            d.pending() <= MAX_LINE + 1,
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
