//! End to end against the real virtio_console driver: each test boots a
//! QEMU guest (Debian's kernel, an initramfs with busybox and the static
//! helper, no udev) with two virtio-serial ports, `org.qemu.guest_agent.0`
//! and `s-1-VM.vport`, and plays CloudStack's host side on their sockets.
//!
//! Run: `cargo test --test vm` (tests/vm/prepare.sh fetches the kernel and
//! builds the initramfs on first use; VB_ACCEL=kvm|tcg|auto picks the
//! accelerator). Figures go to <target>/vm/report.txt.
//!
//! Timing is never asserted: a test waits for events (QMP's VSERPORT_CHANGE
//! when the guest opens or closes a port, the guest's console lines) with
//! generous limits that only catch a hung guest.

#[path = "vm/checks.rs"]
mod checks;
mod common;
#[path = "vm/harness.rs"]
mod harness;
#[path = "vm/report.rs"]
mod report;
#[path = "vm/scenarios.rs"]
mod scenarios;

use std::io::Write;
use std::time::{Duration, Instant};

use checks::*;
use harness::{Arch, Channels, Config, Entry, Order, Outcome, Run, VPORT_ID};
use scenarios::Suite;

const SUITE: Suite = Suite {
    arch: Arch::X86_64,
    boot_limit: Duration::from_secs(150),
};

/// After a reboot the helper kept the cmdline stored before it
/// (`precache`) and wrote nothing else.
fn assert_old_cmdline_kept(o: &Outcome, run: &Run) {
    let kept = Entry {
        kind: 'f',
        mode: 0o644,
        content: Some(b"name=old-VM template=domP\n".to_vec()),
    };
    if run.entries.get("cache/cmdline") != Some(&kept) || run.entries.len() != 2 {
        fail(o, &format!("the stored cmdline changed: {:?}", run.entries));
    }
}

/// Both port orders: the port is found by name, whatever its number.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn vport_is_found_by_name_when_the_guest_agent_port_comes_first() {
    let entry = SUITE.port_order(Order::GuestAgentFirst, "p2", "ga-first");
    assert_eq!(entry, "vport0p2", "port order not as configured");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn vport_is_found_by_name_when_it_comes_first() {
    let entry = SUITE.port_order(Order::VportFirst, "p1", "vport-first");
    assert_eq!(entry, "vport0p1", "port order not as configured");
}

/// patchviasocket.py's way: connect, write, close at once, `delay` after
/// the helper opened the port. The helper holds the port the whole time.
fn write_once_after(delay: Duration, test: &str) {
    let cfg = Config {
        scenario: "write-once",
        ..Config::default()
    };
    let o = SUITE.write_once_after(cfg, delay, test);
    assert_opened_once(&o);
    assert_guest_agent_untouched(&o);
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_writing_and_closing_half_a_second_after_open_is_delivered() {
    write_once_after(Duration::from_millis(500), "after-0.5s");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_writing_and_closing_three_seconds_after_open_is_delivered() {
    write_once_after(Duration::from_secs(3), "after-3s");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_writing_and_closing_ten_seconds_after_open_is_delivered() {
    write_once_after(Duration::from_secs(10), "after-10s");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_keeping_its_connection_open_gets_the_ack_and_the_helper_finishes() {
    SUITE.keep_open();
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_disconnecting_mid_line_then_resending_is_delivered_whole() {
    let (guest, _) = SUITE.boot_held(Config {
        scenario: "mid-line",
        ..Config::default()
    });
    let cmdline = cmdline("mid-line");
    let whole = message(&cmdline);
    let cut = whole.len() - 20;
    send_and_close(&guest, &whole.as_bytes()[..cut]);
    // Let the guest see the disconnect before the host comes back.
    std::thread::sleep(Duration::from_millis(1500));
    send_and_close(&guest, whole.as_bytes());
    let o = SUITE.finish(guest, "mid-line");
    assert_stored(&o, o.only_run(), &cmdline);
    // The cut line is kept at the disconnect (a read of 0 is not proof of
    // one); the resend that follows starts with its pubkey line, so the
    // kept bytes run into that, are no cut copy of it, and the resend's own
    // cmdline line, later, is what is stored.
    let partial = cut - whole[..cut].rfind('\n').unwrap() - 1;
    let line = format!("host disconnected in the middle of a line ({partial} bytes so far)");
    if !o.log_has(&line) {
        fail(&o, &format!("the helper did not log {line:?}"));
    }
}

/// A message larger than the guest's one-page buffers arrives in several
/// reads. The host stays connected until the ack: QEMU 7.2 drops whatever
/// it has not yet passed to the guest when the host closes, which for a
/// write-and-close host cuts a message after about 4 KiB (measured here
/// while writing this test).
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn large_message_is_delivered_when_the_host_stays() {
    let cfg = Config {
        scenario: "large",
        ..Config::default()
    };
    SUITE.ack_while_connected(cfg, &large_cmdline("large"), "large");
}

/// What patchviasocket.py does with a message larger than a page: write,
/// close at once. QEMU 7.2 passes the guest about one page and drops the
/// rest when the host closes, so the guest sees a cut line: the helper must
/// store nothing of it (exit 69 at its timeout), or, with a QEMU that
/// delivers it all, the whole message. Which one happened is reported.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn large_message_cut_by_a_closing_host_is_never_stored_in_part() {
    let (guest, _) = SUITE.boot_held(Config {
        scenario: "large-cut",
        fetch_args: vec!["--timeout".into(), "5".into()],
        ..Config::default()
    });
    let cmdline = large_cmdline("large-cut");
    let whole = message(&cmdline);
    send_and_close(&guest, whole.as_bytes());
    let o = SUITE.finish(guest, "large-cut");
    let run = o.only_run();
    let what = if run.exit == 0 {
        assert_stored(&o, run, &cmdline);
        "all of it".to_owned()
    } else {
        assert_exit(&o, run, 69);
        assert_nothing_written(&o, run);
        let dropped: usize = o
            .helper_log()
            .iter()
            .find_map(|l| {
                l.split("dropped ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0);
        let pubkey_line = if o.log_has("received a pubkey line") {
            whole.find('\n').unwrap() + 1
        } else {
            0
        };
        format!("{} bytes, then the host's close", pubkey_line + dropped)
    };
    report::record(
        "35-large-cut",
        &[format!(
            "host writes {} bytes and closes at once (patchviasocket.py): the guest got {what}",
            whole.len()
        )],
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn silent_host_times_out_with_69_and_nothing_written() {
    SUITE.silent_host();
}

fn refused(bytes: Vec<u8>, scenario: &'static str, why: &str) {
    let (guest, _) = SUITE.boot_held(Config {
        scenario,
        ..Config::default()
    });
    let mut s = guest.connect(VPORT_ID);
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // The helper may stop reading (and close) before all of it is written.
    let _ = s.write_all(&bytes);
    // Stay connected: QEMU drops what it has not yet passed to the guest
    // when the host closes (see large_message_is_delivered_when_the_host_stays).
    let o = SUITE.finish(guest, scenario);
    drop(s);
    let run = o.only_run();
    assert_exit(&o, run, 65);
    assert_nothing_written(&o, run);
    if !o.log_has(why) {
        fail(&o, &format!("the helper did not log {why:?}"));
    }
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn oversized_line_is_refused_with_65_and_nothing_written() {
    let big = format!(
        "pubkey:{PUBKEY}\ncmdline:{} x=y\n",
        "a=b ".repeat(70 * 1024 / 4)
    );
    refused(big.into_bytes(), "oversized", "longer than 65536 bytes");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn invalid_utf8_is_refused_with_65_and_nothing_written() {
    let mut bytes = format!("pubkey:{PUBKEY}\ncmdline:name=s-1-VM x=").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n");
    refused(bytes, "bad-utf8", "line 2 is not valid UTF-8");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn reboot_without_host_keeps_the_stored_cmdline() {
    let guest = SUITE.boot(Config {
        scenario: "reboot",
        precache: true,
        fetch_args: vec!["--grace".into(), "2".into()],
        ..Config::default()
    });
    let o = SUITE.finish(guest, "reboot");
    let run = o.only_run();
    assert_exit(&o, run, 0);
    assert_old_cmdline_kept(&o, run);
    if !o.log_has("keeping those in") {
        fail(&o, "the helper did not say it kept the stored cmdline");
    }
    report::record(
        "30-reboot",
        &[format!(
            "reboot, no host, --grace 2: fetch returned after {:.2} s",
            run.t1 - run.t0
        )],
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn reboot_with_host_sending_in_the_grace_period_stores_the_fresh_cmdline() {
    let cfg = Config {
        scenario: "reboot-fresh",
        precache: true,
        fetch_args: vec!["--grace".into(), "5".into()],
        ..Config::default()
    };
    SUITE.write_once_after(cfg, Duration::from_secs(1), "reboot-fresh");
}

/// The port is unplugged (QMP device_del) while the helper waits on it:
/// the helper says so and exits 69 without waiting for its timeout.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn port_unplugged_while_waiting_ends_fetch_with_69() {
    let (guest, _) = SUITE.boot_held(Config {
        scenario: "unplug",
        fetch_args: vec!["--timeout".into(), "60".into()],
        ..Config::default()
    });
    std::thread::sleep(Duration::from_millis(500));
    guest.qmp(r#"{"execute":"device_del","arguments":{"id":"vport"}}"#);
    let o = SUITE.finish(guest, "unplug");
    let run = o.only_run();
    assert_exit(&o, run, 69);
    assert_nothing_written(&o, run);
    if !o.log_has("was unplugged while it was being read") {
        fail(&o, "the helper did not notice the unplug");
    }
}

/// Another process holds the port (the driver's EBUSY on a second open):
/// the helper says who to blame and exits 75 at once, writing nothing.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn port_held_by_another_process_exits_75() {
    let guest = SUITE.boot(Config {
        scenario: "busy",
        hold_vport: true,
        fetch_args: vec!["--timeout".into(), "30".into()],
        ..Config::default()
    });
    let o = SUITE.finish(guest, "busy");
    let run = o.only_run();
    assert_exit(&o, run, 75);
    assert_nothing_written(&o, run);
    if !o.log_has("s-1-VM.vport (/dev/vport0p2) is held by another process") {
        fail(
            &o,
            "the helper did not say the port is held by another process",
        );
    }
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn guest_agent_port_is_left_free_for_its_own_use() {
    SUITE.guest_agent_port_is_left_free();
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn port_appearing_after_the_helper_started_is_found() {
    let cfg = Config {
        scenario: "late-module",
        modules_late: true,
        ..Config::default()
    };
    let o = SUITE.write_once_after(cfg, Duration::ZERO, "late-module");
    assert_guest_agent_untouched(&o);
}

/// The host reads `ack:<sha256 of the cmdline>` every time; also the
/// round trip from the host's write to the ack, over 12 fetches in one
/// guest, each with fresh directories.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn host_reads_ack_with_sha256_of_the_cmdline_every_time() {
    const RUNS: usize = 12;
    // Debug lines count the reads of 0 that come right after data.
    let (o, rtt_ms) = SUITE.ack_every_time(RUNS, &["-v", "--timeout", "90"]);
    // The host stayed connected until the ack: every read of 0 here is the
    // driver's late "host connected", the reason an unfinished line is kept.
    let count = |needle: &str| o.helper_log().iter().filter(|l| l.contains(needle)).count();
    let zeros = count("read() returned 0 right after data");
    let ended_by_zero = count("host disconnected after a whole message");
    let (median, max) = report::median_max(&rtt_ms);
    report::record(
        "10-ack",
        &[format!(
            "unframed host send -> ack round trip over {RUNS} sends (host stays connected; helper at \
             debug level; ends by the 0.2 s settle or a read of 0, includes the fsyncs): median \
             {median:.0} ms, max {max:.0} ms; reads of 0 right after data with the host connected: \
             {zeros} (messages they ended: {ended_by_zero})"
        )],
    );
}

/// `send` without --wait-ack is patchviasocket.py: write and close. It
/// delivers when the helper already holds the port open.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_without_wait_ack_delivers_to_a_held_port() {
    SUITE.send_to_held_port("send-once", &cmdline("send-once"), &[]);
}

/// `send --wait-ack` stays connected until the ack, so a message of
/// several pages arrives whole (a write-and-close host loses all but the
/// first page: large_message_cut_by_a_closing_host_is_never_stored_in_part).
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_wait_ack_delivers_a_message_of_several_pages() {
    let cmdline = large_cmdline("send-large");
    SUITE.send_to_held_port("send-large", &cmdline, &["--wait-ack", "60"]);
}

/// The host side against a real guest: `vport-bootargs send
/// --wait-ack`, started at random times from 0 to 10 s after QEMU starts
/// (so both before and after the guest opens its port, at about 2 s under
/// TCG), delivers every time. One guest per run; the start times are
/// stratified over the 10 s and their seed printed (VB_SEED repeats them).
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_wait_ack_delivers_whenever_it_starts() {
    const RUNS: u32 = 10;
    let (mut rng, seed) = common::Rng::from_env("VB_SEED");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let mut lines = vec![format!(
        "send --wait-ack 60, started at random times after QEMU starts (VB_SEED={seed}):"
    )];
    for i in 0..RUNS {
        let delay =
            Duration::from_secs_f64(10.0 * (f64::from(i) + rng.uniform()) / f64::from(RUNS));
        let guest = SUITE.boot(Config {
            scenario: "send",
            // Debug lines say how the helper saw the message end.
            fetch_args: vec!["-v".into(), "--timeout".into(), "90".into()],
            ..Config::default()
        });
        std::thread::sleep((guest.started + delay).saturating_duration_since(Instant::now()));
        let cmdline = cmdline(&format!("send-{i}"));
        let sent_at = Instant::now();
        // As long as the guest may take to boot: a starved TCG guest opens
        // its port late, and a send that gives up first loses the message.
        let out = run_send(&guest, &cmdline, &key, &["--wait-ack", "150"]);
        let acked_at = Instant::now();
        let o = SUITE.finish(guest, "send");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            fail(
                &o,
                &format!("run {i}: send failed ({}): {stderr}", out.status),
            );
        }
        assert_stored(&o, o.only_run(), &cmdline);
        let opened = o
            .port_events(VPORT_ID)
            .first()
            .map(|e| e.0)
            .unwrap_or(f64::NAN);
        let start = (sent_at - o.started).as_secs_f64();
        let end = if o.log_has("the end line matches") {
            "the end line matched"
        } else if o.log_has("host disconnected after a whole message") {
            "the helper saw the host disconnect"
        } else if o.log_has("message complete") {
            "the helper ended after the quiet time"
        } else {
            "the helper did not say how the message ended"
        };
        lines.push(format!(
            "  run {i}: send started at {start:.2} s ({} the guest opened its port at {opened:.2} s), \
             acked at {:.2} s, {:.2} s after it started; {end}",
            if start < opened { "before" } else { "after" },
            (acked_at - o.started).as_secs_f64(),
            (acked_at - sent_at).as_secs_f64(),
        ));
    }
    report::record("40-send", &lines);
}

// ---------------------------------------------------------------------------
// Framing, deadlines, no channel, and what the host knows.

/// The helper's `ports after X s: ...` debug lines, as (seconds since the
/// helper started, the list): the moments sysfs changed while it waited.
fn port_changes(o: &Outcome) -> Vec<(f64, String)> {
    o.helper_log()
        .iter()
        .filter_map(|l| l.split("debug: ports after ").nth(1))
        .filter_map(|r| {
            let (t, rest) = r.split_once(" s: ")?;
            Some((t.parse().ok()?, rest.to_owned()))
        })
        .collect()
}

/// A guest with only the guest agent's channel (CloudStack 4.11.3 and
/// later), virtio_console loaded a second after fetch starts so that the
/// helper sees QEMU add and name every port, and a stored cmdline (a
/// reboot): fetch exits 0 soon after the ports are named, says the host
/// provides no channel, writes nothing and keeps the stored file.
fn no_vport_channel(channels: Channels, scenario: &'static str, label: &str) {
    let guest = SUITE.boot(Config {
        scenario,
        channels,
        modules_late: true,
        precache: true,
        fetch_args: vec!["-v".into()],
        ..Config::default()
    });
    let o = SUITE.finish(guest, scenario);
    let run = o.only_run();
    assert_exit(&o, run, 0);
    if !o.log_has("the host provides no channel matching pattern *.vport") {
        fail(&o, "the helper did not say the host provides no channel");
    }
    assert_old_cmdline_kept(&o, run);
    assert_guest_agent_untouched(&o);
    let changes = port_changes(&o);
    let (first, last) = match (changes.first(), changes.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => fail(&o, "the helper logged no port changes (-v)"),
    };
    report::record(
        "50-no-channel",
        &[format!(
            "{label}: QEMU added and named all ports within {:.0} ms of the first one appearing \
                 ({} changes seen by the helper, guest clock); fetch exited 0 after {:.2} s \
                 (virtio_console loaded 1 s after start; {:.2} s after the last port was named)",
            (last - first) * 1000.0,
            changes.len(),
            run.t1 - run.t0,
            run.t1 - run.t0 - last
        )],
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn guest_agent_only_layout_exits_0_quickly_writing_nothing() {
    no_vport_channel(
        Channels::GuestAgentOnly,
        "no-channel",
        "only org.qemu.guest_agent.0",
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn many_ports_none_matching_exits_0_quickly_writing_nothing() {
    no_vport_channel(
        Channels::GuestAgentAndOthers { extra: 14 },
        "no-channel-many",
        "org.qemu.guest_agent.0 and 14 other ports",
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn no_virtio_console_device_exits_0_quickly_writing_nothing() {
    let guest = SUITE.boot(Config {
        scenario: "no-device",
        channels: Channels::NoDevice,
        ..Config::default()
    });
    let o = SUITE.finish(guest, "no-device");
    let run = o.only_run();
    assert_exit(&o, run, 0);
    assert_nothing_written(&o, run);
    if !o.log_has("there is no virtio console device") {
        fail(
            &o,
            "the helper did not say there is no virtio console device",
        );
    }
    report::record(
        "50-no-channel",
        &[format!(
            "no virtio-serial device: fetch exited 0 after {:.2} s",
            run.t1 - run.t0
        )],
    );
}

/// A host cut off mid-line that reconnects within milliseconds and sends
/// the whole message again (patchviasocket's lines, or `send`'s framed
/// ones): the guest may or may not see the disconnect in between; either
/// way the resent message is stored, never the join.
fn cut_then_quick_resend(frame: bool, test: &str) {
    let (guest, _) = SUITE.boot_held(Config {
        scenario: "quick-resend",
        fetch_args: vec!["-v".into(), "--timeout".into(), "60".into()],
        ..Config::default()
    });
    let cmdline = cmdline(test);
    let whole = if frame {
        common::with_end_line(&message(&cmdline))
    } else {
        message(&cmdline).into_bytes()
    };
    let cut = message(&cmdline).len() - 25;
    send_and_close(&guest, &whole[..cut]);
    std::thread::sleep(Duration::from_millis(3));
    send_and_close(&guest, &whole);
    let o = SUITE.finish(guest, "quick-resend");
    assert_stored(&o, o.only_run(), &cmdline);
    let seen = if o.log_has("ran into the host's resend") {
        "the cut line and the resend came as one line; the resent line was kept"
    } else {
        "the resend started a line of its own"
    };
    report::record(
        "36-quick-resend",
        &[format!(
            "{} host cut mid-line, resent 3 ms later: stored the resent message; {seen}",
            if frame { "framed" } else { "unframed" }
        )],
    );
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn cut_line_and_quick_resend_never_store_the_join() {
    cut_then_quick_resend(false, "quick-resend");
}

#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn cut_framed_message_and_quick_resend_never_store_the_join() {
    cut_then_quick_resend(true, "quick-resend-framed");
}

/// `send --wait-ack` started after the guest holds its port, with the
/// helper logging at debug level: the end line completes the message, so
/// no settle and no driver race decides when. 12 sends in one guest.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_wait_ack_to_a_held_port_is_acked_at_the_end_line() {
    const RUNS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let guest = SUITE.boot(Config {
        scenario: "framed-ack",
        runs: RUNS as u32,
        fetch_args: vec!["-v".into(), "--timeout".into(), "90".into()],
        ..Config::default()
    });
    let mut ms = Vec::new();
    let mut sent = Vec::new();
    for i in 1..=RUNS {
        guest.wait_port(VPORT_ID, true, i, SUITE.boot_limit);
        // QMP's event can come before the helper's epoll is armed; that
        // makes no difference to a host that stays connected.
        let cmdline = cmdline(&format!("framed-ack-{i}"));
        let t = Instant::now();
        let out = run_send(&guest, &cmdline, &key, &["--wait-ack", "60"]);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            guest.fail(&format!(
                "run {i}: send failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        sent.push(cmdline);
    }
    let o = SUITE.finish(guest, "framed-ack");
    assert_eq!(o.runs.len(), RUNS);
    for (run, cmdline) in o.runs.iter().zip(&sent) {
        assert_stored(&o, run, cmdline);
    }
    let by_end = o
        .helper_log()
        .iter()
        .filter(|l| l.contains("the end line matches"))
        .count();
    if by_end != RUNS {
        fail(
            &o,
            &format!("{by_end} of {RUNS} messages were completed by their end line"),
        );
    }
    // The host stayed connected until the ack every time, so each of these
    // is the driver reporting "not connected" while the host was.
    let zero_after_data = o
        .helper_log()
        .iter()
        .filter(|l| l.contains("read() returned 0 right after data"))
        .count();
    let (median, max) = report::median_max(&ms);
    report::record(
        "10-ack",
        &[format!(
            "`send --wait-ack` to a guest already holding its port, helper at debug level \
             (-v), process start to exit over {RUNS} sends: median {median:.0} ms, max {max:.0} ms; \
             {by_end}/{RUNS} completed by the end line; reads of 0 right after data with the host \
             connected: {zero_after_data}"
        )],
    );
}

/// `send` without --wait-ack closes only once QEMU has taken every byte:
/// a message of several pages reaches a guest holding its port whole
/// (patchviasocket's write-and-close got one page through).
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_without_wait_ack_delivers_several_pages_to_a_held_port() {
    let cmdline = large_cmdline("send-once-large");
    let (o, out) = SUITE.send_to_held_port("send-once-large", &cmdline, &[]);
    if !String::from_utf8_lossy(&out.stderr).contains("QEMU took them all") {
        fail(&o, "send did not say QEMU took the bytes");
    }
}

/// `send` without --wait-ack before the guest holds its port: QEMU does
/// not take the bytes, and send says so with exit 75 instead of 0.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn send_without_wait_ack_before_the_port_is_held_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let guest = SUITE.boot(Config {
        scenario: "send-once-early",
        fetch_args: vec!["--timeout".into(), "5".into()],
        ..Config::default()
    });
    let out = run_send(&guest, &cmdline("early"), &key, &["--wait-taken", "0.5"]);
    let sent_at = Instant::now();
    let o = SUITE.finish(guest, "send-once-early");
    let opened = o.port_events(VPORT_ID).first().map(|e| e.0);
    let ended = (sent_at - o.started).as_secs_f64();
    if opened.is_some_and(|t| t < ended) {
        // The guest was quicker than this machine: nothing to show here.
        report::note("send-once-early: the guest held its port before send ended; not checked");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exit(&o, o.only_run(), 69);
    assert_nothing_written(&o, o.only_run());
}

/// A reboot with stray bytes inside the grace period (a junk line, and the
/// cut line QEMU leaves of a message of several pages whose host closed at
/// once): the stored cmdline is kept, exit 0, soon after the grace period.
#[test]
#[ignore = "boots QEMU guests; run by tests/run-all.sh"]
fn reboot_with_stray_bytes_in_the_grace_period_keeps_the_stored_cmdline() {
    let (guest, _) = SUITE.boot_held(Config {
        scenario: "reboot-stray",
        precache: true,
        fetch_args: vec!["--grace".into(), "3".into()],
        ..Config::default()
    });
    send_and_close(&guest, b"hello:this is not for you\n");
    send_and_close(&guest, message(&large_cmdline("stray")).as_bytes());
    let o = SUITE.finish(guest, "reboot-stray");
    let run = o.only_run();
    assert_exit(&o, run, 0);
    assert_old_cmdline_kept(&o, run);
    if !o.log_has("keeping those in") || !o.log_has("stray bytes") {
        fail(
            &o,
            "the helper did not say it kept the stored cmdline over stray bytes",
        );
    }
    report::record(
        "30-reboot",
        &[format!(
            "reboot, a junk line and a cut multi-page message inside --grace 3: fetch exited 0 after {:.2} s",
            run.t1 - run.t0
        )],
    );
}
