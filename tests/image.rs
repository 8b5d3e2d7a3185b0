//! The Debian package in a real Debian bookworm system VM image, booted under
//! QEMU the way libvirt lays out a CloudStack system VM.
//!
//! Run: `cargo test --test image` (as root: mmdebstrap, dpkg-buildpackage,
//! lintian, mke2fs and qemu-system-x86_64 must be installed; see the README).
//! Everything is built once per run and shared by the tests below, each of
//! which checks one thing:
//! 1. tests/image/build-deb.sh builds the package (dpkg-buildpackage);
//! 2. tests/image/build-image.sh makes the image (mmdebstrap, mke2fs -d),
//!    cached under target/image keyed on the .deb and the image recipe
//!    (tests/image/cached-image.sh);
//! 3. boots of that disk (tests/image/run-vm.sh), never more than two
//!    guests at a time (one a core):
//!    - first: the host sends with `vport-bootargs send --wait-ack`; the
//!      host then reboots it through qemu-ga (`virsh reboot`'s agent mode);
//!    - second: after that reboot, no host data: the stored parameters are
//!      kept at once (the shutdown record says reboot); the host then
//!      powers it off through qemu-ga;
//!    - after-poweroff: the start after that poweroff, the host sending
//!      well past the grace period: the new parameters are stored by rule;
//!    - xen and vmware: SMBIOS says so, and the unit must do nothing;
//!    - and one beside the first, of a fresh disk with only the guest
//!      agent's channel, the host writing the cmdline through qemu-ga.
//!
//! The guest's image-check unit prints one `@@ WHAT ...` line per fact on
//! the serial console (tests/image/guest/image-check); after `@@ done` the
//! test pings qemu-guest-agent on its socket and shuts the guest down with
//! it. Console logs and figures go to target/image/run/. Timing is reported,
//! never asserted; the limits below only catch a hung guest.

#[path = "image/shared.rs"]
mod shared;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use shared::{base64_decode, base64_encode, build_deb, copy_sparse, image_for, once, repo, Facts};
use vport_bootargs::wire::digest_hex;

const VM: &str = "s-1-VM";
const CMDLINE: &str = "template=domP type=secstorage host=10.1.1.1 port=8250 name=s-1-VM \
    zone=1 pod=1 guid=s-1-VM workers=5 eth0ip=169.254.3.4 eth0mask=255.255.0.0 \
    public.network.device=eth2 authorized_key=c3NoLWVkMjU1MTk=";
const PUBKEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtLXRlc3Qta2V5LWZvci12cG9ydC1ib290YXJncw image-test@host";

/// From QEMU's start to the guest's `@@ done`: only catches a hung guest.
/// A boot takes about a minute under TCG here, two guests side by side; CI
/// machines have been seen 1.8 times slower.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// For the guest agent's answer, and for QEMU to exit after guest-shutdown.
const AGENT_LIMIT: Duration = Duration::from_secs(60);

fn work() -> PathBuf {
    repo().join("target/image")
}

/// What one boot showed.
struct Boot {
    /// Which boot: first, second, xen or vmware.
    label: String,
    /// The `@@ ` lines, without the marker.
    facts: Vec<String>,
    console: String,
    /// The guest agent's reply to guest-ping, or why there is none.
    ping: Result<String, String>,
    /// `vport-bootargs send` on the host, when this boot had one.
    send: Option<Output>,
    /// QEMU start to `@@ done`.
    elapsed: Duration,
}

impl Facts for Boot {
    fn facts(&self) -> &[String] {
        &self.facts
    }

    fn source(&self) -> String {
        format!("{} boot", self.label)
    }
}

impl Boot {
    /// Mode, owner and content of a file the guest reported; it must exist.
    fn existing_file(&self, path: &str) -> (String, String, Vec<u8>) {
        self.file(path)
            .unwrap_or_else(|| panic!("{path} does not exist in the guest"))
    }
}

/// The package, built once for all the tests.
struct Package {
    deb: PathBuf,
    lintian: Output,
}

/// The boots, run once for all the tests.
struct Boots {
    first: Boot,
    second: Boot,
    after_poweroff: Boot,
    xen: Boot,
    vmware: Boot,
}

/// How the host ends a boot, through qemu-ga's guest-shutdown.
#[derive(Clone, Copy)]
enum End {
    /// mode `reboot`: what `virsh reboot` does while qemu-ga runs.
    Reboot,
    /// mode `powerdown`: a stop, as `virsh shutdown` through the agent.
    Poweroff,
}

fn package() -> &'static Package {
    static PACKAGE: OnceLock<Result<Package, String>> = OnceLock::new();
    once(&PACKAGE, "the package could not be built", || {
        let deb = build_deb();
        let lintian = Command::new("lintian")
            .args(["--fail-on", "error,warning", "--pedantic", "-I"])
            .arg(&deb)
            .output()
            .expect("cannot run lintian");
        Package { deb, lintian }
    })
}

fn boots() -> &'static Boots {
    static BOOTS: OnceLock<Result<Boots, String>> = OnceLock::new();
    once(&BOOTS, "the image could not be built or booted", run_boots)
}

/// Where the boots of one run find their image, disk, logs and sockets.
struct RunDir {
    images: PathBuf,
    /// `work()/NAME`, emptied first: console logs and figures.
    dir: PathBuf,
    /// A fresh copy of the image's disk, in `dir`.
    disk: PathBuf,
    /// QEMU's sockets, one directory a boot: a short path, sun_path holds
    /// 108 bytes.
    sockets: tempfile::TempDir,
}

/// An emptied `work()/name` directory with a fresh copy of the image's disk
/// in it, and a directory for QEMU's sockets named after `prefix`.
fn fresh_run(images: &Path, name: &str, prefix: &str) -> RunDir {
    let dir = work().join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    copy_sparse(&images.join("image.raw"), &disk);
    RunDir {
        images: images.to_owned(),
        dir,
        disk,
        sockets: tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
    }
}

impl RunDir {
    /// The copy of the disk that the boot named `label` runs on.
    fn disk_for(&self, label: &str) -> PathBuf {
        self.dir.join(format!("disk-{label}.raw"))
    }

    /// The directory for the sockets of the boot named `label`.
    fn sockets_for(&self, label: &str) -> PathBuf {
        let dir = self.sockets.path().join(label);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

fn run_boots() -> Boots {
    let started = Instant::now();
    let images = image_for(&package().deb);
    let built = started.elapsed();

    let run = fresh_run(&images, "run", "vport-image");
    let key = run.dir.join("id_rsa.pub.cloud");
    fs::write(&key, format!("{PUBKEY}\n")).unwrap();

    // Never more guests than the machine's two cores: TCG guests are
    // CPU-bound, and a third one side by side slows them all (a CI run saw
    // a boot take over 240 s). The first boot, with the guest-agent-only
    // boot beside it; then the three boots that start from the disk the
    // first one left, taken in turn by whichever of the two threads is free.
    let queue = Mutex::new(vec!["vmware", "xen", "second"]);
    let done = Mutex::new(Vec::new());
    let first = thread::scope(|scope| {
        let (first_done, after_first) = mpsc::channel::<()>();
        let work = || loop {
            let Some(label) = queue.lock().unwrap().pop() else {
                break;
            };
            let boot = later_boot(&run, label);
            done.lock().unwrap().push(boot);
            // The start after the second boot's poweroff, on its disk.
            if label == "second" {
                let boot = after_poweroff(&run);
                done.lock().unwrap().push(boot);
            }
        };
        let beside = scope.spawn(move || {
            // Its outcome, failure included, is kept for its own tests.
            let _ = std::panic::catch_unwind(ga_only);
            // Err: the first boot failed, and the later ones are moot.
            if after_first.recv().is_ok() {
                work();
            }
        });
        let first = boot(&run, &run.disk, "first", Some(&key), &[], true, End::Reboot);
        for label in ["xen", "vmware"] {
            copy_sparse(&run.disk, &run.disk_for(label));
        }
        first_done.send(()).unwrap();
        work();
        beside.join().unwrap();
        first
    });
    let mut later = done.into_inner().unwrap();
    let mut take = |label: &str| {
        let i = later.iter().position(|b| b.label == label).unwrap();
        later.swap_remove(i)
    };
    let (second, after_poweroff, xen, vmware) = (
        take("second"),
        take("after-poweroff"),
        take("xen"),
        take("vmware"),
    );
    report(
        &run.dir,
        built,
        started.elapsed(),
        &[&first, &second, &after_poweroff, &xen, &vmware],
    );
    Boots {
        first,
        second,
        after_poweroff,
        xen,
        vmware,
    }
}

/// A boot from the disk the first boot left: `second` on that disk itself,
/// with no host data (the stored parameters must stay); `xen` and `vmware`
/// on their own copies, with SMBIOS (and CPUID) saying so.
fn later_boot(run: &RunDir, label: &str) -> Boot {
    match label {
        "second" => boot(run, &run.disk, label, None, &[], false, End::Poweroff),
        // systemd-detect-virt trusts a DMI vendor of Xen before CPUID.
        "xen" => boot(
            run,
            &run.disk_for(label),
            label,
            None,
            &["-smbios", "type=1,manufacturer=Xen,product=HVM domU"],
            false,
            End::Poweroff,
        ),
        // VMware's DMI vendor counts only once CPUID names no hypervisor
        // (TCG's "TCGTCGTCGTCG" would say qemu).
        "vmware" => boot(
            run,
            &run.disk_for(label),
            label,
            None,
            &[
                "-cpu",
                "max,hypervisor=off",
                "-smbios",
                "type=1,manufacturer=VMware,, Inc.,product=VMware Virtual Platform",
            ],
            false,
            End::Poweroff,
        ),
        other => unreachable!("no boot named {other}"),
    }
}

/// One boot of the image under QEMU (tests/image/run-vm.sh), its serial
/// console followed line by line.
struct Guest {
    label: String,
    qemu: Child,
    lines: mpsc::Receiver<String>,
    /// The console so far.
    console: String,
    /// QEMU's sockets for this guest.
    sockets: PathBuf,
    started: Instant,
}

impl Guest {
    /// Boots `disk` with `run`'s image; `env` goes to run-vm.sh, and the
    /// console to `LABEL.console` in the run's directory as well.
    fn start(
        run: &RunDir,
        disk: &Path,
        label: &str,
        env: &[(&str, &str)],
        qemu_args: &[&str],
    ) -> Guest {
        let sockets = run.sockets_for(label);
        let started = Instant::now();
        let mut qemu = Command::new(repo().join("tests/image/run-vm.sh"))
            .envs(env.iter().copied())
            .arg(&run.images)
            .arg(disk)
            .arg(&sockets)
            .arg(VM)
            .args(qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tests/image/run-vm.sh");
        let lines = console_reader(&mut qemu, run.dir.join(format!("{label}.console")));
        Guest {
            label: label.to_owned(),
            qemu,
            lines,
            console: String::new(),
            sockets,
            started,
        }
    }

    /// QEMU's socket `VM.suffix`: `agent` for the *.vport port,
    /// `org.qemu.guest_agent.0` for qemu-ga's.
    fn socket(&self, suffix: &str) -> PathBuf {
        self.sockets.join(format!("{VM}.{suffix}"))
    }

    /// The `@@ ` facts up to `@@ done`, within BOOT_LIMIT of QEMU's start.
    /// Without them QEMU is killed, and the panic shows what it said and the
    /// end of the console.
    fn report(&mut self) -> Vec<String> {
        let deadline = self.started + BOOT_LIMIT;
        let mut facts = Vec::new();
        let problem = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.console.push_str(&line);
                    self.console.push('\n');
                    match line.strip_prefix("@@ ") {
                        Some("done") => return facts,
                        Some(f) => facts.push(f.to_owned()),
                        None => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!("the guest did not report within {BOOT_LIMIT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break "QEMU exited before the guest reported".to_owned()
                }
            }
        };
        let _ = self.qemu.kill();
        let stderr = read_all(self.qemu.stderr.take());
        let _ = self.qemu.wait();
        panic!(
            "{} boot: {problem}; QEMU said {stderr:?}; console:\n{}",
            self.label,
            tail(&self.console, 60)
        );
    }

    /// Sends guest-ping to qemu-guest-agent on its host socket, then
    /// guest-shutdown (which has no reply) on the same connection, held open
    /// until QEMU exits: QEMU may drop what a host wrote just before
    /// disconnecting. The guest powers itself off anyway
    /// (IMAGE_CHECK_LINGER), and QEMU is killed past AGENT_LIMIT. The reply
    /// to the ping, and the whole console.
    fn ping_then_shut_down(self, end: End) -> (Result<String, String>, String) {
        let socket = self.socket("org.qemu.guest_agent.0");
        let ping = (|| {
            let mut s = UnixStream::connect(&socket).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(AGENT_LIMIT)).unwrap();
            s.write_all(b"{\"execute\":\"guest-ping\"}\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut line = String::new();
            BufReader::new(&s)
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            Ok((s, line.trim().to_owned()))
        })();
        match ping {
            Ok((mut s, reply)) => {
                let shutdown: &[u8] = match end {
                    End::Reboot => {
                        b"{\"execute\":\"guest-shutdown\",\"arguments\":{\"mode\":\"reboot\"}}\n"
                    }
                    End::Poweroff => b"{\"execute\":\"guest-shutdown\"}\n",
                };
                let _ = s.write_all(shutdown);
                let console = self.finish();
                drop(s);
                (Ok(reply), console)
            }
            Err(e) => (Err(e), self.finish()),
        }
    }

    /// Waits for QEMU to exit (killed past AGENT_LIMIT); the whole console,
    /// with what it said after `@@ done`, for the log file.
    fn finish(mut self) -> String {
        wait_or_kill(&mut self.qemu, AGENT_LIMIT);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.console.push_str(&line);
            self.console.push('\n');
        }
        self.console
    }
}

/// Boots `disk` once and collects what the guest reported; with `send_key`,
/// the host sends the cmdline and that key; with `analyze`, the guest runs
/// systemd-analyze on the units too.
fn boot(
    run: &RunDir,
    disk: &Path,
    label: &str,
    send_key: Option<&Path>,
    qemu_args: &[&str],
    analyze: bool,
    end: End,
) -> Boot {
    let env = [
        ("IMAGE_CHECK_LINGER", "30"),
        (
            "IMAGE_APPEND",
            if analyze { "imagecheck.analyze=1" } else { "" },
        ),
    ];
    let mut guest = Guest::start(run, disk, label, &env, qemu_args);

    // Started before the guest is up, as CloudStack's agent does: send keeps
    // (re)connecting and stays connected until the guest's ack.
    let sender = send_key.map(|key| {
        let cmd = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
            .arg("send")
            .arg("--socket")
            .arg(guest.socket("agent"))
            .args(["-p", &CMDLINE.replace(' ', "%")])
            .arg("--pubkey-file")
            .arg(key)
            .args(["--wait-ack", "180"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start vport-bootargs send");
        thread::spawn(move || cmd.wait_with_output().unwrap())
    });

    let facts = guest.report();
    let elapsed = guest.started.elapsed();
    let (ping, console) = guest.ping_then_shut_down(end);
    let send = sender.map(|t| t.join().unwrap());
    Boot {
        label: label.to_owned(),
        facts,
        console,
        ping,
        send,
        elapsed,
    }
}

/// What the host sends the start after a poweroff: new parameters.
const CMDLINE_AFTER_POWEROFF: &str = "template=domP type=secstorage host=10.1.1.1 port=8250 \
    name=s-1-VM zone=1 pod=1 guid=s-1-VM workers=5 eth0ip=169.254.3.9 eth0mask=255.255.0.0 \
    public.network.device=eth2 authorized_key=c3NoLWVkMjU1MTk=";
/// How long after the unit says its rule the host sends: well past the
/// port's grace period (5 s) that a boot with no record would give it.
const LATE_SEND: Duration = Duration::from_secs(12);

/// The start after the second boot's poweroff, on its disk: the host
/// connects only LATE_SEND after the unit said which rule applies.
fn after_poweroff(run: &RunDir) -> Boot {
    let label = "after-poweroff";
    let env = [("IMAGE_CHECK_LINGER", "30"), ("IMAGE_APPEND", "")];
    let mut guest = Guest::start(run, &run.disk, label, &env, &[]);
    let deadline = guest.started + BOOT_LIMIT;
    let mut heard = false;
    while let Ok(line) = guest
        .lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        guest.console.push_str(&line);
        guest.console.push('\n');
        if line.contains("vport-bootargs: ") && line.contains("previous boot ended") {
            heard = true;
            break;
        }
    }
    assert!(
        heard,
        "{label} boot: the unit never said its rule; console:\n{}",
        tail(&guest.console, 60)
    );
    thread::sleep(LATE_SEND);
    let key = run.dir.join("id_rsa.pub.cloud");
    let cmd = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .arg("send")
        .arg("--socket")
        .arg(guest.socket("agent"))
        .args(["-p", &CMDLINE_AFTER_POWEROFF.replace(' ', "%")])
        .arg("--pubkey-file")
        .arg(&key)
        .args(["--wait-ack", "180"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vport-bootargs send");
    let sender = thread::spawn(move || cmd.wait_with_output().unwrap());
    let facts = guest.report();
    let elapsed = guest.started.elapsed();
    let (ping, console) = guest.ping_then_shut_down(End::Poweroff);
    Boot {
        label: label.to_owned(),
        facts,
        console,
        ping,
        send: Some(sender.join().unwrap()),
        elapsed,
    }
}

/// Reads QEMU's stdout (the serial console) line by line into a channel and
/// a log file.
fn console_reader(qemu: &mut Child, log: PathBuf) -> mpsc::Receiver<String> {
    let stdout = qemu.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut log = fs::File::create(log).unwrap();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            let _ = writeln!(log, "{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Figures for the README: written to target/image/run/report.txt and
/// printed (visible with --nocapture).
fn report(run: &Path, built: Duration, total: Duration, boots: &[&Boot]) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let mut text = format!(
        "machine: {nproc} cores, {cpu}, QEMU TCG\n\
         package and image ready (built or cached): {:.1} s\n\
         whole run: {:.1} s\n",
        built.as_secs_f64(),
        total.as_secs_f64()
    );
    for b in boots {
        let unit = b
            .facts_with("unit vport-bootargs.service ")
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let release = if b.unit("vport-bootargs.service", "ConditionResult") == "yes" {
            format!("{:.2} s", b.report_runtime("vport-bootargs.service"))
        } else {
            "skipped".to_owned()
        };
        text.push_str(&format!(
            "{} boot: QEMU start to report {:.1} s; guest uptime at report {} s; \
             vport-bootargs.service start to release {release}; unit: {unit}\n",
            b.label,
            b.elapsed.as_secs_f64(),
            b.facts_with("uptime ").first().copied().unwrap_or("?")
        ));
    }
    for b in boots.iter().take(1) {
        text.push_str(&format!(
            "systemd-analyze security: {}\n",
            b.fact("security ")
        ));
    }
    let _ = fs::write(run.join("report.txt"), &text);
    eprintln!("{text}");
}

// ---- the package ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn lintian_reports_no_errors_or_warnings() {
    let s = package();
    let out = String::from_utf8_lossy(&s.lintian.stdout);
    assert!(
        s.lintian.status.success(),
        "lintian failed on {}:\n{out}{}",
        s.deb.display(),
        String::from_utf8_lossy(&s.lintian.stderr)
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{out}"
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn package_ships_binary_unit_man_pages_and_completion() {
    let s = package();
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&s.deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/sbin/vport-bootargs",
        "./lib/systemd/system/vport-bootargs.service",
        "./usr/lib/modules-load.d/vport-bootargs.conf",
        "./usr/share/man/man8/vport-bootargs.8.gz",
        "./usr/share/man/man8/vport-bootargs-fetch.8.gz",
        "./usr/share/man/man8/vport-bootargs-send.8.gz",
        "./usr/share/bash-completion/completions/vport-bootargs",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} is not in the package:\n{listing}"
        );
    }
}

// ---- first boot: the host sends ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn send_gets_the_guests_ack() {
    let b = &boots().first;
    let out = b.send.as_ref().unwrap();
    assert!(
        out.status.success(),
        "vport-bootargs send: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn unit_succeeds_under_qemu() {
    let b = &boots().first;
    assert_eq!(b.fact("virt "), "qemu", "TCG guests are detected as qemu");
    assert_eq!(b.unit("vport-bootargs.service", "ConditionResult"), "yes");
    assert_eq!(b.unit("vport-bootargs.service", "ActiveState"), "active");
    assert_eq!(b.unit("vport-bootargs.service", "Result"), "success");
    assert_eq!(b.unit("vport-bootargs.service", "ExecMainStatus"), "0");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn stored_files_hold_what_was_sent_with_their_modes() {
    let b = &boots().first;
    let (mode, owner, content) = b.existing_file("/var/cache/cloud/cmdline");
    assert_eq!((mode.as_str(), owner.as_str()), ("644", "root:root"));
    assert_eq!(String::from_utf8(content).unwrap().trim_end(), CMDLINE);
    for keys in [
        "/var/cache/cloud/authorized_keys",
        "/root/.ssh/authorized_keys",
    ] {
        let (mode, owner, content) = b.existing_file(keys);
        assert_eq!(
            (mode.as_str(), owner.as_str()),
            ("600", "root:root"),
            "{keys}"
        );
        assert_eq!(
            String::from_utf8(content).unwrap().trim_end(),
            PUBKEY,
            "{keys}"
        );
    }
    assert_eq!(b.fact("dir /root/.ssh "), "700 root:root");
    let show: Vec<&str> = b.facts_with("show ");
    assert!(
        show.contains(&"type='secstorage'"),
        "vport-bootargs show --format env in the guest: {show:?}"
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn cloud_early_config_finds_the_files_already_in_place() {
    let b = &boots().first;
    let seen = b.fact("early-config ");
    let cmdline_sha = digest_hex(format!("{CMDLINE}\n").as_bytes());
    let key_sha = digest_hex(format!("{PUBKEY}\n").as_bytes());
    assert_eq!(
        seen,
        format!(
            "cmdline={cmdline_sha} cache_keys={key_sha} root_keys={key_sha} vport_bootargs=active"
        )
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn udev_symlinks_resolve_to_the_ports() {
    let b = &boots().first;
    let ports = b.facts_with("port ");
    assert_eq!(ports.len(), 2, "{ports:?}");
    for p in ports {
        // "vport0p2 name=s-1-VM.vport link=/dev/vport0p2"
        let mut it = p.split_whitespace();
        let node = it.next().unwrap();
        let name = it.next().unwrap().strip_prefix("name=").unwrap();
        let link = it.next().unwrap().strip_prefix("link=").unwrap();
        assert!(
            name == "org.qemu.guest_agent.0" || name == format!("{VM}.vport"),
            "{p}"
        );
        assert_eq!(link, format!("/dev/{node}"), "/dev/virtio-ports/{name}");
    }
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn guest_agent_is_active_and_answers_ping() {
    let b = &boots().first;
    assert_eq!(b.unit("qemu-guest-agent.service", "ActiveState"), "active");
    assert_eq!(b.ping.as_deref(), Ok("{\"return\": {}}"));
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn unit_output_reaches_console_and_journal() {
    let b = &boots().first;
    let stored = "vport-bootargs: stored the cmdline";
    assert!(
        b.console
            .lines()
            .any(|l| !l.starts_with("@@") && l.contains(stored)),
        "not on the console:\n{}",
        b.console
    );
    assert!(
        b.facts_with("journal ").iter().any(|l| l.contains(stored)),
        "not in the journal: {:?}",
        b.facts_with("journal ")
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn systemd_analyze_verify_is_clean() {
    let b = &boots().first;
    assert_eq!(b.fact("verify "), "rc=0");
    assert!(!b.fact("manpage ").contains("missing"));
}

// ---- second boot: after a reboot, no host data ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn reboot_without_host_data_keeps_stored_parameters_at_once_by_the_shutdown_record() {
    let s = boots();
    // The first boot's ExecStop, on the console during its shutdown.
    assert!(
        s.first
            .console
            .lines()
            .any(|l| l.contains("vport-bootargs: this boot ends in a reboot; recorded in")),
        "{}",
        tail(&s.first.console, 40)
    );
    let b = &s.second;
    assert_eq!(b.unit("vport-bootargs.service", "Result"), "success");
    assert_eq!(b.unit("vport-bootargs.service", "ExecMainStatus"), "0");
    for f in [
        "/var/cache/cloud/cmdline",
        "/var/cache/cloud/authorized_keys",
        "/root/.ssh/authorized_keys",
    ] {
        assert_eq!(b.existing_file(f), s.first.existing_file(f), "{f} changed");
    }
    let journal = b.facts_with("journal ");
    assert!(
        journal.iter().any(|l| l.contains(
            "the previous boot ended in a reboot (/var/lib/vport-bootargs/shutdown), after which CloudStack sends nothing"
        )),
        "{journal:?}"
    );
    assert!(
        journal
            .iter()
            .any(|l| l.contains("nothing was arriving on the port; keeping those in")),
        "{journal:?}"
    );
    assert_eq!(b.file("/var/lib/vport-bootargs/shutdown"), None, "consumed");
}

// ---- after the second boot's poweroff: the host sends late ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn after_a_poweroff_the_start_waits_for_the_hosts_late_parameters() {
    let s = boots();
    assert!(
        s.second
            .console
            .lines()
            .any(|l| l.contains("vport-bootargs: this boot ends in a poweroff; recorded in")),
        "{}",
        tail(&s.second.console, 40)
    );
    let b = &s.after_poweroff;
    let out = b.send.as_ref().unwrap();
    assert!(
        out.status.success(),
        "vport-bootargs send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.unit("vport-bootargs.service", "Result"), "success");
    let journal = b.facts_with("journal ");
    assert!(
        journal
            .iter()
            .any(|l| l.contains("the previous boot ended in a poweroff")
                && l.contains("a start follows and the host writes new parameters")),
        "{journal:?}"
    );
    let (_, _, content) = b.existing_file("/var/cache/cloud/cmdline");
    assert_eq!(
        String::from_utf8(content).unwrap().trim_end(),
        CMDLINE_AFTER_POWEROFF
    );
    // cloud-preinit's stand-in read the new file, at once.
    assert!(
        b.fact("preinit ").ends_with("polls=0"),
        "{}",
        b.fact("preinit ")
    );
    assert_eq!(b.file("/var/lib/vport-bootargs/shutdown"), None, "consumed");
}

// ---- other hypervisors (by SMBIOS): the unit must be a no-op ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn unit_is_skipped_on_xen() {
    assert_skipped(&boots().xen, "xen");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn unit_is_skipped_on_vmware() {
    assert_skipped(&boots().vmware, "vmware");
}

fn assert_skipped(b: &Boot, virt: &str) {
    assert_eq!(b.fact("virt "), virt);
    assert_eq!(b.unit("vport-bootargs.service", "ConditionResult"), "no");
    assert_eq!(b.unit("vport-bootargs.service", "ActiveState"), "inactive");
    assert!(
        b.facts_with("journal ")
            .iter()
            .all(|l| !l.contains("vport-bootargs:")),
        "the helper ran: {:?}",
        b.facts_with("journal ")
    );
    // cloud-early-config runs as before and finds the earlier files.
    assert!(b.fact("early-config ").ends_with("vport_bootargs=inactive"));
    assert_eq!(
        b.existing_file("/var/cache/cloud/cmdline"),
        boots().first.existing_file("/var/cache/cloud/cmdline")
    );
}

// ---- one unit, installed over the two-unit layout; quiet logs ----

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn package_ships_one_unit_and_no_tmpfiles_entry() {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&package().deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let units: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("/lib/systemd/system/"))
        .filter(|l| l.ends_with(".service"))
        .collect();
    assert_eq!(units.len(), 1, "{units:?}");
    assert!(units[0].ends_with(" ./lib/systemd/system/vport-bootargs.service"));
    assert!(!listing.contains("tmpfiles.d"), "{listing}");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn upgrade_from_the_two_unit_layout_leaves_one_enabled_unit() {
    let b = &boots().first;
    // No unit file, enablement symlink or deb-systemd-helper state left.
    assert_eq!(b.fact("old-barrier-unit "), "end");
    assert_eq!(b.fact("enabled "), "enabled");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn one_unit_on_the_boot_path_stores_from_the_port() {
    let s = boots();
    for b in [&s.first, &s.second] {
        let journal = b.facts_with("journal ");
        // The file side never decided: the port was there.
        assert!(
            journal
                .iter()
                .all(|l| !l.contains("releasing the boot") && !l.contains("through qemu-ga")),
            "{journal:?}"
        );
        // cloud-preinit's stand-in read what the unit stored, at once.
        assert!(
            b.fact("preinit ").ends_with("polls=0"),
            "{}",
            b.fact("preinit ")
        );
    }
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn boots_log_no_tmpfiles_duplicate_and_no_port_wait_where_there_is_no_port() {
    let s = boots();
    for b in [&s.first, &s.second] {
        assert_eq!(b.fact("tmpfiles-duplicates "), "0", "{}", b.label);
        // /root/.ssh is there (systemd's provision.conf) and was written.
        assert_eq!(b.fact("dir /root/.ssh "), "700 root:root");
    }
    let g = ga_only();
    assert_eq!(g.fact("tmpfiles-duplicates "), "0");
    assert!(
        g.facts_with("journal ")
            .iter()
            .all(|l| !l.contains("once the port is open")),
        "{:?}",
        g.facts_with("journal ")
    );
}

/// What the host writes through qemu-guest-agent. CloudStack's `patch.sh`
/// writes `echo $cmdline | base64`: the cmdline and a newline.
const GA_CMDLINE: &str = "template=domP type=consoleproxy host=10.1.1.1 port=8250 name=v-2-VM \
    zone=1 pod=1 guid=v-2-VM eth0ip=169.254.3.5 authorized_key=c3NoLWVkMjU1MTk=";

/// A client of qemu-guest-agent on its host socket: one JSON command per
/// line, one reply per line.
struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Agent {
    fn connect(socket: &Path) -> Result<Agent, String> {
        let s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(AGENT_LIMIT)).unwrap();
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Agent {
            reader: BufReader::new(s),
            writer,
        })
    }

    fn line(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("reply {line:?}: {e}"))
    }

    /// Sends one command and returns its `return`, or its error.
    fn call(&mut self, cmd: serde_json::Value) -> Result<serde_json::Value, String> {
        writeln!(self.writer, "{cmd}").map_err(|e| format!("write: {e}"))?;
        let reply = self.line()?;
        match reply.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{cmd} -> {reply}")),
        }
    }

    /// guest-sync, as patch.sh does before anything else.
    fn sync(&mut self) -> Result<(), String> {
        let id = 1_234_567_890u64;
        let cmd = serde_json::json!({"execute": "guest-sync", "arguments": {"id": id}});
        writeln!(self.writer, "{cmd}").map_err(|e| format!("write: {e}"))?;
        for _ in 0..10 {
            if self.line()?.get("return") == Some(&serde_json::json!(id)) {
                return Ok(());
            }
        }
        Err("guest-sync never answered".into())
    }

    /// Starts `sh -c script` in the guest; returns its pid.
    fn exec_start(&mut self, script: &str) -> Result<i64, String> {
        let r = self.call(serde_json::json!({"execute": "guest-exec", "arguments": {
            "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}))?;
        r["pid"].as_i64().ok_or_else(|| format!("guest-exec: {r}"))
    }

    /// Waits for a guest-exec'd process; returns its exit code and output.
    fn exec_wait(&mut self, pid: i64, limit: Duration) -> Result<(i64, String), String> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.call(serde_json::json!({"execute": "guest-exec-status",
                "arguments": {"pid": pid}}))?;
            if r["exited"] == true {
                let out = base64_decode(r["out-data"].as_str().unwrap_or(""));
                let err = base64_decode(r["err-data"].as_str().unwrap_or(""));
                let mut text = String::from_utf8_lossy(&out).into_owned();
                text.push_str(&String::from_utf8_lossy(&err));
                return Ok((r["exitcode"].as_i64().unwrap_or(-1), text));
            }
            if Instant::now() >= deadline {
                return Err(format!("guest process {pid} still running after {limit:?}"));
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn exec(&mut self, script: &str, limit: Duration) -> Result<(i64, String), String> {
        let pid = self.exec_start(script)?;
        self.exec_wait(pid, limit)
    }

    /// CloudStack's scripts/vm/hypervisor/kvm/patch.sh, by behaviour:
    /// guest-file-open `w+`, guest-file-write `buf-b64`, guest-file-close.
    fn write_file(&mut self, path: &str, content: &[u8]) -> Result<(), String> {
        let h = self.call(serde_json::json!({"execute": "guest-file-open",
            "arguments": {"path": path, "mode": "w+"}}))?;
        self.call(serde_json::json!({"execute": "guest-file-write",
            "arguments": {"handle": h, "buf-b64": base64_encode(content)}}))?;
        self.call(serde_json::json!({"execute": "guest-file-close", "arguments": {"handle": h}}))?;
        Ok(())
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, String> {
        let h = self.call(serde_json::json!({"execute": "guest-file-open",
            "arguments": {"path": path, "mode": "r"}}))?;
        let r = self.call(serde_json::json!({"execute": "guest-file-read",
            "arguments": {"handle": h, "count": 65536}}))?;
        self.call(serde_json::json!({"execute": "guest-file-close", "arguments": {"handle": h}}))?;
        Ok(base64_decode(r["buf-b64"].as_str().unwrap_or("")))
    }
}

/// The sandbox settings of the installed unit, one `-p SETTING` pair each,
/// into "$@" (sh; the settings are the unit's lines between `# Sandbox` and
/// `[Install]`).
const SANDBOX_PROPS: &str = r#"
unit=/lib/systemd/system/vport-bootargs.service
props=$(sed -n '/^# Sandbox/,/^\[Install\]/p' "$unit" | grep -E '^[A-Za-z]+=')
with_props() {
    set --
    while IFS= read -r p; do set -- "$@" -p "$p"; done <<PROPS
$props
PROPS
    "$@"
}
"#;

/// Runs `vport-bootargs ports` in transient units: with no sandbox and with
/// the unit's, alternately, so that the machine's load drifting over minutes
/// cancels out. One `LABEL MS rc=N` line per run. `without LABEL "NAMES"`
/// leaves settings out; which settings cost most at boot is measured by hand
/// with tests/image/sandbox-boots.sh (per setting, this took minutes and
/// stayed below this machine's noise).
const SANDBOX_COST: &str = r#"
one() {
    label=$1; shift
    s=$(date +%s%N)
    systemd-run --wait --quiet --collect "$@" /usr/sbin/vport-bootargs ports >/dev/null 2>&1
    rc=$?
    e=$(date +%s%N)
    echo "$label $(( (e - s) / 1000000 )) rc=$rc"
}
without() {
    label=$1; skip=" $2 "
    set --
    while IFS= read -r p; do
        case "$skip" in *" ${p%%=*} "*) continue ;; esac
        set -- "$@" -p "$p"
    done <<PROPS
$props
PROPS
    one "$label" "$@"
}
for i in 1 2 3 4 5 6; do one none; without full ""; done
"#;

/// A fetch in a transient unit with the service's own sandbox, waiting for
/// a port that is not there yet (the no-channel rule pushed far away), so
/// that the host can hot-plug one and see the helper woken by its uevent.
const UEVENT_FETCH: &str = r#"
set --
while IFS= read -r p; do set -- "$@" -p "$p"; done <<PROPS
$props
PROPS
systemd-run --wait --quiet --unit=vb-uevent "$@" /usr/sbin/vport-bootargs -v fetch \
    --no-channel-after 600 --port-timeout 150 --timeout 150 \
    --cache-dir /var/cache/cloud/uevent --ssh-dir /var/cache/cloud/uevent-ssh
echo "rc=$?"
journalctl -u vb-uevent -o cat --no-pager
cat /var/cache/cloud/uevent/cmdline
"#;

/// What the guest-agent-only boot showed.
struct GaOnly {
    facts: Vec<String>,
    console: String,
    /// The host's write of the cmdline through qemu-ga during the boot.
    booted_write: Result<(), String>,
    ping: Result<String, String>,
    /// What qemu-ga read back after writing the cmdline as patch.sh does.
    written: Result<Vec<u8>, String>,
    /// The transient fetch woken by the hot-plugged port: its exit line,
    /// its journal and the cmdline it stored.
    uevent: Result<String, String>,
    sandbox: Result<String, String>,
}

impl Facts for GaOnly {
    fn facts(&self) -> &[String] {
        &self.facts
    }

    fn source(&self) -> String {
        "the guest-agent-only boot".to_owned()
    }
}

fn ga_only() -> &'static GaOnly {
    static GA_ONLY: OnceLock<Result<GaOnly, String>> = OnceLock::new();
    once(&GA_ONLY, "the guest-agent-only boot failed", run_ga_only)
}

fn run_ga_only() -> GaOnly {
    let images = image_for(&package().deb);
    // A disk as the image left it: no stored parameters.
    let run = fresh_run(&images, "run-ga-only", "vport-ga");
    let label = "ga-only";
    let qmp_path = run.sockets_for(label).join("qmp");
    let mut guest = Guest::start(
        &run,
        &run.disk,
        label,
        &[
            ("IMAGE_CHECK_LINGER", "900"),
            ("IMAGE_CHANNELS", "ga-only"),
            // The host writes while the guest boots (below); should that
            // fail, the stand-in's 60 one-second polls would only wait.
            ("IMAGE_APPEND", "preinit.polls=3"),
        ],
        &[
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path.display()),
        ],
    );
    // As CloudStack's patch.sh: as soon as qemu-ga answers, write the
    // cmdline through it; the unit holds the boot scripts until then.
    let socket = guest.socket("org.qemu.guest_agent.0");
    let deadline = guest.started + BOOT_LIMIT;
    let host = thread::spawn(move || loop {
        let tried = Agent::connect(&socket).and_then(|mut a| {
            a.sync()?;
            a.write_file(
                "/var/cache/cloud/cmdline",
                format!("{GA_CMDLINE}\n").as_bytes(),
            )
        });
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    });
    let facts = guest.report();
    let booted_write = host.join().unwrap();
    let mut agent = Agent::connect(&guest.socket("org.qemu.guest_agent.0"));
    let mut step = |f: &mut dyn FnMut(&mut Agent) -> Result<String, String>| match &mut agent {
        Ok(a) => f(a),
        Err(e) => Err(e.clone()),
    };
    let ping = step(&mut |a| {
        a.sync()?;
        a.call(serde_json::json!({"execute": "guest-ping"}))
            .map(|r| format!("{{\"return\": {r}}}"))
    });
    let written = step(&mut |a| {
        let content = format!("{GA_CMDLINE}\n");
        a.write_file("/var/cache/cloud/cmdline", content.as_bytes())?;
        let back = a.read_file("/var/cache/cloud/cmdline")?;
        Ok(String::from_utf8_lossy(&back).into_owned())
    })
    .map(String::into_bytes);
    let uevent = step(&mut |a| uevent_in_the_unit(a, &qmp_path, &guest.sockets));
    let sandbox = step(&mut |a| {
        let script = format!("{SANDBOX_PROPS}{SANDBOX_COST}");
        a.exec(&script, Duration::from_secs(900)).map(|r| r.1)
    });
    let _ = step(&mut |a| {
        a.call(serde_json::json!({"execute": "guest-shutdown"}))
            .map(|_| String::new())
    });
    let console = guest.finish();
    let g = GaOnly {
        facts,
        console,
        booted_write,
        ping,
        written,
        uevent,
        sandbox,
    };
    report_ga_only(&run.dir, &g);
    g
}

/// Starts a sandboxed fetch waiting for a port, hot-plugs `s-1-VM.vport`
/// through QMP once it waits, and sends to it from the host.
fn uevent_in_the_unit(a: &mut Agent, qmp_path: &Path, dir: &Path) -> Result<String, String> {
    let pid = a.exec_start(&format!("{SANDBOX_PROPS}{UEVENT_FETCH}"))?;
    // Until the helper waits (its lines in the transient unit's journal),
    // so that the port comes after it started.
    let deadline = Instant::now() + AGENT_LIMIT;
    loop {
        let (_, out) = a.exec(
            "journalctl -u vb-uevent -o cat --no-pager | grep -c 'waiting on kernel uevents\\|rescanning every'",
            AGENT_LIMIT,
        )?;
        if out.trim().parse::<u32>().unwrap_or(0) > 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err("the transient fetch did not start waiting".into());
        }
        thread::sleep(Duration::from_millis(500));
    }
    let hot = dir.join("hot.agent");
    let qmp = UnixStream::connect(qmp_path).map_err(|e| format!("qmp: {e}"))?;
    qmp.set_read_timeout(Some(AGENT_LIMIT)).unwrap();
    let mut qmp_reader = BufReader::new(qmp.try_clone().unwrap());
    let mut qmp_writer = qmp;
    let mut greeting = String::new();
    qmp_reader
        .read_line(&mut greeting)
        .map_err(|e| e.to_string())?;
    for cmd in [
        serde_json::json!({"execute": "qmp_capabilities"}),
        serde_json::json!({"execute": "chardev-add", "arguments": {"id": "hot", "backend": {
            "type": "socket", "data": {"addr": {"type": "unix",
            "data": {"path": hot.to_string_lossy()}}, "server": true, "wait": false}}}}),
        serde_json::json!({"execute": "device_add", "arguments": {"driver": "virtserialport",
            "bus": "virtio-serial0.0", "nr": 3, "chardev": "hot", "id": "hotport",
            "name": format!("{VM}.vport")}}),
    ] {
        writeln!(qmp_writer, "{cmd}").map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            qmp_reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                return Err(format!("{cmd}: {line}"));
            }
        }
    }
    let send = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .arg("send")
        .arg("--socket")
        .arg(&hot)
        .args(["--no-pubkey", "--raw", "-p", "type=uevent-test"])
        .args(["--wait-ack", "120"])
        .output()
        .map_err(|e| e.to_string())?;
    if !send.status.success() {
        return Err(format!(
            "send to the hot-plugged port: {}",
            String::from_utf8_lossy(&send.stderr)
        ));
    }
    a.exec_wait(pid, Duration::from_secs(180)).map(|r| r.1)
}

/// From the SANDBOX_COST lines: the whole sandbox against none, and per
/// setting what leaving it out saves (each `without:` run against the `full`
/// run just before it; median over the pairs).
fn sandbox_summary(out: &str) -> String {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (mut none, mut full) = (Vec::new(), Vec::new());
    let mut saved: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut last_full = None;
    for l in out.lines() {
        let mut w = l.split_whitespace();
        let (Some(label), Some(ms), Some("rc=0")) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(ms) = ms.parse::<f64>() else { continue };
        match label {
            "none" => none.push(ms),
            "full" => {
                full.push(ms);
                last_full = Some(ms);
            }
            other => {
                if let (Some(name), Some(f)) = (other.strip_prefix("without:"), last_full) {
                    saved.entry(name.to_owned()).or_default().push(f - ms);
                }
            }
        }
    }
    let (none, full) = (median(&mut none), median(&mut full));
    let mut per: Vec<(f64, String)> = saved
        .into_iter()
        .map(|(n, mut v)| (median(&mut v), n))
        .collect();
    per.sort_by(|a, b| b.0.total_cmp(&a.0));
    let all: Vec<String> = per.iter().map(|(d, n)| format!("{n} {d:+.0}")).collect();
    let per_setting = if all.is_empty() {
        String::new()
    } else {
        format!("; ms saved by leaving a setting out: {}", all.join(", "))
    };
    format!(
        "transient unit running `vport-bootargs ports` (median): no sandbox {none:.0} ms, the unit's \
         sandbox {full:.0} ms (x{:.2}){per_setting}",
        full / none
    )
}

fn report_ga_only(run: &Path, g: &GaOnly) {
    let runtime = g.report_runtime("vport-bootargs.service");
    let text = format!(
        "guest-agent-only layout: vport-bootargs.service start to exit {runtime:.2} s\n{}\n",
        g.sandbox
            .as_deref()
            .map(sandbox_summary)
            .unwrap_or_else(|e| format!("sandbox timings failed: {e}")),
    );
    let _ = fs::write(run.join("report.txt"), &text);
    let _ = fs::write(
        run.join("sandbox-cost.txt"),
        g.sandbox.as_deref().unwrap_or(""),
    );
    eprintln!("{text}");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn guest_agent_only_layout_unit_releases_on_the_file_written_through_qemu_ga() {
    let g = ga_only();
    assert_eq!(g.booted_write, Ok(()));
    assert_eq!(g.unit("vport-bootargs.service", "Result"), "success");
    assert_eq!(g.unit("vport-bootargs.service", "ExecMainStatus"), "0");
    let journal = g.facts_with("journal ");
    assert!(
        journal
            .iter()
            .any(|l| l.contains("the host provides no channel matching pattern *.vport")),
        "{journal:?}"
    );
    assert!(
        journal
            .iter()
            .any(|l| l.contains("is whole, fresh and valid") && l.contains("releasing the boot")),
        "{journal:?}"
    );
    // cloud-preinit's stand-in came after the release and read it at once.
    assert!(
        g.fact("preinit ").ends_with("polls=0"),
        "{}",
        g.fact("preinit ")
    );
    let (_, _, content) = g.file("/var/cache/cloud/cmdline").expect("the cmdline");
    assert_eq!(content, format!("{GA_CMDLINE}\n").into_bytes());
    for f in [
        "/var/cache/cloud/authorized_keys",
        "/root/.ssh/authorized_keys",
    ] {
        assert_eq!(g.file(f), None, "{f}");
    }
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn guest_agent_only_layout_qemu_ga_answers_and_writes_the_cmdline_as_cloudstack_does() {
    let g = ga_only();
    assert_eq!(g.unit("qemu-guest-agent.service", "ActiveState"), "active");
    assert_eq!(
        g.ping.as_deref(),
        Ok("{\"return\": {}}"),
        "{}",
        tail(&g.console, 30)
    );
    assert_eq!(
        g.written.as_deref().map(String::from_utf8_lossy),
        Ok(format!("{GA_CMDLINE}\n").into()),
    );
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn helper_under_the_units_sandbox_is_woken_by_the_ports_uevent() {
    let g = ga_only();
    let out = g.uevent.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("rc=0"), "{out}");
    assert!(out.contains("waiting on kernel uevents"), "{out}");
    assert!(
        !out.contains("rescanning every"),
        "uevents unavailable: {out}"
    );
    assert!(
        out.contains("uevent add for a virtio port")
            || out.contains("uevent change for a virtio port"),
        "not woken by a uevent: {out}"
    );
    assert!(out.trim_end().ends_with("type=uevent-test"), "{out}");
}

#[test]
#[ignore = "builds and boots a Debian image; run by tests/run-all.sh"]
fn unit_journal_never_says_uevents_are_unavailable() {
    let b = &boots().first;
    assert!(
        b.facts_with("journal ")
            .iter()
            .all(|l| !l.contains("uevent socket")),
        "{:?}",
        b.facts_with("journal ")
    );
}
