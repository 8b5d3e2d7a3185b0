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
#[path = "vm/scenarios.rs"]
mod scenarios;

use std::time::{Duration, Instant, SystemTime};

use checks::*;
use harness::{Arch, Config, VPORT_ID};
use scenarios::Suite;

/// An arm64 guest under TCG boots several times slower than an x86_64 one.
const SUITE: Suite = Suite {
    arch: Arch::Aarch64,
    boot_limit: Duration::from_secs(180),
};

/// The device number in vportNpM is the driver's (it has been seen as 0
/// and 1 on arm64); the port number follows the order of the channels.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_vport_is_found_by_name_when_the_guest_agent_port_comes_first() {
    SUITE.port_order(harness::Order::GuestAgentFirst, "p2", "ga-first");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_vport_is_found_by_name_when_it_comes_first() {
    SUITE.port_order(harness::Order::VportFirst, "p1", "vport-first");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_guest_agent_port_is_left_free_for_its_own_use() {
    SUITE.guest_agent_port_is_left_free();
}

/// patchviasocket.py's way, late: 10 s after the helper opened the port
/// (a write cloud-early-config's loop, which closes the port between
/// passes, loses). The helper holds the port the whole time.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_host_writing_and_closing_ten_seconds_after_open_is_delivered() {
    let cfg = Config {
        scenario: "write-once",
        ..Config::default()
    };
    let o = SUITE.write_once_after(cfg, Duration::from_secs(10), "after-10s");
    assert_opened_once(&o);
    assert_guest_agent_untouched(&o);
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_host_keeping_its_connection_open_gets_the_ack_and_the_helper_finishes() {
    SUITE.keep_open();
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
    let (_, rtt_ms) = SUITE.ack_every_time(RUNS, &["--timeout", "90"]);
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

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_silent_host_times_out_with_69_and_nothing_written() {
    SUITE.silent_host();
}

/// `send --wait-ack` stays connected until the ack, so a message of
/// several pages arrives whole.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_send_wait_ack_delivers_a_message_of_several_pages() {
    let cmdline = large_cmdline("send-large");
    SUITE.send_to_held_port("send-large", &cmdline, &["--wait-ack", "60"]);
}

/// CloudStack's agent sends while the VM boots: `send --wait-ack` started
/// with QEMU, long before the guest opens its port, keeps trying and
/// delivers.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn arm64_send_wait_ack_started_before_the_guest_opens_its_port_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let guest = SUITE.boot(Config {
        scenario: "send-early",
        ..Config::default()
    });
    let cmdline = cmdline("send-early");
    let sent_at = Instant::now();
    let out = run_send(&guest, &cmdline, &key, &["--wait-ack", "150"]);
    let acked_at = Instant::now();
    let o = SUITE.finish(guest, "send-early");
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
