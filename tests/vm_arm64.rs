//! The real-driver scenarios on arm64: the initramfs guest of tests/vm.rs
//! (Debian's arm64 kernel and virtio modules, busybox-static:arm64, the
//! static aarch64-unknown-linux-musl helper, no udev) booted under
//! `qemu-system-aarch64 -machine virt` with TCG, with the two virtio-serial
//! ports `org.qemu.guest_agent.0` and `s-1-VM.vport` on a virtio-serial-pci
//! device, as libvirt gives an aarch64 CloudStack system VM.
//!
//! These are the scenarios that prove the mission on this architecture: the
//! port found by name in either order, the guest agent's port left alone, a
//! late one-shot host write delivered, a host that stays connected and gets
//! the ack, a silent host, and `send --wait-ack`. The rest run on x86_64
//! only (tests/vm.rs).
//!
//! Run: `cargo test --test vm_arm64 -- --ignored` (tests/vm/prepare.sh
//! aarch64 fetches the kernel and busybox and builds the initramfs on first
//! use). Figures go to <target>/vm-aarch64/report.txt. Timing is never
//! asserted: limits only catch a hung guest.

#[path = "vm/checks.rs"]
mod checks;
// tests/vm.rs uses all of the harness; these scenarios need only part.
#[allow(dead_code)]
#[path = "vm/harness.rs"]
mod harness;
#[path = "vm/report.rs"]
mod report;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use checks::*;
use harness::{Arch, Config, Guest, Order, Outcome, GA_NAME, VPORT_ID, VPORT_NAME};

/// How long a guest may take to boot and open its port (an arm64 guest
/// under TCG boots several times slower than an x86_64 one).
const BOOT: Duration = Duration::from_secs(180);

/// Boots an aarch64 guest; the first one also records the machine in the
/// report.
fn boot(cfg: Config) -> Guest {
    boot_arch(Arch::Aarch64, cfg)
}

/// Waits for the guest to power off, and reports how long it ran and when
/// its init started.
fn finish(guest: Guest, test: &str) -> Outcome {
    let o = guest.finish();
    let init = o
        .console_time("VBBOOT")
        .map_or("-".to_owned(), |t| format!("{t:.1} s"));
    report::record(
        "50-wall",
        &[format!(
            "{test}: guest ran {:.1} s (QEMU start to power-off), init at {init}",
            o.started.elapsed().as_secs_f64()
        )],
    );
    o
}

/// Both port orders: the port is found by name, whatever its number. The
/// device number in vportNpM is the driver's (it has been seen as 0 and 1
/// on arm64), the port number follows the order of the channels.
fn port_order(order: Order, port_suffix: &str, test: &str) {
    let guest = boot(Config {
        scenario: "order",
        order,
        ..Config::default()
    });
    guest.wait_port(VPORT_ID, true, 1, BOOT);
    let cmdline = cmdline(test);
    send_and_close(&guest, message(&cmdline).as_bytes());
    let o = finish(guest, test);
    assert_stored(&o, o.only_run(), &cmdline);
    let entry = o
        .entry_named(VPORT_NAME)
        .unwrap_or_else(|| fail(&o, "sysfs shows no port named s-1-VM.vport"));
    if !(entry.starts_with("vport") && entry.ends_with(port_suffix)) {
        fail(
            &o,
            &format!("{VPORT_NAME} is {entry}, expected vportN{port_suffix}"),
        );
    }
    let line = format!("opened port {VPORT_NAME} (/dev/{entry})");
    if !o.log_has(&line) {
        fail(&o, &format!("the helper did not log {line:?}"));
    }
    assert_guest_agent_untouched(&o);
    report::record(
        "05-ports",
        &[format!(
            "{test}: {VPORT_NAME} was /dev/{entry}, {GA_NAME} /dev/{}",
            o.entry_named(GA_NAME).unwrap_or("?")
        )],
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_vport_is_found_by_name_when_the_guest_agent_port_comes_first() {
    port_order(Order::GuestAgentFirst, "p2", "ga-first");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_vport_is_found_by_name_when_it_comes_first() {
    port_order(Order::VportFirst, "p1", "vport-first");
}

/// The guest agent's host side is connected all along, as libvirt's is;
/// the helper never opens its port, and a guest process that opens it
/// after fetch ended gets what the host wrote.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_guest_agent_port_is_left_free_for_its_own_use() {
    let guest = boot(Config {
        scenario: "guest-agent",
        read_guest_agent: true,
        ..Config::default()
    });
    guest_agent_port_is_left_free(guest, BOOT, |g| finish(g, "guest-agent"));
}

/// patchviasocket.py's way, late: connect, write, close at once, 10 s after
/// the helper opened the port (a write cloud-early-config's loop, which
/// closes the port between passes, loses). The helper holds the port the
/// whole time.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_host_writing_and_closing_ten_seconds_after_open_is_delivered() {
    let guest = boot(Config {
        scenario: "write-once",
        ..Config::default()
    });
    let opened = guest.wait_port(VPORT_ID, true, 1, BOOT);
    std::thread::sleep(
        (opened + Duration::from_secs(10)).saturating_duration_since(Instant::now()),
    );
    let cmdline = cmdline("after-10s");
    send_and_close(&guest, message(&cmdline).as_bytes());
    let o = finish(guest, "write-once-after-10s");
    assert_stored(&o, o.only_run(), &cmdline);
    assert_opened_once(&o);
    assert_guest_agent_untouched(&o);
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_host_keeping_its_connection_open_gets_the_ack_and_the_helper_finishes() {
    let guest = boot(Config {
        scenario: "keep-open",
        ..Config::default()
    });
    guest.wait_port(VPORT_ID, true, 1, BOOT);
    let cmdline = cmdline("keep-open");
    let mut s = guest.connect(VPORT_ID);
    s.write_all(message(&cmdline).as_bytes()).unwrap();
    let ack = read_ack(&guest, &s);
    // The host is still connected while the guest finishes and powers off.
    let o = finish(guest, "keep-open");
    drop(s);
    assert_eq!(ack, ack_for(&cmdline), "wrong ack");
    assert_stored(&o, o.only_run(), &cmdline);
    if !o.log_has("message complete") && !o.log_has("acknowledged") {
        fail(
            &o,
            "no sign of the message completing while the host stayed",
        );
    }
    assert_guest_agent_untouched(&o);
}

/// The x86_64 suite's ack figure, if it ran before this one (as
/// tests/run-all.sh runs them), with how long ago it was written.
fn x86_64_ack_figure() -> String {
    let part = Arch::X86_64.vm_dir().join("report.d/10-ack.txt");
    match (std::fs::read_to_string(&part), std::fs::metadata(&part)) {
        (Ok(text), Ok(meta)) => {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .map_or(0, |d| d.as_secs() / 60);
            format!(
                "x86_64, same machine ({} min ago): {}",
                age,
                text.trim_end().replace('\n', "; ")
            )
        }
        _ => "x86_64: no figure (run `cargo test --test vm -- --ignored` first)".to_owned(),
    }
}

/// The host reads `ack:<sha256 of the cmdline>` every time; also the
/// round trip from the host's write to the ack, over 12 fetches in one
/// guest, each with fresh directories, beside x86_64's.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_host_reads_ack_with_sha256_of_the_cmdline_every_time() {
    const RUNS: usize = 12;
    let guest = boot(Config {
        scenario: "ack",
        runs: RUNS as u32,
        ..Config::default()
    });
    let mut rtt_ms = Vec::new();
    let mut sent = Vec::new();
    for i in 1..=RUNS {
        guest.wait_port(VPORT_ID, true, i, BOOT);
        let cmdline = cmdline(&format!("ack-{i}"));
        let mut s = guest.connect(VPORT_ID);
        let t = Instant::now();
        s.write_all(message(&cmdline).as_bytes()).unwrap();
        let ack = read_ack(&guest, &s);
        rtt_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if ack != ack_for(&cmdline) {
            guest.fail(&format!(
                "run {i}: ack {ack:?}, expected {:?}",
                ack_for(&cmdline)
            ));
        }
        sent.push(cmdline);
    }
    let o = finish(guest, "ack");
    assert_eq!(o.runs.len(), RUNS);
    for (run, cmdline) in o.runs.iter().zip(&sent) {
        assert_stored(&o, run, cmdline);
    }
    assert_guest_agent_untouched(&o);
    let (median, max) = report::median_max(&rtt_ms);
    report::record(
        "10-ack",
        &[
            format!(
                "aarch64 under TCG: host send -> ack round trip over {RUNS} sends (host stays \
                 connected; includes the 0.2 s settle and the fsyncs): median {median:.0} ms, \
                 max {max:.0} ms"
            ),
            x86_64_ack_figure(),
        ],
    );
}

/// The host never comes: the helper waits on the open port without
/// spinning, then gives up with 69 and writes nothing. Also measures its
/// CPU time and memory over 10 s of that wait.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_silent_host_times_out_with_69_and_nothing_written() {
    let guest = boot(Config {
        scenario: "silent",
        fetch_args: vec!["--timeout".into(), "13".into()],
        sample_secs: Some(10),
        ..Config::default()
    });
    let o = finish(guest, "silent");
    let run = o.only_run();
    assert_exit(&o, run, 69);
    assert_nothing_written(&o, run);
    if !o.log_has("no complete message arrived on port s-1-VM.vport") {
        fail(&o, "the helper did not say why it gave up");
    }
    assert_opened_once(&o);
    assert_guest_agent_untouched(&o);
    let [first, last] = o.samples.as_slice() else {
        fail(&o, "expected two samples of the helper's /proc");
    };
    if !(first.vport_open && last.vport_open) {
        fail(&o, "the helper did not hold the port while waiting");
    }
    // USER_HZ is 100 on arm64 Linux too: one tick is 10 ms.
    let cpu_ms = (last.ticks - first.ticks) * 10;
    report::record(
        "20-silent",
        &[
            format!(
                "helper CPU time (utime+stime) while waiting {} s for a silent host: {cpu_ms} ms \
                 (total since exec {} ms)",
                last.at - first.at,
                last.ticks * 10
            ),
            format!(
                "helper peak memory while waiting: VmHWM {} kB (VmRSS {} kB)",
                last.hwm_kb, last.rss_kb
            ),
        ],
    );
}

/// `send --wait-ack` stays connected until the ack, so a message of
/// several pages arrives whole.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_send_wait_ack_delivers_a_message_of_several_pages() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let guest = boot(Config {
        scenario: "send-large",
        ..Config::default()
    });
    guest.wait_port(VPORT_ID, true, 1, BOOT);
    let cmdline = large_cmdline("send-large");
    let out = run_send(&guest, &cmdline, &key, &["--wait-ack", "60"]);
    let o = finish(guest, "send-large");
    assert_sent(&o, &out);
    assert_stored(&o, o.only_run(), &cmdline);
}

/// CloudStack's agent sends while the VM boots: `send --wait-ack` started
/// with QEMU, long before the guest opens its port, keeps trying and
/// delivers.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_send_wait_ack_started_before_the_guest_opens_its_port_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let guest = boot(Config {
        scenario: "send-early",
        ..Config::default()
    });
    let cmdline = cmdline("send-early");
    let sent_at = Instant::now();
    let out = run_send(&guest, &cmdline, &key, &["--wait-ack", "150"]);
    let acked_at = Instant::now();
    let o = finish(guest, "send-early");
    assert_sent(&o, &out);
    assert_stored(&o, o.only_run(), &cmdline);
    let opened = o
        .port_events(VPORT_ID)
        .first()
        .map(|e| e.0)
        .unwrap_or_else(|| fail(&o, "QMP did not see the guest open its port"));
    let start = (sent_at - o.started).as_secs_f64();
    if start >= opened {
        fail(
            &o,
            &format!("send started at {start:.2} s, not before the port opened at {opened:.2} s"),
        );
    }
    report::record(
        "40-send",
        &[format!(
            "send --wait-ack started at {start:.2} s after QEMU, guest opened its port at \
             {opened:.2} s, acked at {:.2} s",
            (acked_at - o.started).as_secs_f64()
        )],
    );
}
