//! Current CloudStack (4.11.3 and later) under libvirt: the system VM has
//! only the guest agent's channel, and the host writes the cmdline the way
//! scripts/vm/hypervisor/kvm/patch.sh does: `virsh qemu-agent-command`
//! guest-ping until it answers, guest-sync, guest-file-open (mode w+),
//! guest-file-write (buf-b64), guest-file-close, each a separate call, with
//! a pause between the write and the close (qemu-ga writes through a stdio
//! buffer, so until the close the guest can see a cut file).
//!
//! Run: `cargo test --test libvirt_qga -- --ignored` as root, with libvirt's
//! packages installed (tests/install-deps.sh; the test starts a libvirtd of
//! its own, in a mount namespace of its own), and the
//! package and image of tests/image (built or taken from the cache under
//! target/image). The guest's stand-ins for cloud-preinit (init.sh: start
//! qemu-ga, poll `[ -s cmdline ]` once a second, read) and
//! cloud-early-config record what they read; image-check prints it on the
//! serial console, which libvirt logs to a file the test reads.
//!
//! Boots, run once for all the tests, two at a time:
//! - one disk through four boots: a 2 KB cmdline on a fresh disk; stop and
//!   start with a 9 KB one over it; again with 70 KB, the host already
//!   waiting; a start where the host sends nothing (the 70 KB file must
//!   stay);
//! - with vport-bootargs-barrier.service masked (kernel command line), on
//!   fresh disks: 2, 9 and 70 KB, to count the cut files the stand-in reads
//!   without the barrier;
//! - a host that never writes.
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
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use libvirtd::Libvirtd;
use shared::{base64_encode, copy_sparse, image, once, repo, stdout_or_stderr, Facts};
use vport_bootargs::wire::digest_hex;

/// From `virsh create` to the guest's `@@ done` (a boot is ~20 s under TCG
/// on an idle machine; the package's fetch then waits 30 s for a *.vport
/// port that never comes).
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// patch.sh's pause between guest-file-write and guest-file-close is one
/// `virsh` process; this one is long enough for init.sh's once-a-second poll
/// to see the cut file.
const WRITE_CLOSE_PAUSE: Duration = Duration::from_secs(2);
const MASK: &str = "systemd.mask=vport-bootargs-barrier.service";

fn work() -> PathBuf {
    repo().join("target/libvirt-qga")
}

/// A cmdline of exactly `len` bytes as patch.sh writes it (`echo`'s
/// newline included), different for each `seed`.
fn cmdline(len: usize, seed: &str) -> String {
    let mut s = format!("template=domP type=secstorage name=s-1-VM seed={seed}");
    let mut i = 0;
    while s.len() < len - 1 {
        s.push_str(&format!(" k{i}=v{i}"));
        i += 1;
    }
    s.truncate(len - 1);
    while s.ends_with(' ') || s.ends_with('=') {
        s.pop();
        s.push('x');
    }
    s.push('\n');
    assert_eq!(s.len(), len);
    s
}

/// When the host starts playing patch.sh.
#[derive(Clone, Copy, PartialEq, Debug, Default)]
enum Host {
    /// As CloudStack's agent: right after the start, pinging until qemu-ga
    /// answers (the write usually lands before the barrier starts).
    Early,
    /// Once the barrier says on the console that it waits: the write lands
    /// while it holds the boot.
    Late,
    #[default]
    Silent,
}

/// What one boot showed.
#[derive(Debug, Default)]
struct Boot {
    label: String,
    facts: Vec<String>,
    /// What the host sent (None: nothing).
    sent: Option<String>,
    host: Host,
    /// Host clock: from `guest-file-close` returning to the barrier's
    /// release line on the console.
    close_to_release: Option<Duration>,
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
    /// `(bytes, sha256)` of what a stand-in read; None: it read nothing.
    fn read_by(&self, who: &str) -> Option<(usize, String)> {
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

    /// For the report, which must not fail on a boot that did not finish.
    fn summary(&self) -> String {
        if self
            .try_fact("unit vport-bootargs-barrier.service ")
            .is_none()
        {
            return format!("no report ({})", self.error.as_deref().unwrap_or("?"));
        }
        format!(
            "barrier {} in {:?}",
            self.unit("vport-bootargs-barrier.service", "Result"),
            self.unit_runtime("vport-bootargs-barrier.service")
        )
    }

    fn barrier_journal(&self) -> String {
        self.facts_with("barrier-journal ").join("\n")
    }

    /// How what a stand-in read compares with what the host sent.
    fn verdict(&self, who: &str, previous: Option<&str>) -> Read {
        let Some((bytes, sha)) = self.read_by(who) else {
            return Read::Nothing;
        };
        match &self.sent {
            Some(sent) if sha == digest_hex(sent.as_bytes()) => Read::Exact,
            _ if previous.is_some_and(|p| sha == digest_hex(p.as_bytes())) => Read::Stale,
            Some(sent) if bytes < sent.len() => Read::Cut(bytes),
            _ => Read::Other(bytes),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Read {
    Exact,
    Cut(usize),
    Stale,
    /// Nothing read, or no report from the guest.
    Nothing,
    Other(usize),
}

struct Boots {
    sizes: Vec<Boot>,
    reboot: Boot,
    masked: Vec<Boot>,
    silent: Boot,
    sent: Vec<String>,
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
    let sent: Vec<String> = [(2_000, "a"), (9_000, "b"), (70_000, "c")]
        .iter()
        .map(|&(len, seed)| cmdline(len, seed))
        .collect();

    let (sequence, (masked, silent)) = thread::scope(|scope| {
        let seq = scope.spawn(|| {
            let disk = bench.fresh_disk("disk.raw");
            let mut boots = Vec::new();
            for (i, (text, host)) in [
                (&sent[0], Host::Late),
                (&sent[1], Host::Late),
                (&sent[2], Host::Early),
            ]
            .into_iter()
            .enumerate()
            {
                let label = format!("size{}", i + 1);
                // The first also has the guest run systemd-analyze verify
                // on the barrier unit (seconds of guest CPU, so only once).
                let extra = if i == 0 { "imagecheck.analyze=1" } else { "" };
                boots.push(bench.boot(&disk, &label, extra, Some(text), host));
            }
            let reboot = bench.boot(&disk, "reboot", "", None, Host::Silent);
            (boots, reboot)
        });
        let other = scope.spawn(|| {
            let mut masked = Vec::new();
            for (i, text) in sent.iter().enumerate() {
                let disk = bench.fresh_disk(&format!("disk-masked{i}.raw"));
                let label = format!("masked{}", i + 1);
                masked.push(bench.boot(&disk, &label, MASK, Some(text), Host::Late));
                let _ = fs::remove_file(&disk);
            }
            let disk = bench.fresh_disk("disk-silent.raw");
            let silent = bench.boot(&disk, "silent", "preinit.polls=3", None, Host::Silent);
            let _ = fs::remove_file(&disk);
            (masked, silent)
        });
        (seq.join().unwrap(), other.join().unwrap())
    });
    let boots = Boots {
        sizes: sequence.0,
        reboot: sequence.1,
        masked,
        silent,
        sent,
    };
    report(&run, started.elapsed(), &boots);
    boots
}

fn agent(lv: &Libvirtd, vm: &str, json: &str) -> Result<String, String> {
    stdout_or_stderr(&lv.virsh(&["qemu-agent-command", vm, json]))
}

/// patch.sh's sequence; returns the host's instant when guest-file-close
/// returned.
fn patch_sh(lv: &Libvirtd, vm: &str, text: &str, until: Instant) -> Result<Instant, String> {
    while agent(lv, vm, r#"{"execute":"guest-ping"}"#).is_err() {
        if Instant::now() > until {
            return Err("qemu-ga never answered guest-ping".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let sync = r#"{"execute":"guest-sync","arguments":{"id":1234567890}}"#;
    while agent(lv, vm, sync).as_deref() != Ok(r#"{"return":1234567890}"#) {
        if Instant::now() > until {
            return Err("guest-sync never answered".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let open = agent(
        lv,
        vm,
        r#"{"execute":"guest-file-open","arguments":{"path":"/var/cache/cloud/cmdline","mode":"w+"}}"#,
    )?;
    let handle: String = open.chars().filter(char::is_ascii_digit).collect();
    agent(
        lv,
        vm,
        &format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{}"}}}}"#,
            base64_encode(text.as_bytes())
        ),
    )?;
    thread::sleep(WRITE_CLOSE_PAUSE);
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

    /// Waits (polling the log file every 50 ms: a harness, not the product)
    /// for a line containing one of `needles`; its host instant.
    fn wait_for(&mut self, needles: &[&str], until: Instant) -> Option<Instant> {
        let mut seen = 0;
        loop {
            self.poll();
            if let Some((at, _)) = self.lines[seen..]
                .iter()
                .find(|(_, l)| needles.iter().any(|n| l.contains(n)))
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
}

/// What every boot of the run shares.
struct Bench {
    images: PathBuf,
    /// QEMU's sockets, one directory a boot: a short path, sun_path holds
    /// 108 bytes.
    sockets: tempfile::TempDir,
    lv: Libvirtd,
}

impl Bench {
    /// A fresh copy of the image's disk, `name` in work().
    fn fresh_disk(&self, name: &str) -> PathBuf {
        let disk = work().join(name);
        copy_sparse(&self.images.join("image.raw"), &disk);
        disk
    }

    /// Boots `disk` (the kernel command line with `extra_cmdline`), the host
    /// playing patch.sh with `text` at the moment `host` says, and collects
    /// what the guest reported.
    fn boot(
        &self,
        disk: &Path,
        label: &str,
        extra_cmdline: &str,
        text: Option<&String>,
        host: Host,
    ) -> Boot {
        let (lv, images) = (&self.lv, &self.images);
        let vm = format!("qga-{label}-{}", std::process::id());
        let dir = self.sockets.path().join(label);
        fs::create_dir_all(&dir).unwrap();
        let console = work().join(format!("{label}.console"));
        let kernel_cmdline = format!(
            "root=/dev/vda rw console=ttyS0 quiet panic=1 imagecheck.linger=900 {extra_cmdline}"
        );
        let xml = fs::read_to_string(repo().join("tests/libvirt_qga/system-vm.xml"))
            .unwrap()
            .replace("@NAME@", &vm)
            .replace("@KERNEL@", &images.join("vmlinux").to_string_lossy())
            .replace("@INITRD@", &images.join("initrd.img").to_string_lossy())
            .replace("@CMDLINE@", &kernel_cmdline)
            .replace("@DISK@", &disk.to_string_lossy())
            .replace("@CONSOLE@", &console.to_string_lossy())
            .replace("@SOCKETS@", &dir.to_string_lossy());
        let xml_path = work().join(format!("{label}.xml"));
        fs::write(&xml_path, xml).unwrap();
        let mut b = Boot {
            label: label.into(),
            sent: text.cloned(),
            host,
            ..Boot::default()
        };
        let started = Instant::now();
        let until = started + BOOT_LIMIT;
        let out = lv.virsh(&["create", &xml_path.to_string_lossy()]);
        if !out.status.success() {
            b.error = Some(format!(
                "virsh create failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return b;
        }
        let mut con = Console {
            path: console,
            lines: Vec::new(),
            offset: 0,
        };
        let result = (|| -> Result<(), String> {
            if let Some(text) = text {
                if host == Host::Late {
                    // The barrier's line saying it waits (for a first write, or
                    // for fresh data over an earlier boot's file); with the
                    // barrier masked, the cloud-preinit stand-in's.
                    let needles: &[&str] = if extra_cmdline.contains(MASK) {
                        &["cloud-preinit stand-in: polling"]
                    } else {
                        &["for the host to write", "is from an earlier boot"]
                    };
                    con.wait_for(needles, until)
                        .ok_or("the guest never said it waits for the cmdline")?;
                }
                let closed = patch_sh(lv, &vm, text, until)?;
                if !extra_cmdline.contains(MASK) {
                    if let Some(released) = con.wait_for(&["whole, fresh and valid"], until) {
                        b.close_to_release = released.checked_duration_since(closed);
                    }
                }
            }
            con.wait_for(&["@@ done"], until)
                .ok_or("no `@@ done` within the boot limit")?;
            Ok(())
        })();
        if let Err(e) = result {
            b.error = Some(e);
        }
        con.poll();
        b.facts = con
            .lines
            .iter()
            .filter_map(|(_, l)| l.split_once("@@ ").map(|(_, f)| f.to_owned()))
            .collect();
        // A stop, as CloudStack's stopVirtualMachine ends it when the guest
        // does not shut down.
        let _ = lv.virsh(&["destroy", &vm]);
        eprintln!(
            "libvirt_qga: boot {label}: {:.0?}{}",
            started.elapsed(),
            b.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        b
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn report(run: &Path, total: Duration, boots: &Boots) {
    let mut r = String::new();
    let mut line = |s: String| {
        r.push_str(&s);
        r.push('\n');
    };
    line(format!("libvirt_qga: {} boots in {total:.0?}", 8));
    // Only where the write came while the barrier waited (Host::Late); an
    // early host's close precedes the barrier's start.
    let closes: Vec<Duration> = boots
        .sizes
        .iter()
        .filter(|b| b.host == Host::Late)
        .filter_map(|b| b.close_to_release)
        .collect();
    line(format!(
        "guest-file-close returned -> release line on the console (host clock): median {:?} of {:?}",
        median(closes.clone()),
        closes
    ));
    line(format!(
        "host already waiting (size3): {}",
        boots.sizes[2].summary()
    ));
    for b in boots.sizes.iter().chain([&boots.reboot, &boots.silent]) {
        let journal = b.barrier_journal();
        let since = journal
            .lines()
            .find_map(|l| {
                l.split([',', ';'])
                    .find(|p| p.ends_with("after its writer closed it"))
            })
            .map(str::trim)
            .unwrap_or("-");
        line(format!(
            "{}: {} (guest: {since}); preinit read {:?}",
            b.label,
            b.summary(),
            b.verdict("preinit-read", None),
        ));
    }
    let cut = |v: &[&Boot]| {
        v.iter()
            .filter(|b| matches!(b.verdict("preinit-read", None), Read::Cut(_)))
            .count()
    };
    let masked: Vec<&Boot> = boots.masked.iter().collect();
    let with: Vec<&Boot> = boots.sizes.iter().collect();
    line(format!(
        "cut cmdline read by the cloud-preinit stand-in: masked {}/{} ({:?}), with the barrier {}/{}",
        cut(&masked),
        masked.len(),
        masked
            .iter()
            .map(|b| b.verdict("preinit-read", None))
            .collect::<Vec<_>>(),
        cut(&with),
        with.len()
    ));
    let _ = &boots.sent;
    let _ = fs::File::create(run.join("report.txt")).and_then(|mut f| f.write_all(r.as_bytes()));
    eprint!("{r}");
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn each_size_reaches_preinit_and_early_config_whole() {
    let b = boots();
    for boot in &b.sizes {
        for who in ["preinit-read", "early-config-read"] {
            let previous = None;
            assert_eq!(
                boot.verdict(who, previous),
                Read::Exact,
                "{}: {who}; barrier journal:\n{}",
                boot.label,
                boot.barrier_journal()
            );
        }
        assert_eq!(
            boot.unit("vport-bootargs-barrier.service", "Result"),
            "success",
            "{}",
            boot.label
        );
        if boot.host == Host::Late {
            // Released by the writer's close, as the barrier says, not by
            // the image's 45 s deadline (which would hand over the same
            // file, late). Its own line, not the unit's run time: on a
            // loaded machine the sandbox's setup alone can take most of 45 s.
            assert!(
                boot.barrier_journal()
                    .contains("after its writer closed it; releasing the boot"),
                "{}: not released by the writer's close; journal:\n{}",
                boot.label,
                boot.barrier_journal()
            );
        }
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn new_parameters_over_an_old_file_are_read_never_the_old_or_an_empty_one() {
    let b = boots();
    // The second and third boots start with the previous boot's file.
    for (i, boot) in b.sizes.iter().enumerate().skip(1) {
        let previous = Some(b.sent[i - 1].as_str());
        for who in ["preinit-read", "early-config-read"] {
            assert_eq!(
                boot.verdict(who, previous),
                Read::Exact,
                "{}: {who}",
                boot.label
            );
        }
    }
    assert!(
        b.sizes[1]
            .barrier_journal()
            .contains("is from an earlier boot"),
        "the second boot's barrier did not see the old file:\n{}",
        b.sizes[1].barrier_journal()
    );
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_start_without_a_resend_keeps_the_stored_file_after_the_grace_period() {
    let b = boots();
    let boot = &b.reboot;
    for who in ["preinit-read", "early-config-read"] {
        let (bytes, sha) = boot.read_by(who).expect("read nothing");
        assert_eq!(bytes, b.sent[2].len(), "{who}");
        assert_eq!(sha, digest_hex(b.sent[2].as_bytes()), "{who}");
    }
    assert!(
        boot.barrier_journal()
            .contains("keeping the cmdline from an earlier boot"),
        "{}",
        boot.barrier_journal()
    );
    assert!(boot.unit_runtime("vport-bootargs-barrier.service") >= Duration::from_secs(19));
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn a_host_that_never_writes_gives_one_line_at_the_deadline_and_the_boot_goes_on() {
    let b = boots();
    let boot = &b.silent;
    assert_eq!(
        boot.unit("vport-bootargs-barrier.service", "ExecMainStatus"),
        "69"
    );
    let errors: Vec<&str> = boot
        .facts_with("barrier-journal ")
        .into_iter()
        .filter(|l| l.contains("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("no cmdline arrived"), "{errors:?}");
    // The boot went on: the stand-ins ran after it and the report came.
    assert_eq!(boot.unit("cloud-early-config.service", "Result"), "success");
    assert!(boot.fact("preinit ").starts_with("bytes=0"));
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn without_the_barrier_the_bench_does_show_cut_files() {
    // The bench can see the bug it guards against: with the unit masked,
    // init.sh's `[ -s ]` takes the 9 KB and 70 KB files cut.
    let b = boots();
    for boot in &b.masked {
        // Masked from the kernel command line (systemd.mask=, which
        // systemd-debug-generator reads), so it never started.
        assert_eq!(
            boot.unit(
                "vport-bootargs-barrier.service",
                "ExecMainStartTimestampMonotonic"
            ),
            "0",
            "{}: the barrier ran; journal:\n{}",
            boot.label,
            boot.barrier_journal()
        );
    }
    for boot in &b.masked[1..] {
        assert!(
            matches!(boot.verdict("preinit-read", None), Read::Cut(_)),
            "{}: {:?}",
            boot.label,
            boot.verdict("preinit-read", None)
        );
    }
}

#[test]
#[ignore = "boots libvirt guests; run by tests/run-all.sh"]
fn the_barrier_unit_passes_systemd_analyze_verify() {
    let b = boots();
    assert_eq!(b.sizes[0].fact("barrier-verify "), "rc=0");
}
