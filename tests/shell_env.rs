//! `show --format env` is meant to be sourced by the system VM's shell
//! scripts. Sourced by /bin/sh, dash and bash, its output must set exactly
//! the stored pairs, byte for byte, and never run anything, whatever the
//! values hold: quotes, `$`, backticks, `;`, `=`, globs, control characters,
//! non-ASCII. (A value cannot hold ASCII white space: the cmdline is split
//! on it. Non-ASCII spaces such as U+00A0 and the vertical tab are not ASCII
//! white space to the splitter, so they can, and are tried.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_vport-bootargs");
/// Each shell as a command line: `bash --posix` aborts a sourced script on
/// an assignment to a read-only variable (UID, EUID, PPID...), so it is
/// tried as well as plain bash.
const SHELLS: &[&[&str]] = &[&["/bin/sh"], &["dash"], &["bash"], &["bash", "--posix"]];
/// Replaced by the path of a file that must never be created.
const MARK: &str = "@MARK@";

/// Command substitutions and separators that would create MARK if a shell
/// ran them; `${IFS}` stands in for the space a value cannot hold.
const INJECTIONS: &[&str] = &[
    "$(touch${IFS}@MARK@)",
    "`touch${IFS}@MARK@`",
    ";touch${IFS}@MARK@;",
    "';touch${IFS}@MARK@;'",
    "\"$(touch${IFS}@MARK@)\"",
    "'\\''$(touch${IFS}@MARK@)",
    "&&touch${IFS}@MARK@",
    "|touch${IFS}@MARK@",
    "$((0))${x:=$(touch${IFS}@MARK@)}",
    "\\$(touch${IFS}@MARK@)",
];

/// What the shells print for each variable after sourcing `env_file`: the
/// values, each followed by a NUL, in the order of `names`.
fn sourced(shell: &[&str], env_file: &Path, names: &[String]) -> Vec<u8> {
    let mut script = String::from(". \"$1\" || exit 99\nprintf '%s\\0'");
    for name in names {
        script += &format!(" \"${{{name}}}\"");
    }
    let out = Command::new(shell[0])
        .args(&shell[1..])
        .args(["-c", &script, "sh"])
        .arg(env_file)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shell:?}: {e} (apt-get install dash)"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{shell:?} sourcing {env_file:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Stores `cmdline` (as written to the cache file) under `dir`, renders it
/// with `show --format env` and returns the file holding the output.
fn rendered_env(dir: &Path, cmdline: &str) -> PathBuf {
    let cache = dir.join("cache");
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join("cmdline"), cmdline).unwrap();
    let show = Command::new(BIN)
        .args(["show", "--format", "env", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(show.status.success(), "{show:?}");
    let env_file = dir.join("env.sh");
    fs::write(&env_file, &show.stdout).unwrap();
    env_file
}

/// Stores `cmdline`, renders it with `show --format env`, sources that in
/// every shell and checks each variable holds `expected` exactly and that
/// nothing ran.
fn check(cmdline: &str, expected: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("ran");
    let mark = mark.to_str().unwrap();
    assert!(!mark.contains(|c: char| c.is_ascii_whitespace()));
    let cmdline = cmdline.replace(MARK, mark);
    let env_file = rendered_env(dir.path(), &format!("{cmdline}\n"));

    let names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    let mut want = Vec::new();
    for (_, v) in expected {
        want.extend_from_slice(v.replace(MARK, mark).as_bytes());
        want.push(0);
    }
    for shell in SHELLS {
        let got = sourced(shell, &env_file, &names);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{shell:?} on:\n{}",
            String::from_utf8_lossy(&fs::read(&env_file).unwrap())
        );
        assert!(
            !Path::new(mark).exists(),
            "{shell:?} ran a command from a value"
        );
    }
}

/// The variables the shells should end up with, modelled independently of
/// the code under test: the last value of a key wins; names are the key
/// with every character but `[A-Za-z0-9_]` turned into `_` (keys here start
/// with a letter); when two keys map to one name, the line written later
/// wins, and lines are written in order of each key's first appearance.
fn model(pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => keys.push((k.clone(), v.clone())),
        }
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    for (k, v) in keys {
        let name: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        match vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = v,
            None => vars.push((name, v)),
        }
    }
    vars
}

fn value_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9]{1,4}",
        4 => proptest::sample::select(vec![
            "'", "\"", "$", "`", "\\", ";", "=", "&", "|", "<", ">", "(", ")", "{", "}",
            "[", "]", "*", "?", "~", "#", "!", "%", "^", ",", ":", "-", "'\\''", "$IFS",
            "${PATH}", "$1", "$@", "$$", "\\n", "é", "ü", "中文", "🙂", "\u{a0}", "\u{3000}",
            "\u{1}", "\u{1b}[31m", "\u{7f}", "\u{b}", "\u{2028}",
        ])
        .prop_map(str::to_owned),
        2 => proptest::sample::select(INJECTIONS.to_vec()).prop_map(str::to_owned),
        1 => any::<char>()
            .prop_filter("no ASCII white space or NUL", |c| {
                !c.is_ascii_whitespace() && *c != '\0'
            })
            .prop_map(String::from),
    ]
}

fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(value_piece(), 0..6).prop_map(|p| p.concat())
}

/// Lower-case first letters keep clear of the shells' own variables (PATH,
/// IFS, HOME...); `.`, `-` and `é` exercise the name mapping and its
/// collisions (`a.b` and `a-b` are both `a_b`).
fn key() -> impl Strategy<Value = String> {
    "[a-e][a-c0-9._é-]{0,3}"
}

proptest! {
    #[test]
    fn sourced_env_reproduces_the_pairs_and_runs_nothing(
        pairs in proptest::collection::vec((key(), value()), 1..8),
        junk in proptest::collection::vec("[a-z]{1,5}", 0..3),
        tabs in any::<bool>(),
    ) {
        let sep = if tabs { " \t " } else { " " };
        let mut words: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // Words without `=` are not pairs and set nothing.
        words.extend(junk);
        check(&words.join(sep), &model(&pairs));
    }
}

#[test]
fn every_injection_is_kept_as_text() {
    let pairs: Vec<(String, String)> = INJECTIONS
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("v{i}"), v.to_string()))
        .collect();
    let words: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    check(&words.join(" "), &model(&pairs));
}

#[test]
fn cloudstack_cmdline_sources_as_expected() {
    let cmdline = "template=domP type=secstorage host=10.1.1.1 port=8250 name=s-1-VM \
        public.network.device=eth2 authorized_key=QUJDRA== eth0ip=169.254.3.4";
    let expected: Vec<(String, String)> = [
        ("template", "domP"),
        ("type", "secstorage"),
        ("host", "10.1.1.1"),
        ("port", "8250"),
        ("name", "s-1-VM"),
        ("public_network_device", "eth2"),
        ("authorized_key", "QUJDRA=="),
        ("eth0ip", "169.254.3.4"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    check(cmdline, &expected);
}

/// Keys that are names the shell itself uses. Sourcing the output must set
/// the data variables and nothing else: not PATH (a planted `cat` would then
/// run), not IFS, not the read-only UID that aborts `bash --posix`.
const SHELL_KEYS: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "HOME",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "OPTIND",
    "OPTARG",
    "SHELLOPTS",
    "BASHOPTS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "UID",
    "EUID",
    "PPID",
    "BASH_VERSINFO",
    "BASH_XTRACEFD",
    "GLOBIGNORE",
    "POSIXLY_CORRECT",
    "PWD",
    "_",
    "histchars",
    "auto_resume",
];

/// What the shell's own bookkeeping changes between two `set` listings.
const DYNAMIC: &[&str] = &[
    "_",
    "LINENO",
    "BASH_LINENO",
    "BASH_SOURCE",
    "BASH_ARGC",
    "BASH_ARGV",
    "FUNCNAME",
    "PIPESTATUS",
    "BASH_COMMAND",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "EPOCHREALTIME",
    "EPOCHSECONDS",
];

/// `NAME=...` lines of a `set` listing, by name.
fn variables(listing: &str) -> std::collections::BTreeMap<String, String> {
    listing
        .lines()
        .filter_map(|l| {
            let (name, _) = l.split_once('=')?;
            let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ok.then(|| (name.to_owned(), l.to_owned()))
        })
        .collect()
}

#[test]
fn sourcing_sets_only_the_data_variables_whatever_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("ran");
    let planted = dir.path().join("bin");
    fs::create_dir(&planted).unwrap();
    let cat = planted.join("cat");
    fs::write(
        &cat,
        format!("#!/bin/sh\n/usr/bin/touch {}\n", mark.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&cat, fs::Permissions::from_mode(0o755)).unwrap();

    let mut words: Vec<String> = SHELL_KEYS
        .iter()
        .map(|k| match *k {
            "PATH" | "CDPATH" | "HOME" => format!("{k}={}", planted.display()),
            "IFS" => "IFS=/".into(),
            _ => format!("{k}=1"),
        })
        .collect();
    words.extend(
        [
            "type=secstorage",
            "public.network.device=eth2",
            "path=lower",
            "Path=mixed",
        ]
        .map(String::from),
    );
    let env_file = rendered_env(dir.path(), &(words.join(" ") + "\n"));
    let expected = ["type", "public_network_device", "path", "Path"];

    // `cat` is looked up in PATH after sourcing: the planted one would run.
    let script = r#"set > "$2"; . "$1" || exit 99; cat /dev/null; set > "$3""#;
    for shell in SHELLS {
        let (before, after) = (dir.path().join("before"), dir.path().join("after"));
        let out = Command::new(shell[0])
            .args(&shell[1..])
            .args(["-c", script, "sh"])
            .args([&env_file, &before, &after])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{shell:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!mark.exists(), "{shell:?} ran the planted cat");
        let before = variables(&fs::read_to_string(&before).unwrap());
        let after = variables(&fs::read_to_string(&after).unwrap());
        let mut changed: Vec<&str> = after
            .iter()
            .filter(|(n, line)| before.get(*n) != Some(*line) && !DYNAMIC.contains(&n.as_str()))
            .map(|(n, _)| n.as_str())
            .collect();
        changed.sort();
        let mut want = expected.to_vec();
        want.sort();
        assert_eq!(changed, want, "{shell:?}");
    }
}
