//! The cmdline's `key=value` pairs and the ways `get` and `show` render
//! them. Pure: text in, text out.
//!
//! The cmdline is one line of words separated by white space. A word is a
//! pair when it has an `=`: the key is what comes before the first `=`, the
//! value everything after it (values can hold `=`, e.g. base64 padding).
//! Words without `=` are not pairs and are skipped. When a key comes twice,
//! the later value wins, as in CloudStack's own consumers.

use std::fmt::Write as _;
use std::io::{self, Write};

/// The pairs in order of appearance, duplicates included.
pub fn pairs(cmdline: &str) -> Vec<(&str, &str)> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

/// The value of `key`; the last one wins.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    pairs(cmdline)
        .into_iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The pairs with later duplicates replacing earlier ones, each key kept at
/// the place it first appeared.
pub fn unique_pairs(cmdline: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (k, v) in pairs(cmdline) {
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

/// A shell variable name for `key`: every character other than an ASCII
/// letter, digit or `_` becomes `_`, and a name that would start with a
/// digit gets a leading `_`. So `public.network.device` is
/// `public_network_device` and `2fa` is `_2fa`.
pub fn shell_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// `value` in single quotes for POSIX sh: nothing inside single quotes is
/// special, and a `'` is written as `'\''`.
// Kept over shlex: shlex::try_quote leaves plain words bare and picks its
// own quoting, while `show --format env` always single-quotes (documented).
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `show --format env`: one `NAME='value'` line per pair, later keys
/// winning, so that `. <(vport-bootargs show --format env)` sets them all
/// and runs nothing.
pub fn write_env(out: &mut impl Write, cmdline: &str) -> io::Result<()> {
    for (k, v) in unique_pairs(cmdline) {
        writeln!(out, "{}={}", shell_name(k), shell_quote(v))?;
    }
    Ok(())
}

/// `show --format json`: one object, keys as they are, later keys winning.
pub fn write_json(out: &mut impl Write, cmdline: &str) -> io::Result<()> {
    let body: Vec<String> = unique_pairs(cmdline)
        .into_iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    writeln!(out, "{{{}}}", body.join(","))
}

/// A JSON string literal (RFC 8259 section 7).
// Kept over serde_json, which would cost only 4 KB of the static binary but
// be two more runtime dependencies (serde too) for one escape loop; the
// tests and the fuzz target `render` check this against it.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMDLINE: &str = "template=domP type=secstorage name=s-1-VM \
        public.network.device=eth2 authorized_key=QUJD== flag type=consoleproxy =x";

    #[test]
    fn pairs_split_at_first_equals() {
        assert_eq!(get(CMDLINE, "authorized_key"), Some("QUJD=="));
        assert_eq!(get(CMDLINE, "public.network.device"), Some("eth2"));
    }

    #[test]
    fn last_key_wins_and_words_without_equals_are_skipped() {
        assert_eq!(get(CMDLINE, "type"), Some("consoleproxy"));
        assert_eq!(get(CMDLINE, "flag"), None);
        assert_eq!(get(CMDLINE, ""), None);
        let keys: Vec<&str> = unique_pairs(CMDLINE).iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "template",
                "type",
                "name",
                "public.network.device",
                "authorized_key"
            ]
        );
    }

    #[test]
    fn env_names_are_shell_identifiers() {
        assert_eq!(shell_name("public.network.device"), "public_network_device");
        assert_eq!(shell_name("2fa"), "_2fa");
        assert_eq!(shell_name("a-b$c"), "a_b_c");
        assert_eq!(shell_name("clé"), "cl_");
    }

    #[test]
    fn env_output_is_exact() {
        let mut out = Vec::new();
        write_env(&mut out, "a=1 b.c=it's d=$(x) a=2").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a='2'\nb_c='it'\\''s'\nd='$(x)'\n"
        );
    }

    #[test]
    fn json_output_is_exact_and_parses() {
        let mut out = Vec::new();
        write_json(&mut out, "a=\"q\" b=\\ c=\u{1}").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"a\":\"\\\"q\\\"\",\"b\":\"\\\\\",\"c\":\"\\u0001\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["a"], "\"q\"");
    }
}
