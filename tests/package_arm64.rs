//! The arm64 Debian package, cross-built on this machine from the same
//! debian/ as the amd64 one (tests/image/build-deb.sh --host-arch arm64):
//! lintian-clean, the same files as the amd64 package, and a static aarch64
//! binary in it. (The amd64 package's own checks, and booting it, are in
//! tests/image.rs.)
//!
//! Run: `cargo test --test package_arm64 -- --ignored` (no root needed;
//! dpkg-buildpackage, lintian, file and binutils-aarch64-linux-gnu must be
//! installed and the rustup targets of both architectures added, as
//! tests/install-deps.sh does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the package for `arch` into target/image (the cargo tree there
/// is shared with tests/image.rs) and returns the .deb.
fn build(arch: &str) -> PathBuf {
    let mut cmd = Command::new(repo().join("tests/image/build-deb.sh"));
    if arch != "amd64" {
        cmd.args(["--host-arch", arch]);
    }
    let out = cmd
        .arg(repo().join("target/image"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cannot run tests/image/build-deb.sh");
    assert!(out.status.success(), "building the {arch} package failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Both packages, built once for all the tests (amd64 first: it is this
/// machine's, so a failure there is not the cross build's).
fn packages() -> &'static (PathBuf, PathBuf) {
    static DEBS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DEBS.get_or_init(|| (build("amd64"), build("arm64")))
}

fn run(program: &str, args: &[&str], deb: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(deb)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `dpkg-deb -c` without sizes and dates: mode, owner, path (and link
/// target), one line per entry.
fn listing(deb: &Path) -> Vec<String> {
    let out = run("dpkg-deb", &["-c"], deb);
    assert!(out.status.success(), "dpkg-deb -c {}", deb.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5..].join(" "))
        })
        .collect()
}

#[test]
#[ignore = "builds the Debian packages; run by tests/run-all.sh"]
fn arm64_package_has_no_lintian_errors_or_warnings() {
    let (_, arm64) = packages();
    let out = run(
        "lintian",
        &["--fail-on", "error,warning", "--pedantic", "-I"],
        arm64,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lintian failed on {}:\n{text}{}",
        arm64.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{text}"
    );
}

#[test]
#[ignore = "builds the Debian packages; run by tests/run-all.sh"]
fn arm64_package_ships_the_same_files_as_the_amd64_package() {
    let (amd64, arm64) = packages();
    let (a, b) = (listing(amd64), listing(arm64));
    assert!(
        a.iter().any(|l| l.ends_with(" ./usr/sbin/vport-bootargs")),
        "no binary in the amd64 package: {a:#?}"
    );
    assert_eq!(a, b, "amd64 (left) and arm64 (right) packages differ");
}

#[test]
#[ignore = "builds the Debian packages; run by tests/run-all.sh"]
fn arm64_package_is_for_arm64_and_installs_a_static_aarch64_binary() {
    let (_, arm64) = packages();
    let arch = Command::new("dpkg-deb")
        .arg("-f")
        .arg(arm64)
        .arg("Architecture")
        .output()
        .expect("cannot run dpkg-deb");
    assert_eq!(String::from_utf8_lossy(&arch.stdout).trim(), "arm64");

    let dir = tempfile::tempdir().unwrap();
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(arm64)
        .arg(dir.path())
        .status()
        .expect("dpkg-deb -x");
    assert!(x.success(), "dpkg-deb -x {}", arm64.display());
    let bin = dir.path().join("usr/sbin/vport-bootargs");
    let file = Command::new("file")
        .arg("-b")
        .arg(&bin)
        .output()
        .expect("cannot run file");
    let what = String::from_utf8_lossy(&file.stdout);
    assert!(
        what.contains("ARM aarch64") && what.contains("statically linked"),
        "usr/sbin/vport-bootargs is not a static aarch64 binary: {what}"
    );
}
