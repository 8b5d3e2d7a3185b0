//! Hostile and broken conditions around `fetch`, end to end through the
//! binary against a fake tree (sysfs attributes as files, the port a FIFO):
//! refused host data, a host cut off mid-line, planted symlinks, a cache
//! path that is not a directory, read-only and full filesystems, SIGKILL
//! while storing.
//!
//! The port is offered the way a connected host does it: the test opens the
//! FIFO read-write and writes the message before `fetch` starts, so the data
//! waits in the pipe and no writer has to race the reader; `fetch` then
//! completes on `--settle` quiet. Tests that need a disconnect connect
//! separately, once fetch has logged that it holds the port.
//!
//! The mount tests (read-only, full) need root: they run the helper inside
//! `unshare -m` so nothing is mounted outside the test, and are `#[ignore]`d
//! so that plain `cargo test` needs no root; tests/run-all.sh runs them. The
//! crash tests kill fetch at random moments and, with strace's fault
//! injection, on entering each syscall in turn; strace also shows the
//! fsync/rename order that a kill cannot. Without strace those tests fail
//! (apt-get install strace).

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

const TMP_SUFFIX: &str = ".vport-bootargs.tmp";

fn assert_no_temp_files(dirs: &[&Path]) {
    for dir in dirs {
        let temps: Vec<String> = listing(dir)
            .into_iter()
            .filter(|n| n.ends_with(TMP_SUFFIX))
            .collect();
        assert!(temps.is_empty(), "temp files left in {dir:?}: {temps:?}");
    }
}

fn require_root() {
    // /proc/self belongs to the effective uid.
    let euid = fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        euid, 0,
        "this test mounts filesystems and must run as root (tests/run-all.sh does)"
    );
}

// ---------------------------------------------------------------------------
// Refused host data: exit 65, one error line naming the port and the problem,
// nothing stored (fresh boot) or the old files kept as they were (reboot).

/// Offers `bytes` on a fresh tree and on one holding old parameters; both
/// runs must exit 65 with an error line containing `problem`, store nothing
/// new, create nothing and leave no temp file.
fn assert_refused(bytes: &[u8], problem: &str) {
    for reboot in [false, true] {
        let t = Tree::with_port();
        if reboot {
            t.store_old();
        }
        let before = listing(t.root());
        let _host = t.offer("vport0p1", bytes);
        let out = t.fetch(&[]).output().unwrap();
        assert_eq!(code(&out), 65, "reboot={reboot}\n{}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains(PORT) && line.contains(problem),
            "error should name the port and say {problem:?}: {line}"
        );
        let expected = if reboot {
            old_targets()
        } else {
            [None, None, None]
        };
        assert_eq!(t.targets(), expected, "reboot={reboot}");
        assert_no_temp_files(&[&t.cache(), &t.ssh()]);
        assert_eq!(
            listing(t.root()),
            before,
            "reboot={reboot}: nothing written"
        );
    }
}

#[test]
fn oversized_line_exits_65_and_stores_nothing() {
    let line = format!("cmdline:a={}\n", "x".repeat(64 * 1024));
    assert_refused(line.as_bytes(), "line 1 is longer than 65536 bytes");
}

#[test]
fn endless_line_without_newline_exits_65_and_stores_nothing() {
    // No newline ever: refused once the line passes the limit, not buffered.
    assert_refused(&vec![b'x'; 200 * 1024], "line 1 is longer than 65536 bytes");
}

#[test]
fn oversized_message_exits_65_and_stores_nothing() {
    // Lines within the limit, 300 KiB in all; the cmdline comes last.
    let mut m = format!("x:{}\n", "y".repeat(1000)).repeat(300);
    m += "cmdline:a=1\n";
    assert_refused(m.as_bytes(), "message is larger than 262144 bytes");
    // Five lines of 60 KiB: over the limit with no cmdline line at all.
    let m = format!("x:{}\n", "y".repeat(60 * 1024)).repeat(5);
    assert_refused(m.as_bytes(), "message is larger than 262144 bytes");
}

#[test]
fn nul_byte_exits_65_and_stores_nothing() {
    assert_refused(b"cmdline:a=1\0b=2\n", "line 1 contains a NUL byte");
}

#[test]
fn invalid_utf8_exits_65_and_stores_nothing() {
    assert_refused(b"\ncmdline:a=\xff\xfe\n", "line 2 is not valid UTF-8");
    assert_refused(
        b"pubkey:ssh-rsa AAAA\xff\ncmdline:a=b\n",
        "line 1 is not valid UTF-8",
    );
}

#[test]
fn bare_carriage_return_exits_65_and_stores_nothing() {
    assert_refused(
        b"cmdline:a=1\rb=2\n",
        "line 1 contains a carriage return not followed by a newline",
    );
}

#[test]
fn empty_cmdline_exits_65_and_stores_nothing() {
    assert_refused(b"cmdline: \t \n", "line 1: the cmdline is empty");
}

#[test]
fn pubkey_that_is_not_an_openssh_key_exits_65_and_stores_nothing() {
    // Refused as a whole: the cmdline after it is not stored either.
    let m = message(CMDLINE_NEW, Some("$(reboot) not a key"));
    assert_refused(
        m.as_bytes(),
        "line 1: the pubkey is not an OpenSSH public key",
    );
}

// ---------------------------------------------------------------------------
// Accepted but odd host data.

#[test]
fn two_cmdline_lines_the_later_wins_and_is_acked() {
    let t = Tree::with_port();
    let host = t.offer(
        "vport0p1",
        b"cmdline:a=1 gen=first\ncmdline:a=2 gen=second\n",
    );
    // With the ack, as in production: it goes back into the FIFO.
    let out = t.fetch_acking(&[]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.targets()[0].as_deref(), Some("a=2 gen=second\n"));
    assert_eq!(
        String::from_utf8(left_in_pipe(&host)).unwrap(),
        vport_bootargs::wire::ack_line("a=2 gen=second")
    );
}

#[test]
fn pair_without_equals_is_stored_but_is_not_a_pair() {
    let t = Tree::with_port();
    let _host = t.offer("vport0p1", b"cmdline:a=1 flag b=2 =x\n");
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Stored as sent: the file is the host's line, not our reading of it.
    assert_eq!(t.targets()[0].as_deref(), Some("a=1 flag b=2 =x\n"));
    let get = |key: &str| {
        Command::new(BIN)
            .args(["get", key, "--cache-dir"])
            .arg(t.cache())
            .output()
            .unwrap()
    };
    assert_eq!(code(&get("flag")), 1, "a word without = is no key");
    assert_eq!(get("b").stdout, b"2\n");
    let env = Command::new(BIN)
        .args(["show", "--format", "env", "--cache-dir"])
        .arg(t.cache())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(env.stdout).unwrap(), "a='1'\nb='2'\n");
}

#[test]
fn partial_line_then_disconnect_is_kept_and_the_resent_line_stored() {
    let t = Tree::with_port();
    let node = t.node("vport0p1");
    let mut f = Running::spawn(t.fetch(&[]).arg("--verbose"));
    // A cut copy of the line it sends again (issue 19: only a prefix of
    // what was resent is taken for a cut copy).
    f.host_write(&node, b"cmdline:a=1 gen=wh");
    // Resend once fetch has seen the disconnect. The cut line is kept (a
    // read of 0 can be the driver's late "host connected", not a real
    // disconnect) and the resend's `cmdline:` prefix inside it marks the
    // join: only the resent line is stored.
    f.wait_for_line("host disconnected in the middle of a line (18 bytes so far); keeping them");
    assert!(
        t.targets().iter().all(Option::is_none),
        "nothing stored yet"
    );
    f.host_write(&node, b"cmdline:a=1 gen=whole\n");
    let out = f.finish();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.targets()[0].as_deref(), Some("a=1 gen=whole\n"));
}

#[test]
fn partial_line_then_disconnect_and_nothing_more_times_out_storing_nothing() {
    let t = Tree::with_port();
    // The deadline only has to outlast writing 19 bytes; 3 s is a margin
    // for a loaded machine, not a measurement.
    let mut f = Running::spawn(&mut t.fetch(&[("--timeout", "3")]));
    f.host_write(&t.node("vport0p1"), b"cmdline:a=1 gen=cut");
    let out = f.finish();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(error_line(&out).contains("no complete message arrived on port s-1-VM.vport"));
    assert!(stderr(&out).contains("dropped 19 bytes"));
    assert_eq!(t.targets(), [None, None, None]);
}

// ---------------------------------------------------------------------------
// Path safety: nothing written outside the configured directories.

#[test]
fn planted_symlinks_at_targets_and_temp_names_are_replaced_not_followed() {
    let t = Tree::with_port();
    t.store_old();
    let outside = t.path("outside");
    fs::create_dir(&outside).unwrap();
    let planted = [
        (t.cache().join("cmdline"), "victim-cmdline"),
        (t.cache().join("authorized_keys"), "victim-cache-keys"),
        (t.ssh().join("authorized_keys"), "victim-ssh-keys"),
        (t.cache().join(".cmdline.vport-bootargs.tmp"), "victim-tmp"),
        (
            t.ssh().join(".authorized_keys.vport-bootargs.tmp"),
            "victim-ssh-tmp",
        ),
    ];
    for (link, victim) in &planted {
        fs::write(outside.join(victim), "precious\n").unwrap();
        fs::remove_file(link).ok();
        std::os::unix::fs::symlink(outside.join(victim), link).unwrap();
    }
    let _host = t.offer("vport0p1", message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.targets(), new_targets());
    for (link, victim) in &planted[..3] {
        assert!(fs::symlink_metadata(link).unwrap().is_file(), "{link:?}");
        assert_eq!(read(&outside.join(victim)).as_deref(), Some("precious\n"));
    }
    for (_, victim) in &planted[3..] {
        assert_eq!(read(&outside.join(victim)).as_deref(), Some("precious\n"));
    }
    assert_no_temp_files(&[&t.cache(), &t.ssh()]);
    assert_eq!(listing(&outside).len(), planted.len());
}

/// A directory replaced by a symlink to `outside/real`: exit 74 naming it,
/// nothing written into `outside`, every target old or (for the cache key
/// file, written before the ssh directory is opened) new, and the cmdline,
/// the "parameters are here" signal, left old.
fn assert_symlinked_dir_refused(which: &str) {
    let t = Tree::with_port();
    t.store_old();
    let outside = t.path("outside");
    let real = outside.join("real");
    fs::create_dir_all(&real).unwrap();
    let dir = if which == "cache" { t.cache() } else { t.ssh() };
    fs::rename(&dir, outside.join("moved")).unwrap();
    std::os::unix::fs::symlink(&real, &dir).unwrap();
    let before = snapshot(&outside);
    let _host = t.offer("vport0p1", message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("refusing to write through a symlink at")
            && line.contains(&*dir.to_string_lossy()),
        "{line}"
    );
    assert_eq!(snapshot(&outside), before, "something was written outside");
    assert_eq!(listing(&real), Vec::<String>::new());
    // Every directory is checked before any file is written: nothing
    // changed anywhere.
    let mut expected = old_targets();
    let refused: &[usize] = if which == "cache" { &[0, 1] } else { &[2] };
    for &i in refused {
        expected[i] = None; // read through the symlink: the empty real dir
    }
    assert_eq!(t.targets(), expected);
}

#[test]
fn cache_dir_that_is_a_symlink_exits_74_and_writes_nothing_outside() {
    assert_symlinked_dir_refused("cache");
}

#[test]
fn ssh_dir_that_is_a_symlink_exits_74_and_writes_nothing_outside() {
    assert_symlinked_dir_refused("ssh");
}

#[test]
fn cache_path_that_is_a_regular_file_exits_74_before_the_port_is_read() {
    let t = Tree::with_port();
    write_file(&t.cache(), "not a directory\n");
    let sent = message(CMDLINE_NEW, Some(KEY_NEW));
    let mut host = t.offer("vport0p1", sent.as_bytes());
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    let line = error_line(&out);
    let stored = t.cache().join("cmdline");
    assert!(line.contains(&*stored.to_string_lossy()), "{line}");
    assert!(line.contains("Not a directory"), "{line}");
    // Found before the port is even opened: the host's data stays with it.
    let mut left = Vec::new();
    fcntl(host.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let _ = host.read_to_end(&mut left);
    assert_eq!(String::from_utf8(left).unwrap(), sent);
    assert_eq!(read(&t.cache()).as_deref(), Some("not a directory\n"));
    assert_eq!(listing(&t.ssh()), Vec::<String>::new());
}

/// Every path under `dir` with its content or link target.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    listing(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".into()
            } else {
                fs::read_to_string(&p).unwrap_or_else(|_| "<binary>".into())
            };
            (rel, what)
        })
        .collect()
}

/// Runs fetch with its cache and ssh directories on a tmpfs of `size`
/// prepared by `prepare` (a shell fragment run with `$1` the mount point,
/// after the old files are copied in), inside a private mount namespace.
/// Returns the output and a copy of what the tmpfs held afterwards.
fn fetch_on_tmpfs(t: &Tree, size: &str, prepare: &str) -> (Output, PathBuf) {
    require_root();
    let mnt = t.path("mnt");
    let after = t.path("after");
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&after).unwrap();
    // The old files, made outside and copied in.
    let seed = t.path("seed");
    write_file(&seed.join("cache/cmdline"), &format!("{CMDLINE_OLD}\n"));
    write_file(&seed.join("cache/authorized_keys"), &format!("{KEY_OLD}\n"));
    write_file(&seed.join("ssh/authorized_keys"), &format!("{KEY_OLD}\n"));
    let script = format!(
        r#"set -eu
mnt=$1 seed=$2 after=$3; shift 3
mount -t tmpfs -o size={size},mode=0755 vport-bootargs-test "$mnt"
cp -a "$seed/." "$mnt/"
{prepare}
rc=0; "$@" || rc=$?
rm -f "$mnt/filler"
cp -a "$mnt/." "$after/"
exit $rc"#
    );
    let fetch = t.fetch_with(&mnt.join("cache"), &mnt.join("ssh"), &[]);
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(&mnt)
        .arg(&seed)
        .arg(&after)
        .arg(fetch.get_program())
        .args(fetch.get_args())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Nothing leaks out of the namespace: the mount point is still empty.
    assert_eq!(listing(&mnt), Vec::<String>::new());
    (out, after)
}

fn assert_tmpfs_left_old_files(after: &Path) {
    assert_eq!(
        listing(after),
        [
            "cache",
            "cache/authorized_keys",
            "cache/cmdline",
            "ssh",
            "ssh/authorized_keys"
        ]
    );
    assert_eq!(
        read(&after.join("cache/cmdline")),
        Some(format!("{CMDLINE_OLD}\n"))
    );
    assert_eq!(
        read(&after.join("cache/authorized_keys")),
        Some(format!("{KEY_OLD}\n"))
    );
    assert_eq!(
        read(&after.join("ssh/authorized_keys")),
        Some(format!("{KEY_OLD}\n"))
    );
}

#[test]
#[ignore = "needs root (mounts a tmpfs in a private mount namespace); run by tests/run-all.sh"]
fn read_only_filesystem_exits_74_and_leaves_the_old_files() {
    for key in [Some(KEY_NEW), None] {
        let t = Tree::with_port();
        let _host = t.offer("vport0p1", message(CMDLINE_NEW, key).as_bytes());
        let (out, after) = fetch_on_tmpfs(&t, "1m", r#"mount -o remount,ro "$mnt""#);
        assert_eq!(code(&out), 74, "{}", stderr(&out));
        let line = error_line(&out);
        assert!(line.contains("Read-only file system"), "{line}");
        assert!(line.contains("/mnt/"), "{line}");
        if key.is_none() {
            // Nothing to remove and nothing may be written: the directory
            // is named, not a temp file that does not exist.
            assert!(
                line.contains("cannot write in")
                    && line.ends_with("/mnt/cache: Read-only file system (os error 30)"),
                "{line}"
            );
        }
        assert_tmpfs_left_old_files(&after);
    }
}

#[test]
#[ignore = "needs root (mounts a tmpfs in a private mount namespace); run by tests/run-all.sh"]
fn full_filesystem_exits_74_and_leaves_the_old_files_and_no_temp() {
    let t = Tree::with_port();
    let _host = t.offer("vport0p1", message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    // 64 KiB, then filled to the last block.
    let (out, after) = fetch_on_tmpfs(
        &t,
        "64k",
        r#"dd if=/dev/zero of="$mnt/filler" bs=1024 2>/dev/null || true"#,
    );
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("No space left on device"), "{line}");
    assert_tmpfs_left_old_files(&after);
}

// ---------------------------------------------------------------------------
// Crash consistency.

/// The parameters of generation `g`: unique to it, tens of KiB per file
/// (so that writing and syncing takes a while), and of a size that varies
/// with `g`, so that a torn or partly written file matches no generation.
fn generation(g: usize) -> ([String; 3], Vec<u8>) {
    let pad = |n: usize, c: char| c.to_string().repeat(n);
    let cmdline = format!(
        "gen={g} type=secstorage pad={}",
        pad(30_000 + (g % 7) * 3_000, 'c')
    );
    let key = format!(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIgen{g} {}",
        pad(20_000 + (g % 5) * 4_000, 'k')
    );
    (
        [
            format!("{cmdline}\n"),
            format!("{key}\n"),
            format!("{key}\n"),
        ],
        message(&cmdline, Some(&key)).into_bytes(),
    )
}

/// Which generation target `i` holds: `Ok(g)` when it is exactly
/// generation g's content, otherwise a short description of what it is.
fn generation_of(i: usize, content: Option<&str>) -> Result<usize, String> {
    let content = content.ok_or("missing")?;
    let marker = if i == 0 { "gen=" } else { "AAAAIgen" };
    let g = content
        .split_once(marker)
        .and_then(|(_, rest)| rest.split([' ', '\n']).next()?.parse().ok());
    match g {
        Some(g) if generation(g).0[i] == content => Ok(g),
        _ => Err(format!("torn ({} bytes)", content.len())),
    }
}

const ALLOWED_IN_CACHE: [&str; 4] = [
    "authorized_keys",
    "cmdline",
    ".authorized_keys.vport-bootargs.tmp",
    ".cmdline.vport-bootargs.tmp",
];
const ALLOWED_IN_SSH: [&str; 2] = ["authorized_keys", ".authorized_keys.vport-bootargs.tmp"];

/// Each target's generation (see `generation_of`).
fn generations(t: &Tree) -> [Result<usize, String>; 3] {
    let files = t.targets();
    std::array::from_fn(|i| generation_of(i, files[i].as_deref()))
}

/// How far a killed run got. `mid_store` counts the kills that visibly
/// landed while storing: some targets new but not all, or the temp files
/// changed (only storing creates or removes them).
#[derive(Debug, Default)]
struct Kills {
    untouched: usize,
    partial: usize,
    complete: usize,
    temp_left: usize,
    mid_store: usize,
}

/// The temp files in the target directories, with their contents.
fn temps(t: &Tree) -> Vec<(String, String)> {
    let mut all = snapshot(&t.cache());
    all.extend(snapshot(&t.ssh()));
    all.retain(|(name, _)| name.ends_with(TMP_SUFFIX));
    all
}

/// What a run may change: each target's generation, and the temp files.
struct Before {
    generations: [Result<usize, String>; 3],
    temps: Vec<(String, String)>,
}

fn before(t: &Tree) -> Before {
    Before {
        generations: generations(t),
        temps: temps(t),
    }
}

impl Kills {
    /// After a run bringing generation `new` was killed: every target must
    /// be what it was `before` or generation `new` (never torn, empty or
    /// gone), the keys new once the cmdline is, and nothing but the
    /// targets and at most one temp file each in the directories.
    fn check(&mut self, t: &Tree, was: &Before, new: usize, at: &str) {
        let before = &was.generations;
        let after = generations(t);
        for i in 0..3 {
            assert!(
                after[i] == before[i] || after[i] == Ok(new),
                "{at}: target {i} went from {:?} to {:?}; only the old one or Ok({new}) may be there",
                before[i],
                after[i],
            );
        }
        // The cmdline is written last: once it is new, so are the keys.
        if after[0] == Ok(new) {
            assert_eq!(
                after,
                [Ok(new), Ok(new), Ok(new)],
                "{at}: cmdline before keys"
            );
        }
        let cache = listing(&t.cache());
        let ssh = listing(&t.ssh());
        let stray = |names: &[String], allowed: &[&str]| {
            names
                .iter()
                .filter(|n| !allowed.contains(&n.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            stray(&cache, &ALLOWED_IN_CACHE),
            Vec::<String>::new(),
            "{at}"
        );
        assert_eq!(stray(&ssh, &ALLOWED_IN_SSH), Vec::<String>::new(), "{at}");
        let targets = after
            .iter()
            .filter(|a| **a != Err("missing".into()))
            .count();
        self.temp_left += usize::from(cache.len() + ssh.len() > targets);
        let fresh = after.iter().filter(|a| **a == Ok(new)).count();
        match fresh {
            0 => self.untouched += 1,
            3 => self.complete += 1,
            _ => self.partial += 1,
        }
        if (fresh == 1 || fresh == 2) || temps(t) != was.temps {
            self.mid_store += 1;
        }
    }
}

#[test]
fn sigkill_while_storing_leaves_each_file_old_or_new_never_torn() {
    const RUNS: usize = 240;
    let t = Tree::with_port();

    // Unkilled runs first: the starting files, and how long a whole run
    // takes from spawn to exit, which the kill delays are spread over.
    let mut whole = Vec::new();
    for g in 0..5 {
        let _host = t.offer("vport0p1", &generation(g).1);
        let start = Instant::now();
        let out = t.fetch(&[("--settle", "0")]).output().unwrap();
        whole.push(start.elapsed());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(generations(&t), [Ok(g), Ok(g), Ok(g)]);
    }
    whole.sort();
    let span = whole[whole.len() / 2].mul_f64(1.3);

    // The kill delays; a failure replays with HOSTILE_SEED=<seed>.
    let (mut rng, seed) = Rng::from_env("HOSTILE_SEED");
    eprintln!("kill delays spread over {span:?}");
    let mut kills = Kills::default();
    for run in 0..RUNS {
        // Every run brings a generation no file holds yet.
        let new = 5 + run;
        let was = before(&t);
        let host = t.offer("vport0p1", &generation(new).1);
        let delay = span.mul_f64(rng.uniform());
        let mut child = t
            .fetch(&[("--settle", "0")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();
        drop(host);
        kills.check(
            &t,
            &was,
            new,
            &format!("run {run} (delay {delay:?}, HOSTILE_SEED={seed})"),
        );
    }
    eprintln!(
        "{RUNS} kills at random points, {} of them mid-store: {kills:?}",
        kills.mid_store
    );
    assert!(
        kills.mid_store > 0,
        "no kill landed while storing: {kills:?}"
    );

    // A run that is not killed cleans up whatever the last kill left.
    let _host = t.offer("vport0p1", &generation(0).1);
    let out = t.fetch(&[("--settle", "0")]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(generations(&t), [Ok(0), Ok(0), Ok(0)]);
    assert_no_temp_files(&[&t.cache(), &t.ssh()]);
    assert_eq!(
        fs::metadata(t.ssh()).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// Runs `fetch --settle 0` under `strace -f -qq <args>`, with `bytes`
/// offered on the port; strace writes its log where `args` say (`-o`).
fn fetch_under_strace(t: &Tree, args: &[&str], bytes: &[u8]) -> Output {
    let fetch = t.fetch(&[("--settle", "0")]);
    let _host = t.offer("vport0p1", bytes);
    Command::new("strace")
        .args(["-f", "-qq"])
        .args(args)
        .arg("--")
        .arg(fetch.get_program())
        .args(fetch.get_args())
        .stdin(Stdio::null())
        .output()
        .expect("strace is needed for this test (apt-get install strace)")
}

/// Kills fetch on entering the k-th call of syscall `name` (strace's fault
/// injection), with `new`'s message offered.
fn fetch_killed_at(t: &Tree, name: &str, k: usize, new: usize) -> std::process::ExitStatus {
    let trace = format!("trace={name}");
    let inject = format!("inject={name}:signal=KILL:when={k}");
    let args = ["-o", "/dev/null", "-e", &trace, "-e", &inject];
    fetch_under_strace(t, &args, &generation(new).1).status
}

/// How many times a whole, unkilled run calls each syscall in `names`.
fn syscall_counts(t: &Tree, names: &[&str], new: usize) -> Vec<(String, usize)> {
    let log = t.path("strace.log");
    let trace = format!("trace={}", names.join(","));
    let args = ["-o", log.to_str().unwrap(), "-e", &trace];
    let out = fetch_under_strace(t, &args, &generation(new).1);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let log = fs::read_to_string(&log).unwrap();
    fs::remove_file(t.path("strace.log")).unwrap();
    names
        .iter()
        .map(|name| {
            let call = format!(" {name}(");
            let n = log.lines().filter(|l| l.contains(&call)).count();
            (name.to_string(), n)
        })
        .collect()
}

/// The same promise as above, without chance: fetch is killed on entering
/// each call, one run per call, of every syscall that storing makes (and
/// the same syscalls before it), first with the files there, then with the
/// directories missing.
#[test]
fn sigkill_at_every_syscall_of_storing_leaves_each_file_old_or_new() {
    const STORE_CALLS: &[&str] = &[
        "openat",
        "mkdir",
        "chmod",
        "fchmod",
        "unlinkat",
        "write",
        "fsync",
        "renameat",
        "renameat2",
        "close",
    ];
    let t = Tree::with_port();
    let mut new = 0;
    {
        let _host = t.offer("vport0p1", &generation(new).1);
        assert_eq!(code(&t.fetch(&[]).output().unwrap()), 0);
    }

    // Files there: each kill must leave old or new.
    new += 1;
    let counts = syscall_counts(&t, STORE_CALLS, new);
    assert!(
        counts
            .iter()
            .any(|(n, c)| n.starts_with("rename") && *c == 3),
        "{counts:?}"
    );
    let mut kills = Kills::default();
    for (name, count) in &counts {
        for k in 1..=*count {
            new += 1;
            let was = before(&t);
            let status = fetch_killed_at(&t, name, k, new);
            assert!(!status.success(), "{name} #{k}: fetch was not killed");
            kills.check(&t, &was, new, &format!("killed at {name} #{k}"));
        }
    }
    eprintln!("files there, {counts:?}: {kills:?}");
    // Killed before the first rename, between renames, and after the last:
    // all three happen, whatever the machine's speed.
    assert!(
        kills.untouched > 0 && kills.partial > 0 && kills.complete > 0,
        "{kills:?}"
    );
    assert!(kills.temp_left > 0, "{kills:?}");

    // Directories missing: each kill must leave nothing or new.
    let mut kills = Kills::default();
    let reset = |t: &Tree| {
        fs::remove_dir_all(t.cache()).ok();
        fs::remove_dir_all(t.ssh()).ok();
    };
    reset(&t);
    new += 1;
    let counts = syscall_counts(&t, STORE_CALLS, new);
    for (name, count) in &counts {
        for k in 1..=*count {
            reset(&t);
            new += 1;
            let was = before(&t);
            let status = fetch_killed_at(&t, name, k, new);
            assert!(!status.success(), "{name} #{k}: fetch was not killed");
            kills.check(&t, &was, new, &format!("fresh tree, killed at {name} #{k}"));
            if t.ssh().exists() {
                let mode = fs::metadata(t.ssh()).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode & 0o077, 0, "{name} #{k}: ssh dir mode {mode:o}");
            }
        }
    }
    eprintln!("directories missing, {counts:?}: {kills:?}");
}

/// One line of `strace -o`: (syscall, arguments, result).
fn parse_strace_line(line: &str) -> Option<(String, String, String)> {
    let rest = line.split_once(' ')?.1.trim_start();
    let (name, rest) = rest.split_once('(')?;
    // strace pads short calls: `fsync(7)          = 0`.
    let (args, result) = rest.rsplit_once(" = ")?;
    let args = args.trim_end().strip_suffix(')')?;
    Some((name.to_owned(), args.to_owned(), result.trim().to_owned()))
}

/// A directory the run makes is on disk only once its parent is: each
/// mkdirat() that made one is followed, before the next, by an fsync of
/// the parent's descriptor (else a power cut could lose the directory with the files
/// synced into it).
#[test]
fn each_directory_made_is_followed_by_an_fsync_of_its_parent() {
    let t = Tree::with_port();
    let log = t.path("strace.log");
    let args = ["-o", log.to_str().unwrap(), "-e", "trace=mkdirat,fsync"];
    let out = fetch_under_strace(&t, &args, message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let calls: Vec<(String, String, String)> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(parse_strace_line)
        .collect();
    let made: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].0 == "mkdirat" && calls[i].2 == "0")
        .collect();
    // var/cache/cloud and root/.ssh, from the tree's root down.
    assert!(made.len() >= 4, "{calls:#?}");
    for (n, &m) in made.iter().enumerate() {
        let parent = calls[m].1.split(", ").next().unwrap();
        let next = made.get(n + 1).copied().unwrap_or(calls.len());
        assert!(
            calls[m + 1..next]
                .iter()
                .any(|c| c.0 == "fsync" && c.1 == parent && c.2 == "0"),
            "no fsync of {parent} after {:?}: {calls:#?}",
            calls[m]
        );
    }
}

/// What SIGKILL cannot show, a power cut can: each file's data must be on
/// disk before the rename that makes it the target, and the rename on disk
/// (the directory synced) before the next file is started. The order of the
/// syscalls of one whole run shows it.
#[test]
fn each_file_is_synced_before_its_rename_and_its_directory_after() {
    let t = Tree::with_port();
    t.store_old();
    let log = t.path("strace.log");
    let args = [
        "-s",
        "256",
        "-o",
        log.to_str().unwrap(),
        "-e",
        "trace=openat,write,fsync,fdatasync,renameat,renameat2,rename",
    ];
    let out = fetch_under_strace(&t, &args, message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.targets(), new_targets());
    let calls: Vec<(String, String, String)> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(parse_strace_line)
        .collect();
    let renames: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].0.starts_with("rename"))
        .collect();
    assert_eq!(renames.len(), 3, "{calls:#?}");
    for (n, &r) in renames.iter().enumerate() {
        let args: Vec<&str> = calls[r].1.split(", ").collect();
        let (dirfd, tmp) = (args[0], args[1]);
        assert!(tmp.ends_with(".vport-bootargs.tmp\""), "{:?}", calls[r]);
        let open = (0..r)
            .rev()
            .find(|&i| calls[i].0 == "openat" && calls[i].1.contains(tmp))
            .unwrap_or_else(|| panic!("no openat of {tmp} before its rename"));
        assert!(calls[open].1.contains("O_EXCL") && calls[open].1.contains("O_NOFOLLOW"));
        let fd = calls[open].2.clone();
        let between = &calls[open + 1..r];
        let wrote = between
            .iter()
            .position(|c| c.0 == "write" && c.1.starts_with(&format!("{fd}, ")));
        let synced = between
            .iter()
            .position(|c| (c.0 == "fsync" || c.0 == "fdatasync") && c.1 == fd && c.2 == "0");
        assert!(
            matches!((wrote, synced), (Some(w), Some(f)) if w < f),
            "{tmp}: written then synced before its rename: {between:#?}"
        );
        let next = renames.get(n + 1).copied().unwrap_or(calls.len());
        assert!(
            calls[r + 1..next]
                .iter()
                .any(|c| c.0 == "fsync" && c.1 == dirfd && c.2 == "0"),
            "directory fd {dirfd} synced after renaming {tmp}, before the next file"
        );
    }
    // Key files first, the cmdline last.
    assert!(
        calls[renames[2]].1.ends_with("\"cmdline\""),
        "{:?}",
        calls[renames[2]]
    );
}
