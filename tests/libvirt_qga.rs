//! Current CloudStack (4.11.3 and later) under libvirt: the system VM has
//! only the guest agent's channel, and the host writes the cmdline the way
//! scripts/vm/hypervisor/kvm/patch.sh does: `virsh qemu-agent-command`
//! guest-ping until it answers, guest-sync, guest-file-open (mode w+),
//! guest-file-write (buf-b64), guest-file-close, each a separate call (qemu-ga
//! writes through a stdio buffer, so until the close the guest can see a cut
//! file).
//!
//! Run: `cargo test --test libvirt_qga -- --ignored` as root, with libvirt's
//! packages installed (tests/install-deps.sh; the test starts a libvirtd of
//! its own, in a mount namespace of its own), and the package and image of
//! tests/image (built or taken from the cache under target/image).
//!
//! The guest's stand-ins behave like CloudStack's boot scripts (our own
//! scripts, tests/image/guest/): the cloud-preinit one enables and starts
//! qemu-ga, polls `[ -s cmdline ]` once a second and records the FIRST parse
//! at once; the cloud-early-config one records the SECOND parse, after
//! `earlyconfig.delay=` seconds (the real one waits for the host's scripts
//! first). Each prints its parse on the serial console, which libvirt logs
//! to a file the test reads: the host clock says when each came.
//!
//! Two domains side by side, each one disk through a sequence of boots
//! (`steps()`): one with the package, one with its units masked from the
//! kernel command line (`MASKED_UNITS`), the anchor. Each sequence: a 9 KB
//! cmdline closed 3 s after its write, on a fresh disk; starts of a new VM
//! (no cmdline on the disk) with the host writing at once; `virsh reboot`s
//! and a `virsh reset` with nothing sent; a `virsh shutdown` + start with
//! the host writing late over the old file; a `virsh destroy` + start with
//! the host writing at once over the old file.
//!
//! Figures go to target/libvirt-qga/report.txt; they are reported, never
//! asserted.

#[path = "libvirt_qga/libvirtd.rs"]
mod libvirtd;
#[path = "image/shared.rs"]
mod shared;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use libvirtd::Libvirtd;
use shared::{base64_encode, cmdline, copy_sparse, image, once, repo, stdout_or_stderr, Facts};
use vport_bootargs::wire::digest_hex;

/// The package's units, masked for the boots without it (`systemd.mask=`
/// on the kernel command line, which systemd-debug-generator applies).
const MASKED_UNITS: &[&str] = &["vport-bootargs.service"];
/// The package's unit that holds the boot scripts until it releases them.
const BOOT_UNIT: &str = "vport-bootargs.service";
/// Put on each domain's disk before its first boot: the image's drop-in
/// shortens the deadline for the cmdline file to 45 s for its silent
/// hosts; these domains have none, and a late write on a loaded machine
/// can come after 45 s. The product's deadline (180 s), the image's grace.
const BOOT_UNIT_DROP_IN: (&str, &str) = (
    "/etc/systemd/system/vport-bootargs.service.d/zz-libvirt-qga.conf",
    "[Service]\nExecStart=\nExecStart=/usr/sbin/vport-bootargs boot --file-timeout 180 --file-grace 20\n",
);
/// From a boot's start to the guest's `@@ done` (a boot is about 30 s under
/// TCG on an idle machine); also the limit for a shutdown.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// The late host's wait after qemu-ga first answers: longer than the
/// image's grace period (20 s, counted from qemu-ga opening its port,
/// which comes before its first answer).
const LATE_AFTER_AGENT: Duration = Duration::from_secs(25);
/// The early-config stand-in's wait on the late boot: its second parse
/// comes this long after the first, well after the late write (the host
/// writes about `LATE_AFTER_AGENT` after the masked boot's first parse).
const LATE_SECOND_PARSE_DELAY: &str = "earlyconfig.delay=45";

fn work() -> PathBuf {
    repo().join("target/libvirt-qga")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Package,
    /// The package's units masked: the boot as without the package.
    Masked,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Package => "package",
            Mode::Masked => "masked",
        }
    }

    fn kernel_args(self) -> String {
        match self {
            Mode::Package => String::new(),
            Mode::Masked => MASKED_UNITS
                .iter()
                .map(|u| format!("systemd.mask={u}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// How a boot begins, after the previous one's `@@ done`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Begin {
    /// The domain defined and started on a fresh copy of the image.
    Fresh,
    /// `virsh shutdown` (through qemu-ga: a clean poweroff), then `virsh start`.
    Shutdown,
    /// `virsh destroy` (no shutdown in the guest), then `virsh start`.
    Destroy,
    /// `virsh reboot`: QEMU keeps running.
    Reboot,
    /// `virsh reset`: a hard reset, QEMU keeps running.
    Reset,
}

/// What the host does during the boot.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Send {
    Nothing,
    /// patch.sh as soon as qemu-ga answers, sleeping `pause` seconds
    /// between guest-file-write and guest-file-close.
    AtOnce {
        text: usize,
        pause: u64,
    },
    /// patch.sh `LATE_AFTER_AGENT` after qemu-ga first answers, and (with
    /// the package masked) not before the first parse: later than the
    /// grace period and than the first parse would come.
    Late {
        text: usize,
    },
}

/// The scenarios the figures are grouped by.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Cut9k,
    Start,
    Reboot,
    Reset,
    LateWrite,
    DestroyStart,
}

const SCENARIOS: &[(Scenario, &str)] = &[
    (Scenario::Start, "start of a new VM, host writes at once"),
    (Scenario::Reboot, "virsh reboot, nothing sent"),
    (Scenario::Reset, "virsh reset, nothing sent"),
    (
        Scenario::LateWrite,
        "virsh shutdown + start, host writes late over the old file",
    ),
    (
        Scenario::DestroyStart,
        "virsh destroy + start, host writes at once over the old file",
    ),
    (
        Scenario::Cut9k,
        "9 KB cmdline, close 3 s after the write (fresh disk)",
    ),
];

struct Step {
    label: String,
    scenario: Scenario,
    begin: Begin,
    /// Remove the cmdline from the disk before the start: a new VM.
    new_vm: bool,
    send: Send,
    /// More for the kernel command line (starts only).
    extra: &'static str,
}

/// The cmdlines the host sends (`Send`'s `text` indexes this).
fn texts() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        // The 9 KB one, then one of 2 KB per other boot that sends (each
        // its own, so that a parse shows which boot's text it read).
        let mut v = vec![cmdline(9_000, "a")];
        v.extend(
            ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"].map(|s| cmdline(2_000, s)),
        );
        v
    })
}

/// How many starts (host writing at once) and `virsh reboot`s each domain
/// boots: `LIBVIRT_QGA_REPEAT`, 1 unless set. CI runs each scenario once;
/// the figures of docs/current-cloudstack.md are medians of a run with
/// `LIBVIRT_QGA_REPEAT=3` (ten boots per domain instead of six).
fn repeat() -> usize {
    match std::env::var("LIBVIRT_QGA_REPEAT") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=9).contains(n))
            .unwrap_or_else(|| panic!("LIBVIRT_QGA_REPEAT={v:?}: want 1 to 9")),
        Err(_) => 1,
    }
}

/// Each domain's boots, in order, on one disk: a 9 KB cmdline closed late
/// on a fresh disk (with `systemd-analyze verify`, seconds of guest CPU, so
/// only once), a start, `repeat()` reboots, a reset, `repeat() - 1` more
/// starts, the late write and the destroy.
fn steps() -> &'static [Step] {
    static STEPS: OnceLock<Vec<Step>> = OnceLock::new();
    STEPS.get_or_init(|| {
        let n = repeat();
        let step = |label: String, scenario, begin, new_vm, send, extra| Step {
            label,
            scenario,
            begin,
            new_vm,
            send,
            extra,
        };
        let start = |i: usize| {
            step(
                format!("start{i}"),
                Scenario::Start,
                Begin::Shutdown,
                true,
                Send::AtOnce { text: i, pause: 0 },
                "",
            )
        };
        let mut v = vec![
            step(
                "cut9k".into(),
                Scenario::Cut9k,
                Begin::Fresh,
                true,
                Send::AtOnce { text: 0, pause: 3 },
                "imagecheck.analyze=1",
            ),
            start(1),
        ];
        for i in 1..=n {
            v.push(step(
                format!("reboot{i}"),
                Scenario::Reboot,
                Begin::Reboot,
                false,
                Send::Nothing,
                "",
            ));
        }
        v.push(step(
            "reset".into(),
            Scenario::Reset,
            Begin::Reset,
            false,
            Send::Nothing,
            "",
        ));
        v.extend((2..=n).map(start));
        v.push(step(
            "late".into(),
            Scenario::LateWrite,
            Begin::Shutdown,
            false,
            Send::Late { text: n + 1 },
            LATE_SECOND_PARSE_DELAY,
        ));
        v.push(step(
            "destroy".into(),
            Scenario::DestroyStart,
            Begin::Destroy,
            false,
            Send::AtOnce {
                text: n + 2,
                pause: 0,
            },
            "",
        ));
        v
    })
}

/// What one boot showed.
#[derive(Debug)]
struct Boot {
    label: String,
    mode: Mode,
    scenario: Scenario,
    facts: Vec<String>,
    /// What the host sent (None: nothing).
    sent: Option<String>,
    /// What the guest's disk held before the boot (None: no cmdline).
    before: Option<String>,
    /// Host clock: `virsh start` called, or `virsh reboot`/`reset`.
    began: Instant,
    first_parse: Option<Instant>,
    second_parse: Option<Instant>,
    /// Host clock: guest-file-close returned.
    closed: Option<Instant>,
    error: Option<String>,
}

impl Facts for Boot {
    fn facts(&self) -> &[String] {
        &self.facts
    }

    fn source(&self) -> String {
        match &self.error {
            Some(e) => format!("{} {} ({e})", self.mode.name(), self.label),
            None => format!("{} {}", self.mode.name(), self.label),
        }
    }
}

/// How what a parse read compares with what the host sent and with what
/// the disk held before.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Read {
    /// What the host sent in this boot.
    New,
    /// What the disk held before the boot.
    Old,
    Cut(usize),
    Nothing,
    Other(usize),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Parse {
    First,
    Second,
}

impl Boot {
    /// `(bytes, sha256)` of what a parse read; None: it read nothing.
    fn read_by(&self, parse: Parse) -> Option<(usize, String)> {
        let who = match parse {
            Parse::First => "preinit-read",
            Parse::Second => "early-config-read",
        };
        let line = self.try_fact(&format!("digest {who} "))?;
        if line == "missing" {
            return None;
        }
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        Some((field("bytes=").parse().unwrap(), field("sha256=")))
    }

    fn read(&self, parse: Parse) -> Read {
        let Some((bytes, sha)) = self.read_by(parse) else {
            return Read::Nothing;
        };
        let is = |t: &Option<String>| t.as_ref().is_some_and(|t| sha == digest_hex(t.as_bytes()));
        match &self.sent {
            _ if is(&self.sent) => Read::New,
            _ if is(&self.before) => Read::Old,
            Some(sent) if bytes < sent.len() => Read::Cut(bytes),
            _ => Read::Other(bytes),
        }
    }

    fn journal(&self) -> String {
        self.facts_with("journal ").join("\n")
    }

    /// How the boot unit says the previous boot ended: "reboot",
    /// "poweroff", "none" (no record), or None where it did not say.
    fn previous_end(&self) -> Option<&'static str> {
        let j = self.journal();
        ["reboot", "poweroff"]
            .into_iter()
            .find(|w| j.contains(&format!("the previous boot ended in a {w} ")))
            .or_else(|| {
                j.contains("no record of how the previous boot ended")
                    .then_some("none")
            })
    }

    /// Host clock, from the boot's beginning to the first parse's console line.
    fn to_first_parse(&self) -> Option<Duration> {
        self.first_parse?.checked_duration_since(self.began)
    }

    /// Guest clock (uptime) at the first parse, from the stand-in's record.
    fn first_parse_uptime(&self) -> Option<f64> {
        self.try_fact("preinit ")?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("at="))?
            .parse()
            .ok()
    }

    /// The boot unit's start to its exit (the release), in seconds.
    fn unit_release(&self) -> Option<f64> {
        self.try_fact(&format!("unit {BOOT_UNIT} "))?;
        Some(self.report_runtime(BOOT_UNIT)).filter(|&s| s > 0.0)
    }

    /// For assertions: what went wrong with this boot, with its journal.
    fn context(&self) -> String {
        format!(
            "{}; {BOOT_UNIT}'s journal:\n{}",
            self.source(),
            self.journal()
        )
    }
}

struct Boots {
    package: Vec<Boot>,
    masked: Vec<Boot>,
}

impl Boots {
    fn of(&self, mode: Mode) -> &[Boot] {
        match mode {
            Mode::Package => &self.package,
            Mode::Masked => &self.masked,
        }
    }

    fn get(&self, mode: Mode, label: &str) -> &Boot {
        self.of(mode)
            .iter()
            .find(|b| b.label == label)
            .unwrap_or_else(|| {
                panic!(
                    "{} {label}: the boot did not run (an earlier boot of the sequence failed: {:?})",
                    mode.name(),
                    self.of(mode)
                        .iter()
                        .filter_map(|b| b.error.as_deref())
                        .collect::<Vec<_>>()
                )
            })
    }

    fn scenario(&self, mode: Mode, s: Scenario) -> Vec<&Boot> {
        self.of(mode).iter().filter(|b| b.scenario == s).collect()
    }
}

fn boots() -> &'static Boots {
    static BOOTS: OnceLock<Result<Boots, String>> = OnceLock::new();
    once(&BOOTS, "the libvirt boots could not run", run_boots)
}

fn run_boots() -> Boots {
    let started = Instant::now();
    let run = work();
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run).unwrap();
    let bench = Bench {
        images: image(),
        sockets: tempfile::Builder::new().prefix("vq").tempdir().unwrap(),
        lv: Libvirtd::start(&run.join("libvirtd")),
    };
    let (package, masked) = thread::scope(|scope| {
        let package = scope.spawn(|| bench.sequence(Mode::Package));
        let masked = scope.spawn(|| bench.sequence(Mode::Masked));
        (package.join().unwrap(), masked.join().unwrap())
    });
    let boots = Boots { package, masked };
    report(&run, started.elapsed(), &boots);
    boots
}

fn agent(lv: &Libvirtd, vm: &str, json: &str) -> Result<String, String> {
    stdout_or_stderr(&lv.virsh(&["qemu-agent-command", vm, json]))
}

/// patch.sh's first step: guest-ping every 0.1 s until qemu-ga answers.
fn wait_for_agent(lv: &Libvirtd, vm: &str, until: Instant) -> Result<Instant, String> {
    while agent(lv, vm, r#"{"execute":"guest-ping"}"#).is_err() {
        if Instant::now() > until {
            return Err("qemu-ga never answered guest-ping".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Instant::now())
}

/// patch.sh's sequence, with `pause` between guest-file-write and
/// guest-file-close; returns the host's instant when guest-file-close
/// returned.
fn patch_sh(
    lv: &Libvirtd,
    vm: &str,
    text: &str,
    pause: Duration,
    until: Instant,
) -> Result<Instant, String> {
    wait_for_agent(lv, vm, until)?;
    let sync = r#"{"execute":"guest-sync","arguments":{"id":1234567890}}"#;
    while agent(lv, vm, sync).as_deref() != Ok(r#"{"return":1234567890}"#) {
        if Instant::now() > until {
            return Err("guest-sync never answered".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    // CloudStack's agent runs patch.sh again when it fails (up to 10
    // times): here the open is tried again, once a second.
    let open = loop {
        let open = agent(
            lv,
            vm,
            r#"{"execute":"guest-file-open","arguments":{"path":"/var/cache/cloud/cmdline","mode":"w+"}}"#,
        );
        match open {
            Ok(open) => break open,
            Err(e) if Instant::now() > until => return Err(e),
            Err(_) => thread::sleep(Duration::from_secs(1)),
        }
    };
    let handle: String = open.chars().filter(char::is_ascii_digit).collect();
    agent(
        lv,
        vm,
        &format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{}"}}}}"#,
            base64_encode(text.as_bytes())
        ),
    )?;
    thread::sleep(pause);
    agent(
        lv,
        vm,
        &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#),
    )?;
    Ok(Instant::now())
}

/// The console log as it grows: (host instant it was first seen, line).
struct Console {
    path: PathBuf,
    lines: Vec<(Instant, String)>,
    offset: usize,
}

impl Console {
    fn new(path: PathBuf) -> Self {
        Console {
            path,
            lines: Vec::new(),
            offset: 0,
        }
    }

    fn poll(&mut self) {
        let Ok(bytes) = fs::read(&self.path) else {
            return;
        };
        if bytes.len() <= self.offset {
            return;
        }
        let now = Instant::now();
        let new = &bytes[self.offset..];
        let Some(end) = new.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        for line in String::from_utf8_lossy(&new[..end]).lines() {
            self.lines
                .push((now, line.trim_end_matches('\r').to_owned()));
        }
        self.offset += end + 1;
    }

    /// The lines so far, after a last look: a boot that begins now has
    /// its lines from this index on.
    fn mark(&mut self) -> usize {
        self.poll();
        self.lines.len()
    }

    /// Waits (polling the log file every 50 ms: a harness, not the product)
    /// for a line from index `from` on containing `needle`; its host instant.
    fn wait_for(&mut self, needle: &str, from: usize, until: Instant) -> Option<Instant> {
        let mut seen = from;
        loop {
            self.poll();
            if let Some((at, _)) = self.lines[seen.min(self.lines.len())..]
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return Some(*at);
            }
            seen = self.lines.len();
            if Instant::now() > until {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host instant of the first line from `from` on containing `needle`.
    fn seen(&self, needle: &str, from: usize) -> Option<Instant> {
        self.lines[from..]
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }
}

/// What every boot of the run shares.
struct Bench {
    images: PathBuf,
    /// QEMU's sockets, one directory a domain: a short path, sun_path holds
    /// 108 bytes.
    sockets: tempfile::TempDir,
    lv: Libvirtd,
}

/// A persistent domain, destroyed and undefined when dropped (a failed
/// sequence leaves no QEMU behind).
struct Domain<'a> {
    lv: &'a Libvirtd,
    name: String,
}

impl Domain<'_> {
    fn virsh(&self, cmd: &str) -> Result<(), String> {
        stdout_or_stderr(&self.lv.virsh(&[cmd, &self.name]))
            .map(drop)
            .map_err(|e| format!("virsh {cmd}: {e}"))
    }

    fn wait_shut_off(&self, until: Instant) -> Result<(), String> {
        loop {
            let state = stdout_or_stderr(&self.lv.virsh(&["domstate", &self.name]))?;
            if state == "shut off" {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("the domain is still {state:?}"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        let _ = self.lv.virsh(&["destroy", &self.name]);
        let _ = self.lv.virsh(&["undefine", &self.name]);
    }
}

impl Bench {
    /// Runs `steps()` on one disk and one domain in `mode`; stops at the
    /// first boot that fails (its error is in its `Boot`).
    fn sequence(&self, mode: Mode) -> Vec<Boot> {
        let lv = &self.lv;
        let dom = Domain {
            lv,
            name: format!("qga-{}-{}", mode.name(), std::process::id()),
        };
        let disk = work().join(format!("disk-{}.raw", mode.name()));
        copy_sparse(&self.images.join("image.raw"), &disk);
        write_to_disk(&disk, BOOT_UNIT_DROP_IN.0, BOOT_UNIT_DROP_IN.1);
        let sockets = self.sockets.path().join(mode.name());
        fs::create_dir_all(&sockets).unwrap();
        let mut boots = Vec::new();
        let mut console = Console::new(PathBuf::new());
        // What the guest's disk holds, as far as the host knows.
        let mut stored: Option<String> = None;
        for step in steps() {
            let until = Instant::now() + BOOT_LIMIT;
            let mut b = Boot {
                label: step.label.clone(),
                mode,
                scenario: step.scenario,
                facts: Vec::new(),
                sent: None,
                before: None,
                began: Instant::now(),
                first_parse: None,
                second_parse: None,
                closed: None,
                error: None,
            };
            let result = (|| -> Result<usize, String> {
                // End the previous boot, as the step says.
                match step.begin {
                    Begin::Fresh => {}
                    Begin::Shutdown => {
                        dom.virsh("shutdown")?;
                        dom.wait_shut_off(until)?;
                    }
                    Begin::Destroy => {
                        dom.virsh("destroy")?;
                        dom.wait_shut_off(until)?;
                    }
                    Begin::Reboot | Begin::Reset => {}
                }
                if step.new_vm {
                    remove_cmdline(&disk)?;
                    stored = None;
                }
                b.before = stored.clone();
                let from = match step.begin {
                    Begin::Reboot | Begin::Reset => {
                        let from = console.mark();
                        b.began = Instant::now();
                        dom.virsh(if step.begin == Begin::Reboot {
                            "reboot"
                        } else {
                            "reset"
                        })?;
                        from
                    }
                    Begin::Fresh | Begin::Shutdown | Begin::Destroy => {
                        let log = work().join(format!("{}-{}.console", mode.name(), step.label));
                        let xml = self.xml(&dom.name, &disk, &log, &sockets, mode, step.extra);
                        let xml_path = work().join(format!("{}-{}.xml", mode.name(), step.label));
                        fs::write(&xml_path, xml).unwrap();
                        stdout_or_stderr(&lv.virsh(&["define", &xml_path.to_string_lossy()]))
                            .map_err(|e| format!("virsh define: {e}"))?;
                        console = Console::new(log);
                        b.began = Instant::now();
                        dom.virsh("start")?;
                        0
                    }
                };
                match step.send {
                    Send::Nothing => {}
                    Send::AtOnce { text, pause } => {
                        let text = &texts()[text];
                        b.sent = Some(text.clone());
                        stored = Some(text.clone());
                        let pause = Duration::from_secs(pause);
                        b.closed = Some(patch_sh(lv, &dom.name, text, pause, until)?);
                    }
                    Send::Late { text } => {
                        let text = &texts()[text];
                        b.sent = Some(text.clone());
                        stored = Some(text.clone());
                        let answered = wait_for_agent(lv, &dom.name, until)?;
                        thread::sleep(LATE_AFTER_AGENT.saturating_sub(answered.elapsed()));
                        if mode == Mode::Masked {
                            console
                                .wait_for("cloud-preinit stand-in: first parse", from, until)
                                .ok_or("no first parse")?;
                        }
                        b.closed = Some(patch_sh(lv, &dom.name, text, Duration::ZERO, until)?);
                    }
                }
                console
                    .wait_for("@@ done", from, until)
                    .ok_or("no `@@ done` within the boot limit")?;
                Ok(from)
            })();
            let from = match result {
                Ok(from) => from,
                Err(e) => {
                    b.error = Some(e);
                    console.mark().min(console.lines.len())
                }
            };
            let from = from.min(console.lines.len());
            b.first_parse = console.seen("cloud-preinit stand-in: first parse", from);
            b.second_parse = console.seen("cloud-early-config stand-in: second parse", from);
            b.facts = console.lines[from..]
                .iter()
                .filter_map(|(_, l)| l.split_once("@@ ").map(|(_, f)| f.to_owned()))
                .collect();
            eprintln!(
                "libvirt_qga: {} {}: {:.0?}{}",
                mode.name(),
                step.label,
                b.began.elapsed(),
                b.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            let failed = b.error.is_some();
            boots.push(b);
            if failed {
                break;
            }
        }
        drop(dom);
        let _ = fs::remove_file(&disk);
        boots
    }

    fn xml(
        &self,
        name: &str,
        disk: &Path,
        console: &Path,
        sockets: &Path,
        mode: Mode,
        extra: &str,
    ) -> String {
        let kernel_cmdline = format!(
            "root=/dev/vda rw console=ttyS0 quiet panic=1 imagecheck.linger=900 {} {extra}",
            mode.kernel_args()
        );
        // A domain defined again (a new console log, a new kernel command
        // line) keeps its UUID.
        let uuid = format!(
            "5ca1ab1e-0000-4000-8000-{:04x}{:08x}",
            mode as u16,
            std::process::id()
        );
        fs::read_to_string(repo().join("tests/libvirt_qga/system-vm.xml"))
            .unwrap()
            .replace("@NAME@", name)
            .replace("@UUID@", &uuid)
            .replace("@KERNEL@", &self.images.join("vmlinux").to_string_lossy())
            .replace(
                "@INITRD@",
                &self.images.join("initrd.img").to_string_lossy(),
            )
            .replace("@CMDLINE@", kernel_cmdline.trim())
            .replace("@DISK@", &disk.to_string_lossy())
            .replace("@CONSOLE@", &console.to_string_lossy())
            .replace("@SOCKETS@", &sockets.to_string_lossy())
    }
}

/// Writes `content` to `path` in the (stopped) disk's filesystem (debugfs,
/// no mount); the directory must exist.
fn write_to_disk(disk: &Path, path: &str, content: &str) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), content).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} {path}", tmp.path().display()))
        .arg(disk)
        .output()
        .expect("cannot run debugfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("write:"),
        "debugfs write {path}: {err}"
    );
}

/// A new VM from the template has no cmdline: the file is removed from the
/// stopped domain's disk (debugfs, no mount).
fn remove_cmdline(disk: &Path) -> Result<(), String> {
    let out = Command::new("debugfs")
        .args(["-w", "-R", "rm /var/cache/cloud/cmdline"])
        .arg(disk)
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    // "File not found by ext2_lookup" is fine: a fresh disk has none.
    if !out.status.success() || (err.contains("rm:") && !err.contains("not found")) {
        return Err(format!("debugfs rm cmdline: {}", err.trim()));
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn secs(v: &[f64]) -> String {
    let all: Vec<String> = v.iter().map(|s| format!("{s:.1}")).collect();
    match median(v.to_vec()) {
        Some(m) => format!("{m:.1} s (of {})", all.join(", ")),
        None => "-".into(),
    }
}

fn report(run: &Path, total: Duration, boots: &Boots) {
    let mut r = String::new();
    let mut line = |s: String| {
        r.push_str(&s);
        r.push('\n');
    };
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    line(format!(
        "libvirt_qga: {} boots in {total:.0?}, two domains side by side; {cores} cores, load average at the end {}",
        boots.package.len() + boots.masked.len(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    line("host clock from the boot's beginning (virsh start, or virsh reboot/reset called) to the first parse's console line; median (of each boot):".into());
    for &(scenario, what) in SCENARIOS {
        let figure = |mode| -> Vec<f64> {
            boots
                .scenario(mode, scenario)
                .iter()
                .filter_map(|b| b.to_first_parse())
                .map(|d| d.as_secs_f64())
                .collect()
        };
        let (with, masked) = (figure(Mode::Package), figure(Mode::Masked));
        let diff = match (median(with.clone()), median(masked.clone())) {
            (Some(w), Some(m)) => format!("{:+.1} s", w - m),
            _ => "-".into(),
        };
        line(format!(
            "  {what}: with the package {}; masked {}; difference {diff}",
            secs(&with),
            secs(&masked)
        ));
    }
    line("guest uptime at the first parse, median:".into());
    for &(scenario, what) in SCENARIOS {
        let up = |mode| -> Vec<f64> {
            boots
                .scenario(mode, scenario)
                .iter()
                .filter_map(|b| b.first_parse_uptime())
                .collect()
        };
        line(format!(
            "  {what}: with the package {}; masked {}",
            secs(&up(Mode::Package)),
            secs(&up(Mode::Masked))
        ));
    }
    line(format!(
        "{BOOT_UNIT} start to release (guest clock), median:"
    ));
    for &(scenario, what) in SCENARIOS {
        let rel: Vec<f64> = boots
            .scenario(Mode::Package, scenario)
            .iter()
            .filter_map(|b| b.unit_release())
            .collect();
        line(format!("  {what}: {}", secs(&rel)));
    }
    line(
        "what each parse read (first, second; New = sent in this boot, Old = on the disk before):"
            .into(),
    );
    for mode in [Mode::Package, Mode::Masked] {
        for b in boots.of(mode) {
            let close = match (b.closed, b.first_parse) {
                (Some(c), Some(f)) => match f.checked_duration_since(c) {
                    Some(d) => format!("first parse {:.1} s after the close", d.as_secs_f64()),
                    None => format!(
                        "first parse {:.1} s before the close",
                        c.duration_since(f).as_secs_f64()
                    ),
                },
                _ => String::new(),
            };
            line(format!(
                "  {} {}: {:?}, {:?}; previous boot ended: {}; {close}{}",
                mode.name(),
                b.label,
                b.read(Parse::First),
                b.read(Parse::Second),
                b.previous_end().unwrap_or("-"),
                b.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            ));
        }
    }
    let _ = fs::File::create(run.join("report.txt")).and_then(|mut f| f.write_all(r.as_bytes()));
    eprint!("{r}");
}

fn assert_parses(b: &Boot, want: Read) {
    for parse in [Parse::First, Parse::Second] {
        assert_eq!(b.read(parse), want, "{parse:?} parse; {}", b.context());
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_start_with_the_host_writing_at_once_is_parsed_from_what_it_sent() {
    let b = boots();
    for mode in [Mode::Package, Mode::Masked] {
        let starts = b.scenario(mode, Scenario::Start);
        assert_eq!(starts.len(), repeat(), "{} starts", mode.name());
        for boot in starts {
            assert_parses(boot, Read::New);
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_reboot_without_a_resend_keeps_the_stored_file() {
    let b = boots();
    for mode in [Mode::Package, Mode::Masked] {
        for i in 1..=repeat() {
            let boot = b.get(mode, &format!("reboot{i}"));
            assert!(boot.before.is_some(), "{}", boot.context());
            assert_parses(boot, Read::Old);
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_reset_without_a_resend_keeps_the_stored_file() {
    let b = boots();
    for mode in [Mode::Package, Mode::Masked] {
        assert_parses(b.get(mode, "reset"), Read::Old);
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn with_the_package_a_late_write_after_a_poweroff_reaches_both_parses() {
    // The write comes after the grace period, so only the rule (a clean
    // poweroff: a start follows and the host writes) can hold the first
    // parse for it, not the grace period's timing.
    let boot = boots().get(Mode::Package, "late");
    assert_parses(boot, Read::New);
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn without_the_package_a_late_write_mixes_the_first_and_second_parse() {
    // The anchor. The host writes only after the first parse's console line,
    // and the second parse comes 45 s (guest clock, which under TCG runs
    // no faster than the host's) after the first: mixed by construction.
    let boot = boots().get(Mode::Masked, "late");
    assert_eq!(boot.read(Parse::First), Read::Old, "{}", boot.context());
    assert_eq!(boot.read(Parse::Second), Read::New, "{}", boot.context());
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn after_a_destroy_the_host_writing_at_once_reaches_both_parses_with_the_package() {
    assert_parses(boots().get(Mode::Package, "destroy"), Read::New);
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_9kb_cmdline_closed_3s_after_its_write_is_never_read_cut_with_the_package() {
    let b = boots();
    assert_parses(b.get(Mode::Package, "cut9k"), Read::New);
    // Masked, the stand-in's `[ -s ]` takes the file cut at qemu-ga's
    // buffer (8 KiB) when its poll runs within the 3 s before the close;
    // whether it does depends on how long its `systemctl enable` and
    // `start` take, so the report says what it read, unasserted.
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn masked_boots_never_start_the_package_units() {
    for boot in boots().of(Mode::Masked) {
        for unit in MASKED_UNITS {
            let started = boot
                .try_fact(&format!("unit {unit} "))
                .map(|_| boot.unit(unit, "ExecMainStartTimestampMonotonic"));
            assert!(
                started.as_deref().is_none_or(|s| s == "0"),
                "{unit} ran; {}",
                boot.context()
            );
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn the_boot_unit_passes_systemd_analyze_verify() {
    let boot = boots().get(Mode::Package, "cut9k");
    assert_eq!(boot.fact("verify "), "rc=0");
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn each_virsh_action_leaves_the_shutdown_record_it_should() {
    // libvirt 9.0 (qemuDomainReboot, qemuDomainShutdownFlags) prefers the
    // guest agent when qemu-ga is connected: `virsh reboot` is qemu-ga's
    // guest-shutdown mode=reboot, `virsh shutdown` mode=powerdown, both a
    // clean systemd shutdown, so the unit's ExecStop records it. `virsh
    // reset` (system_reset) and `virsh destroy` end the boot with no
    // shutdown: no record. A fresh disk has none either.
    let b = boots();
    for step in steps() {
        let want = match step.begin {
            Begin::Fresh | Begin::Reset | Begin::Destroy => "none",
            Begin::Shutdown => "poweroff",
            Begin::Reboot => "reboot",
        };
        let boot = b.get(Mode::Package, &step.label);
        assert_eq!(boot.previous_end(), Some(want), "{}", boot.context());
    }
    // Masked, the unit never ran, so it neither recorded nor read.
    for boot in b.of(Mode::Masked) {
        assert_eq!(boot.previous_end(), None, "{}", boot.context());
    }
}
