//! The VM tests' host side: prepares the kernel and initramfs (prepare.sh),
//! boots a QEMU guest (x86_64 or aarch64) with two virtio-serial ports on
//! unix sockets, and collects what the guest prints on its serial console
//! and what QMP says about the ports (VSERPORT_CHANGE: the guest opened or
//! closed a port).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The port CloudStack reads, and QEMU's guest agent port beside it.
pub const VPORT_NAME: &str = "s-1-VM.vport";
pub const GA_NAME: &str = "org.qemu.guest_agent.0";
/// QMP ids of the two virtserialport devices.
pub const VPORT_ID: &str = "vport";
pub const GA_ID: &str = "ga";

/// Longest a guest may take from start to power-off before the test fails.
/// Generous: two TCG guests share two cores with whatever else runs.
const GUEST_DEADLINE: Duration = Duration::from_secs(240);

/// The guest's architecture: which QEMU, machine, kernel and static build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `qemu-system-x86_64 -machine pc`, Debian's amd64 kernel.
    X86_64,
    /// `qemu-system-aarch64 -machine virt`, Debian's arm64 kernel.
    #[allow(dead_code)] // booted by tests/vm_arm64.rs, not tests/vm.rs
    Aarch64,
}

impl Arch {
    /// The name prepare.sh takes, as in the Rust target triple.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Where prepare.sh puts this architecture's kernel, initramfs and
    /// report, under the cargo target directory.
    pub fn vm_dir(self) -> PathBuf {
        match self {
            Arch::X86_64 => target_dir().join("vm"),
            Arch::Aarch64 => target_dir().join("vm-aarch64"),
        }
    }

    /// The serial console: the PC's 16550 or the virt machine's PL011.
    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// Whether this machine can run the guest under KVM at all.
    fn is_host(self) -> bool {
        self.name() == std::env::consts::ARCH
    }
}

/// What prepare.sh made.
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_package: String,
    /// The Rust target the initramfs's static binary was built for.
    pub rust_target: String,
    pub binary_size: u64,
}

fn target_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => repo.join(d),
        None => repo.join("target"),
    }
}

/// Runs tests/vm/prepare.sh once per test process and architecture: it is
/// quick when nothing changed, and picks up a changed binary or init script.
/// The first call also starts that architecture's report.
pub fn artifacts(arch: Arch) -> &'static Artifacts {
    static X86_64: OnceLock<Artifacts> = OnceLock::new();
    static AARCH64: OnceLock<Artifacts> = OnceLock::new();
    let once = match arch {
        Arch::X86_64 => &X86_64,
        Arch::Aarch64 => &AARCH64,
    };
    once.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("sh")
            .arg(repo.join("tests/vm/prepare.sh"))
            .arg(arch.name())
            .env("CARGO_TARGET_DIR", target_dir())
            .stdin(Stdio::null())
            .status()
            .expect("cannot run tests/vm/prepare.sh");
        assert!(
            status.success(),
            "tests/vm/prepare.sh {} failed: {status}",
            arch.name()
        );
        let dir = arch.vm_dir();
        let manifest =
            std::fs::read_to_string(dir.join("manifest")).expect("prepare.sh left no manifest");
        let kv: BTreeMap<&str, &str> = manifest.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| {
            kv.get(k)
                .unwrap_or_else(|| panic!("manifest has no {k}"))
                .to_string()
        };
        crate::report::reset(&dir);
        assert_eq!(get("arch"), arch.name(), "manifest of another architecture");
        Artifacts {
            kernel: get("kernel").into(),
            initrd: get("initrd").into(),
            kernel_package: get("kernel_package"),
            rust_target: get("rust_target"),
            binary_size: get("binary_size").parse().expect("binary_size"),
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A guest of another architecture than the host's runs under TCG.
/// Otherwise VB_ACCEL=kvm|tcg forces the accelerator; unset or `auto` boots
/// a probe guest under KVM and uses it only if that guest reaches its init
/// in time (on some machines /dev/kvm exists but guests hang).
pub fn accel(arch: Arch) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    if !arch.is_host() {
        return Accel::Tcg;
    }
    *ACCEL.get_or_init(|| {
        let wanted = std::env::var("VB_ACCEL").unwrap_or_else(|_| "auto".into());
        match wanted.as_str() {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            "auto" | "" => probe_kvm(arch),
            other => panic!("VB_ACCEL={other}: use kvm, tcg or auto"),
        }
    })
}

fn probe_kvm(arch: Arch) -> Accel {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Accel::Tcg;
    }
    let cfg = Config {
        scenario: "probe",
        arch,
        ..Config::default()
    };
    // Under KVM this guest is at its init within a second or two.
    let outcome = match Guest::start_with(&cfg, Accel::Kvm) {
        Ok(guest) if guest.wait_console("VBDONE", Duration::from_secs(10)) => Ok(()),
        Ok(guest) => Err(match guest.child.lock().unwrap().try_wait() {
            Ok(Some(status)) => format!("stopped ({status}) before its init"),
            _ => "did not reach its init within 10 s".to_owned(),
        }),
        Err(e) => Err(format!(
            "did not start ({})",
            e.lines().next().unwrap_or_default()
        )),
    };
    let accel = if outcome.is_ok() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    crate::report::note(&format!(
        "accelerator probe: a KVM guest {}; using {}",
        outcome.err().as_deref().unwrap_or("booted"),
        accel.name()
    ));
    accel
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// org.qemu.guest_agent.0 is vport0p1 and the vport vport0p2, as when
    /// libvirt lists the guest agent's channel first.
    GuestAgentFirst,
    VportFirst,
}

/// One guest's scenario: see tests/vm/init for what each field makes the
/// guest do.
#[derive(Debug, Clone)]
pub struct Config {
    pub scenario: &'static str,
    pub arch: Arch,
    pub order: Order,
    pub fetch_args: Vec<String>,
    pub runs: u32,
    pub precache: bool,
    pub sample_secs: Option<u32>,
    pub modules_late: bool,
    pub read_guest_agent: bool,
    /// Another guest process holds the vport open while fetch runs.
    pub hold_vport: bool,
    /// Which virtio-serial ports the guest gets; see [`Channels`].
    pub channels: Channels,
}

/// The guest's virtio-serial layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// The guest agent's port and `s-1-VM.vport` (in `order`).
    Both,
    /// Only `org.qemu.guest_agent.0`, as CloudStack 4.11.3 and later define.
    GuestAgentOnly,
    /// The guest agent's port and `extra` more ports none of which matches
    /// `*.vport` (`other.N`): a device with many ports to add and name.
    GuestAgentAndOthers { extra: u32 },
    /// No virtio-serial device at all.
    NoDevice,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scenario: "default",
            arch: Arch::X86_64,
            order: Order::GuestAgentFirst,
            fetch_args: vec!["--timeout".into(), "90".into()],
            runs: 1,
            precache: false,
            sample_secs: None,
            modules_late: false,
            read_guest_agent: false,
            hold_vport: false,
            channels: Channels::Both,
        }
    }
}

impl Config {
    fn append(&self) -> String {
        let mut a = format!(
            "console={} quiet loglevel=3 panic=-1 vbscenario={}",
            self.arch.console(),
            self.scenario
        );
        if !self.fetch_args.is_empty() {
            a += &format!(" vbargs={}", self.fetch_args.join(","));
        }
        a += &format!(" vbruns={}", self.runs);
        if self.precache {
            a += " vbprecache=1";
        }
        if let Some(s) = self.sample_secs {
            a += &format!(" vbsample={s}");
        }
        if self.modules_late {
            a += " vbmodlate=1";
        }
        if self.read_guest_agent {
            a += " vbga=1";
        }
        if self.hold_vport {
            a += " vbhold=1";
        }
        a
    }
}

/// A VSERPORT_CHANGE event as the harness received it.
#[derive(Debug, Clone)]
pub struct PortEvent {
    pub at: Instant,
    pub id: String,
    pub open: bool,
}

#[derive(Default)]
struct State {
    console: Vec<(Instant, String)>,
    events: Vec<PortEvent>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A running guest. Dropping it kills QEMU if it still runs.
pub struct Guest {
    child: Mutex<Child>,
    qmp: Mutex<UnixStream>,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    pub started: Instant,
    pub arch: Arch,
    pub accel: Accel,
}

impl Guest {
    /// Starts a guest; one that QEMU cannot start fails the test.
    pub fn start(cfg: &Config) -> Guest {
        Guest::start_with(cfg, accel(cfg.arch)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn start_with(cfg: &Config, accel: Accel) -> Result<Guest, String> {
        let art = artifacts(cfg.arch);
        let dir = tempfile::Builder::new()
            .prefix("vb-vm-")
            .tempdir()
            .expect("temp dir");
        let sock = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let mut ports: Vec<(String, String)> = match cfg.order {
            Order::GuestAgentFirst => [(GA_ID, GA_NAME), (VPORT_ID, VPORT_NAME)],
            Order::VportFirst => [(VPORT_ID, VPORT_NAME), (GA_ID, GA_NAME)],
        }
        .iter()
        .map(|(i, n)| (i.to_string(), n.to_string()))
        .collect();
        match cfg.channels {
            Channels::Both => {}
            Channels::GuestAgentOnly | Channels::NoDevice => ports.retain(|(i, _)| i == GA_ID),
            Channels::GuestAgentAndOthers { extra } => {
                ports.retain(|(i, _)| i == GA_ID);
                ports.extend((1..=extra).map(|n| (format!("other{n}"), format!("other.{n}"))));
            }
        }
        if cfg.channels == Channels::NoDevice {
            ports.clear();
        }
        let mut cmd = Command::new(cfg.arch.qemu());
        let machine = match cfg.arch {
            Arch::X86_64 => "pc",
            Arch::Aarch64 => "virt",
        };
        cmd.args(["-machine", machine, "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
        match (accel, cfg.arch) {
            (Accel::Kvm, _) => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            (Accel::Tcg, Arch::X86_64) => cmd.args(["-accel", "tcg"]),
            // The virt machine's default CPU (cortex-a15) is 32-bit only.
            // pauth-impdef: TCG computes pointer authentication with a
            // cheap implementation-defined hash instead of QARMA, which
            // made the guest three to four times slower to boot here.
            (Accel::Tcg, Arch::Aarch64) => {
                cmd.args(["-accel", "tcg", "-cpu", "max,pauth-impdef=on"])
            }
        };
        cmd.arg("-kernel")
            .arg(&art.kernel)
            .arg("-initrd")
            .arg(&art.initrd)
            .args(["-append", &cfg.append()]);
        if cfg.channels != Channels::NoDevice {
            cmd.args(["-device", "virtio-serial-pci,id=vs"]);
        }
        for (id, name) in &ports {
            cmd.args([
                "-chardev",
                &format!(
                    "socket,id=c_{id},path={},server=on,wait=off",
                    sock(id.as_str())
                ),
                "-device",
                &format!("virtserialport,bus=vs.0,chardev=c_{id},name={name},id={id}"),
            ]);
        }
        // QMP last, with wait=on: the guest starts only once the harness
        // listens for events, so no VSERPORT_CHANGE is missed.
        cmd.args(["-qmp", &format!("unix:{},server=on,wait=on", sock("qmp"))]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", cfg.arch.qemu()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        spawn_lines(child.stdout.take().unwrap(), "", shared.clone());
        spawn_lines(child.stderr.take().unwrap(), "qemu: ", shared.clone());
        let qmp = connect_retry(Path::new(&sock("qmp")), Duration::from_secs(30))
            .and_then(|s| spawn_qmp(s, shared.clone()));
        let started = Instant::now();
        match qmp {
            Ok(qmp) => Ok(Guest {
                child: Mutex::new(child),
                qmp: Mutex::new(qmp),
                shared,
                dir,
                started,
                arch: cfg.arch,
                accel,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader threads take QEMU's last words.
                std::thread::sleep(Duration::from_millis(200));
                let state = shared.state.lock().unwrap();
                let console: Vec<&str> = state.console.iter().map(|(_, l)| l.as_str()).collect();
                Err(format!(
                    "QEMU ({}) did not start: QMP: {e}\n--- console:\n{}",
                    accel.name(),
                    console.join("\n")
                ))
            }
        }
    }

    /// Sends one QMP command, e.g. `device_del`; its reply is not read.
    pub fn qmp(&self, command: &str) {
        let mut qmp = self.qmp.lock().unwrap();
        writeln!(qmp, "{command}").unwrap_or_else(|e| self.fail(&format!("QMP write: {e}")));
    }

    pub fn socket(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// Connects to a port's chardev socket, as CloudStack's host side does.
    pub fn connect(&self, id: &str) -> UnixStream {
        connect_retry(&self.socket(id), Duration::from_secs(30))
            .unwrap_or_else(|e| self.fail(&format!("cannot connect to the {id} socket: {e}")))
    }

    /// When the guest opened (`open`) or closed port `id` for the `nth`
    /// time (1-based), waiting up to `timeout` for it.
    pub fn wait_port(&self, id: &str, open: bool, nth: usize, timeout: Duration) -> Instant {
        let found = self.wait_for(timeout, |s| {
            s.events
                .iter()
                .filter(|e| e.id == id && e.open == open)
                .nth(nth - 1)
                .map(|e| e.at)
        });
        found.unwrap_or_else(|| {
            self.fail(&format!(
                "the guest did not {} port {id} (time {nth}) within {timeout:?}",
                if open { "open" } else { "close" }
            ))
        })
    }

    /// Whether a console line containing `needle` appeared within `timeout`.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| {
            s.console
                .iter()
                .any(|(_, l)| l.contains(needle))
                .then_some(())
        })
        .is_some()
    }

    fn wait_for<T>(&self, timeout: Duration, mut f: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if let Some(v) = f(&state) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Waits for the guest to power off and parses what it printed. A
    /// guest that does not finish, or did not print its closing line,
    /// fails the test.
    pub fn finish(self) -> Outcome {
        let deadline = self.started + GUEST_DEADLINE;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().expect("wait qemu") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let outcome = self.outcome();
                if !outcome.done {
                    self.fail(&format!(
                        "QEMU exited ({status}) before the guest printed VBDONE"
                    ));
                }
                return outcome;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the guest did not power off within {GUEST_DEADLINE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn outcome(&self) -> Outcome {
        let state = self.shared.state.lock().unwrap();
        Outcome::parse(state.console.clone(), state.events.clone(), self.started)
    }

    /// Fails the test with the guest's console, the useful part of a
    /// failure in a VM.
    pub fn fail(&self, why: &str) -> ! {
        let state = self.shared.state.lock().unwrap();
        let tail: Vec<&str> = state
            .console
            .iter()
            .rev()
            .take(60)
            .rev()
            .map(|(_, l)| l.as_str())
            .collect();
        let events: Vec<String> = state
            .events
            .iter()
            .map(|e| {
                format!(
                    "{:.2}s {} {}",
                    (e.at - self.started).as_secs_f64(),
                    e.id,
                    if e.open { "open" } else { "closed" }
                )
            })
            .collect();
        panic!(
            "{why}\n--- port events: {}\n--- guest console (last lines):\n{}",
            events.join(", "),
            tail.join("\n")
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn connect_retry(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn spawn_lines(pipe: impl Read + Send + 'static, prefix: &'static str, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf);
            let line = format!("{prefix}{}", line.trim_end_matches(['\n', '\r']));
            buf.clear();
            shared
                .state
                .lock()
                .unwrap()
                .console
                .push((Instant::now(), line));
            shared.changed.notify_all();
        }
    });
}

/// Reads QMP's events in a thread; returns the socket to send commands on.
fn spawn_qmp(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<UnixStream> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == "VSERPORT_CHANGE" {
                let event = PortEvent {
                    at: Instant::now(),
                    id: v["data"]["id"].as_str().unwrap_or("").to_owned(),
                    open: v["data"]["open"].as_bool().unwrap_or(false),
                };
                shared.state.lock().unwrap().events.push(event);
                shared.changed.notify_all();
            }
        }
    });
    Ok(writer)
}

/// One file or directory the guest listed after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' directory, 'l' symlink, 'o' other.
    pub kind: char,
    pub mode: u32,
    pub content: Option<Vec<u8>>,
}

/// One `vport-bootargs fetch` in the guest.
#[derive(Debug, Clone)]
pub struct Run {
    pub exit: i32,
    /// Guest uptime when it started and ended, seconds.
    pub t0: f64,
    pub t1: f64,
    /// What the run left under its directory, by relative path.
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: u32,
    pub ticks: u64,
    pub hwm_kb: u64,
    pub rss_kb: u64,
    pub vport_open: bool,
}

#[derive(Debug, Clone)]
pub struct GuestAgentRead {
    pub node: String,
    pub rc: i32,
    pub data: Vec<u8>,
    pub err: String,
}

/// Everything the guest reported.
#[derive(Debug)]
pub struct Outcome {
    /// Every console line, with when the harness received it.
    pub console: Vec<(Instant, String)>,
    pub events: Vec<PortEvent>,
    pub started: Instant,
    pub runs: Vec<Run>,
    /// vportNpM -> port name, as sysfs showed them.
    pub ports: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub guest_agent: Option<GuestAgentRead>,
    pub errors: Vec<String>,
    pub done: bool,
}

fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split(' ')
        .skip(1)
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex from the guest"))
        .collect()
}

impl Outcome {
    fn parse(console: Vec<(Instant, String)>, events: Vec<PortEvent>, started: Instant) -> Outcome {
        let mut o = Outcome {
            console: Vec::new(),
            events,
            started,
            runs: Vec::new(),
            ports: BTreeMap::new(),
            samples: Vec::new(),
            guest_agent: None,
            errors: Vec::new(),
            done: false,
        };
        let mut entries: BTreeMap<usize, BTreeMap<String, Entry>> = BTreeMap::new();
        for (_, line) in &console {
            let f = fields(line);
            let num = |k: &str| -> u64 {
                f.get(k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no number {k} in guest line {line:?}"))
            };
            match line.split(' ').next().unwrap_or("") {
                "VBRUN" => o.runs.push(Run {
                    exit: num("exit") as i32,
                    t0: f["t0"].parse().unwrap(),
                    t1: f["t1"].parse().unwrap(),
                    entries: BTreeMap::new(),
                }),
                "VBENTRY" => {
                    let entry = Entry {
                        kind: f["type"].chars().next().unwrap(),
                        mode: u32::from_str_radix(f["mode"], 8).unwrap(),
                        content: f.get("hex").map(|h| unhex(h)),
                    };
                    entries
                        .entry(num("run") as usize)
                        .or_default()
                        .insert(f["path"].to_owned(), entry);
                }
                "VBSAMPLE" => o.samples.push(Sample {
                    at: num("at") as u32,
                    ticks: num("utime") + num("stime"),
                    hwm_kb: num("hwm_kb"),
                    rss_kb: num("rss_kb"),
                    vport_open: f["vport_open"] == "1",
                }),
                "VBPORT" => {
                    o.ports.insert(f["entry"].into(), f["name"].into());
                }
                "VBGA" => {
                    o.guest_agent = Some(GuestAgentRead {
                        node: f["node"].into(),
                        rc: num("rc") as i32,
                        data: unhex(f["hex"]),
                        err: String::from_utf8_lossy(&unhex(f["err"])).into_owned(),
                    })
                }
                "VBERROR" => o.errors.push(line.clone()),
                "VBDONE" => o.done = true,
                _ => {}
            }
        }
        for (i, run) in o.runs.iter_mut().enumerate() {
            run.entries = entries.remove(&(i + 1)).unwrap_or_default();
        }
        o.console = console;
        o
    }

    /// The helper's own log lines (`vport-bootargs: ...`).
    pub fn helper_log(&self) -> Vec<&str> {
        self.console
            .iter()
            .filter_map(|(_, l)| l.find("vport-bootargs: ").map(|i| &l[i..]))
            .collect()
    }

    /// The guest's console, one string.
    pub fn console_text(&self) -> String {
        let lines: Vec<&str> = self.console.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    /// Seconds since start when the first console line starting with
    /// `prefix` arrived.
    pub fn console_time(&self, prefix: &str) -> Option<f64> {
        self.console
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| (*t - self.started).as_secs_f64())
    }

    pub fn log_has(&self, needle: &str) -> bool {
        self.helper_log().iter().any(|l| l.contains(needle))
    }

    /// The port events for `id`, as (seconds since start, open).
    pub fn port_events(&self, id: &str) -> Vec<(f64, bool)> {
        self.events
            .iter()
            .filter(|e| e.id == id)
            .map(|e| ((e.at - self.started).as_secs_f64(), e.open))
            .collect()
    }

    /// The vportNpM sysfs gave the name `name`.
    pub fn entry_named(&self, name: &str) -> Option<&str> {
        self.ports
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(e, _)| e.as_str())
    }

    pub fn only_run(&self) -> &Run {
        assert_eq!(
            self.runs.len(),
            1,
            "expected one fetch run; console:\n{}",
            self.console_text()
        );
        &self.runs[0]
    }
}
