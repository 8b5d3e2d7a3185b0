//! The QEMU guest agent's side of `send --guest-agent`, pure: the JSON
//! requests (as `virsh qemu-agent-command` takes them), the few answers we
//! read, base64 both ways, what the domain's XML says about the agent's
//! channel, and the text patch.sh writes. No processes, no files.
//!
//! qemu-ga's commands and answers (qapi/qga-commands.json): `guest-sync`
//! returns its `id`; `guest-file-open` a handle; `guest-file-write`
//! `{"count":N,"eof":false}`; `guest-file-read` `{"count":N,"buf-b64":..,
//! "eof":B}`. libvirt prints them as compact JSON, one line.

use crate::guest::cmdline::json_string;

/// The channel qemu-ga listens on, as it is named in the domain's XML.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// What patch.sh writes for `-c CMDLINE`: `echo $cmdline`, unquoted, so the
/// words joined by single spaces and a trailing newline. (The shell would
/// also expand a word that is a glob matching files in the agent's working
/// directory; CloudStack's cmdlines have none, and we never do.) None when
/// there are no words.
pub fn patch_sh_text(cmdline: &str) -> Option<String> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let mut text = words.join(" ");
    text.push('\n');
    Some(text)
}

pub fn ping() -> String {
    r#"{"execute":"guest-ping"}"#.into()
}

pub fn sync(id: u64) -> String {
    format!(r#"{{"execute":"guest-sync","arguments":{{"id":{id}}}}}"#)
}

pub fn file_open(path: &str, mode: &str) -> String {
    format!(
        r#"{{"execute":"guest-file-open","arguments":{{"path":{},"mode":{}}}}}"#,
        json_string(path),
        json_string(mode)
    )
}

pub fn file_write(handle: i64, bytes: &[u8]) -> String {
    format!(
        r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{}"}}}}"#,
        base64_encode(bytes)
    )
}

pub fn file_read(handle: i64, count: usize) -> String {
    format!(r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":{count}}}}}"#)
}

pub fn file_close(handle: i64) -> String {
    format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#)
}

/// The raw text of `"key":VALUE` in a flat JSON object (a number, `true`,
/// `false`, or a string without escapes, which is all qemu-ga's answers to
/// these commands hold): its first occurrence.
fn value_of<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let at = json.find(&quoted)? + quoted.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return Some(&s[..s.find('"')?]);
    }
    let end = rest.find([',', '}', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `{"return":N}` (guest-sync, guest-file-open): N.
pub fn return_int(answer: &str) -> Option<i64> {
    value_of(answer, "return")?.parse().ok()
}

/// `{"return":{"count":N,...}}` (guest-file-write): N.
pub fn written_count(answer: &str) -> Option<usize> {
    answer.contains("\"return\"").then_some(())?;
    value_of(answer, "count")?.parse().ok()
}

/// One guest-file-read answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub eof: bool,
}

pub fn read_chunk(answer: &str) -> Option<Chunk> {
    answer.contains("\"return\"").then_some(())?;
    let count: usize = value_of(answer, "count")?.parse().ok()?;
    let bytes = match value_of(answer, "buf-b64") {
        Some(b64) => base64_decode(b64)?,
        None => Vec::new(),
    };
    let eof = match value_of(answer, "eof")? {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    (bytes.len() == count).then_some(Chunk { bytes, eof })
}

/// The agent channel's state in `virsh dumpxml`'s output.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Channel {
    /// No `<channel>` whose target is `org.qemu.guest_agent.0`.
    Missing,
    /// libvirt has seen qemu-ga open its port (QEMU's VSERPORT_CHANGE).
    Connected,
    /// Present, not (yet) opened by qemu-ga (or no state known).
    Disconnected,
}

/// Finds the guest agent's channel in a domain's XML. A plain scan of the
/// `<target .../>` elements, not an XML parser: libvirt writes them on one
/// line, `<target type='virtio' name='org.qemu.guest_agent.0'
/// state='connected'/>`, its attributes in single or double quotes.
pub fn agent_channel(xml: &str) -> Channel {
    let mut found = Channel::Missing;
    for part in xml.split("<target ").skip(1) {
        let element = &part[..part.find('>').unwrap_or(part.len())];
        if attribute(element, "type") != Some("virtio")
            || attribute(element, "name") != Some(AGENT_CHANNEL)
        {
            continue;
        }
        if attribute(element, "state") == Some("connected") {
            return Channel::Connected;
        }
        found = Channel::Disconnected;
    }
    found
}

fn attribute<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = format!(" {element}").find(&key) {
            // `at` counts the space put in front.
            let rest = &element[at + key.len() - 1..];
            return rest.find(quote).map(|end| &rest[..end]);
        }
    }
    None
}

/// One line of `virsh event --event agent-lifecycle`: true when it says the
/// agent connected (`event 'agent-lifecycle' for domain 'VM': state:
/// 'connected' reason: 'channel event'`).
pub fn is_agent_connected_event(line: &str) -> bool {
    line.contains("'agent-lifecycle'") && line.contains("state: 'connected'")
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as `base64 -w 0` and qemu-ga's `buf-b64`.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64_encode`]; None for anything that is not
/// padded standard base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (q, quad) in text.chunks(4).enumerate() {
        let last = q == text.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n = n << 6 | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sh_text_is_echo_of_the_unquoted_words() {
        assert_eq!(
            patch_sh_text("  template=domP \t type=secstorage\nname=s-1-VM ").as_deref(),
            Some("template=domP type=secstorage name=s-1-VM\n")
        );
        assert_eq!(patch_sh_text(" \n\t"), None);
    }

    #[test]
    fn requests_are_the_json_qemu_ga_takes() {
        assert_eq!(
            sync(1234567890),
            r#"{"execute":"guest-sync","arguments":{"id":1234567890}}"#
        );
        assert_eq!(
            file_open("/var/cache/cloud/cmdline", "w+"),
            r#"{"execute":"guest-file-open","arguments":{"path":"/var/cache/cloud/cmdline","mode":"w+"}}"#
        );
        assert_eq!(
            file_write(1000, b"a=b\n"),
            r#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"YT1iCg=="}}"#
        );
        assert_eq!(
            file_read(7, 65536),
            r#"{"execute":"guest-file-read","arguments":{"handle":7,"count":65536}}"#
        );
        assert_eq!(
            file_close(7),
            r#"{"execute":"guest-file-close","arguments":{"handle":7}}"#
        );
        assert_eq!(ping(), r#"{"execute":"guest-ping"}"#);
    }

    #[test]
    fn a_path_is_escaped_as_a_json_string() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }

    #[test]
    fn answers_are_read_as_libvirt_prints_them() {
        assert_eq!(return_int(r#"{"return":1234567890}"#), Some(1234567890));
        assert_eq!(return_int(r#"{ "return" : 42 }"#), Some(42));
        assert_eq!(return_int(r#"{"return":{}}"#), None);
        assert_eq!(return_int("error: no"), None);
        assert_eq!(
            written_count(r#"{"return":{"count":9000,"eof":false}}"#),
            Some(9000)
        );
        assert_eq!(written_count(r#"{"count":9}"#), None);
        assert_eq!(
            read_chunk(r#"{"return":{"count":4,"buf-b64":"YT1iCg==","eof":true}}"#),
            Some(Chunk {
                bytes: b"a=b\n".to_vec(),
                eof: true
            })
        );
        assert_eq!(
            read_chunk(r#"{"return":{"count":0,"buf-b64":"","eof":true}}"#),
            Some(Chunk {
                bytes: vec![],
                eof: true
            })
        );
        // A count that does not match the bytes is no answer.
        assert_eq!(
            read_chunk(r#"{"return":{"count":5,"buf-b64":"YT1iCg==","eof":true}}"#),
            None
        );
        assert_eq!(read_chunk(r#"{"return":{"count":0,"eof":maybe}}"#), None);
    }

    #[test]
    fn the_agent_channel_and_its_state_are_read_from_the_domain_xml() {
        let connected = "<channel type='unix'>\n  <source mode='bind' path='/x/s.org.qemu.guest_agent.0'/>\n  <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>\n  <alias name='channel0'/>\n</channel>";
        assert_eq!(agent_channel(connected), Channel::Connected);
        let disconnected = connected.replace("state='connected'", "state='disconnected'");
        assert_eq!(agent_channel(&disconnected), Channel::Disconnected);
        let unknown = connected.replace(" state='connected'", "");
        assert_eq!(agent_channel(&unknown), Channel::Disconnected);
        let double =
            "<target type=\"virtio\" name=\"org.qemu.guest_agent.0\" state=\"connected\"/>";
        assert_eq!(agent_channel(double), Channel::Connected);
        // Only the vport channel, and a serial console's target: no agent.
        let legacy = "<target type='virtio' name='s-1-VM.vport' state='connected'/><target type='isa-serial' port='0'>";
        assert_eq!(agent_channel(legacy), Channel::Missing);
        // A disk's <target dev=...> is no channel either.
        assert_eq!(
            agent_channel("<target dev='vda' bus='virtio'/>"),
            Channel::Missing
        );
    }

    #[test]
    fn agent_lifecycle_lines_are_told_apart() {
        assert!(is_agent_connected_event(
            "event 'agent-lifecycle' for domain 's-1-VM': state: 'connected' reason: 'channel event'"
        ));
        assert!(!is_agent_connected_event(
            "event 'agent-lifecycle' for domain 's-1-VM': state: 'disconnected' reason: 'domain started'"
        ));
        assert!(!is_agent_connected_event("events received: 1"));
    }

    #[test]
    fn base64_round_trips_and_matches_coreutils() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zg= "] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }
}
