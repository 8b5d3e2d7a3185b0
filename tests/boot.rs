//! `boot`, the one boot job, end to end on fake sysfs/dev trees: both ways
//! the host sends (a `*.vport` port, the cmdline file written through
//! qemu-ga) watched at once, and the shutdown record deciding how long a
//! stored cmdline waits. This process plays the host and qemu-ga. No root,
//! no VM.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{message, Running, Tree, CMDLINE, CMDLINE_OLD, KEY, PORT};

const AGENT: &str = "org.qemu.guest_agent.0";

/// A fake tree with a state directory and an empty /proc.
struct Job {
    tree: Tree,
}

impl Job {
    fn new() -> Self {
        let tree = Tree::new();
        fs::create_dir_all(tree.cache()).unwrap();
        fs::create_dir_all(tree.path("proc")).unwrap();
        fs::create_dir_all(tree.path("state")).unwrap();
        Job { tree }
    }

    fn state(&self) -> PathBuf {
        self.tree.path("state")
    }

    fn record(&self) -> PathBuf {
        self.state().join("shutdown")
    }

    fn cmdline(&self) -> PathBuf {
        self.tree.cache().join("cmdline")
    }

    /// A cmdline file from an earlier boot (modified in 2001).
    fn stale(&self) {
        fs::write(self.cmdline(), format!("{CMDLINE_OLD}\n")).unwrap();
        let long_ago = nix::sys::time::TimeVal::new(1_000_000_000, 0);
        nix::sys::stat::utimes(&self.cmdline(), &long_ago, &long_ago).unwrap();
    }

    /// `boot -v` with short deadlines; `opts` replace them.
    /// The guest agent's port only, over a cmdline already there: runs
    /// `boot` with `args` until it says the file is from an earlier boot,
    /// then plays qemu-ga opening its port, and waits for the job's end.
    fn over_an_earlier_file(&self, args: &[(&str, &str)]) -> (i32, String) {
        self.tree.add_port("vport0p1", Some(AGENT));
        let mut run = self.boot(args);
        run.wait_for_line("is from an earlier boot");
        let _agent = self.agent_opens_port("vport0p1");
        done(run)
    }

    fn boot(&self, opts: &[(&str, &str)]) -> Running {
        let mut c = self.tree.cmd("boot");
        c.args(["-v", "--no-ack", "--fifo-stand-in"])
            .arg("--cache-dir")
            .arg(self.tree.cache())
            .arg("--ssh-dir")
            .arg(self.tree.ssh())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--proc-root")
            .arg(self.tree.path("proc"));
        let defaults = [
            ("--settle", "0.05"),
            ("--timeout", "20"),
            ("--grace", "20"),
            ("--port-timeout", "20"),
            ("--no-channel-after", "0.3"),
            ("--file-timeout", "20"),
            ("--file-grace", "20"),
        ];
        for (opt, default) in defaults {
            let v = opts
                .iter()
                .find(|(o, _)| *o == opt)
                .map_or(default, |o| o.1);
            c.args([opt, v]);
        }
        Running::spawn(&mut c)
    }

    /// qemu-ga's write: open, write, close (the close is the release).
    fn agent_writes(&self, text: &str) {
        let mut f = File::create(self.cmdline()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// qemu-ga opening its port (O_RDWR, so that the FIFO does not block).
    fn agent_opens_port(&self, entry: &str) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.tree.node(entry))
            .unwrap()
    }
}

fn done(run: Running) -> (i32, String) {
    let out = run.finish();
    (common::code(&out), common::stderr(&out))
}

fn stored(job: &Job) -> String {
    fs::read_to_string(job.cmdline()).unwrap()
}

// ---- both ways at once ----

#[test]
fn a_vport_port_named_late_wins_over_the_guest_agent_file() {
    let job = Job::new();
    job.stale();
    job.tree.add_port("vport0p1", Some(AGENT));
    let mut run = job.boot(&[("--no-channel-after", "5")]);
    run.wait_for_line("watching the cmdline file");
    job.tree.add_port("vport0p2", Some(PORT));
    let _host = job
        .tree
        .offer("vport0p2", message(CMDLINE, Some(KEY)).as_bytes());
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
    assert!(err.contains("stored the cmdline"), "{err}");
    // The file side never decided: it was stopped before the port was read.
    assert!(!err.contains("releasing the boot"), "{err}");
    assert!(
        !err.contains("keeping the cmdline from an earlier boot"),
        "{err}"
    );
}

#[test]
fn a_write_made_while_the_ports_are_still_being_named_is_not_missed() {
    let job = Job::new();
    // The guest agent's port is there, its name not yet.
    job.tree.add_port("vport0p1", None);
    let mut run = job.boot(&[]);
    run.wait_for_line("no port matching");
    job.agent_writes(&format!("{CMDLINE}\n"));
    // A guest clock that was behind when the file was written (and stepped
    // since): only the watch's event says the write is of this boot.
    let long_ago = nix::sys::time::TimeVal::new(1_000_000_000, 0);
    nix::sys::stat::utimes(&job.cmdline(), &long_ago, &long_ago).unwrap();
    thread::sleep(Duration::from_millis(100));
    fs::write(
        job.tree.class("vport0p1").join("name"),
        format!("{AGENT}\n"),
    )
    .unwrap();
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    // Seen by the watch set up first: it knows the writer closed it.
    assert!(
        err.contains("is whole, fresh and valid") && err.contains("after its writer closed it"),
        "{err}"
    );
    // The file side's release ends the job, before the ports' quiet time.
    assert!(
        !err.contains("the host provides no channel matching"),
        "{err}"
    );
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
}

#[test]
fn a_host_with_neither_channel_is_released_at_once_saying_so() {
    let job = Job::new();
    job.stale();
    job.tree.add_port("vport0p1", Some("com.example.other"));
    let (code, err) = done(job.boot(&[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no port matching pattern *.vport and no org.qemu.guest_agent.0 port")
            && err.contains("nothing can send the parameters"),
        "{err}"
    );
    assert_eq!(stored(&job), format!("{CMDLINE_OLD}\n"), "nothing written");
}

#[test]
fn the_file_side_waits_while_a_port_has_no_name_yet() {
    let job = Job::new();
    job.stale();
    job.tree.add_port("vport0p1", Some(AGENT));
    job.tree.add_port("vport0p2", None);
    let mut run = job.boot(&[("--no-channel-after", "5")]);
    run.wait_for_line("no port matching");
    thread::sleep(Duration::from_millis(300));
    fs::write(job.tree.class("vport0p2").join("name"), format!("{PORT}\n")).unwrap();
    let _host = job
        .tree
        .offer("vport0p2", message(CMDLINE, Some(KEY)).as_bytes());
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
    // Nothing about the file was said on a host whose port was being named.
    assert!(!err.contains("watching the cmdline file"), "{err}");
    assert!(!err.contains("through qemu-ga"), "{err}");
}

#[test]
fn the_guest_agent_file_is_released_only_once_whole() {
    let job = Job::new();
    job.tree.add_port("vport0p1", Some(AGENT));
    let mut run = job.boot(&[]);
    run.wait_for_line("waiting up to");
    // qemu-ga's stdio buffer: a cut prefix, the file still open.
    let mut f = File::create(job.cmdline()).unwrap();
    f.write_all(&CMDLINE.as_bytes()[..10]).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        run.try_wait().is_none(),
        "released a file still open for writing"
    );
    f.write_all(&CMDLINE.as_bytes()[10..]).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is whole, fresh and valid"), "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
}

#[test]
fn where_no_vport_port_exists_nothing_speaks_of_opening_one() {
    let job = Job::new();
    job.stale();
    let (code, err) = job.over_an_earlier_file(&[("--file-grace", "0.3")]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("once the port is open"), "{err}");
    assert!(!err.contains("opened port"), "{err}");
}

// ---- the shutdown record ----

#[test]
fn after_a_clean_reboot_the_stored_cmdline_is_kept_at_once_on_the_port() {
    let job = Job::new();
    job.tree.store_old();
    fs::write(job.record(), "reboot\n").unwrap();
    job.tree.add_port("vport0p1", Some(PORT));
    let (code, err) = done(job.boot(&[("--grace", "60"), ("--timeout", "60")]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the previous boot ended in a reboot"), "{err}");
    assert!(
        err.contains("nothing was arriving on the port; keeping those in"),
        "{err}"
    );
    assert_eq!(job.tree.targets(), common::old_targets());
    assert!(!job.record().exists(), "the record is consumed");
}

#[test]
fn after_a_clean_reboot_the_stored_file_is_kept_at_once_without_qemu_ga() {
    let job = Job::new();
    job.stale();
    fs::write(job.record(), "reboot\n").unwrap();
    job.tree.add_port("vport0p1", Some(AGENT));
    // qemu-ga has not opened its port; with no record the grace period
    // would not even have begun. And the job ends on the file side's
    // decision, not after the ports' quiet time that decides "no channel".
    let (code, err) = done(job.boot(&[
        ("--file-grace", "60"),
        ("--file-timeout", "60"),
        ("--no-channel-after", "30"),
        ("--port-timeout", "120"),
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the previous boot ended in a reboot"), "{err}");
    assert!(
        err.contains("keeping the cmdline from an earlier boot"),
        "{err}"
    );
    assert!(!err.contains("provides no channel"), "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE_OLD}\n"));
}

#[test]
fn a_whole_file_through_qemu_ga_ends_the_job_before_the_no_channel_decision() {
    let job = Job::new();
    job.tree.add_port("vport0p1", Some(AGENT));
    let mut run = job.boot(&[("--no-channel-after", "30"), ("--port-timeout", "120")]);
    run.wait_for_line("waiting up to");
    job.agent_writes(&format!("{CMDLINE}\n"));
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is whole, fresh and valid"), "{err}");
    assert!(!err.contains("provides no channel"), "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
}

#[test]
fn after_a_poweroff_a_late_message_on_the_port_is_still_taken() {
    let job = Job::new();
    job.tree.store_old();
    fs::write(job.record(), "poweroff\n").unwrap();
    job.tree.add_port("vport0p1", Some(PORT));
    let mut run = job.boot(&[("--grace", "0.2")]);
    run.wait_for_line("opened port");
    // Well past the grace period a boot with no record would keep.
    thread::sleep(Duration::from_millis(800));
    let _host = job
        .tree
        .offer("vport0p1", message(CMDLINE, Some(KEY)).as_bytes());
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the previous boot ended in a poweroff"),
        "{err}"
    );
    assert_eq!(job.tree.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    assert!(!job.record().exists());
}

#[test]
fn after_a_poweroff_a_late_write_through_qemu_ga_is_still_taken() {
    let job = Job::new();
    job.stale();
    fs::write(job.record(), "poweroff\n").unwrap();
    job.tree.add_port("vport0p1", Some(AGENT));
    let mut run = job.boot(&[("--file-grace", "0.2")]);
    run.wait_for_line("is from an earlier boot");
    let _agent = job.agent_opens_port("vport0p1");
    thread::sleep(Duration::from_millis(800));
    job.agent_writes(&format!("{CMDLINE}\n"));
    let (code, err) = done(run);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is whole, fresh and valid"), "{err}");
    assert_eq!(stored(&job), format!("{CMDLINE}\n"));
}

#[test]
fn after_a_poweroff_with_nothing_sent_the_stored_file_is_kept_at_the_deadline() {
    let job = Job::new();
    job.stale();
    fs::write(job.record(), "poweroff\n").unwrap();
    let (code, err) = job.over_an_earlier_file(&[("--file-grace", "0.1"), ("--file-timeout", "1")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no fresh parameters within 1s; keeping the cmdline from an earlier boot"),
        "{err}"
    );
    assert_eq!(stored(&job), format!("{CMDLINE_OLD}\n"));
}

#[test]
fn with_no_record_the_stored_file_is_kept_after_the_grace_period() {
    let job = Job::new();
    job.stale();
    let (code, err) = job.over_an_earlier_file(&[("--file-grace", "0.3")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no record of how the previous boot ended"),
        "{err}"
    );
    assert!(
        err.contains("within 300ms of qemu-ga opening its port; keeping the cmdline"),
        "{err}"
    );
}

#[test]
fn a_record_that_says_something_else_counts_as_none_and_is_removed() {
    let job = Job::new();
    job.stale();
    fs::write(job.record(), "sideways\n").unwrap();
    let (code, err) = job.over_an_earlier_file(&[("--file-grace", "0.3")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("neither reboot nor poweroff"), "{err}");
    assert!(
        err.contains("no record of how the previous boot ended"),
        "{err}"
    );
    assert!(!job.record().exists());
}

/// `record-shutdown` with a stand-in `systemctl` on PATH printing `jobs`.
fn record_shutdown(job: &Job, jobs: &str) -> (i32, String) {
    let bin = job.tree.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let systemctl = bin.join("systemctl");
    fs::write(
        &systemctl,
        format!("#!/bin/sh\n[ \"$1\" = list-jobs ] || exit 1\nprintf '%s' '{jobs}'\n"),
    )
    .unwrap();
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
    let out = common::run_guarded(
        Command::new(common::BIN)
            .arg("record-shutdown")
            .arg("--state-dir")
            .arg(job.state())
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display())),
    );
    (common::code(&out), common::stderr(&out))
}

#[test]
fn record_shutdown_tells_a_reboot_from_a_poweroff_by_the_target_being_started() {
    let job = Job::new();
    let reboot = "  71 reboot.target start waiting\n  72 systemd-reboot.service start waiting\n";
    let (code, err) = record_shutdown(&job, reboot);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(job.record()).unwrap(), "reboot\n");
    assert!(err.contains("this boot ends in a reboot"), "{err}");

    let (code, err) = record_shutdown(&job, "  9 poweroff.target start waiting\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(job.record()).unwrap(), "poweroff\n");

    fs::remove_file(job.record()).unwrap();
    let (code, err) = record_shutdown(&job, "  3 vport-bootargs.service stop running\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("recording nothing"), "{err}");
    assert!(!job.record().exists());
}

#[test]
fn record_shutdown_as_writes_what_it_is_told() {
    let job = Job::new();
    let out = common::run_guarded(
        Command::new(common::BIN)
            .args(["record-shutdown", "--as", "poweroff", "--state-dir"])
            .arg(job.state().join("new")),
    );
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    assert_eq!(
        fs::read_to_string(job.state().join("new/shutdown")).unwrap(),
        "poweroff\n"
    );
}

#[test]
fn boot_refuses_to_be_pointed_at_the_guest_agents_port() {
    let job = Job::new();
    job.tree.add_port("vport0p1", Some(AGENT));
    let mut c = job.tree.cmd("boot");
    c.args(["--name", AGENT, "--state-dir"]).arg(job.state());
    let out = common::run_guarded(&mut c);
    assert_eq!(common::code(&out), 64, "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("never opens"));
}
