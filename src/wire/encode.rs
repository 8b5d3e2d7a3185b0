//! Encoding, host side: a [`Message`] as CloudStack's lines, and the checks
//! that refuse, before anything is sent, what the guest's decoder would
//! refuse. The guest reads a framed body byte for byte, so any text a
//! value may hold goes through (`cmdline:` and `pubkey:` inside a value
//! included).

use super::end::end_line;
use super::{is_openssh_public_key, Message, CMDLINE_PREFIX, MAX_LINE, PUBKEY_PREFIX};

/// What the guest would refuse in a cmdline (wire::decode::Decoder):
/// refused here, before anything is sent.
pub fn check_cmdline(cmdline: &str) -> std::result::Result<(), String> {
    if cmdline.trim().is_empty() {
        return Err("the cmdline is empty".into());
    }
    if let Some(c) = cmdline.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(format!(
            "contains {c:?}; the cmdline must be one line without NUL bytes"
        ));
    }
    let limit = MAX_LINE - CMDLINE_PREFIX.len();
    if cmdline.len() > limit {
        return Err(format!(
            "is {} bytes long; the guest accepts at most {limit}",
            cmdline.len()
        ));
    }
    Ok(())
}

/// A key file's text as it goes on the `pubkey:` line: its trailing newline
/// dropped (patchviasocket.py kept it, which put an empty line between
/// `pubkey:` and `cmdline:`), and only one OpenSSH public key, since the
/// guest refuses the whole message over a bad pubkey line.
pub fn pubkey_line(text: &str) -> std::result::Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.contains(['\n', '\r', '\0']) {
        return Err("holds more than one line; it must hold one OpenSSH public key".into());
    }
    if !is_openssh_public_key(key) {
        return Err("is not an OpenSSH public key (\"<type> <base64> [comment]\")".into());
    }
    Ok(key.to_owned())
}

/// The bytes on the wire: CloudStack's lines ([`encode_unframed`]) and the
/// end line with their length and digest.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = encode_unframed(message);
    let end = end_line(&bytes);
    bytes.extend_from_slice(end.as_bytes());
    bytes
}

/// CloudStack's format as patchviasocket.py sends it:
/// `pubkey:<key>\ncmdline:<text>\n`, or only the cmdline line without a key.
pub fn encode_unframed(message: &Message) -> Vec<u8> {
    let mut out = String::new();
    if let Some(key) = &message.pubkey {
        out.push_str(PUBKEY_PREFIX);
        out.push_str(key);
        out.push('\n');
    }
    out.push_str(CMDLINE_PREFIX);
    out.push_str(&message.cmdline);
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@host";

    #[test]
    fn wire_format_is_pubkey_then_cmdline() {
        let m = Message {
            cmdline: "a=1 b=2".into(),
            pubkey: Some(KEY.into()),
        };
        let body = format!("pubkey:{KEY}\ncmdline:a=1 b=2\n");
        assert_eq!(encode_unframed(&m), body.as_bytes());
        let framed = String::from_utf8(encode(&m)).unwrap();
        let (head, end) = framed.split_at(body.len());
        assert_eq!(head, body);
        assert_eq!(
            end,
            format!(
                "end:{} {}\n",
                body.len(),
                crate::wire::digest_hex(body.as_bytes())
            )
        );
        let m = Message { pubkey: None, ..m };
        assert_eq!(encode_unframed(&m), b"cmdline:a=1 b=2\n");
    }

    #[test]
    fn key_file_trailing_newline_is_dropped() {
        assert_eq!(pubkey_line(&format!("{KEY}\n")).unwrap(), KEY);
        assert_eq!(pubkey_line(&format!("{KEY}\r\n\n")).unwrap(), KEY);
    }

    #[test]
    fn key_file_with_two_lines_or_no_key_is_refused() {
        assert!(pubkey_line(&format!("{KEY}\n{KEY}\n"))
            .unwrap_err()
            .contains("more than one line"));
        assert!(pubkey_line("cmdline:evil=1\n")
            .unwrap_err()
            .contains("not an OpenSSH public key"));
        assert_eq!(pubkey_line(" \n").unwrap_err(), "is empty");
    }

    #[test]
    fn cmdline_the_guest_would_refuse_is_refused() {
        assert!(check_cmdline("a=1 b=2").is_ok());
        assert!(check_cmdline("   ").is_err());
        assert!(check_cmdline("a=1\ncmdline:b=2").is_err());
        assert!(check_cmdline("a=1\rb").is_err());
        assert!(check_cmdline("a\0b").is_err());
        // The guest stores a framed body as it is: prefixes inside go.
        assert!(check_cmdline("a=1 b=cmdline:2").is_ok());
        assert!(check_cmdline("a=pubkey:x").is_ok());
        let limit = MAX_LINE - CMDLINE_PREFIX.len();
        assert!(check_cmdline(&"x".repeat(limit)).is_ok());
        assert!(check_cmdline(&"x".repeat(limit + 1)).is_err());
    }

    proptest::proptest! {
        /// Whatever passes the host's checks, the guest's decoder reads back
        /// as the same message: the two sides agree on the format.
        #[test]
        fn what_is_sent_is_what_the_guest_decodes(
            cmdline in "([ -~]{0,20}(cmdline:|pubkey:|end:)?){1,10}",
            key in proptest::option::of(proptest::strategy::Just(KEY)),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            proptest::prop_assume!(check_cmdline(&cmdline).is_ok());
            let m = Message { cmdline, pubkey: key.map(str::to_owned) };
            let bytes = encode(&m);
            let mut d = crate::wire::Decoder::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                d.feed(&bytes[start..cut]).unwrap();
                start = cut;
            }
            proptest::prop_assert!(d.framed());
            proptest::prop_assert_eq!(d.finish(), Ok(Some(m)));
        }

        /// A send cut anywhere and followed by a whole resend, with no
        /// disconnect seen in between, gives exactly the resent message:
        /// the join is never stored. Unframed, the resend is the same
        /// message (what the guest can tell a cut copy by); framed, the end
        /// line finds it whatever came before.
        #[test]
        fn cut_send_then_resend_gives_the_resend(
            cmdline in "([a-z=. ]{0,12}(cmdline:|pubkey:)?){1,5}",
            key in proptest::option::of(proptest::strategy::Just(KEY)),
            framed in proptest::bool::ANY,
            cut_at in 0usize..400,
            first in "([a-z=. ]{0,12}(cmdline:|pubkey:)?){1,5}",
        ) {
            proptest::prop_assume!(check_cmdline(&cmdline).is_ok() && check_cmdline(&first).is_ok());
            let m = Message { cmdline, pubkey: key.map(str::to_owned) };
            let earlier = if framed {
                Message { cmdline: first, pubkey: m.pubkey.clone() }
            } else {
                m.clone()
            };
            let wire = |m: &Message| if framed { encode(m) } else { encode_unframed(m) };
            // Unframed, a cmdline whose own text reads as a cut copy and its
            // resend (`x=cmdline:x=1`: `cmdline:x=` is a prefix of
            // `cmdline:x=1`) is read that way even uncut: left out here.
            let uncut = |m: &Message| {
                let mut d = crate::wire::Decoder::new();
                d.feed(&encode_unframed(m)).and_then(|()| d.finish())
            };
            proptest::prop_assume!(framed || uncut(&m) == Ok(Some(m.clone())));
            let cut = wire(&earlier);
            let mut bytes = cut[..cut_at.min(cut.len())].to_vec();
            bytes.extend(wire(&m));
            let mut d = crate::wire::Decoder::new();
            d.feed(&bytes).unwrap();
            let got = d.finish().unwrap();
            if cut_at >= cut.len() && framed {
                // The earlier send arrived whole: it is the message.
                proptest::prop_assert_eq!(got, Some(earlier));
            } else {
                proptest::prop_assert_eq!(got, Some(m));
            }
        }
    }
}
