//! Helpers shared by the image, libvirt and libvirt_qga suites: the guest's
//! `@@ ` fact lines, the run-once cache that keeps a panic, and the package
//! and image they all boot.

// Each suite uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

    /// The rest of the first fact line that starts with `prefix`; each
    /// suite says in its own words that there was none.
    fn fact(&self, prefix: &str) -> &str;

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

/// The package and the image, built or taken from the image test's cache.
pub fn image() -> PathBuf {
    let image_work = repo().join("target/image");
    let out = Command::new(repo().join("tests/image/build-deb.sh"))
        .arg(&image_work)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run tests/image/build-deb.sh");
    assert!(out.status.success(), "building the package failed");
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = Command::new(repo().join("tests/image/cached-image.sh"))
        .arg(&deb)
        .arg(&image_work)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run tests/image/cached-image.sh");
    assert!(out.status.success(), "building the image failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
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

pub fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("bad base64") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
