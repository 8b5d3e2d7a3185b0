//! `vport-bootargs send --guest-agent` under libvirt, beside patch.sh's
//! documented steps re-expressed here (our own code, run the same way) as
//! the anchor: the test image booted as a guest-agent-only system VM
//! (tests/libvirt_qga/system-vm.xml), with and without the package's guest
//! units, and the failures an operator meets: a template without
//! qemu-guest-agent (apache/cloudstack#13471), a stopped domain, a domain
//! without the agent's channel.
//!
//! Run: `cargo test --test libvirt_send -- --ignored` as root, as
//! tests/libvirt_qga.rs is (its private libvirtd, tests/libvirt_qga/
//! libvirtd.rs, and the image of tests/image). Boots, two at a time, once
//! for all the tests:
//! - `send --guest-agent` at the domain's start, two boots (first 2 KB
//!   with the package's units, then 70 KB with them masked), then nine more
//!   deliveries on each running guest (2, 9 and 70 KB, each three times);
//!   the patch.sh anchor the same way, beside it;
//! - a guest whose qemu-guest-agent is masked: both at its start, each with
//!   the same deadline;
//! - a domain without the agent's channel, and a defined, stopped domain
//!   (neither needs a boot to the end).
//!
//! Figures (times, virsh processes, the write-to-close window) go to
//! target/libvirt-send/report.txt; they are reported, never asserted.

#[path = "libvirt_qga/libvirtd.rs"]
mod libvirtd;
#[path = "image/shared.rs"]
mod shared;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use libvirtd::Libvirtd;
use shared::{
    base64_decode, base64_encode, cmdline, copy_sparse, image, once, repo, stdout_or_stderr, Facts,
};
use vport_bootargs::wire::digest_hex;

/// The package's one guest unit (the boot job, which holds the boot
/// scripts until the file written through qemu-ga is whole), masked from
/// the kernel command line (systemd-debug-generator reads `systemd.mask=`).
/// In one place: the package's unit names may change.
const GUEST_UNIT: &str = "vport-bootargs.service";
const GUEST_UNITS_MASK: &str = "systemd.mask=vport-bootargs.service";
/// A template without qemu-guest-agent: the unit never starts, so its port
/// is never opened (udev's rule only wants the unit).
const NO_AGENT_MASK: &str = "systemd.mask=qemu-guest-agent.service";
/// From `virsh create` to the guest's `@@ done`.
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// Each delivery's deadline (send --guest-agent's --wait-agent, and the
/// bound we give the anchor's loops, which patch.sh does not have).
const DELIVERY_LIMIT: Duration = Duration::from_secs(300);
/// The deadline where the agent never comes.
const NO_AGENT_LIMIT: Duration = Duration::from_secs(45);
/// The anchor's bound where it would loop forever at once (no channel, a
/// stopped domain): enough to count its calls.
const FUTILE_LIMIT: Duration = Duration::from_secs(5);
const SIZES: [usize; 3] = [2_000, 9_000, 70_000];
/// The first delivery's size on each boot, as the domain starts: the first
/// boot with the package's guest units, the second with them masked.
const START_SIZES: [usize; 2] = [2_000, 70_000];
const GUEST_PATH: &str = "/var/cache/cloud/cmdline";

fn work() -> PathBuf {
    repo().join("target/libvirt-send")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tool {
    /// `vport-bootargs send --guest-agent`.
    Ours,
    /// Our re-expression of patch.sh's steps.
    PatchSh,
}

/// One delivery by either tool.
#[derive(Debug, Clone, Default)]
struct Delivery {
    size: usize,
    /// Exit 0 (ours), or the whole sequence ran (the anchor).
    ok: bool,
    exit: Option<i32>,
    stderr: String,
    /// From the tool's start until it was connected to the agent: ours as
    /// it reports it, the anchor's first answered guest-ping.
    connected: Option<Duration>,
    /// From the tool's start until it ended (ours: confirmed).
    total: Duration,
    /// virsh processes started.
    calls: u32,
    /// Host clock, guest-file-write sent to guest-file-close answered.
    window: Option<Duration>,
    /// Read back by the harness afterwards (not counted): what it sent.
    landed: Option<bool>,
}

/// One boot.
#[derive(Debug, Default)]
struct Boot {
    label: String,
    facts: Vec<String>,
    /// The first delivery, started with the domain.
    first: Delivery,
    /// From `virsh create` returning to the first delivery's end.
    start_to_end: Duration,
    /// Later deliveries on the running guest.
    later: Vec<Delivery>,
    first_text: String,
    error: Option<String>,
}

impl Facts for Boot {
    fn facts(&self) -> &[String] {
        &self.facts
    }

    fn source(&self) -> String {
        match &self.error {
            Some(e) => format!("{} ({e})", self.label),
            None => self.label.clone(),
        }
    }
}

impl Boot {
    /// What the cloud-preinit stand-in read, against the first delivery:
    /// "exact", "cut N", "nothing", "other N".
    fn preinit_read(&self) -> String {
        match self.try_fact("digest preinit-read ") {
            None => "no report".into(),
            Some("missing") => "nothing".into(),
            Some(line) => {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k))
                        .unwrap_or_default()
                        .to_owned()
                };
                let bytes: usize = field("bytes=").parse().unwrap_or(0);
                if field("sha256=") == digest_hex(self.first_text.as_bytes()) {
                    "exact".into()
                } else if bytes < self.first_text.len() {
                    format!("cut {bytes}")
                } else {
                    format!("other {bytes}")
                }
            }
        }
    }
}

/// A failure scenario: what each tool did.
#[derive(Debug, Default)]
struct Failure {
    ours: Delivery,
    anchor: Delivery,
    anchor_last_error: String,
}

struct Runs {
    ours: Vec<Boot>,
    anchor: Vec<Boot>,
    no_agent: Failure,
    no_channel: Failure,
    stopped: Failure,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Result<Runs, String>> = OnceLock::new();
    once(&RUNS, "the libvirt send boots could not run", run_all)
}

fn run_all() -> Runs {
    let started = Instant::now();
    let run = work();
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run).unwrap();
    let lv_dir = run.join("libvirtd");
    let bench = Bench {
        images: image(),
        sockets: tempfile::Builder::new().prefix("vs").tempdir().unwrap(),
        lv: Libvirtd::start(&lv_dir),
        virsh: run.join("virsh"),
    };
    // send --guest-agent runs virsh in the private libvirtd's namespace
    // through --virsh, as an operator's wrapper for another URI would.
    let pid = fs::read_to_string(lv_dir.join("libvirtd.pid")).unwrap();
    fs::write(
        &bench.virsh,
        format!(
            "#!/bin/sh\necho \"$*\" >>{}\nexec nsenter --target={} --mount virsh -c qemu:///system \"$@\"\n",
            calls_log().display(),
            pid.trim()
        ),
    )
    .unwrap();
    fs::set_permissions(&bench.virsh, fs::Permissions::from_mode(0o755)).unwrap();

    let (ours, anchor) = thread::scope(|scope| {
        let per_tool = |tool: Tool| {
            let bench = &bench;
            move || {
                let mut boots = Vec::new();
                for (i, &size) in START_SIZES.iter().enumerate() {
                    let mask = if i == 0 { "" } else { GUEST_UNITS_MASK };
                    let label = format!("{}-{}", tool_name(tool), i + 1);
                    boots.push(bench.boot(tool, &label, mask, size));
                }
                let failure = match tool {
                    Tool::Ours => Some(bench.no_agent()),
                    Tool::PatchSh => None,
                };
                (boots, failure)
            }
        };
        let a = scope.spawn(per_tool(Tool::Ours));
        let b = scope.spawn(per_tool(Tool::PatchSh));
        (a.join().unwrap(), b.join().unwrap())
    });
    let runs = Runs {
        ours: ours.0,
        anchor: anchor.0,
        no_agent: ours.1.unwrap(),
        no_channel: bench.no_channel(),
        stopped: bench.stopped(),
    };
    report(&run, started.elapsed(), &runs);
    runs
}

fn tool_name(tool: Tool) -> &'static str {
    match tool {
        Tool::Ours => "send",
        Tool::PatchSh => "patchsh",
    }
}

/// What every boot shares.
struct Bench {
    images: PathBuf,
    /// QEMU's sockets: a short path (sun_path holds 108 bytes).
    sockets: tempfile::TempDir,
    lv: Libvirtd,
    /// The wrapper given to send --guest-agent as --virsh.
    virsh: PathBuf,
}

impl Bench {
    /// The domain XML for `vm`, its kernel command line with `extra`;
    /// without the agent's channel when `agent_channel` is false.
    fn xml(&self, vm: &str, label: &str, extra: &str, agent_channel: bool) -> PathBuf {
        let disk = work().join(format!("{label}.raw"));
        copy_sparse(&self.images.join("image.raw"), &disk);
        let dir = self.sockets.path().join(label);
        fs::create_dir_all(&dir).unwrap();
        let kernel_cmdline =
            format!("root=/dev/vda rw console=ttyS0 quiet panic=1 imagecheck.linger=900 {extra}");
        let mut xml = fs::read_to_string(repo().join("tests/libvirt_qga/system-vm.xml"))
            .unwrap()
            .replace("@NAME@", vm)
            // Each domain here is created once: libvirt gives it a UUID.
            .replace("  <uuid>@UUID@</uuid>\n", "")
            .replace("@KERNEL@", &self.images.join("vmlinux").to_string_lossy())
            .replace(
                "@INITRD@",
                &self.images.join("initrd.img").to_string_lossy(),
            )
            .replace("@CMDLINE@", &kernel_cmdline)
            .replace("@DISK@", &disk.to_string_lossy())
            .replace("@CONSOLE@", &console_path(label).to_string_lossy())
            .replace("@SOCKETS@", &dir.to_string_lossy());
        if !agent_channel {
            let from = xml.find("<channel").unwrap();
            let to = xml.find("</channel>").unwrap() + "</channel>".len();
            xml.replace_range(from..to, "");
        }
        let path = work().join(format!("{label}.xml"));
        fs::write(&path, xml).unwrap();
        path
    }

    fn create(&self, xml: &Path) -> Result<(), String> {
        stdout_or_stderr(&self.lv.virsh(&["create", &xml.to_string_lossy()])).map(drop)
    }

    /// Boots a domain with `tool` delivering a `size` cmdline as it starts,
    /// waits for the guest's report, then delivers each size three more
    /// times on the running guest.
    fn boot(&self, tool: Tool, label: &str, extra: &str, size: usize) -> Boot {
        let vm = format!("ls-{label}-{}", std::process::id());
        let xml = self.xml(&vm, label, extra, true);
        let text = cmdline(size, label);
        let mut b = Boot {
            label: label.into(),
            first_text: text.clone(),
            ..Boot::default()
        };
        if let Err(e) = self.create(&xml) {
            b.error = Some(format!("virsh create failed: {e}"));
            return b;
        }
        let created = Instant::now();
        let mut con = Console::new(console_path(label));
        b.first = self.deliver(tool, &vm, &text, DELIVERY_LIMIT);
        b.start_to_end = created.elapsed();
        match con.wait_for("@@ done", created + BOOT_LIMIT) {
            Some(()) => {
                for round in 0..3 {
                    for &size in &SIZES {
                        let text = cmdline(size, &format!("{label}-{round}"));
                        b.later.push(self.deliver(tool, &vm, &text, DELIVERY_LIMIT));
                    }
                }
            }
            None => b.error = Some("no `@@ done` within the boot limit".into()),
        }
        b.facts = con.facts();
        let _ = self.lv.virsh(&["destroy", &vm]);
        let _ = fs::remove_file(work().join(format!("{label}.raw")));
        eprintln!(
            "libvirt_send: boot {label}: first delivery {:?} after the start, {}",
            b.start_to_end,
            b.error.as_deref().unwrap_or("ok")
        );
        b
    }

    /// One delivery of `text` by `tool`, then the harness's own read-back.
    fn deliver(&self, tool: Tool, vm: &str, text: &str, limit: Duration) -> Delivery {
        let mut d = match tool {
            Tool::Ours => self.ours(vm, text, limit),
            Tool::PatchSh => patch_sh(&self.lv, vm, text, Instant::now() + limit).0,
        };
        d.size = text.len();
        if d.ok {
            d.landed = Some(read_back(&self.lv, vm).as_deref() == Some(text.as_bytes()));
        }
        d
    }

    fn ours(&self, vm: &str, text: &str, limit: Duration) -> Delivery {
        let (started, before) = (Instant::now(), calls_so_far());
        let out = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
            .args(["send", "--guest-agent", "-n", vm, "-c", text.trim_end()])
            .arg("--virsh")
            .arg(&self.virsh)
            .args(["--wait-agent", &limit.as_secs().to_string()])
            .output()
            .expect("cannot run vport-bootargs");
        let mut d = ours_delivery(&out, started.elapsed());
        // Counted by the wrapper, failures included.
        d.calls = calls_so_far() - before;
        d
    }

    /// A guest without qemu-guest-agent: both tools at its start, each
    /// with the same deadline.
    fn no_agent(&self) -> Failure {
        let label = "no-agent";
        let vm = format!("ls-{label}-{}", std::process::id());
        let xml = self.xml(
            &vm,
            label,
            &format!("{GUEST_UNITS_MASK} {NO_AGENT_MASK}"),
            true,
        );
        let mut f = Failure::default();
        if let Err(e) = self.create(&xml) {
            f.ours.stderr = format!("virsh create failed: {e}");
            return f;
        }
        thread::scope(|scope| {
            let anchor =
                scope.spawn(|| patch_sh(&self.lv, &vm, "x=y\n", Instant::now() + NO_AGENT_LIMIT));
            f.ours = self.ours(&vm, "x=y", NO_AGENT_LIMIT);
            (f.anchor, f.anchor_last_error) = anchor.join().unwrap();
        });
        let _ = self.lv.virsh(&["destroy", &vm]);
        let _ = fs::remove_file(work().join(format!("{label}.raw")));
        f
    }

    /// A running domain without the agent's channel (destroyed at once: its
    /// guest is not needed).
    fn no_channel(&self) -> Failure {
        let label = "no-channel";
        let vm = format!("ls-{label}-{}", std::process::id());
        let xml = self.xml(&vm, label, GUEST_UNITS_MASK, false);
        let mut f = Failure::default();
        if let Err(e) = self.create(&xml) {
            f.ours.stderr = format!("virsh create failed: {e}");
            return f;
        }
        f.ours = self.ours(&vm, "x=y", DELIVERY_LIMIT);
        (f.anchor, f.anchor_last_error) =
            patch_sh(&self.lv, &vm, "x=y\n", Instant::now() + FUTILE_LIMIT);
        let _ = self.lv.virsh(&["destroy", &vm]);
        let _ = fs::remove_file(work().join(format!("{label}.raw")));
        f
    }

    /// A defined domain that is not running (CloudStack's are transient,
    /// but an operator can define one; a transient one that stopped is
    /// "not found", which the fake virsh tests cover).
    fn stopped(&self) -> Failure {
        let label = "stopped";
        let vm = format!("ls-{label}-{}", std::process::id());
        let xml = self.xml(&vm, label, "", true);
        let mut f = Failure::default();
        if let Err(e) = stdout_or_stderr(&self.lv.virsh(&["define", &xml.to_string_lossy()])) {
            f.ours.stderr = format!("virsh define failed: {e}");
            return f;
        }
        f.ours = self.ours(&vm, "x=y", DELIVERY_LIMIT);
        (f.anchor, f.anchor_last_error) =
            patch_sh(&self.lv, &vm, "x=y\n", Instant::now() + FUTILE_LIMIT);
        let _ = self.lv.virsh(&["undefine", &vm]);
        let _ = fs::remove_file(work().join(format!("{label}.raw")));
        f
    }
}

/// One line per virsh process send --guest-agent starts (the wrapper's).
fn calls_log() -> PathBuf {
    work().join("virsh-calls")
}

fn calls_so_far() -> u32 {
    fs::read_to_string(calls_log()).map_or(0, |s| s.lines().count() as u32)
}

fn console_path(label: &str) -> PathBuf {
    work().join(format!("{label}.console"))
}

/// Reads send --guest-agent's exit and its summary line.
fn ours_delivery(out: &Output, total: Duration) -> Delivery {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let number_before = |suffix: &str| -> Option<f64> {
        let line = stderr.lines().find(|l| l.contains("delivered "))?;
        let at = line.find(suffix)?;
        line[..at].rsplit(' ').next()?.parse().ok()
    };
    Delivery {
        ok: out.status.success(),
        exit: out.status.code(),
        connected: number_before(" s after the start, confirmed").map(Duration::from_secs_f64),
        total,
        calls: number_before(" virsh processes").map_or(0, |n| n as u32),
        window: number_before(" ms; ").map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        stderr,
        ..Delivery::default()
    }
}

fn agent(lv: &Libvirtd, vm: &str, json: &str) -> Result<String, String> {
    stdout_or_stderr(&lv.virsh(&["qemu-agent-command", vm, json]))
}

/// patch.sh's documented steps, each its own virsh process: guest-ping
/// every 0.1 s until answered, guest-sync id 1234567890 until it matches,
/// guest-file-open w+, guest-file-write buf-b64, guest-file-close; nothing
/// read back. `until` is our bound (patch.sh has none). Returns the
/// delivery and the last error seen.
fn patch_sh(lv: &Libvirtd, vm: &str, text: &str, until: Instant) -> (Delivery, String) {
    let started = Instant::now();
    let mut d = Delivery::default();
    let mut call = |json: &str| {
        d.calls += 1;
        agent(lv, vm, json)
    };
    let mut last = String::new();
    let result = (|| -> Result<(Option<Duration>, Duration), String> {
        loop {
            match call(r#"{"execute":"guest-ping"}"#) {
                Ok(_) => break,
                Err(e) => last = e,
            }
            if Instant::now() > until {
                return Err("guest-ping never answered".into());
            }
            thread::sleep(Duration::from_millis(100));
        }
        let connected = started.elapsed();
        let sync = r#"{"execute":"guest-sync","arguments":{"id":1234567890}}"#;
        while call(sync).as_deref() != Ok(r#"{"return":1234567890}"#) {
            if Instant::now() > until {
                return Err("guest-sync never answered".into());
            }
            thread::sleep(Duration::from_millis(100));
        }
        let open = call(&format!(
            r#"{{"execute":"guest-file-open","arguments":{{"path":"{GUEST_PATH}","mode":"w+"}}}}"#
        ))?;
        let handle: String = open.chars().filter(char::is_ascii_digit).collect();
        let write_sent = Instant::now();
        call(&format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{}"}}}}"#,
            base64_encode(text.as_bytes())
        ))?;
        call(&format!(
            r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#
        ))?;
        Ok((Some(connected), write_sent.elapsed()))
    })();
    d.total = started.elapsed();
    match result {
        Ok((connected, window)) => {
            d.ok = true;
            d.connected = connected;
            d.window = Some(window);
        }
        Err(e) => d.stderr = e,
    }
    (d, last)
}

/// The guest's file as the harness reads it back (not counted in either
/// tool's calls).
fn read_back(lv: &Libvirtd, vm: &str) -> Option<Vec<u8>> {
    let open = agent(
        lv,
        vm,
        &format!(
            r#"{{"execute":"guest-file-open","arguments":{{"path":"{GUEST_PATH}","mode":"r"}}}}"#
        ),
    )
    .ok()?;
    let handle: String = open.chars().filter(char::is_ascii_digit).collect();
    let read = agent(
        lv,
        vm,
        &format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":1048576}}}}"#
        ),
    );
    let _ = agent(
        lv,
        vm,
        &format!(r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#),
    );
    let read = read.ok()?;
    let b64 = read.split("\"buf-b64\":\"").nth(1)?.split('"').next()?;
    Some(base64_decode(b64))
}

/// The serial console's log as it grows.
struct Console {
    path: PathBuf,
    text: String,
}

impl Console {
    fn new(path: PathBuf) -> Self {
        Console {
            path,
            text: String::new(),
        }
    }

    fn poll(&mut self) {
        if let Ok(bytes) = fs::read(&self.path) {
            self.text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }

    /// Waits (a 200 ms poll of the log file: the harness, not the product)
    /// for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, until: Instant) -> Option<()> {
        loop {
            self.poll();
            if self.text.lines().any(|l| l.contains(needle)) {
                return Some(());
            }
            if Instant::now() > until {
                return None;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn facts(&mut self) -> Vec<String> {
        self.poll();
        self.text
            .lines()
            .filter_map(|l| l.split_once("@@ ").map(|(_, f)| f.trim_end().to_owned()))
            .collect()
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

fn report(run: &Path, total: Duration, runs: &Runs) {
    let mut r = String::new();
    let mut line = |s: String| {
        r.push_str(&s);
        r.push('\n');
    };
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    line(format!(
        "libvirt_send: {} boots in {total:.0?} ({cores} cores, TCG, two guests at a time)",
        runs.ours.len() + runs.anchor.len() + 2
    ));
    for (name, boots) in [
        ("send --guest-agent", &runs.ours),
        ("patch.sh anchor", &runs.anchor),
    ] {
        line(format!("== {name}"));
        for b in boots {
            line(format!(
                "{}: first {} B: start->{} {:.1} s, agent connected->end {}, {} virsh processes, write->close {}, landed {:?}; cloud-preinit stand-in read {}{}",
                b.label,
                b.first.size,
                if name.starts_with("send") { "confirmed" } else { "closed" },
                b.start_to_end.as_secs_f64(),
                ms(b.first.connected.map(|c| b.first.total.saturating_sub(c))),
                b.first.calls,
                ms(b.first.window),
                b.first.landed,
                b.preinit_read(),
                b.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        line(format!(
            "start->end, median of {}: {:.1?}",
            boots.len(),
            median(boots.iter().map(|b| b.start_to_end).collect())
        ));
        line(format!(
            "agent connected->end at the start, median of {}: {}",
            boots.len(),
            ms(median(
                boots
                    .iter()
                    .filter_map(|b| b.first.connected.map(|c| b.first.total.saturating_sub(c)))
                    .collect()
            ))
        ));
        for &size in &SIZES {
            let later: Vec<&Delivery> = boots
                .iter()
                .flat_map(|b| &b.later)
                .filter(|d| d.size == size)
                .collect();
            line(format!(
                "{size} B on a running guest ({} deliveries): whole call median {}, write->close median {}, virsh processes {:?}, landed {}/{}",
                later.len(),
                ms(median(later.iter().map(|d| d.total).collect())),
                ms(median(later.iter().filter_map(|d| d.window).collect())),
                later.iter().map(|d| d.calls).collect::<std::collections::BTreeSet<_>>(),
                later.iter().filter(|d| d.landed == Some(true)).count(),
                later.len()
            ));
        }
    }
    for (name, f) in [
        ("no qemu-guest-agent", &runs.no_agent),
        ("no agent channel", &runs.no_channel),
        ("stopped domain", &runs.stopped),
    ] {
        line(format!(
            "{name}: send --guest-agent exit {:?} after {:.1} s, {} virsh processes: {}; patch.sh anchor: {} virsh calls in {:.1} s (bounded by the test), last error: {}",
            f.ours.exit,
            f.ours.total.as_secs_f64(),
            f.ours.calls,
            f.ours.stderr.trim(),
            f.anchor.calls,
            f.anchor.total.as_secs_f64(),
            f.anchor_last_error
        ));
    }
    let _ = fs::write(run.join("report.txt"), &r);
    eprint!("{r}");
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("vport-bootargs: error: "))
        .collect()
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn delivered_and_confirmed_in_one_call_as_the_domain_starts_with_and_without_the_guest_units() {
    let runs = runs();
    for b in &runs.ours {
        assert!(b.error.is_none(), "{}: {:?}", b.label, b.error);
        assert!(b.first.ok, "{}: {}", b.label, b.first.stderr);
        assert_eq!(b.first.calls, 2, "{}: {}", b.label, b.first.stderr);
        assert_eq!(b.first.landed, Some(true), "{}", b.label);
    }
    // With the package's unit the boot job holds the boot until the file
    // is whole, so the stand-in reads exactly what was sent.
    assert_eq!(runs.ours[0].preinit_read(), "exact");
    assert_eq!(runs.ours[0].unit(GUEST_UNIT, "Result"), "success");
    // Masked, they never started.
    for b in &runs.ours[1..] {
        assert_eq!(
            b.unit(GUEST_UNIT, "ExecMainStartTimestampMonotonic"),
            "0",
            "{}",
            b.label
        );
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn each_size_is_delivered_and_confirmed_again_on_a_running_guest() {
    let runs = runs();
    for b in &runs.ours {
        assert_eq!(b.later.len(), 9, "{}: {:?}", b.label, b.error);
        for d in &b.later {
            assert!(d.ok, "{}: {} B: {}", b.label, d.size, d.stderr);
            assert_eq!(d.calls, 2, "{}: {}", b.label, d.stderr);
            assert_eq!(d.landed, Some(true), "{}: {} B", b.label, d.size);
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn the_patch_sh_anchor_lands_the_same_bytes() {
    // The anchor is worth comparing against only if it does deliver.
    let runs = runs();
    for b in &runs.anchor {
        assert!(b.first.ok, "{}: {}", b.label, b.first.stderr);
        assert_eq!(b.first.landed, Some(true), "{}", b.label);
        assert!(b.first.calls >= 5, "{}", b.label);
        for d in &b.later {
            assert_eq!(d.landed, Some(true), "{}: {} B", b.label, d.size);
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_guest_without_qemu_guest_agent_is_one_line_at_the_deadline() {
    let f = &runs().no_agent;
    assert_eq!(f.ours.exit, Some(69), "{}", f.ours.stderr);
    let errors = error_lines(&f.ours.stderr);
    assert_eq!(errors.len(), 1, "{}", f.ours.stderr);
    assert!(
        errors[0].contains("did not connect within 45 s"),
        "{errors:?}"
    );
    // patch.sh would have gone on pinging: the anchor hit our bound.
    assert!(!f.anchor.ok && f.anchor.calls > 10, "{f:?}");
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_stopped_domain_is_one_line_at_once() {
    let f = &runs().stopped;
    assert_eq!(f.ours.exit, Some(68), "{}", f.ours.stderr);
    let errors = error_lines(&f.ours.stderr);
    assert_eq!(errors.len(), 1, "{}", f.ours.stderr);
    assert!(errors[0].contains("is not running"), "{errors:?}");
    assert!(!f.anchor.ok, "{f:?}");
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_domain_without_the_agent_channel_is_one_line_at_once() {
    let f = &runs().no_channel;
    assert_eq!(f.ours.exit, Some(78), "{}", f.ours.stderr);
    let errors = error_lines(&f.ours.stderr);
    assert_eq!(errors.len(), 1, "{}", f.ours.stderr);
    assert!(
        errors[0].contains("has no guest agent channel"),
        "{errors:?}"
    );
    assert!(!f.anchor.ok, "{f:?}");
}
