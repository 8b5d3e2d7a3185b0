//! The end-of-message line: `end:<N> <sha256>`, where `N` is the number of
//! bytes of the message before this line (decimal) and `<sha256>` their
//! lowercase hex SHA-256. The message is those `N` bytes, line endings
//! included, so the guest finds its start by counting back from the end
//! line, whatever came before it on the port: a cut copy of an earlier send
//! that ran into this one (the guest cannot always see that the host
//! disconnected in between) is simply not part of it.
//!
//! Guests that do not know the line ignore it: cloud-early-config acts only
//! on `cmdline:` and `pubkey:` lines, and earlier builds of this helper log
//! unknown prefixes and go on.

use super::{digest_hex, MAX_MESSAGE};

pub const END_PREFIX: &str = "end:";

/// The end line for `body`, newline included.
pub fn end_line(body: &[u8]) -> String {
    format!("{END_PREFIX}{} {}\n", body.len(), digest_hex(body))
}

/// What an end line claims, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub len: usize,
    pub sha256: String,
}

/// Parses the text after `end:`. Strict: one decimal length from 1 to
/// [`MAX_MESSAGE`] without sign or leading zero, one space, 64 lowercase hex
/// digits, nothing else.
pub fn parse_end(rest: &str) -> Result<End, String> {
    let bad = || format!("malformed end line (expected \"{END_PREFIX}<bytes> <sha256>\")");
    let (len, sha256) = rest.split_once(' ').ok_or_else(bad)?;
    let digits_ok = !len.is_empty()
        && len.len() <= 7
        && len.bytes().all(|b| b.is_ascii_digit())
        && !len.starts_with('0');
    let hex_ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !digits_ok || !hex_ok {
        return Err(bad());
    }
    let len: usize = len.parse().map_err(|_| bad())?;
    if len > MAX_MESSAGE {
        return Err(format!(
            "the end line covers {len} bytes, more than the {MAX_MESSAGE} a message may have"
        ));
    }
    Ok(End {
        len,
        sha256: sha256.to_owned(),
    })
}

/// Checks an end line against `before`, the bytes of complete lines that
/// came before it: the last `end.len` of them must have its digest. Returns
/// the message's bytes.
pub fn verify<'a>(end: &End, before: &'a [u8]) -> Result<&'a [u8], String> {
    if end.len > before.len() {
        return Err(format!(
            "the end line covers {} bytes, but only {} arrived before it (a cut)",
            end.len,
            before.len()
        ));
    }
    let body = &before[before.len() - end.len..];
    let got = digest_hex(body);
    if got != end.sha256 {
        return Err(format!(
            "the {} bytes before the end line have sha256 {}, not {} (a cut or a corruption)",
            end.len,
            &got[..12],
            &end.sha256[..12]
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_line_is_length_and_sha256_of_the_body() {
        // sha256("abc\n") (`printf 'abc\n' | sha256sum`).
        assert_eq!(
            end_line(b"abc\n"),
            "end:4 edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb\n"
        );
    }

    #[test]
    fn end_line_parses_back() {
        let line = end_line(b"cmdline:a=b\n");
        let rest = line.trim_end().strip_prefix(END_PREFIX).unwrap();
        let end = parse_end(rest).unwrap();
        assert_eq!(end.len, 12);
        assert_eq!(
            verify(&end, b"junkcmdline:a=b\n").unwrap(),
            b"cmdline:a=b\n"
        );
    }

    #[test]
    fn malformed_end_lines_are_refused() {
        let hex = "0".repeat(64);
        for bad in [
            String::new(),
            "12".into(),
            format!("012 {hex}"),
            format!("+12 {hex}"),
            format!("12 {}", hex.to_uppercase().replace('0', "A")),
            format!("12  {hex}"),
            format!("12 {hex} "),
            format!("12 {}", &hex[1..]),
            format!("0 {hex}"),
        ] {
            assert!(parse_end(&bad).is_err(), "{bad:?}");
        }
        assert!(parse_end(&format!("{} {hex}", MAX_MESSAGE + 1))
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn cut_or_corrupted_body_does_not_verify() {
        let body = b"pubkey:k\ncmdline:a=b\n";
        let line = end_line(body);
        let end = parse_end(line.trim_end().strip_prefix(END_PREFIX).unwrap()).unwrap();
        assert!(verify(&end, &body[3..]).unwrap_err().contains("a cut"));
        let mut bad = body.to_vec();
        bad[10] ^= 1;
        assert!(verify(&end, &bad).unwrap_err().contains("corruption"));
    }
}
