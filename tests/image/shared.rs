//! Helpers shared by the image, libvirt and libvirt_qga suites: the guest's
//! `@@ ` fact lines, the run-once cache that keeps a panic, and the package
//! and image they all boot.

// Each suite uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a guest reported as `@@ ` lines (without the marker).
pub trait Facts {
    fn facts(&self) -> &[String];

    /// The rest of the first fact line that starts with `prefix`, if any.
    fn try_fact(&self, prefix: &str) -> Option<&str> {
        self.facts()
            .iter()
            .find_map(|f| f.strip_prefix(prefix))
            .map(str::trim)
    }

    /// Which boot reported these facts, named when one is missing.
    fn source(&self) -> String;

    /// The rest of the first fact line that starts with `prefix`.
    fn fact(&self, prefix: &str) -> &str {
        self.try_fact(prefix).unwrap_or_else(|| {
            panic!(
                "{}: the guest reported no {prefix:?} line; facts: {:#?}",
                self.source(),
                self.facts()
            )
        })
    }

    fn facts_with(&self, prefix: &str) -> Vec<&str> {
        self.facts()
            .iter()
            .filter_map(|f| f.strip_prefix(prefix))
            .collect()
    }

    /// `KEY=VALUE` from a `@@ unit NAME ...` line.
    fn unit(&self, unit: &str, key: &str) -> String {
        let line = self.fact(&format!("unit {unit} "));
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_owned()
    }

    /// How long the unit's ExecStart ran, from systemd's monotonic stamps.
    fn unit_runtime(&self, unit: &str) -> Duration {
        let us = |k| self.unit(unit, k).parse::<u64>().unwrap();
        Duration::from_micros(
            us("ExecMainExitTimestampMonotonic") - us("ExecMainStartTimestampMonotonic"),
        )
    }

    /// `unit_runtime` in seconds for a report, which must not fail on odd
    /// stamps: 0 where a stamp does not parse or the unit has not exited.
    fn report_runtime(&self, unit: &str) -> f64 {
        let us = |k| self.unit(unit, k).parse::<u64>().unwrap_or(0);
        us("ExecMainExitTimestampMonotonic").saturating_sub(us("ExecMainStartTimestampMonotonic"))
            as f64
            / 1e6
    }

    /// Mode, owner and content of a file from its `@@ file PATH ...` line;
    /// None when the guest reported it missing.
    fn file(&self, path: &str) -> Option<(String, String, Vec<u8>)> {
        let line = self.fact(&format!("file {path} "));
        if line == "missing" {
            return None;
        }
        let mut parts = line.split_whitespace();
        let mut next = || parts.next().unwrap_or_default();
        let (mode, owner) = (next().to_owned(), next().to_owned());
        Some((mode, owner, base64_decode(next())))
    }
}

/// Runs `f`; a panic becomes its error message.
pub fn caught<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Runs `f` once for all the tests. A failure is kept and reported by every
/// test that needs the result, instead of each one building or booting again.
pub fn once<T>(
    cell: &'static OnceLock<Result<T, String>>,
    what: &str,
    f: impl FnOnce() -> T + std::panic::UnwindSafe,
) -> &'static T {
    match cell.get_or_init(|| caught(f)) {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The image test's build directory, which also caches the image.
fn image_work() -> PathBuf {
    repo().join("target/image")
}

/// Runs tests/image/`script` with `args` (its stderr shown) and returns the
/// path it prints; `what` names the step when it fails.
fn built_by(script: &str, args: &[&Path], what: &str) -> PathBuf {
    let out = Command::new(repo().join("tests/image").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/image/{script}: {e}"));
    assert!(out.status.success(), "{what} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The package, built by tests/image/build-deb.sh.
pub fn build_deb() -> PathBuf {
    built_by("build-deb.sh", &[&image_work()], "building the package")
}

/// The image directory for this .deb, from the cache under target/image or
/// built now (tests/image/cached-image.sh).
pub fn image_for(deb: &Path) -> PathBuf {
    built_by(
        "cached-image.sh",
        &[deb, &image_work()],
        "building the image",
    )
}

/// The package and the image, built or taken from the image test's cache.
pub fn image() -> PathBuf {
    image_for(&build_deb())
}

pub fn copy_sparse(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cannot copy {}", from.display());
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// For qemu-ga's `buf-b64`, as `base64 -w 0` gives it.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = BASE64.iter().position(|&a| a == c).expect("bad base64") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A command's trimmed stdout when it succeeded, else its trimmed stderr
/// (virsh's reply or its error).
pub fn stdout_or_stderr(out: &Output) -> Result<String, String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// A cmdline of exactly `len` bytes as patch.sh writes it (`echo`'s
/// newline included), its name= (the hostname init.sh would set) and the
/// rest different for each `seed`.
pub fn cmdline(len: usize, seed: &str) -> String {
    let mut s = format!("template=domP type=secstorage name=s-{seed}-VM seed={seed}");
    let mut i = 0;
    while s.len() < len - 1 {
        s.push_str(&format!(" k{i}=v{i}"));
        i += 1;
    }
    s.truncate(len - 1);
    while s.ends_with(' ') || s.ends_with('=') {
        s.pop();
        s.push('x');
    }
    s.push('\n');
    assert_eq!(s.len(), len);
    s
}
