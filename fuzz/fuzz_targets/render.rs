//! `show --format env` and `show --format json` against arbitrary text.
//! What must hold: the env output has one `NAME='...'` line per unique
//! pair except those it reports as left out (a name the shell uses itself,
//! a value with a NUL byte), NAME a shell identifier that is not a shell's
//! own name, and the quoted text, read back by POSIX single-quote rules, the
//! exact value; no NUL byte is written; the JSON output parses and holds
//! exactly the unique pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vport_bootargs::guest::cmdline::{
    env_name, is_shell_name, unique_pairs, write_env, write_json,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let unique = unique_pairs(text);

    let mut env = Vec::new();
    let skipped = write_env(&mut env, text, "").unwrap();
    assert!(!env.contains(&0));
    let env = String::from_utf8(env).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    let kept: Vec<(String, &str)> = unique
        .iter()
        .filter(|(_, v)| !v.contains('\0'))
        .filter_map(|(k, v)| Some((env_name(k, "")?, *v)))
        .collect();
    assert_eq!(lines.len(), kept.len());
    assert_eq!(skipped.len(), unique.len() - kept.len());
    assert!(env.is_empty() || env.ends_with('\n'));
    for (line, (expected, v)) in lines.iter().zip(&kept) {
        let (name, quoted) = line.split_once('=').unwrap();
        assert_eq!(name, expected);
        assert!(!is_shell_name(name));
        assert!(name.bytes().any(|b| b.is_ascii_lowercase()));
        assert!(name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(sh_unquote(quoted).as_deref(), Some(*v), "{line:?}");
    }

    let mut json = Vec::new();
    write_json(&mut json, text).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let object = parsed.as_object().unwrap();
    assert_eq!(object.len(), unique.len());
    for (k, v) in &unique {
        assert_eq!(object[*k].as_str(), Some(*v));
    }
});

/// Reads a word made only of '...' strings and \' escapes, as sh does;
/// None for anything else (which sh could expand or run).
fn sh_unquote(word: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = word;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("\\'") {
            out.push('\'');
            rest = r;
        } else {
            let r = rest.strip_prefix('\'')?;
            let end = r.find('\'')?;
            out.push_str(&r[..end]);
            rest = &r[end + 1..];
        }
    }
    Some(out)
}
