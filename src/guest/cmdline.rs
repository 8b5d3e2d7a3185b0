//! The cmdline's `key=value` pairs and the ways `get` and `show` render
//! them. Pure: text in, text out.
//!
//! The cmdline is one line of words separated by white space. A word is a
//! pair when it has an `=`: the key is what comes before the first `=`, the
//! value everything after it (values can hold `=`, e.g. base64 padding).
//! Words without `=` are not pairs and are skipped. When a key comes twice,
//! the later value wins, as in CloudStack's own consumers.

use std::collections::BTreeMap;
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
    // Each key's place in `out`: one pass, not a search per pair (a
    // million pairs must not take minutes). A BTreeMap, not a HashMap: no
    // SipHash and no random keys in the static binary (1.9 KB).
    let mut out: Vec<(&str, &str)> = Vec::new();
    let mut place: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, v) in pairs(cmdline) {
        match place.get(k) {
            Some(&i) => out[i].1 = v,
            None => {
                place.insert(k, out.len());
                out.push((k, v));
            }
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

/// Lower-case names the shell gives a meaning to anyway (bash's history
/// and job control). Every other name with a lower-case letter is free:
/// POSIX leaves those to applications (XBD 8.1), and dash, bash and
/// `bash --posix` use none.
const SHELL_LOWERCASE_NAMES: &[&str] = &["histchars", "auto_resume"];

/// Whether the shell may use `name` itself: a name without a lower-case
/// letter (PATH, IFS, ENV, BASH_ENV, CDPATH, HOME, PS1-PS4, OPTIND, OPTARG,
/// SHELLOPTS, LD_PRELOAD, the read-only UID, EUID, PPID, and whatever a
/// shell adds next, all upper-case), or one of [`SHELL_LOWERCASE_NAMES`].
/// Setting such a name changes what the sourcing script does, or aborts it
/// (a read-only name in `bash --posix`).
pub fn is_shell_name(name: &str) -> bool {
    !name.bytes().any(|b| b.is_ascii_lowercase()) || SHELL_LOWERCASE_NAMES.contains(&name)
}

/// A `--prefix` for env names: a shell identifier with a lower-case
/// letter, so that every name it starts is an application's name.
pub fn check_env_prefix(prefix: &str) -> std::result::Result<(), String> {
    let identifier = prefix.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier || !prefix.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "--prefix {prefix:?}: must be a shell name ([A-Za-z_][A-Za-z0-9_]*) with a lower-case letter, e.g. cs_"
        ));
    }
    Ok(())
}

/// The variable `show --format env` sets for `key`: `prefix` followed by
/// [`shell_name`]; None when that is a name the shell uses itself
/// ([`is_shell_name`]).
pub fn env_name(key: &str, prefix: &str) -> Option<String> {
    let name = format!("{prefix}{}", shell_name(key));
    (!is_shell_name(&name)).then_some(name)
}

/// A pair `show --format env` left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub why: &'static str,
}

/// `show --format env`: one `NAME='value'` line per pair, later keys
/// winning, so that `. <(vport-bootargs show --format env)` sets them and
/// runs nothing. Left out, and returned: pairs whose name the shell uses
/// itself (see [`env_name`]; `prefix` keeps them), and values holding a
/// NUL byte, which no shell variable can hold.
pub fn write_env(out: &mut impl Write, cmdline: &str, prefix: &str) -> io::Result<Vec<Skipped>> {
    let mut skipped = Vec::new();
    for (k, v) in unique_pairs(cmdline) {
        let skip = |why| Skipped {
            key: k.to_owned(),
            why,
        };
        match env_name(k, prefix) {
            _ if v.contains('\0') => skipped.push(skip("its value holds a NUL byte")),
            None => skipped.push(skip("the shell uses that name itself")),
            Some(name) => writeln!(out, "{name}={}", shell_quote(v))?,
        }
    }
    Ok(skipped)
}

/// `show --format json`: one object, keys as they are, later keys winning.
pub fn write_json(out: &mut impl Write, cmdline: &str) -> io::Result<()> {
    let mut body = String::from("{");
    for (i, (k, v)) in unique_pairs(cmdline).into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body += &json_string(k);
        body.push(':');
        body += &json_string(v);
    }
    body.push('}');
    writeln!(out, "{body}")
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
        let skipped = write_env(&mut out, "a=1 b.c=it's d=$(x) a=2", "").unwrap();
        assert!(skipped.is_empty());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a='2'\nb_c='it'\\''s'\nd='$(x)'\n"
        );
    }

    #[test]
    fn names_the_shell_uses_are_left_out_unless_prefixed() {
        let cmdline = "PATH=/evil IFS=x LD_PRELOAD=/x.so UID=0 PS1=x _=x histchars=x \
            Path=ok useHttps=1 type=a";
        let mut out = Vec::new();
        let skipped = write_env(&mut out, cmdline, "").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Path='ok'\nuseHttps='1'\ntype='a'\n"
        );
        let keys: Vec<&str> = skipped.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            ["PATH", "IFS", "LD_PRELOAD", "UID", "PS1", "_", "histchars"]
        );
        let mut out = Vec::new();
        let skipped = write_env(&mut out, "PATH=/evil type=a", "cs_").unwrap();
        assert!(skipped.is_empty());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "cs_PATH='/evil'\ncs_type='a'\n"
        );
        for bad in ["", "CS_", "1a", "a-b", "a b"] {
            assert!(check_env_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_env_prefix("cs_").is_ok());
    }

    #[test]
    fn nul_in_a_value_never_reaches_the_env_output() {
        let mut out = Vec::new();
        let skipped = write_env(&mut out, "a=x\0y b=1", "").unwrap();
        assert_eq!(out, b"b='1'\n");
        assert_eq!(skipped[0].key, "a");
    }

    #[test]
    fn many_pairs_merge_in_one_pass() {
        // Quadratic merging took minutes here; linear takes well under a
        // second even unoptimised. Not a timed assert: a quadratic merge
        // simply does not finish in any CI budget.
        let cmdline: String = (0..200_000).map(|i| format!("k{i}=v ")).collect();
        let unique = unique_pairs(&cmdline);
        assert_eq!(unique.len(), 200_000);
        assert_eq!(unique[199_999], ("k199999", "v"));
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
