//! The system VM image under libvirt, driven the way CloudStack's KVM agent
//! drives it.
//!
//! Run by tests/run-all.sh (as root): `cargo test --test libvirt -- --ignored`.
//! Needs libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients and what
//! the image test needs (tests/install-deps.sh installs all of it).
//!
//! Everything is done once per run and shared by the tests below:
//! 1. the package and the Debian image, as for the image test (cached under
//!    target/image);
//! 2. libvirtd and virtlogd, started here without systemd when no libvirtd
//!    answers yet, and stopped again (with every domain started here) before
//!    the first assertion; they fail the tests, never skip them, if they
//!    cannot start;
//! 3. four domains, from tests/libvirt/system-vm.xml with the channels in the
//!    layout each scenario needs, booted two at a time (domain type 'qemu',
//!    TCG):
//!    - v-2-VM (vport channel first): the 4.9-4.11.2 agent's flow, a one-shot
//!      sender (connect, write, close) every 2 s until the guest has stored
//!      the parameters; then a reboot from inside the guest with no resend;
//!    - s-1-VM (guest agent's channel first): libvirt's view of the channel
//!      while the helper waits, then `vport-bootargs send --wait-ack`;
//!    - r-3-VM: `send -n r-3-VM --wait-ack` from the domain's start (one
//!      call), then `virsh destroy` and a start with new parameters;
//!    - s-4-VM (guest agent's channel only, CloudStack 4.11.3 and later): the
//!      host writes /var/cache/cloud/cmdline through `virsh
//!      qemu-agent-command` as CloudStack's patch.sh does.
//!
//! The guest's image-check unit prints `@@ WHAT ...` lines on the serial
//! console (tests/image/guest/image-check), which libvirt logs to a file.
//! Console logs and figures go to target/libvirt/. Timing is reported, never
//! asserted; the limits below only catch a hung guest.

#[path = "image/shared.rs"]
mod shared;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use shared::{
    base64_decode, base64_encode, caught, copy_sparse, image, once, repo, stdout_or_stderr, Facts,
};

const URI: &str = "qemu:///system";
/// CloudStack's `qemu.sockets.path` default, and `send`'s default directory.
const SOCKETS: &str = "/var/lib/libvirt/qemu";

const CMDLINE: &str = "template=domP type=secstorage host=10.1.1.1 port=8250 name=s-1-VM \
    zone=1 pod=1 guid=s-1-VM workers=5 eth0ip=169.254.3.4 eth0mask=255.255.0.0 \
    public.network.device=eth2 authorized_key=c3NoLWVkMjU1MTk=";
/// What the second start of r-3-VM gets: the VM moved and was given
/// another link-local address.
const CMDLINE_NEW: &str = "template=domP type=consoleproxy host=10.1.1.2 port=8250 \
    name=r-3-VM zone=1 pod=2 guid=r-3-VM eth0ip=169.254.7.9 eth0mask=255.255.0.0";
const PUBKEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtLXRlc3Qta2V5LWZvci12cG9ydC1ib290YXJncw libvirt-test@host";

/// From `virsh create` (or a reboot) to the guest's report: about 20-40 s
/// under TCG on an idle machine, over 300 s seen with four guests on two
/// cores shared with other work. Only a hung guest should reach it.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// patchviasocket.py's callers retried every few seconds; 2 s here.
const ONE_SHOT_INTERVAL: Duration = Duration::from_secs(2);
/// How long image-check lingers after its report before powering off; the
/// tests destroy their domains long before.
const LINGER_SECS: u32 = 900;

fn work() -> PathBuf {
    repo().join("target/libvirt")
}

// ---- the run, shared by every test ----

/// Everything the scenarios saw.
struct Run {
    daemons: Daemons,
    old_agent: Result<OldAgent, String>,
    states: Result<States, String>,
    lifecycle: Result<Lifecycle, String>,
    current: Result<Current, String>,
}

/// The run, done once; a failure to build, boot or start libvirtd is kept
/// and fails every test that needs the run.
fn run() -> &'static Run {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    once(&RUN, "the libvirt run failed", run_all)
}

fn run_all() -> Run {
    let started = Instant::now();
    let _ = fs::remove_dir_all(work());
    fs::create_dir_all(work()).unwrap();
    let images = image();
    let prepared = started.elapsed();
    let key = work().join("id_rsa.pub.cloud");
    fs::write(&key, format!("{PUBKEY}\n")).unwrap();

    let mut libvirt = Libvirt::start(&work());
    let ctx = Ctx {
        images: &images,
        key: &key,
    };
    // Two domains at a time, one a core: TCG guests are CPU-bound, and more
    // side by side only slow each other down. Three boots a thread.
    let ((old_agent, current), (lifecycle, states)) = thread::scope(|scope| {
        let one = scope.spawn(|| (caught(|| old_agent(&ctx)), caught(|| current(&ctx))));
        let lifecycle = caught(|| lifecycle(&ctx));
        let states = caught(|| states(&ctx));
        (one.join().unwrap(), (lifecycle, states))
    });
    let daemons = libvirt.stop();
    let run = Run {
        daemons,
        old_agent,
        states,
        lifecycle,
        current,
    };
    report(&run, prepared, started.elapsed());
    run
}

fn get<'a, T>(r: &'a Result<T, String>, what: &str) -> &'a T {
    r.as_ref()
        .unwrap_or_else(|e| panic!("the {what} scenario failed: {e}"))
}

struct Ctx<'a> {
    images: &'a Path,
    key: &'a Path,
}

// ---- libvirtd and virtlogd ----

/// What became of the daemons.
struct Daemons {
    /// False when a libvirtd was already answering: it was used, not
    /// started, and is left running.
    started_here: bool,
    /// Our daemons' processes still alive after stopping them (pids).
    left_running: Vec<u32>,
    /// QEMU processes of our domains still alive after stopping.
    domains_left: Vec<String>,
    /// Sockets of our daemons that another daemon bound during the run.
    taken_over: Vec<String>,
}

struct Libvirt {
    children: Vec<(&'static str, Child)>,
    /// Held from before the start to after the stop (dropped last).
    _lock: nix::fcntl::Flock<fs::File>,
}

/// libvirtd is one per machine: a second one takes the first one's socket
/// path over, and on start it adopts the domains the first one runs. So one
/// run at a time per machine holds this lock; other suites that start
/// libvirtd should take it too.
const MACHINE_LOCK: &str = "/run/lock/vport-bootargs-libvirt.lock";

fn machine_lock() -> nix::fcntl::Flock<fs::File> {
    use nix::fcntl::{Flock, FlockArg};
    fs::create_dir_all("/run/lock").unwrap();
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK)
            .unwrap_or_else(|e| panic!("cannot open {MACHINE_LOCK}: {e}"))
    };
    match Flock::lock(open(), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            eprintln!("another libvirt run holds {MACHINE_LOCK}; waiting for it");
            Flock::lock(file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("cannot lock {MACHINE_LOCK}: {e}"))
        }
    }
}

impl Libvirt {
    /// Starts virtlogd and libvirtd as CloudStack hosts run them, but
    /// without systemd: as root, QEMU running as root with no security
    /// driver (there is no AppArmor or SELinux here).
    fn start(work: &Path) -> Libvirt {
        let lock = machine_lock();
        // Domains an earlier, interrupted run may have left.
        if virsh_answers() {
            destroy_ours();
            return Libvirt {
                children: Vec::new(),
                _lock: lock,
            };
        }
        prepare_host();
        let logs = work.join("daemons");
        fs::create_dir_all(&logs).unwrap();
        // Built first, so that a failure below stops what was started.
        let mut libvirt = Libvirt {
            children: Vec::new(),
            _lock: lock,
        };
        let children = &mut libvirt.children;
        for (name, socket) in [
            ("virtlogd", "/run/libvirt/virtlogd-sock"),
            ("libvirtd", "/run/libvirt/libvirt-sock"),
        ] {
            let log = fs::File::create(logs.join(format!("{name}.log"))).unwrap();
            let child = Command::new(name)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e} (is libvirt installed?)"));
            children.push((name, child));
            let deadline = Instant::now() + Duration::from_secs(30);
            // A socket file can be left from a daemon killed earlier: wait
            // until ours answers on it.
            while UnixStream::connect(socket).is_err() || (name == "libvirtd" && !virsh_answers()) {
                if let Some(status) = children.last_mut().unwrap().1.try_wait().unwrap() {
                    panic!(
                        "{name} exited ({status}) instead of starting; its log:\n{}",
                        fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not answer on {socket} within 30 s; log: {}",
                    logs.join(format!("{name}.log")).display()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        libvirt
    }

    /// Destroys every domain of ours, then stops the daemons started here.
    ///
    /// SIGTERM, so that they clean up, unless another daemon of the same
    /// kind has bound the same socket path since (someone else's test run
    /// on a shared machine): ours would unlink the path the other one now
    /// serves, so it gets SIGKILL instead. SIGKILL too after 20 s.
    fn stop(&mut self) -> Daemons {
        destroy_ours();
        let started_here = !self.children.is_empty();
        let mut left_running = Vec::new();
        let mut taken_over = Vec::new();
        for (name, child) in self.children.iter_mut().rev() {
            let socket = format!("/run/libvirt/{name}-sock");
            let socket = socket.replace("libvirtd-sock", "libvirt-sock");
            let signal = if shared_with_another(&socket, child.id()) {
                eprintln!("another {name} listens on {socket} too; SIGKILL for ours");
                taken_over.push(socket);
                "-KILL"
            } else {
                "-TERM"
            };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{name} did not stop on SIGTERM within 20 s; killing it");
                    left_running.push(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.children.clear();
        // QEMU outlives libvirtd by design; whatever `virsh destroy` did not
        // end is reported, then killed.
        let domains_left = qemu_processes_of_ours();
        for (pid, _) in &domains_left {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        Daemons {
            started_here,
            left_running,
            domains_left: domains_left.into_iter().map(|(_, c)| c).collect(),
            taken_over,
        }
    }
}

/// Whether a unix socket other than `pid`'s own is bound to `path`.
/// /proc/net/unix keeps a socket's path after the file is unlinked, so a
/// second daemon that took the path over shows as a second entry.
fn shared_with_another(path: &str, pid: u32) -> bool {
    let ours: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some(path))
        .filter_map(|l| l.split_whitespace().nth(6))
        .any(|inode| !ours.iter().any(|o| o == inode))
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.stop();
        }
    }
}

/// The domains this file starts; nothing else is touched.
const OURS: [&str; 4] = ["v-2-VM", "s-1-VM", "r-3-VM", "s-4-VM"];

fn virsh_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn destroy_ours() {
    for name in OURS {
        let _ = virsh(&["destroy", name]);
    }
}

/// QEMU processes running one of our disks (under target/libvirt of this
/// checkout): pid and command line.
fn qemu_processes_of_ours() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(work().to_str().unwrap()) {
            found.push((entry.file_name().to_string_lossy().into_owned(), cmdline));
        }
    }
    found
}

/// What Debian's libvirt-daemon-system would have set up, and the qemu.conf
/// settings for a machine without AppArmor or SELinux.
fn prepare_host() {
    let sh = |script: &str| {
        let st = Command::new("sh").args(["-ec", script]).status().unwrap();
        assert!(
            st.success(),
            "preparing the host for libvirtd failed: {script}"
        );
    };
    sh(
        "getent group libvirt >/dev/null || groupadd --system libvirt
        getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
        id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home \
            --home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
        mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/qemu /etc/libvirt",
    );
    let path = Path::new("/etc/libvirt/qemu.conf");
    let old = fs::read_to_string(path).unwrap_or_default();
    let new = qemu_conf(&old);
    if new != old {
        fs::write(path, new).unwrap();
    }
}

/// `text` with `user`, `group` and `security_driver` set for the tests: a
/// setting that differs is commented out, a missing one appended.
fn qemu_conf(text: &str) -> String {
    let wanted = [
        ("user", "\"root\""),
        ("group", "\"root\""),
        ("security_driver", "\"none\""),
    ];
    let mut out = String::new();
    let mut present = [false; 3];
    for line in text.lines() {
        let setting = line.split_once('=').map(|(k, v)| (k.trim(), v.trim()));
        match setting.and_then(|(k, v)| wanted.iter().position(|(wk, _)| *wk == k).map(|i| (i, v)))
        {
            Some((i, v)) if v == wanted[i].1 => {
                present[i] = true;
                out.push_str(line);
            }
            Some(_) => {
                out.push_str("# replaced by tests/libvirt.rs: ");
                out.push_str(line);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    for (i, (k, v)) in wanted.iter().enumerate() {
        if !present[i] {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

// ---- virsh ----

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run virsh")
}

/// `virsh qemu-agent-command VM JSON`, as CloudStack's patch.sh calls it:
/// the reply, or virsh's error.
fn agent(vm: &str, json: &str) -> Result<String, String> {
    stdout_or_stderr(&virsh(&["qemu-agent-command", vm, json]))
}

/// The `state` libvirt shows for the channel named `name` in the live XML
/// (from QEMU's VSERPORT_CHANGE events), if any.
fn channel_state(xml: &str, name: &str) -> Option<String> {
    let target = xml
        .split("<target ")
        .find(|t| t.contains(&format!("name='{name}'")))?;
    let end = target.find('>').unwrap_or(target.len());
    let attrs = &target[..end];
    let state = attrs.split("state='").nth(1)?;
    Some(state.split('\'').next()?.to_owned())
}

fn dumpxml(vm: &str) -> String {
    String::from_utf8_lossy(&virsh(&["dumpxml", vm]).stdout).into_owned()
}

// ---- domains ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Vport,
    GuestAgent,
}

/// A running domain; destroyed when dropped.
struct Domain {
    name: &'static str,
    started: Instant,
    console: Console,
}

impl Domain {
    /// Writes the domain XML (tests/libvirt/system-vm.xml with `channels` in
    /// this order) next to a copy of `disk`, and starts it. `label` names the
    /// boot's console log.
    fn create(
        ctx: &Ctx,
        name: &'static str,
        channels: &[Channel],
        disk: &Path,
        label: &str,
    ) -> Domain {
        let dir = work().join(name);
        fs::create_dir_all(&dir).unwrap();
        let console = dir.join(format!("{label}.console"));
        let _ = fs::remove_file(&console);
        let xml = domain_xml(ctx.images, name, channels, disk, &console);
        let path = dir.join(format!("{label}.xml"));
        fs::write(&path, xml).unwrap();
        let started = Instant::now();
        let out = virsh(&["create", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "virsh create {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Domain {
            name,
            started,
            console: Console::new(console, started),
        }
    }

    fn socket(&self, suffix: &str) -> PathBuf {
        Path::new(SOCKETS).join(format!("{}.{suffix}", self.name))
    }

    fn destroy(&self) {
        let _ = virsh(&["destroy", self.name]);
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn domain_xml(
    images: &Path,
    name: &str,
    channels: &[Channel],
    disk: &Path,
    console: &Path,
) -> String {
    let template = |file: &str| {
        fs::read_to_string(repo().join("tests/libvirt").join(file))
            .unwrap_or_else(|e| panic!("tests/libvirt/{file}: {e}"))
    };
    let channels: String = channels
        .iter()
        .map(|c| {
            template(match c {
                Channel::Vport => "channel-vport.xml",
                Channel::GuestAgent => "channel-guest-agent.xml",
            })
        })
        .collect();
    let cmdline =
        format!("root=/dev/vda rw console=ttyS0 quiet panic=1 imagecheck.linger={LINGER_SECS}");
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    template("system-vm.xml")
        .replace("@CHANNELS@", channels.trim_end())
        .replace("@NAME@", name)
        .replace("@UUID@", uuid.trim())
        .replace("@SOCKETS@", SOCKETS)
        .replace("@KERNEL@", images.join("vmlinux").to_str().unwrap())
        .replace("@INITRD@", images.join("initrd.img").to_str().unwrap())
        .replace("@CMDLINE@", &cmdline)
        .replace("@DISK@", disk.to_str().unwrap())
        .replace("@CONSOLE@", console.to_str().unwrap())
}

/// A fresh copy of the image's disk for one domain.
fn disk_for(ctx: &Ctx, name: &str) -> PathBuf {
    let dir = work().join(name);
    fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    copy_sparse(&ctx.images.join("image.raw"), &disk);
    disk
}

// ---- the serial console, as libvirt logs it ----

/// Follows the console log file, line by line, stamping each line with the
/// host's clock when it was first seen (the guest's clock runs slow under
/// TCG when the machine is loaded).
struct Console {
    path: PathBuf,
    started: Instant,
    read: usize,
    partial: String,
    lines: Vec<(Duration, String)>,
    /// Index of the first line not yet consumed by `wait_for`.
    next: usize,
}

impl Console {
    fn new(path: PathBuf, started: Instant) -> Console {
        Console {
            path,
            started,
            read: 0,
            partial: String::new(),
            lines: Vec::new(),
            next: 0,
        }
    }

    fn poll(&mut self) {
        let Ok(bytes) = fs::read(&self.path) else {
            return;
        };
        if bytes.len() <= self.read {
            return;
        }
        let now = self.started.elapsed();
        self.partial
            .push_str(&String::from_utf8_lossy(&bytes[self.read..]));
        self.read = bytes.len();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            self.lines.push((now, line));
        }
    }

    /// Waits for the next line that `pred` accepts (lines before it are
    /// passed over), until `deadline`: the line and when it came.
    fn wait_for(
        &mut self,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Option<(Duration, String)> {
        loop {
            self.poll();
            while self.next < self.lines.len() {
                let (at, line) = &self.lines[self.next];
                self.next += 1;
                if pred(line) {
                    return Some((*at, line.clone()));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first line containing `text` so far, and when it was seen.
    fn find(&mut self, text: &str) -> Option<(Duration, String)> {
        self.poll();
        self.lines.iter().find(|(_, l)| l.contains(text)).cloned()
    }

    /// The guest's next image-check report: its `@@` lines up to `@@ done`,
    /// within BOOT_LIMIT from now.
    fn report(&mut self, what: &str) -> Report {
        let deadline = Instant::now() + BOOT_LIMIT;
        let mut facts = Vec::new();
        loop {
            let Some((at, line)) = self.wait_for(|l| l.starts_with("@@ "), deadline) else {
                panic!(
                    "{what}: no report from the guest within {BOOT_LIMIT:?}; console ({}):\n{}",
                    self.path.display(),
                    self.tail(40)
                );
            };
            let fact = line.strip_prefix("@@ ").unwrap().to_owned();
            if fact == "done" {
                return Report {
                    what: what.to_owned(),
                    facts,
                    at,
                };
            }
            facts.push(fact);
        }
    }

    fn tail(&self, n: usize) -> String {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One image-check report.
struct Report {
    /// Which boot of which domain.
    what: String,
    facts: Vec<String>,
    /// When `@@ done` came, from `virsh create` (host clock).
    at: Duration,
}

impl Facts for Report {
    fn facts(&self) -> &[String] {
        &self.facts
    }

    fn source(&self) -> String {
        self.what.clone()
    }
}

impl Report {
    /// The file's content, or None when the guest reported it missing.
    fn content(&self, path: &str) -> Option<String> {
        self.file(path)
            .map(|(_, _, bytes)| String::from_utf8(bytes).unwrap())
    }

    fn journal(&self) -> Vec<&str> {
        self.facts_with("journal ")
    }

    /// The guest's uptime when vport-bootargs.service finished: systemd's
    /// monotonic clock starts at boot.
    fn unit_done_uptime(&self) -> f64 {
        let us: u64 = self
            .unit("vport-bootargs.service", "ExecMainExitTimestampMonotonic")
            .parse()
            .unwrap_or(0);
        us as f64 / 1e6
    }

    fn assert_unit_succeeded(&self, what: &str) {
        for (key, want) in [
            ("ActiveState", "active"),
            ("Result", "success"),
            ("ExecMainStatus", "0"),
        ] {
            assert_eq!(
                self.unit("vport-bootargs.service", key),
                want,
                "{what}: vport-bootargs.service {key}; journal: {:#?}",
                self.journal()
            );
        }
    }

    fn assert_stored(&self, cmdline: &str, what: &str) {
        assert_eq!(
            self.content("/var/cache/cloud/cmdline").as_deref(),
            Some(format!("{cmdline}\n").as_str()),
            "{what}: /var/cache/cloud/cmdline"
        );
        for keys in [
            "/var/cache/cloud/authorized_keys",
            "/root/.ssh/authorized_keys",
        ] {
            assert_eq!(
                self.content(keys).as_deref(),
                Some(format!("{PUBKEY}\n").as_str()),
                "{what}: {keys}"
            );
        }
    }
}

// ---- the host's senders ----

/// patchviasocket.py: the key file as it is (its newline included), the
/// cmdline, connect, write, close. Reads nothing back.
fn one_shot(socket: &Path, key: &Path, cmdline: &str) -> Result<(), String> {
    let key = fs::read_to_string(key).unwrap();
    let message = format!("pubkey:{key}\ncmdline:{cmdline}\n");
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))
}

/// `vport-bootargs send -n VM` as a KVM agent would call it, with spaces
/// turned into `%` the way CloudStack's Java side passes the cmdline.
fn send_command(vm: &str, cmdline: &str, key: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"));
    cmd.args(["send", "-n", vm, "-p", &cmdline.replace(' ', "%")])
        .arg("--pubkey-file")
        .arg(key)
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

/// Runs `send` in a thread, started now.
fn send_in_background(
    vm: &str,
    cmdline: &str,
    key: &Path,
    extra: &[&str],
) -> thread::JoinHandle<(Output, Duration)> {
    let mut cmd = send_command(vm, cmdline, key, extra);
    thread::spawn(move || {
        let started = Instant::now();
        let out = cmd.output().expect("cannot run vport-bootargs send");
        (out, started.elapsed())
    })
}

/// The number of sends `send --wait-ack` made, from its log line
/// "the guest acknowledged the cmdline after X s (N send(s))".
fn sends_of(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split(" (").nth(1)?.strip_suffix(" send(s))"))
        .unwrap_or("?")
        .to_owned()
}

/// The guest's uptime stamp of a console line ("[   85.197733] ...").
fn guest_stamp(line: &str) -> String {
    line.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map_or("?".to_owned(), |(t, _)| format!("{} s", t.trim()))
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}; stdout {:?}; stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

// ---- scenario: the 4.9-4.11.2 agent, one-shot sends every 2 s ----

struct OldAgent {
    report: Report,
    /// One-shot sends made until the guest had stored the parameters.
    tries: u32,
    /// Sends whose connect or write failed.
    failed: Vec<String>,
    port_opened: Option<Duration>,
    stored: Duration,
    opened_line: String,
    ping: Result<String, String>,
    wall: Duration,
    /// Then a reboot from inside the guest, with no resend.
    rebooted: Result<Boot, String>,
}

fn old_agent(ctx: &Ctx) -> OldAgent {
    let name = "v-2-VM";
    let disk = disk_for(ctx, name);
    let mut d = Domain::create(
        ctx,
        name,
        &[Channel::Vport, Channel::GuestAgent],
        &disk,
        "boot",
    );
    let socket = d.socket("agent");
    let deadline = d.started + BOOT_LIMIT;
    let mut tries = 0;
    let mut failed = Vec::new();
    let stored = loop {
        tries += 1;
        if let Err(e) = one_shot(&socket, ctx.key, CMDLINE) {
            failed.push(format!("try {tries}: {e}"));
        }
        let next = Instant::now() + ONE_SHOT_INTERVAL;
        if let Some((at, _)) = d
            .console
            .wait_for(|l| l.contains("stored the cmdline"), next)
        {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: nothing stored after {tries} one-shot sends; console:\n{}",
            d.console.tail(40)
        );
    };
    let report = d.console.report(name);
    let (port_opened, opened_line) = d
        .console
        .find("opened port")
        .map_or((None, String::new()), |(at, l)| (Some(at), l));
    let ping = agent(name, r#"{"execute":"guest-ping"}"#);
    let wall = d.started.elapsed();
    // The 4.9-4.11.2 agent did not know of a reboot from inside the guest
    // and sent nothing.
    let rebooted = caught(std::panic::AssertUnwindSafe(|| reboot(&mut d)));
    OldAgent {
        report,
        tries,
        failed,
        port_opened,
        stored,
        opened_line,
        ping,
        wall,
        rebooted,
    }
}

/// A reboot from inside the guest (qemu-ga runs shutdown -r): the domain
/// restarts in the same QEMU (on_reboot restart) and the host sends
/// nothing. The report of the boot after it.
fn reboot(d: &mut Domain) -> Boot {
    let rebooting = Instant::now();
    let out = virsh(&["reboot", d.name, "--mode", "agent"]);
    assert!(
        out.status.success(),
        "virsh reboot --mode agent: {}",
        show(&out)
    );
    let report = d.console.report(&format!("{} after the reboot", d.name));
    Boot {
        report,
        send: None,
        wall: rebooting.elapsed(),
    }
}

// ---- scenario: libvirt's view of the channel while the helper waits ----

struct States {
    report: Report,
    /// The vport channel's state before anything was sent, and when it
    /// turned `connected`.
    connected: Option<Duration>,
    guest_agent_state_then: Option<String>,
    send: Output,
    send_took: Duration,
    /// The vport channel's state after the helper exited, and when.
    after: Option<String>,
    disconnected: Option<Duration>,
    opened_line: String,
    ping: Result<String, String>,
    wall: Duration,
}

fn states(ctx: &Ctx) -> States {
    let name = "s-1-VM";
    let vport = format!("{name}.vport");
    let disk = disk_for(ctx, name);
    let mut d = Domain::create(
        ctx,
        name,
        &[Channel::GuestAgent, Channel::Vport],
        &disk,
        "boot",
    );
    let deadline = d.started + BOOT_LIMIT;
    let (connected, guest_agent_state_then) = loop {
        let xml = dumpxml(name);
        if channel_state(&xml, &vport).as_deref() == Some("connected") {
            break (
                Some(d.started.elapsed()),
                channel_state(&xml, "org.qemu.guest_agent.0"),
            );
        }
        if Instant::now() > deadline {
            break (None, None);
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert!(
        connected.is_some(),
        "{name}: libvirt never showed {vport} connected; last XML channels: {:?}; console:\n{}",
        channel_state(&dumpxml(name), &vport),
        d.console.tail(40)
    );
    let started = Instant::now();
    let send = send_command(name, CMDLINE, ctx.key, &["--wait-ack", "120"])
        .output()
        .unwrap();
    let send_took = started.elapsed();
    // The helper exits once it has stored and acked: libvirt hears QEMU's
    // VSERPORT_CHANGE (at most one a second per port).
    let until = Instant::now() + Duration::from_secs(60);
    let mut after = None;
    let mut disconnected = None;
    while Instant::now() < until {
        after = channel_state(&dumpxml(name), &vport);
        if after.as_deref() == Some("disconnected") {
            disconnected = Some(d.started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let report = d.console.report(name);
    let opened_line = d
        .console
        .find("opened port")
        .map(|(_, l)| l)
        .unwrap_or_default();
    let ping = agent(name, r#"{"execute":"guest-ping"}"#);
    States {
        report,
        connected,
        guest_agent_state_then,
        send,
        send_took,
        after,
        disconnected,
        opened_line,
        ping,
        wall: d.started.elapsed(),
    }
}

// ---- scenario: send --wait-ack, destroy and start anew, reboot ----

struct Boot {
    report: Report,
    send: Option<(Output, Duration)>,
    wall: Duration,
}

impl Boot {
    /// The boot's `send --wait-ack` succeeded, and the unit stored
    /// `cmdline` and the key.
    fn assert_delivered(&self, cmdline: &str) {
        let what = &self.report.what;
        let (out, _) = self
            .send
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the host sent nothing"));
        assert!(
            out.status.success(),
            "{what}: send --wait-ack: {}",
            show(out)
        );
        self.report.assert_unit_succeeded(what);
        self.report.assert_stored(cmdline, what);
    }
}

struct Lifecycle {
    first: Boot,
    /// `send -n r-3-VM` right after `virsh destroy`, and whether the
    /// channel's socket was still there.
    send_after_destroy: Output,
    socket_after_destroy: bool,
    restarted: Boot,
}

fn lifecycle(ctx: &Ctx) -> Lifecycle {
    let name = "r-3-VM";
    let layout = [Channel::GuestAgent, Channel::Vport];
    let disk = disk_for(ctx, name);
    // As the agent would: `send --wait-ack` started right after the
    // domain, one call.
    let boot = |label: &str, cmdline: &str, what: &str| {
        let mut d = Domain::create(ctx, name, &layout, &disk, label);
        let sender = send_in_background(name, cmdline, ctx.key, &["--wait-ack", "300"]);
        let report = d.console.report(&format!("{name} {what}"));
        let boot = Boot {
            report,
            send: Some(sender.join().unwrap()),
            wall: d.started.elapsed(),
        };
        (d, boot)
    };

    let (d, first) = boot("first", CMDLINE, "first boot");
    d.destroy();
    let socket = d.socket("agent");
    let socket_after_destroy = socket.exists();
    let send_after_destroy = send_command(name, CMDLINE_NEW, ctx.key, &[])
        .output()
        .unwrap();
    drop(d);

    // Stopped and started again on the same disk, with new parameters.
    let (_domain, restarted) = boot("restarted", CMDLINE_NEW, "after destroy and start");
    Lifecycle {
        first,
        send_after_destroy,
        socket_after_destroy,
        restarted,
    }
}

// ---- scenario: the current layout, the host writes through qemu-ga ----

struct Current {
    report: Report,
    /// guest-ping calls until one was answered, and when.
    pings: u32,
    answered: Duration,
    sync: String,
    /// When guest-file-close returned.
    written: Duration,
    /// The file read back through the guest agent.
    content: Result<Vec<u8>, String>,
    /// `send -n s-4-VM` while the domain runs (no vport channel), without
    /// and with --wait-ack.
    send_no_channel: Output,
    send_no_channel_wait: (Output, Duration),
    /// `send` to a domain that is not running, and one that was never
    /// defined.
    send_destroyed: Output,
    send_unknown: Output,
    wall: Duration,
}

fn current(ctx: &Ctx) -> Current {
    let name = "s-4-VM";
    let disk = disk_for(ctx, name);
    let mut d = Domain::create(ctx, name, &[Channel::GuestAgent], &disk, "boot");

    let send_no_channel = send_command(name, CMDLINE, ctx.key, &[]).output().unwrap();
    let send_no_channel_wait = send_in_background(name, CMDLINE, ctx.key, &["--wait-ack", "5"]);

    // patch.sh: guest-ping every 0.1 s until it answers (it has no
    // deadline; this one only catches a hung guest), then guest-sync.
    let deadline = d.started + BOOT_LIMIT;
    let mut pings = 0;
    loop {
        pings += 1;
        if agent(name, r#"{"execute":"guest-ping"}"#).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: qemu-ga never answered guest-ping ({pings} tries); console:\n{}",
            d.console.tail(40)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let answered = d.started.elapsed();
    let sync = loop {
        let reply = agent(
            name,
            r#"{"execute":"guest-sync","arguments":{"id":1234567890}}"#,
        );
        if let Ok(r) = &reply {
            if r == r#"{"return":1234567890}"# {
                break r.clone();
            }
        }
        assert!(Instant::now() < deadline, "{name}: guest-sync: {reply:?}");
        thread::sleep(Duration::from_millis(100));
    };
    // send_file in patch.sh: the cmdline as `echo $cmdline | base64 -w 0`
    // gives it, so with a newline; three separate virsh calls.
    let b64 = base64_encode(format!("{CMDLINE}\n").as_bytes());
    let open = agent(
        name,
        r#"{"execute":"guest-file-open", "arguments":{"path":"/var/cache/cloud/cmdline","mode":"w+"}}"#,
    )
    .unwrap_or_else(|e| panic!("{name}: guest-file-open: {e}"));
    let handle = reply_value(&open);
    agent(
        name,
        &format!(
            r#"{{"execute":"guest-file-write", "arguments":{{"handle":{handle},"buf-b64":"{b64}"}}}}"#
        ),
    )
    .unwrap_or_else(|e| panic!("{name}: guest-file-write: {e}"));
    agent(
        name,
        &format!(r#"{{"execute":"guest-file-close", "arguments":{{"handle":{handle}}}}}"#),
    )
    .unwrap_or_else(|e| panic!("{name}: guest-file-close: {e}"));
    let written = d.started.elapsed();
    let content = read_through_agent(name, "/var/cache/cloud/cmdline");

    let report = d.console.report(name);
    let send_no_channel_wait = send_no_channel_wait.join().unwrap();
    let wall = d.started.elapsed();
    d.destroy();
    drop(d);
    let send_destroyed = send_command(name, CMDLINE, ctx.key, &[]).output().unwrap();
    let send_unknown = send_command("s-404-VM", CMDLINE, ctx.key, &[])
        .output()
        .unwrap();
    Current {
        report,
        pings,
        answered,
        sync,
        written,
        content,
        send_no_channel,
        send_no_channel_wait,
        send_destroyed,
        send_unknown,
        wall,
    }
}

/// What patch.sh's sed takes from a reply: `{"return":1000}` -> `1000`.
fn reply_value(reply: &str) -> &str {
    reply
        .split_once(':')
        .map(|(_, r)| r.split('}').next().unwrap_or(r))
        .unwrap_or("")
        .trim()
}

/// A file's bytes, read in the guest by qemu-ga (guest-file-read).
fn read_through_agent(vm: &str, path: &str) -> Result<Vec<u8>, String> {
    let open = agent(
        vm,
        &format!(r#"{{"execute":"guest-file-open","arguments":{{"path":"{path}","mode":"r"}}}}"#),
    )?;
    let handle = reply_value(&open).to_owned();
    let read = agent(
        vm,
        &format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":65536}}}}"#
        ),
    );
    let _ = agent(
        vm,
        &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#),
    );
    let read = read?;
    let b64 = read
        .split("\"buf-b64\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| format!("no buf-b64 in {read}"))?;
    Ok(base64_decode(b64))
}

// ---- figures ----

/// Writes target/libvirt/report.txt and prints it (visible with
/// --nocapture).
fn report(run: &Run, prepared: Duration, total: Duration) {
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let opt = |d: Option<Duration>| d.map_or("never".to_owned(), secs);
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let mut t = format!(
        "machine: {nproc} cores, libvirt domain type qemu (TCG)\n\
         package and image ready (built or cached): {}\n\
         whole run (image, daemons, four domains two at a time): {}\n\
         libvirtd: {}{}\n",
        secs(prepared),
        secs(total),
        if run.daemons.started_here {
            "started and stopped by the tests"
        } else {
            "already running, used"
        },
        if run.daemons.taken_over.is_empty() {
            String::new()
        } else {
            format!(
                "; ANOTHER DAEMON TOOK OVER {:?} DURING THE RUN",
                run.daemons.taken_over
            )
        }
    );
    t.push_str("\nscenario | wall time | guest uptime when the unit finished | host sends/tries\n");
    match &run.old_agent {
        Ok(o) => {
            t.push_str(&format!(
                "4.9-4.11.2 agent, one-shot sender every 2 s (v-2-VM) | {} | {:.1} s | {} one-shot sends (the helper opened its port {} after virsh create, at guest uptime {}; stored seen at {})\n",
                secs(o.wall),
                o.report.unit_done_uptime(),
                o.tries,
                opt(o.port_opened),
                guest_stamp(&o.opened_line),
                secs(o.stored)
            ));
            match &o.rebooted {
                Ok(b) => t.push_str(&format!(
                    "reboot from inside, no resend (v-2-VM) | {} from virsh reboot to the guest's report | {:.1} s (unit ran {:.2} s) | none\n",
                    secs(b.wall),
                    b.report.unit_done_uptime(),
                    b.report.report_runtime("vport-bootargs.service")
                )),
                Err(e) => t.push_str(&format!("reboot (v-2-VM): FAILED: {e}\n")),
            }
        }
        Err(e) => t.push_str(&format!("one-shot sender (v-2-VM): FAILED: {e}\n")),
    }
    match &run.lifecycle {
        Ok(l) => {
            for (what, b) in [
                (
                    "send --wait-ack from the domain's start, one call (r-3-VM)",
                    &l.first,
                ),
                (
                    "virsh destroy, start with new parameters (r-3-VM)",
                    &l.restarted,
                ),
            ] {
                let sends = b.send.as_ref().map_or("none".to_owned(), |(o, took)| {
                    format!(
                        "1 call, exit {:?} after {}, {} send(s) on the socket",
                        o.status.code(),
                        secs(*took),
                        sends_of(o)
                    )
                });
                t.push_str(&format!(
                    "{what} | {} (guest's report at {}) | {:.1} s (unit ran {:.2} s) | {sends}\n",
                    secs(b.wall),
                    secs(b.report.at),
                    b.report.unit_done_uptime(),
                    b.report.report_runtime("vport-bootargs.service")
                ));
            }
            t.push_str(&format!(
                "after virsh destroy r-3-VM: {SOCKETS}/r-3-VM.agent {}; send -n r-3-VM: {}\n",
                if l.socket_after_destroy {
                    "is still there"
                } else {
                    "is gone"
                },
                show(&l.send_after_destroy)
            ));
        }
        Err(e) => t.push_str(&format!("r-3-VM: FAILED: {e}\n")),
    }
    match &run.states {
        Ok(s) => t.push_str(&format!(
            "channel state in libvirt, then send --wait-ack (s-1-VM) | {} | {:.1} s | 1 call, exit {:?} after {}, {} send(s) (vport channel connected at {}, guest agent's channel then {}; vport disconnected at {})\n",
            secs(s.wall),
            s.report.unit_done_uptime(),
            s.send.status.code(),
            secs(s.send_took),
            sends_of(&s.send),
            opt(s.connected),
            s.guest_agent_state_then.as_deref().unwrap_or("?"),
            opt(s.disconnected)
        )),
        Err(e) => t.push_str(&format!("s-1-VM: FAILED: {e}\n")),
    }
    match &run.current {
        Ok(c) => t.push_str(&format!(
            "current layout, patch.sh through qemu-ga (s-4-VM) | {} | {:.1} s (unit ran {:.2} s) | {} guest-ping calls (answered at {}), then sync, open, write, close (closed at {})\n",
            secs(c.wall),
            c.report.unit_done_uptime(),
            c.report.report_runtime("vport-bootargs.service"),
            c.pings,
            secs(c.answered),
            secs(c.written)
        )),
        Err(e) => t.push_str(&format!("s-4-VM: FAILED: {e}\n")),
    }
    if let Ok(c) = &run.current {
        t.push_str(&format!(
            "\nsend -n s-4-VM, running without a vport channel: {}\n\
             the same with --wait-ack 5 (returned after {}): {}\n\
             send -n s-4-VM after virsh destroy: {}\n\
             send -n s-404-VM, never defined: {}\n",
            show(&c.send_no_channel),
            secs(c.send_no_channel_wait.1),
            show(&c.send_no_channel_wait.0),
            show(&c.send_destroyed),
            show(&c.send_unknown)
        ));
    }
    let _ = fs::write(work().join("report.txt"), &t);
    eprintln!("{t}");
}

// ---- the tests ----

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn daemons_and_domains_are_gone_after_the_run() {
    let d = &run().daemons;
    assert!(
        d.taken_over.is_empty(),
        "another daemon bound {:?} while the tests ran, so virsh talked to it: libvirtd is \
         system-wide, run one libvirt suite at a time per machine",
        d.taken_over
    );
    assert!(
        d.left_running.is_empty(),
        "daemons that did not stop on SIGTERM: {:?}",
        d.left_running
    );
    assert!(
        d.domains_left.is_empty(),
        "QEMU processes of the tests' domains still running: {:#?}",
        d.domains_left
    );
    if d.started_here {
        assert!(
            !virsh_answers(),
            "libvirtd still answers after the tests stopped the one they started"
        );
    }
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn old_agent_one_shot_sends_every_2s_are_stored() {
    let o = get(&run().old_agent, "one-shot sender");
    assert!(o.failed.is_empty(), "one-shot sends failed: {:?}", o.failed);
    o.report.assert_unit_succeeded("v-2-VM");
    o.report.assert_stored(CMDLINE, "v-2-VM");
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn send_wait_ack_from_the_domains_start_delivers_in_one_call() {
    let l = get(&run().lifecycle, "r-3-VM");
    l.first.assert_delivered(CMDLINE);
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn destroy_and_start_with_new_parameters_stores_the_new_ones() {
    let l = get(&run().lifecycle, "r-3-VM");
    l.restarted.assert_delivered(CMDLINE_NEW);
    let stored: Vec<&str> = l
        .restarted
        .report
        .journal()
        .into_iter()
        .filter(|j| j.contains("stored the cmdline"))
        .collect();
    assert_eq!(stored.len(), 1, "{:#?}", l.restarted.report.journal());
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn reboot_from_inside_without_resend_keeps_the_parameters_at_once() {
    let o = get(&run().old_agent, "one-shot sender");
    let r = &get(&o.rebooted, "reboot of v-2-VM").report;
    r.assert_unit_succeeded("v-2-VM rebooted");
    r.assert_stored(CMDLINE, "v-2-VM rebooted");
    // virsh reboot --mode agent: qemu-ga runs shutdown -r, reboot.target,
    // which the unit's ExecStop recorded; no grace period this boot.
    assert!(
        r.journal()
            .iter()
            .any(|l| l.contains("the previous boot ended in a reboot")),
        "{:#?}",
        r.journal()
    );
    assert!(
        r.journal()
            .iter()
            .any(|l| l.contains("nothing was arriving on the port; keeping those in")),
        "{:#?}",
        r.journal()
    );
}

/// The one unit on a guest-agent-only domain: it says the host has no
/// `*.vport` channel, writes nothing itself, and releases the boot on the
/// file qemu-ga wrote.
#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn current_layout_host_writes_the_cmdline_through_the_guest_agent() {
    let c = get(&run().current, "s-4-VM");
    assert_eq!(c.sync, r#"{"return":1234567890}"#);
    assert_eq!(
        c.content.as_deref().map(String::from_utf8_lossy),
        Ok(format!("{CMDLINE}\n").into()),
        "/var/cache/cloud/cmdline as qemu-ga reads it"
    );
    let r = &c.report;
    assert_eq!(r.unit("qemu-guest-agent.service", "ActiveState"), "active");
    // Nothing of the helper's: no key files, nothing stored.
    for keys in [
        "/var/cache/cloud/authorized_keys",
        "/root/.ssh/authorized_keys",
    ] {
        assert_eq!(r.content(keys), None, "{keys}");
    }
    assert!(
        !r.journal().iter().any(|l| l.contains("stored the cmdline")),
        "{:#?}",
        r.journal()
    );
    r.assert_unit_succeeded("s-4-VM");
    assert!(
        r.journal()
            .iter()
            .any(|l| l.contains("is whole, fresh and valid")),
        "{:#?}",
        r.journal()
    );
    assert!(
        r.journal()
            .iter()
            .any(|l| l.contains("vport") && l.contains("channel")),
        "no line saying the host provides no *.vport channel: {:#?}",
        r.journal()
    );
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn libvirt_shows_the_vport_channel_connected_while_the_helper_waits() {
    let s = get(&run().states, "s-1-VM");
    assert!(s.connected.is_some());
    assert!(
        s.send.status.success(),
        "send --wait-ack: {}",
        show(&s.send)
    );
    assert_eq!(
        s.after.as_deref(),
        Some("disconnected"),
        "the vport channel's state after the helper exited"
    );
    s.report.assert_unit_succeeded("s-1-VM");
    s.report.assert_stored(CMDLINE, "s-1-VM");
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn guest_agent_answers_after_the_helper_in_both_channel_orders() {
    let r = run();
    let o = get(&r.old_agent, "one-shot sender");
    let s = get(&r.states, "s-1-VM");
    for (vm, ping, report) in [
        ("v-2-VM (vport first)", &o.ping, &o.report),
        ("s-1-VM (guest agent first)", &s.ping, &s.report),
    ] {
        assert_eq!(ping.as_deref(), Ok(r#"{"return":{}}"#), "{vm}");
        assert_eq!(
            report.unit("qemu-guest-agent.service", "ActiveState"),
            "active",
            "{vm}"
        );
    }
}

#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn helper_opens_its_port_by_name_in_both_channel_orders() {
    let r = run();
    let o = get(&r.old_agent, "one-shot sender");
    let s = get(&r.states, "s-1-VM");
    assert!(
        o.opened_line
            .contains("opened port v-2-VM.vport (/dev/vport")
            && o.opened_line.ends_with("p1)"),
        "vport channel first: {:?}",
        o.opened_line
    );
    assert!(
        s.opened_line
            .contains("opened port s-1-VM.vport (/dev/vport")
            && s.opened_line.ends_with("p2)"),
        "guest agent's channel first: {:?}",
        s.opened_line
    );
}

/// Depends on `send` telling a running domain without the channel apart
/// (today: "no socket at ...: is the VM running, and are its name and
/// --socket-dir right?", and with --wait-ack a wait until the deadline).
#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn send_says_when_the_domain_has_no_vport_channel() {
    let c = get(&run().current, "s-4-VM");
    let socket = format!("{SOCKETS}/s-4-VM.agent");
    for out in [&c.send_no_channel, &c.send_no_channel_wait.0] {
        assert_eq!(out.status.code(), Some(68), "{}", show(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&socket) && stderr.contains("no s-4-VM.vport channel"),
            "{}",
            show(out)
        );
    }
}

/// Depends on `send` saying "not running" when no socket of the domain is
/// there.
#[test]
#[ignore = "boots libvirt domains; run by tests/run-all.sh"]
fn send_says_when_the_domain_is_not_running() {
    let r = run();
    let c = get(&r.current, "s-4-VM");
    let l = get(&r.lifecycle, "r-3-VM");
    for out in [&c.send_destroyed, &c.send_unknown, &l.send_after_destroy] {
        assert!(matches!(out.status.code(), Some(68 | 69)), "{}", show(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not running"), "{}", show(out));
    }
}

// ---- the pure helpers ----

#[test]
fn qemu_conf_sets_what_is_missing_and_comments_out_what_differs() {
    let conf = "# user = \"libvirt-qemu\"\nuser = \"libvirt-qemu\"\ngroup = \"root\"\n";
    assert_eq!(
        qemu_conf(conf),
        "# user = \"libvirt-qemu\"\n\
         # replaced by tests/libvirt.rs: user = \"libvirt-qemu\"\n\
         group = \"root\"\n\
         user = \"root\"\n\
         security_driver = \"none\"\n"
    );
    assert_eq!(qemu_conf(&qemu_conf(conf)), qemu_conf(conf));
}

#[test]
fn channel_state_is_read_from_the_live_xml() {
    let xml = "<channel type='unix'>\n<target type='virtio' name='s-1-VM.vport' state='connected'/>\n\
               </channel><channel><target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>";
    assert_eq!(
        channel_state(xml, "s-1-VM.vport").as_deref(),
        Some("connected")
    );
    assert_eq!(
        channel_state(xml, "org.qemu.guest_agent.0").as_deref(),
        Some("disconnected")
    );
    assert_eq!(channel_state(xml, "v-2-VM.vport"), None);
}

#[test]
fn base64_round_trips_and_matches_coreutils() {
    assert_eq!(base64_encode(b"a=b c\n"), "YT1iIGMK");
    assert_eq!(base64_encode(b"ab"), "YWI=");
    assert_eq!(base64_encode(b"a"), "YQ==");
    for s in ["", "a", "ab", "abc", CMDLINE] {
        assert_eq!(base64_decode(&base64_encode(s.as_bytes())), s.as_bytes());
    }
    assert_eq!(reply_value(r#"{"return":1000}"#), "1000");
}

#[test]
fn one_shot_writes_what_patchviasocket_writes_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s-1-VM.agent");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let key = dir.path().join("id_rsa.pub.cloud");
    fs::write(&key, format!("{PUBKEY}\n")).unwrap();
    one_shot(&socket, &key, "a=b c=d").unwrap();
    let mut got = String::new();
    listener
        .accept()
        .unwrap()
        .0
        .read_to_string(&mut got)
        .unwrap();
    // The key file's newline makes an empty line, as with patchviasocket.py.
    assert_eq!(got, format!("pubkey:{PUBKEY}\n\ncmdline:a=b c=d\n"));
}
