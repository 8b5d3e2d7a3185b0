//! `barrier` on a fake sysfs/dev tree, with this process playing qemu-ga:
//! it opens the guest agent's node (a FIFO here) and writes the cmdline the
//! way qemu-ga does, through a buffer and closed later. No root, no VM.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::Tree;
use vport_bootargs::error::exit;
use vport_bootargs::guest::barrier::{self, BarrierOptions, Released, REJECTED_FILE};
use vport_bootargs::Error;

const AGENT: &str = "org.qemu.guest_agent.0";

struct Bench {
    tree: Tree,
    /// Empty: nobody holds the agent's port when the barrier starts.
    proc_root: PathBuf,
}

impl Bench {
    fn new() -> Self {
        let tree = Tree::new();
        tree.add_port("vport0p1", Some(AGENT));
        fs::create_dir_all(tree.cache()).unwrap();
        let proc_root = tree.root().join("proc");
        fs::create_dir_all(&proc_root).unwrap();
        Bench { tree, proc_root }
    }

    fn opts(&self, timeout: f64, grace: f64) -> BarrierOptions {
        BarrierOptions {
            sysfs_root: self.tree.sys(),
            dev_root: self.tree.dev(),
            proc_root: self.proc_root.clone(),
            cache_dir: self.tree.cache(),
            pattern: "*.vport".into(),
            timeout: Duration::from_secs_f64(timeout),
            grace: Duration::from_secs_f64(grace),
        }
    }

    fn cmdline(&self) -> PathBuf {
        self.tree.cache().join("cmdline")
    }

    /// Runs the barrier in a thread; the receiver gets its result and when.
    fn start(
        &self,
        timeout: f64,
        grace: f64,
    ) -> mpsc::Receiver<(Result<Released, Error>, Instant)> {
        let opts = self.opts(timeout, grace);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let r = barrier::barrier(&opts);
            let _ = tx.send((r, Instant::now()));
        });
        // Let it set its watch (the barrier looks after watching, so an
        // early write is never missed; this only orders the test's story).
        thread::sleep(Duration::from_millis(200));
        rx
    }

    /// qemu-ga opening its port: an open of the node (O_RDWR so that the
    /// FIFO does not block).
    fn agent_opens_port(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.tree.node("vport0p1"))
            .unwrap()
    }

    /// A /proc that shows only this process (a link to its real entry), so
    /// that it can be read whole without root.
    fn this_process_only(&mut self) {
        let pid = std::process::id().to_string();
        let own = self.tree.root().join("proc-self");
        fs::create_dir_all(&own).unwrap();
        std::os::unix::fs::symlink(Path::new("/proc").join(&pid), own.join(&pid)).unwrap();
        self.proc_root = own;
    }

    /// A cmdline file from an earlier boot.
    fn stale(&self, text: &str) {
        fs::write(self.cmdline(), text).unwrap();
        // 2001: long before any boot of this machine.
        let long_ago = nix::sys::time::TimeVal::new(1_000_000_000, 0);
        nix::sys::stat::utimes(&self.cmdline(), &long_ago, &long_ago).unwrap();
    }
}

fn not_yet<T>(rx: &mpsc::Receiver<T>, for_: Duration) {
    assert!(
        rx.recv_timeout(for_).is_err(),
        "the barrier returned before it should"
    );
}

fn result<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the barrier did not return")
}

/// 70,000 bytes of `key=value` pairs ending in a newline, as patch.sh's
/// `echo` sends them.
fn big_cmdline(len: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len - 1 {
        s.push_str(&format!("k{i}=v "));
        i += 1;
    }
    s.truncate(len - 1);
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    while s.len() < len - 1 {
        s.push('x');
    }
    s.push('\n');
    s
}

#[test]
fn a_cut_file_is_held_until_its_writer_closes_it() {
    let b = Bench::new();
    let rx = b.start(20.0, 5.0);
    let _port = b.agent_opens_port();
    let text = big_cmdline(9000);
    // What qemu-ga's stdio buffer lets through before the close.
    let mut w = File::create(b.cmdline()).unwrap();
    w.write_all(&text.as_bytes()[..8192]).unwrap();
    not_yet(&rx, Duration::from_millis(800));
    w.write_all(&text.as_bytes()[8192..]).unwrap();
    drop(w);
    let (r, _) = result(&rx);
    assert!(
        matches!(
            r,
            Ok(Released::Fresh {
                bytes: 9000,
                since_close: Some(_)
            })
        ),
        "{r:?}"
    );
    assert_eq!(fs::read_to_string(b.cmdline()).unwrap(), text);
}

#[test]
fn a_file_written_and_closed_before_the_start_is_released_at_once() {
    let b = Bench::new();
    let text = big_cmdline(70_000);
    fs::write(b.cmdline(), &text).unwrap();
    let rx = b.start(20.0, 5.0);
    let (r, _) = result(&rx);
    assert_eq!(
        r.unwrap(),
        Released::Fresh {
            bytes: 70_000,
            since_close: None
        }
    );
}

#[test]
fn an_old_file_is_kept_only_after_the_grace_counted_from_the_agent_opening_its_port() {
    let b = Bench::new();
    b.stale("type=old\n");
    let rx = b.start(30.0, 1.0);
    // The agent is not up yet: the grace has not begun.
    not_yet(&rx, Duration::from_millis(2000));
    let opened = Instant::now();
    let _port = b.agent_opens_port();
    let (r, at) = result(&rx);
    assert_eq!(r.unwrap(), Released::KeptStored { bytes: 9 });
    assert!(at.duration_since(opened) >= Duration::from_millis(900));
    assert_eq!(fs::read_to_string(b.cmdline()).unwrap(), "type=old\n");
}

#[test]
fn new_parameters_over_an_old_file_win_and_the_emptied_file_is_never_taken() {
    let b = Bench::new();
    b.stale("type=old\n");
    let rx = b.start(30.0, 1.0);
    let _port = b.agent_opens_port();
    // guest-file-open with mode w+: the old file is emptied, then written
    // through a buffer; the close comes after the grace period is over.
    let mut w = File::create(b.cmdline()).unwrap();
    not_yet(&rx, Duration::from_millis(1500));
    w.write_all(b"type=new").unwrap();
    not_yet(&rx, Duration::from_millis(300));
    w.write_all(b" name=s-1-VM\n").unwrap();
    drop(w);
    let (r, _) = result(&rx);
    assert!(matches!(r, Ok(Released::Fresh { bytes: 21, .. })), "{r:?}");
    assert_eq!(
        fs::read_to_string(b.cmdline()).unwrap(),
        "type=new name=s-1-VM\n"
    );
}

#[test]
fn a_bad_file_is_moved_aside_with_one_line_and_exit_65() {
    let b = Bench::new();
    let rx = b.start(20.0, 5.0);
    fs::write(b.cmdline(), "type=secstorage\nrm -rf /\n").unwrap();
    let (r, _) = result(&rx);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), exit::DATA);
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("more than one line"), "{line}");
    assert!(line.contains(REJECTED_FILE), "{line}");
    assert!(!b.cmdline().exists());
    assert_eq!(
        fs::read_to_string(b.tree.cache().join(REJECTED_FILE)).unwrap(),
        "type=secstorage\nrm -rf /\n"
    );
}

#[test]
fn nothing_written_gives_up_at_the_deadline_with_exit_69() {
    let b = Bench::new();
    let started = Instant::now();
    let rx = b.start(1.5, 5.0);
    let (r, at) = result(&rx);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), exit::UNAVAILABLE);
    assert!(e.to_string().contains("no cmdline arrived"), "{e}");
    assert!(at.duration_since(started) >= Duration::from_millis(1400));
}

#[test]
fn a_writer_still_there_at_the_deadline_is_rejected_not_passed_on() {
    let b = Bench::new();
    let rx = b.start(1.5, 5.0);
    let mut w = File::create(b.cmdline()).unwrap();
    w.write_all(&[b'x'; 4096]).unwrap();
    let (r, _) = result(&rx);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), exit::DATA);
    assert!(e.to_string().contains("still open for writing"), "{e}");
    assert!(!b.cmdline().exists());
}

#[test]
fn a_vport_channel_or_no_channel_at_all_holds_nothing() {
    let b = Bench::new();
    b.tree.add_port("vport0p2", Some("s-1-VM.vport"));
    let (r, _) = result(&b.start(20.0, 5.0));
    assert_eq!(
        r.unwrap(),
        Released::VportChannel {
            port: "s-1-VM.vport".into()
        }
    );
    let none = Tree::new();
    let opts = BarrierOptions {
        sysfs_root: none.sys(),
        dev_root: none.dev(),
        proc_root: Path::new("/proc").into(),
        cache_dir: none.cache(),
        pattern: "*.vport".into(),
        timeout: Duration::from_secs(20),
        grace: Duration::from_secs(5),
    };
    assert_eq!(barrier::barrier(&opts).unwrap(), Released::NoChannel);
}

#[test]
fn the_command_line_runs_it() {
    let b = Bench::new();
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    let out = b
        .tree
        .cmd("barrier")
        .arg("--proc-root")
        .arg(&b.proc_root)
        .arg("--cache-dir")
        .arg(b.tree.cache())
        .args(["--timeout", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("whole, fresh and valid"), "{err}");
}

/// `barrier` on `b`'s tree, with a fresh file there, under `strace -f -qq
/// -y <args>`.
fn barrier_under_strace(b: &Bench, args: &[&str]) -> std::process::Output {
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    let mut barrier = b.tree.cmd("barrier");
    barrier
        .arg("--proc-root")
        .arg(&b.proc_root)
        .arg("--cache-dir")
        .arg(b.tree.cache())
        .args(["--timeout", "5"]);
    std::process::Command::new("strace")
        .args(["-f", "-qq", "-y"])
        .args(args)
        .arg("--")
        .arg(barrier.get_program())
        .args(barrier.get_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("strace is needed for this test (apt-get install strace)")
}

#[test]
fn a_released_file_is_flushed_to_disk_with_its_directory() {
    // qemu-ga never fsyncs; without this a forced stop after the release
    // left the next boot a cut file (tests/libvirt_qga.rs, reboot).
    let b = Bench::new();
    let log = b.tree.root().join("strace.log");
    let log_arg = log.to_str().unwrap();
    let out = barrier_under_strace(&b, &["-e", "trace=fsync,fdatasync", "-o", log_arg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(&log).unwrap();
    for synced in [b.cmdline(), b.tree.cache()] {
        let fd = format!("<{}>)", synced.display());
        assert!(
            log.lines().any(|l| l.contains("fsync(") && l.contains(&fd)),
            "no fsync of {}:\n{log}",
            synced.display()
        );
    }
}

#[test]
fn a_failed_flush_is_one_line_and_the_boot_goes_on() {
    let b = Bench::new();
    let args = [
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync",
        "-e",
        "inject=fsync:error=EIO",
    ];
    let out = barrier_under_strace(&b, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("cannot flush the file"), "{err}");
    assert!(err.contains("cannot flush the directory"), "{err}");
    assert!(err.contains("whole, fresh and valid"), "{err}");
    assert_eq!(
        fs::read_to_string(b.cmdline()).unwrap(),
        "type=secstorage\n"
    );
}

/// `barrier` on `b`'s tree, with `--timeout SECS`.
fn barrier_process_command(b: &Bench, timeout: &str) -> std::process::Command {
    let mut c = b.tree.cmd("barrier");
    c.arg("--proc-root")
        .arg(&b.proc_root)
        .arg("--cache-dir")
        .arg(b.tree.cache())
        .args(["--timeout", timeout]);
    c
}

/// [`barrier_process_command`] with the capabilities the unit has: as root,
/// under `setpriv` with the unit's bounding set
/// (`CapabilityBoundingSet=CAP_SYS_PTRACE`), so that a file's mode and
/// owner count as they do in the system VM (root's CAP_DAC_OVERRIDE reads a
/// mode-0 file; CAP_FOWNER changes anyone's mode).
fn barrier_as_the_unit(b: &Bench, timeout: &str) -> std::process::Command {
    let plain = barrier_process_command(b, timeout);
    if !running_as_root() {
        return plain;
    }
    let mut c = std::process::Command::new("setpriv");
    c.arg("--bounding-set=-all,+sys_ptrace")
        .arg("--")
        .arg(plain.get_program())
        .args(plain.get_args())
        .stdin(std::process::Stdio::null());
    c
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// [`barrier_process_command`] started, its stderr piped.
fn barrier_process(b: &Bench, timeout: &str) -> std::process::Child {
    barrier_process_command(b, timeout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_writer_opening_the_file_again_and_again_never_kills_the_barrier() {
    // Each open for writing breaks a read lease the barrier may hold at
    // that moment; the kernel then signals the lease's holder (SIGIO by
    // default, whose default action ends the process). strace shows each
    // such signal, so the writer goes on until one has come.
    let b = Bench::new();
    File::create(b.cmdline()).unwrap();
    let log = b.tree.root().join("signals.log");
    let plain = barrier_process_command(&b, "30");
    let barrier = std::process::Command::new("strace")
        .args(["-qq", "-e", "trace=none", "-e", "signal=SIGIO,SIGURG", "-o"])
        .arg(&log)
        .arg("--")
        .arg(plain.get_program())
        .args(plain.get_args())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace is needed for this test (apt-get install strace)");
    let signalled =
        || fs::read_to_string(&log).is_ok_and(|l| l.contains("SIGIO") || l.contains("SIGURG"));
    let until = Instant::now() + Duration::from_secs(15);
    let mut opens = 0;
    while Instant::now() < until && !signalled() {
        for _ in 0..100 {
            drop(OpenOptions::new().append(true).open(b.cmdline()).unwrap());
        }
        opens += 100;
    }
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    let out = barrier.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(signalled(), "no lease was broken in {opens} opens");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?} after {opens} opens: {err}",
        out.status
    );
    assert!(err.contains("whole, fresh and valid"), "{err}");
}

#[test]
fn a_whole_file_closed_this_boot_is_released_though_an_idle_handle_stays_open() {
    // patch.sh retried: an earlier try's guest-file-open succeeded but its
    // answer was lost, so qemu-ga keeps that handle open and idle; the next
    // try opens w+, writes the whole cmdline and closes.
    let mut b = Bench::new();
    b.this_process_only();
    let rx = b.start(10.0, 5.0);
    let _port = b.agent_opens_port();
    let idle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(b.cmdline())
        .unwrap();
    let text = big_cmdline(9000);
    let mut w = File::create(b.cmdline()).unwrap();
    w.write_all(text.as_bytes()).unwrap();
    drop(w);
    let (r, _) = result(&rx);
    assert!(
        matches!(
            r,
            Ok(Released::Fresh {
                bytes: 9000,
                since_close: Some(_)
            })
        ),
        "{r:?}"
    );
    assert_eq!(fs::read_to_string(b.cmdline()).unwrap(), text);
    drop(idle);
}

#[test]
fn a_whole_file_closed_before_the_start_is_released_though_an_idle_handle_stays_open() {
    // As above, with the writes done before the barrier starts: no close
    // to see, but the file is from this boot and the handle left has never
    // written.
    let mut b = Bench::new();
    b.this_process_only();
    let idle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(b.cmdline())
        .unwrap();
    fs::write(b.cmdline(), "type=secstorage name=s-1-VM\n").unwrap();
    let (r, _) = result(&b.start(10.0, 5.0));
    assert_eq!(
        r.unwrap(),
        Released::Fresh {
            bytes: 28,
            since_close: None
        }
    );
    drop(idle);
}

#[test]
fn a_cut_file_is_held_while_its_writer_is_open_though_another_handle_closes() {
    // The other side of the rule above: a close seen this boot says the
    // file is whole only if no descriptor still open has written to it.
    let mut b = Bench::new();
    b.this_process_only();
    let rx = b.start(20.0, 5.0);
    let _port = b.agent_opens_port();
    let other = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(b.cmdline())
        .unwrap();
    let text = big_cmdline(9000);
    let mut w = File::create(b.cmdline()).unwrap();
    w.write_all(&text.as_bytes()[..8192]).unwrap();
    drop(other);
    not_yet(&rx, Duration::from_millis(800));
    w.write_all(&text.as_bytes()[8192..]).unwrap();
    drop(w);
    let (r, _) = result(&rx);
    assert!(
        matches!(r, Ok(Released::Fresh { bytes: 9000, .. })),
        "{r:?}"
    );
    assert_eq!(fs::read_to_string(b.cmdline()).unwrap(), text);
}

#[test]
fn a_close_is_enough_while_the_kernel_still_counts_a_writer_no_process_shows() {
    // fs/file_table.c __fput reports a close before it drops the file's
    // count of writers, so right after the event the kernel can still count
    // the closer (on ext4 for as long as a journal commit). A descriptor in
    // flight in a unix socket is counted the same way and shows in no
    // process's /proc/PID/fd: it stands in for that window, held open.
    // (The bench's empty /proc shows no process either, and needs no root
    // to be read whole.)
    let b = Bench::new();
    let rx = b.start(10.0, 5.0);
    let _port = b.agent_opens_port();
    let (tx_sock, _rx_sock) = std::os::unix::net::UnixDatagram::pair().unwrap();
    {
        let in_flight = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(b.cmdline())
            .unwrap();
        send_fd(&tx_sock, &in_flight);
    }
    let mut w = File::create(b.cmdline()).unwrap();
    w.write_all(b"type=secstorage name=s-1-VM\n").unwrap();
    drop(w);
    let (r, _) = result(&rx);
    assert!(matches!(r, Ok(Released::Fresh { bytes: 28, .. })), "{r:?}");
}

#[test]
fn a_file_swapped_in_between_the_check_and_the_release_is_never_released_as_checked() {
    // strace holds the barrier on entering fsync (after it checked the
    // file, before it releases it) while another file is renamed into place.
    let b = Bench::new();
    let other = b.tree.cache().join("other");
    fs::write(&other, "type=foreign\nrm -rf /\n").unwrap();
    let swap = {
        let (other, target) = (other.clone(), b.cmdline());
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(1500));
            fs::rename(other, target).unwrap();
        })
    };
    let args = [
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync",
        "-e",
        "inject=fsync:delay_enter=3000000",
    ];
    let out = barrier_under_strace(&b, &args);
    swap.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("whole, fresh and valid"), "{err}");
    assert_eq!(out.status.code(), Some(exit::DATA), "{err}");
    assert_eq!(
        fs::read_to_string(b.tree.cache().join(REJECTED_FILE)).unwrap(),
        "type=foreign\nrm -rf /\n"
    );
}

#[test]
fn a_world_writable_cmdline_is_released_mode_0644_saying_so() {
    // qemu-ga creates the file 0666; root's boot scripts parse it.
    use std::os::unix::fs::PermissionsExt;
    let b = Bench::new();
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    fs::set_permissions(b.cmdline(), fs::Permissions::from_mode(0o666)).unwrap();
    let out = barrier_process(&b, "5").wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let mode = fs::metadata(b.cmdline()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("mode 666")).count(),
        1,
        "{err}"
    );
}

#[test]
#[ignore = "needs root (chown); run by tests/run-all.sh"]
fn a_cmdline_the_barrier_does_not_own_keeps_its_mode_with_a_warning() {
    // Only the owner (or CAP_FOWNER, which the unit lacks) may change a
    // file's mode: the barrier says it could not and releases the file.
    use std::os::unix::fs::PermissionsExt;
    assert!(running_as_root(), "run as root (chown)");
    let b = Bench::new();
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    fs::set_permissions(b.cmdline(), fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(b.cmdline(), Some(65534), Some(65534)).unwrap();
    let out = barrier_as_the_unit(&b, "5").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: cannot make") && err.contains("mode 644 (it is 666)"),
        "{err}"
    );
    assert!(err.contains("whole, fresh and valid"), "{err}");
    let mode = fs::metadata(b.cmdline()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o666);
}

#[test]
fn a_symlink_a_fifo_or_a_directory_at_the_path_is_moved_aside_unread() {
    for plant in ["symlink", "fifo", "directory"] {
        let b = Bench::new();
        let target = b.tree.root().join("elsewhere");
        fs::write(&target, "type=secstorage\n").unwrap();
        match plant {
            "symlink" => std::os::unix::fs::symlink(&target, b.cmdline()).unwrap(),
            "fifo" => nix::unistd::mkfifo(
                &b.cmdline(),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap(),
            _ => fs::create_dir(b.cmdline()).unwrap(),
        }
        let (r, _) = result(&b.start(20.0, 5.0));
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), exit::DATA, "{plant}: {e}");
        let want = if plant == "symlink" {
            "is a symlink"
        } else {
            "is not a regular file"
        };
        assert!(e.to_string().contains(want), "{plant}: {e}");
        assert!(!b.cmdline().exists() && b.cmdline().symlink_metadata().is_err());
        let aside = b
            .tree
            .cache()
            .join(REJECTED_FILE)
            .symlink_metadata()
            .unwrap();
        assert_eq!(aside.file_type().is_symlink(), plant == "symlink");
        assert_eq!(aside.is_dir(), plant == "directory");
        assert_eq!(fs::read_to_string(&target).unwrap(), "type=secstorage\n");
    }
}

#[test]
fn a_file_still_unreadable_at_the_deadline_is_moved_aside() {
    // qemu-ga creates the file with mode 0 and gives it its mode just
    // after; until then it counts as being written. One that stays so is
    // never passed on.
    use std::os::unix::fs::PermissionsExt;
    let b = Bench::new();
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    fs::set_permissions(b.cmdline(), fs::Permissions::from_mode(0o0)).unwrap();
    let started = Instant::now();
    let out = barrier_as_the_unit(&b, "1.5").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::DATA), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "refused before the deadline: {err}"
    );
    assert!(
        err.contains("still cannot be read (permission denied) after 1.5s"),
        "{err}"
    );
    assert!(err.contains(REJECTED_FILE), "{err}");
    assert!(!b.cmdline().exists());
    let aside = fs::metadata(b.tree.cache().join(REJECTED_FILE)).unwrap();
    assert_eq!(aside.len(), 16);
}

#[test]
fn a_file_created_unreadable_then_written_and_closed_is_released() {
    // What qemu-ga does: create the file mode 0, give it its mode, write,
    // close. Unreadable is waited on, not refused.
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let b = Bench::new();
    let mut w = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o0)
        .open(b.cmdline())
        .unwrap();
    let barrier = barrier_as_the_unit(&b, "20")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    w.set_permissions(fs::Permissions::from_mode(0o666))
        .unwrap();
    w.write_all(b"type=secstorage\n").unwrap();
    drop(w);
    let out = barrier.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("whole, fresh and valid (16 bytes)"), "{err}");
}

#[test]
fn a_missing_cache_dir_is_made_0755_and_watched() {
    // The unit's CacheDirectory= makes it first; run by hand, the barrier
    // makes it (and its parents) and watches it from the start.
    use std::os::unix::fs::PermissionsExt;
    let b = Bench::new();
    fs::remove_dir_all(b.tree.root().join("var")).unwrap();
    let rx = b.start(20.0, 5.0);
    let dir = fs::metadata(b.tree.cache()).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o755 & !umask());
    not_yet(&rx, Duration::from_millis(300));
    fs::write(b.cmdline(), "type=secstorage\n").unwrap();
    let (r, _) = result(&rx);
    assert!(
        matches!(
            r,
            Ok(Released::Fresh {
                bytes: 16,
                since_close: Some(_)
            })
        ),
        "{r:?}"
    );
}

/// This process's umask (`Umask:` in /proc/self/status).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let field = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap();
    u32::from_str_radix(field.trim(), 8).unwrap()
}

/// Sends `file`'s descriptor over `sock` (SCM_RIGHTS); until the other end
/// receives it, it is in flight: counted by the kernel, in no fd table.
fn send_fd(sock: &std::os::unix::net::UnixDatagram, file: &File) {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: a control buffer sized by CMSG_SPACE for one descriptor,
    // filled through the CMSG_* accessors, for one sendmsg call.
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        assert_eq!(libc::sendmsg(sock.as_raw_fd(), &msg, 0), 1);
    }
}
