//! CloudStack's wire format, both directions; pure, no ports, sockets or
//! files.
//!
//! Host to guest: lines `pubkey:<key>` and `cmdline:<text>`, each ended by
//! `\n` or `\r\n` (patchviasocket.py sends `pubkey:<key>\ncmdline:<text>\n`
//! and closes), and from this crate's sender one more line,
//! `end:<N> <sha256>` ([`end`]). [`decode`] reads them in the guest,
//! [`encode`] writes them on the host. Guest to host: `ack:<sha256>` and
//! `nak:<reason>` ([`ack`]).

pub mod ack;
pub mod decode;
pub mod encode;
pub mod end;

pub use ack::{ack_line, digest_hex, nak_line, Reply, ReplyScanner};
pub use decode::{Decoder, Line, ProtocolError};
pub use encode::{check_cmdline, encode, encode_unframed, pubkey_line};
pub use end::{end_line, END_PREFIX};

/// Longest line accepted, without its line ending.
pub const MAX_LINE: usize = 64 * 1024;
/// Largest message accepted, line endings included.
pub const MAX_MESSAGE: usize = 256 * 1024;

pub const CMDLINE_PREFIX: &str = "cmdline:";
pub const PUBKEY_PREFIX: &str = "pubkey:";
pub const ACK_PREFIX: &str = "ack:";
pub const NAK_PREFIX: &str = "nak:";

/// A whole, valid message from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cmdline: String,
    pub pubkey: Option<String>,
}

// A shape check, not ssh-key: decoding the blob would add base64 and key
// parsing to the binary, and authorized_keys needs only this shape.
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@host";

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
}
