//! Hostile trees, files and signals: what a new user (or an attacker with a
//! foothold) can put where the helper looks, and what it must then do: never
//! hang, abort, read without bound, lose a one-shot delivery, take modes
//! that are not its own, or leave half-written files.
//!
//! The fake tree is the one tests/common builds (sysfs attributes as files,
//! a FIFO as the port, accepted with `--fifo-stand-in`). Every command runs
//! with a deadline: a hang is a failure, not a stuck test.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    code, left_in_pipe, run_guarded as run, stderr, stdout, Tree, BIN, GUARD, KEY_NEW as KEY, PORT,
};
use nix::sys::stat::Mode;

const CMDLINE: &str = "type=secstorage name=s-1-VM";

/// `fetch --no-ack --fifo-stand-in` on `t`, short deadlines, settling at once.
fn fetch(t: &Tree) -> Command {
    t.fetch(&[("--port-timeout", "3"), ("--grace", "1")])
}

/// CloudStack's message: KEY and CMDLINE.
fn message() -> Vec<u8> {
    common::message(CMDLINE, Some(KEY)).into_bytes()
}

/// Runs fetch with the message offered on port `entry`; it must exit 0 having stored it.
fn fetch_stores_offer(t: &Tree, entry: &str) -> Output {
    let _host = t.offer(entry, &message());
    let out = run(&mut fetch(t));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    out
}

/// A pipe whose reading end is already closed: every write gets EPIPE.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

// ---------------------------------------------------------------------------
// Abort and hang.

#[test]
fn closed_stderr_does_not_abort_get_or_fetch() {
    let t = Tree::new();
    let mut get = Command::new(BIN);
    get.args(["get", "type", "--cache-dir", "/nonexistent"])
        .stderr(closed_pipe());
    let out = get.output().unwrap();
    assert_eq!(out.status.code(), Some(66), "{:?}", out.status);

    let mut fetch = fetch(&t);
    fetch.args(["--port-timeout", "0.2"]).stderr(closed_pipe());
    let out = fetch.output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{:?}", out.status);
}

#[test]
fn fifo_name_attribute_hangs_neither_ports_nor_fetch() {
    let t = Tree::new();
    t.add_port("vport0p2", Some(PORT));
    let bad = t.class("vport0p1");
    fs::create_dir_all(&bad).unwrap();
    nix::unistd::mkfifo(&bad.join("name"), Mode::from_bits_truncate(0o600)).unwrap();
    fs::write(bad.join("dev"), "251:0\n").unwrap();

    let out = run(&mut t.cmd("ports"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let row = stdout(&out)
        .lines()
        .find(|l| l.starts_with("vport0p1"))
        .unwrap()
        .to_owned();
    assert!(
        row.contains("ignored: its name attribute is a FIFO, not a regular file"),
        "{row}"
    );

    fetch_stores_offer(&t, "vport0p2");
}

#[test]
fn stored_cmdline_that_is_a_fifo_or_a_link_to_dev_zero_is_refused_unread() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    let cmdline = t.cache().join("cmdline");
    for plant in ["fifo", "/dev/zero"] {
        fs::remove_file(&cmdline).ok();
        if plant == "fifo" {
            nix::unistd::mkfifo(&cmdline, Mode::from_bits_truncate(0o644)).unwrap();
        } else {
            std::os::unix::fs::symlink(plant, &cmdline).unwrap();
        }
        for args in [
            &["get", "type"][..],
            &["show"],
            &["show", "--format", "json"],
        ] {
            let out = run(Command::new(BIN)
                .args(args)
                .arg("--cache-dir")
                .arg(t.cache())
                .stdin(Stdio::null()));
            assert_eq!(code(&out), 65, "{plant} {args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("bad stored data in"),
                "{}",
                stderr(&out)
            );
        }
    }
    // fetch warns, reads the port as on a first boot, and replaces the
    // file.
    t.add_port("vport0p1", Some(PORT));
    for (plant, says) in [
        ("fifo", "is a FIFO, not a regular file"),
        ("/dev/zero", "is a symlink; refusing to follow it"),
        ("nul", "holds a NUL byte"),
        ("large", "is larger than 262144 bytes"),
    ] {
        fs::remove_file(&cmdline).ok();
        match plant {
            "fifo" => nix::unistd::mkfifo(&cmdline, Mode::from_bits_truncate(0o644)).unwrap(),
            "/dev/zero" => std::os::unix::fs::symlink(plant, &cmdline).unwrap(),
            "nul" => fs::write(&cmdline, "type=x\0y\n").unwrap(),
            _ => fs::write(&cmdline, "a".repeat(256 * 1024 + 1)).unwrap(),
        }
        let out = fetch_stores_offer(&t, "vport0p1");
        let warning = stderr(&out)
            .lines()
            .find(|l| l.contains("warning: bad stored data in"))
            .map(str::to_owned);
        assert!(
            warning.as_ref().is_some_and(
                |w| w.contains(says) && w.ends_with("reading the port as on a first boot")
            ),
            "{plant}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn nul_byte_in_the_stored_cmdline_never_reaches_the_output() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "a=x\0y b=1\n").unwrap();
    for format in ["raw", "env", "json"] {
        let out = run(Command::new(BIN)
            .args(["show", "--format", format, "--cache-dir"])
            .arg(t.cache()));
        assert_eq!(code(&out), 65, "{format}: {}", stderr(&out));
        assert!(!out.stdout.contains(&0), "{format}");
        assert!(
            stderr(&out).contains("holds a NUL byte"),
            "{}",
            stderr(&out)
        );
    }
}

// ---------------------------------------------------------------------------
// Discovery.

#[test]
fn bad_sibling_port_is_ignored_with_its_reason() {
    let t = Tree::new();
    t.add_port("vport0p3", Some(PORT));
    let dir_name = t.class("vport0p1");
    fs::create_dir_all(dir_name.join("name")).unwrap();
    let latin1 = t.class("vport0p2");
    fs::create_dir_all(&latin1).unwrap();
    fs::write(latin1.join("name"), b"caf\xe9\n").unwrap();

    let out = run(&mut t.cmd("ports"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("ignored: its name attribute is a directory, not a regular file"),
        "{text}"
    );
    assert!(text.contains("ignored: its name is not UTF-8"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("vport0p3") && l.ends_with("chosen")));

    fetch_stores_offer(&t, "vport0p3");
}

#[test]
fn entries_not_named_vport_n_p_m_are_not_ports() {
    let t = Tree::new();
    for entry in ["vport0p", "vportXpY", "vport0p1x"] {
        t.add_port(entry, Some(PORT));
    }
    // A symlink, as class/ entries are in sysfs, but not a port's name.
    let real = t.path("devices/zzz");
    fs::create_dir_all(&real).unwrap();
    fs::write(real.join("name"), format!("{PORT}\n")).unwrap();
    std::os::unix::fs::symlink(&real, t.class("zzz")).unwrap();

    let out = run(&mut t.cmd("ports"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "no virtio ports\n");
    let out = run(fetch(&t).args(["--port-timeout", "0.3"]));
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert_eq!(t.stored_cmdline(), None);
}

#[test]
fn fifo_node_is_refused_without_fifo_stand_in() {
    let t = Tree::new();
    t.add_port("vport0p1", Some(PORT));
    let host = t.offer("vport0p1", &message());
    let out = run(t
        .cmd("fetch")
        .args(["--no-ack", "--port-timeout", "3", "--cache-dir"])
        .arg(t.cache())
        .arg("--ssh-dir")
        .arg(t.ssh()));
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a FIFO, not the character device of port s-1-VM.vport"),
        "{}",
        stderr(&out)
    );
    assert_eq!(left_in_pipe(&host), message(), "the FIFO was read");
    assert_eq!(t.stored_cmdline(), None);
}

#[test]
fn node_that_is_a_link_to_a_regular_file_is_never_opened() {
    let t = Tree::new();
    t.add_port("vport0p1", Some(PORT));
    let victim = t.path("passwd");
    fs::write(&victim, "root:x:0:0::/root:/bin/sh\n").unwrap();
    let node = t.dev().join("vport0p1");
    fs::remove_file(&node).unwrap();
    std::os::unix::fs::symlink(&victim, &node).unwrap();
    // With the ack, as in production: the node would be opened read-write.
    for extra in [&[][..], &["--fifo-stand-in"]] {
        let out = run(t
            .cmd("fetch")
            .args(["--port-timeout", "3", "--timeout", "1", "--cache-dir"])
            .arg(t.cache())
            .arg("--ssh-dir")
            .arg(t.ssh())
            .args(extra));
        assert_eq!(code(&out), 69, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is a regular file, not the character device"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn missing_sysfs_root_is_an_error_not_an_empty_list() {
    for sub in [&["ports"][..], &["fetch", "--port-timeout", "0.1"]] {
        let out = run(Command::new(BIN)
            .args(["--sysfs-root", "/nonexistent/sys"])
            .args(sub));
        assert_eq!(code(&out), 64, "{sub:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--sysfs-root /nonexistent/sys: no such directory"),
            "{}",
            stderr(&out)
        );
    }
}

// ---------------------------------------------------------------------------
// Storing.

/// A refused target directory is found before the port is opened: the
/// host's message is still in the port (here: the FIFO) for a fixed run.
#[test]
fn refused_targets_are_found_before_the_port_is_opened() {
    type Plant = fn(&Tree) -> Vec<String>;
    let cases: [(&str, Plant, i32); 5] = [
        (
            "symlinked cache dir",
            |t| {
                fs::create_dir_all(t.path("elsewhere")).unwrap();
                fs::create_dir_all(t.cache().parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(t.path("elsewhere"), t.cache()).unwrap();
                vec![]
            },
            74,
        ),
        (
            "ssh dir that is a file",
            |t| {
                common::write_file(&t.ssh(), "");
                vec![]
            },
            74,
        ),
        (
            "cache dir /",
            |_| vec!["--cache-dir".into(), "/".into()],
            64,
        ),
        (
            "ssh dir = cache dir",
            |t| vec!["--ssh-dir".into(), t.cache().display().to_string()],
            64,
        ),
        (
            "sticky shared ssh dir",
            |t| {
                fs::create_dir_all(t.ssh()).unwrap();
                fs::set_permissions(t.ssh(), fs::Permissions::from_mode(0o1777)).unwrap();
                vec![]
            },
            64,
        ),
    ];
    for (what, plant, exit) in cases {
        let t = Tree::new();
        t.add_port("vport0p1", Some(PORT));
        let extra = plant(&t);
        let host = t.offer("vport0p1", &message());
        let out = run(fetch(&t).args(&extra));
        assert_eq!(code(&out), exit, "{what}: {}", stderr(&out));
        assert_eq!(left_in_pipe(&host), message(), "{what}: the port was read");
        assert!(!stderr(&out).contains("opened port"), "{what}");
    }
    // The sticky directory was not made 0700 (nor anything else).
    let t = Tree::new();
    fs::create_dir_all(t.ssh()).unwrap();
    fs::set_permissions(t.ssh(), fs::Permissions::from_mode(0o1777)).unwrap();
    t.add_port("vport0p1", Some(PORT));
    let _host = t.offer("vport0p1", &message());
    run(&mut fetch(&t));
    let mode = common::mode(&t.ssh());
    assert_eq!(mode, 0o1777);
}

#[test]
fn existing_ssh_dir_keeps_its_mode_but_group_and_world_write() {
    let t = Tree::new();
    fs::create_dir_all(t.ssh()).unwrap();
    fs::set_permissions(t.ssh(), fs::Permissions::from_mode(0o775)).unwrap();
    t.add_port("vport0p1", Some(PORT));
    fetch_stores_offer(&t, "vport0p1");
    let mode = common::mode(&t.ssh());
    assert_eq!(mode, 0o755);
}

/// Two runs on one cache directory, each slowed inside its store by
/// strace's delay injection so that they overlap: both succeed and every
/// file is whole, one run's or the other's.
#[test]
fn concurrent_fetches_on_one_cache_dir_both_store_whole_files() {
    let a = Tree::new();
    let b = Tree::new();
    a.add_port("vport0p1", Some(PORT));
    b.add_port("vport0p1", Some(PORT));
    let msg = |g: &str| format!("pubkey:{KEY}\ncmdline:gen={g} {}\n", "x=y ".repeat(2000));
    let _ha = a.offer("vport0p1", msg("a").as_bytes());
    let _hb = b.offer("vport0p1", msg("b").as_bytes());
    let spawn = |t: &Tree| {
        let mut c = Command::new("strace");
        // Every fchmod and fsync takes 150 ms: the runs interleave between
        // creating a temp file, writing it and renaming it.
        c.args(["-f", "-o", "/dev/null", "-e", "trace=fchmod,fsync"])
            .args(["-e", "inject=fchmod,fsync:delay_enter=150000"])
            .arg(BIN)
            .arg("--sysfs-root")
            .arg(t.sys())
            .arg("--dev-root")
            .arg(t.dev())
            .args(["fetch", "--no-ack", "--fifo-stand-in", "--settle", "0.01"])
            .arg("--cache-dir")
            .arg(a.cache())
            .arg("--ssh-dir")
            .arg(a.ssh())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace (apt-get install strace)")
    };
    let first = spawn(&a);
    std::thread::sleep(Duration::from_millis(100));
    let second = spawn(&b);
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let stored = a.stored_cmdline().unwrap();
    let whole = |g: &str| {
        msg(g)
            .strip_prefix(&format!("pubkey:{KEY}\ncmdline:"))
            .unwrap()
            .to_owned()
    };
    assert!(
        stored == whole("a") || stored == whole("b"),
        "torn: {} bytes",
        stored.len()
    );
    for dir in [a.cache(), a.ssh()] {
        assert_eq!(
            fs::read_to_string(dir.join("authorized_keys")).unwrap(),
            format!("{KEY}\n")
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}

#[test]
fn leftover_temp_files_are_removed_by_a_run_that_stores_nothing() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::create_dir_all(t.ssh()).unwrap();
    fs::write(t.cache().join("cmdline"), format!("{CMDLINE}\n")).unwrap();
    let leftovers = [
        t.cache().join(".cmdline.vport-bootargs.tmp"),
        t.cache().join(".authorized_keys.vport-bootargs.tmp"),
        t.ssh().join(".authorized_keys.vport-bootargs.tmp"),
    ];
    for f in &leftovers {
        fs::write(f, "half").unwrap();
    }
    // A reboot, and the host sends nothing: the stored files are kept.
    t.add_port("vport0p1", Some(PORT));
    let out = run(fetch(&t).args(["--grace", "0.2"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("keeping those"), "{}", stderr(&out));
    for f in &leftovers {
        assert!(!f.exists(), "{f:?} left");
    }
}

// ---------------------------------------------------------------------------
// Rendering.

#[test]
fn a_bad_prefix_or_a_prefix_without_format_env_is_refused_with_64() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "type=a\n").unwrap();
    let goes_with = "--prefix goes with --format env";
    let shell_name = "must be a shell name ([A-Za-z_][A-Za-z0-9_]*) with a lower-case letter";
    for (args, says) in [
        (&["--prefix", "cs_"][..], goes_with),
        (&["--format", "json", "--prefix", "cs_"], goes_with),
        (&["--format", "env", "--prefix", "PATH"], shell_name),
        (&["--format", "env", "--prefix", "1a"], shell_name),
    ] {
        let out = run(Command::new(BIN)
            .arg("show")
            .args(args)
            .arg("--cache-dir")
            .arg(t.cache()));
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
    }
}

#[test]
fn show_env_leaves_out_shell_names_with_a_warning_and_prefix_keeps_them() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(
        t.cache().join("cmdline"),
        "PATH=/tmp/evil IFS=x type=a BASH_ENV=/x\n",
    )
    .unwrap();
    let show = |extra: &[&str]| {
        run(Command::new(BIN)
            .args(["show", "--format", "env", "--cache-dir"])
            .arg(t.cache())
            .args(extra))
    };
    let out = show(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "type='a'\n");
    for key in ["PATH", "IFS", "BASH_ENV"] {
        assert!(
            stderr(&out).contains(&format!(
                "left out key \"{key}\": the shell uses that name itself"
            )),
            "{}",
            stderr(&out)
        );
    }
    let out = show(&["--prefix", "cs_"]);
    assert_eq!(
        stdout(&out),
        "cs_PATH='/tmp/evil'\ncs_IFS='x'\ncs_type='a'\ncs_BASH_ENV='/x'\n"
    );
    assert_eq!(code(&show(&["--prefix", "CS_"])), 64);
}

/// The most pairs a stored file can hold (it is read up to 256 KiB; a
/// larger one is refused), rendered in every format; the merge itself is
/// shown linear on 200,000 pairs by `guest::cmdline::tests::many_pairs_merge_in_one_pass`.
#[test]
fn show_on_a_stored_file_at_the_size_limit_renders_every_pair() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    // "k7530=1 ": 8 bytes a pair at most, 30,000 pairs, under 256 KiB.
    let cmdline: String = (0..30_000).map(|i| format!("k{i:x}=1 ")).collect();
    assert!(cmdline.len() < 256 * 1024);
    fs::write(t.cache().join("cmdline"), format!("{cmdline}\n")).unwrap();
    let out = run(Command::new(BIN)
        .args(["show", "--format", "json", "--cache-dir"])
        .arg(t.cache()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 30_000);
    let out = run(Command::new(BIN)
        .args(["show", "--format", "env", "--cache-dir"])
        .arg(t.cache()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 30_000);
    // One byte over the limit: refused, not read on.
    fs::write(t.cache().join("cmdline"), "a".repeat(256 * 1024 + 1)).unwrap();
    let out = run(Command::new(BIN)
        .args(["get", "a", "--cache-dir"])
        .arg(t.cache()));
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is larger than 262144 bytes"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// send.

/// A listening socket that counts the connections it gets.
fn listener(dir: &Path) -> (PathBuf, UnixListener) {
    let path = dir.join("vm.agent");
    let l = UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    (path, l)
}

fn send(socket: &Path, key_file: &Path) -> Output {
    run(Command::new(BIN)
        .args(["send", "-p", "a=1", "--socket"])
        .arg(socket)
        .arg("--pubkey-file")
        .arg(key_file))
}

#[test]
fn key_file_over_the_guests_limit_is_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, l) = listener(tmp.path());
    let key = tmp.path().join("id.pub");
    // 70 KB: a key the guest refuses (its lines are at most 64 KiB).
    fs::write(&key, format!("ssh-rsa {} k\n", "A".repeat(70_000))).unwrap();
    let out = send(&socket, &key);
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the guest accepts a key of at most"),
        "{}",
        stderr(&out)
    );
    // 100 MB: refused unread.
    File::create(&key).unwrap().set_len(100 << 20).unwrap();
    let out = send(&socket, &key);
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("is larger than"), "{}", stderr(&out));
    assert!(l.accept().is_err(), "send connected");
}

#[test]
fn private_key_fifo_or_device_as_key_file_is_refused_exit_65() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, l) = listener(tmp.path());
    let key = tmp.path().join("id");
    fs::write(
        &key,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = send(&socket, &key);
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a private key"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("b3Blbn"), "the key was quoted");

    let fifo = tmp.path().join("fifo.pub");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
    for (path, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let out = send(&socket, path);
        assert_eq!(code(&out), 65, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("is {what}, not a regular file")),
            "{}",
            stderr(&out)
        );
    }
    assert!(l.accept().is_err(), "send connected");
}

#[test]
fn regular_file_or_directory_at_the_socket_path_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("vm.agent");
    fs::write(&file, "").unwrap();
    for (path, what) in [
        (file.as_path(), "a regular file"),
        (tmp.path(), "a directory"),
    ] {
        for wait in [&[][..], &["--wait-ack", "30"]] {
            let out = run(Command::new(BIN)
                .args(["send", "--no-pubkey", "-p", "a=1", "--socket"])
                .arg(path)
                .args(wait));
            assert_eq!(code(&out), 69, "{}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("is {what}, not a socket")),
                "{}",
                stderr(&out)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Command line.

#[test]
fn later_of_verbose_and_quiet_wins() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "a=1\n").unwrap();
    let get = |flags: &[&str]| {
        run(Command::new(BIN)
            .args(flags)
            .args(["get", "missing", "--cache-dir"])
            .arg(t.cache()))
    };
    let out = get(&["-v", "-q"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let out = get(&["-q", "-v"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("debug: \"missing\" is not in"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ports_into_a_closed_pipe_ends_quietly_by_sigpipe_as_coreutils() {
    let t = Tree::new();
    // More rows than a pipe holds: `head -1` is gone before the last.
    for n in 0..2000 {
        t.add_port(&format!("vport0p{n}"), Some(PORT));
    }
    let out = t
        .cmd("ports")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}",
        out.status
    );
    assert_eq!(stderr(&out), "");
    // And in a real pipeline, under pipefail, as `yes | head -1` is.
    let out = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            r#""$@" ports | head -1; echo "status ${PIPESTATUS[0]}""#,
            "sh",
        ])
        .arg(BIN)
        .arg("--sysfs-root")
        .arg(t.sys())
        .output()
        .unwrap();
    assert!(stdout(&out).ends_with("status 141\n"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
}

// ---------------------------------------------------------------------------
// Deadlines.

/// Durations as large as a `Duration` holds, in the library's public option
/// structs, saturate instead of overflowing `Instant + Duration`.
#[test]
fn huge_durations_in_option_structs_do_not_overflow() {
    use vport_bootargs::guest::fetch::{fetch, FetchOptions, Outcome};
    use vport_bootargs::guest::ports::Selector;
    use vport_bootargs::guest::store::Targets;

    let t = Tree::new();
    let node = t.add_port("vport0p1", Some(PORT));
    let opts = FetchOptions {
        sysfs_root: t.sys(),
        dev_root: t.dev(),
        selector: Selector {
            pattern: "*.vport".into(),
            name: None,
            fifo_stand_in: true,
        },
        targets: Targets {
            cache_dir: t.cache(),
            ssh_dir: t.ssh(),
        },
        timeout: Duration::MAX,
        port_timeout: Duration::MAX,
        grace: Duration::MAX,
        settle: Duration::MAX,
        ack: false,
        no_channel_after: Duration::MAX,
    };
    // The host writes, stays connected a moment (the settle deadline is
    // computed), then leaves (which ends the message).
    let writer = std::thread::spawn(move || {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(0)
            .open(&node)
            .unwrap();
        f.write_all(&message()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let outcome = within_guard("fetch", move || fetch(&opts)).unwrap();
    writer.join().unwrap();
    assert!(
        matches!(outcome, Outcome::Stored { pubkey: true, .. }),
        "{outcome:?}"
    );

    use vport_bootargs::host::{send, SendOptions};
    use vport_bootargs::wire::{digest_hex, Message};
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("vm.agent");
    let l = UnixListener::bind(&socket).unwrap();
    let guest = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).unwrap();
        writeln!(s, "ack:{}", digest_hex(b"a=1")).unwrap();
    });
    let opts = SendOptions {
        socket,
        message: Message {
            cmdline: "a=1".into(),
            pubkey: None,
        },
        wait_ack: Some(Duration::MAX),
        retry: Duration::MAX,
        wait_taken: Duration::MAX,
    };
    within_guard("send", move || send(&opts)).unwrap();
    guest.join().unwrap();
}

/// Runs `f` in a thread of its own and returns what it returns; a run that
/// takes longer than GUARD fails the test instead of hanging it (the
/// durations above never end a wait).
fn within_guard<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(GUARD) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {GUARD:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}
