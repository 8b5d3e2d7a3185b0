//! A benchmark, not a test and not part of CI (it takes minutes and both
//! cores): eight
//! guests booting at once, each with one kind of host, sending before or
//! after the guest holds its port, small or several pages. Reports, per
//! kind, whether the message was delivered and what `send` said, with host
//! and guest times on the host's clock (a starved TCG guest's own clock runs
//! slow). Nothing is asserted but that each guest finishes.
//!
//! Run by hand, as root: `cargo bench --bench vm_load`; the lines go to
//! <target>/vm/report.txt like the VM suite's.

#[path = "../tests/vm/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/vm/report.rs"]
#[allow(dead_code)]
mod report;

use std::time::{Duration, Instant};

use harness::{Config, Guest, VPORT_ID};

const PUBKEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtLXRlc3Qta2V5LWZvci12cG9ydC1ib290YXJncw vm-test@host";

#[derive(Clone, Copy, Debug)]
struct Kind {
    wait_ack: bool,
    after_open: bool,
    large: bool,
}

impl Kind {
    fn label(self) -> String {
        format!(
            "{} {} the port was held, {}",
            if self.wait_ack {
                "send --wait-ack 150"
            } else {
                "send (no --wait-ack)"
            },
            if self.after_open { "after" } else { "before" },
            if self.large { "several pages" } else { "small" }
        )
    }
}

fn cmdline(i: usize, large: bool) -> String {
    let mut c =
        format!("template=domP type=secstorage name=s-{i}-VM eth0ip=169.254.3.{i} load={i}");
    if large {
        for k in 0..800 {
            c += &format!(" key{k}=value-{k:04}");
        }
    }
    c
}

fn main() {
    eight_guests_booting_at_once_with_every_kind_of_host();
}

fn eight_guests_booting_at_once_with_every_kind_of_host() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_rsa.pub.cloud");
    std::fs::write(&key, format!("{PUBKEY}\n")).unwrap();
    harness::artifacts(harness::Arch::X86_64);
    let mut kinds = Vec::new();
    for wait_ack in [false, true] {
        for after_open in [false, true] {
            for large in [false, true] {
                kinds.push(Kind {
                    wait_ack,
                    after_open,
                    large,
                });
            }
        }
    }
    let t0 = Instant::now();
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let key = key.clone();
                s.spawn(move || {
                    // A guest that fails is a line of the report, not the
                    // end of the others.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_one(i + 1, kind, &key, t0)
                    }))
                    .unwrap_or_else(|e| {
                        let why = e
                            .downcast_ref::<String>()
                            .map(|s| s.lines().next().unwrap_or("").to_owned())
                            .unwrap_or_default();
                        format!(
                            "  guest {}: {}: the guest failed: {why}",
                            i + 1,
                            kind.label()
                        )
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut lines = vec![format!(
        "load: {} guests started at once on {} cores (host clock, seconds since the first QEMU start):",
        kinds.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )];
    lines.extend(results);
    report::record("90-load", &lines);
}

fn run_one(i: usize, kind: Kind, key: &std::path::Path, t0: Instant) -> String {
    let guest = Guest::start(&Config {
        scenario: "load",
        // Counted from when the port opens (over a minute under this load):
        // an undelivered guest then gives up well within the harness's limit.
        fetch_args: vec!["--timeout".into(), "60".into()],
        ..Config::default()
    });
    let started = (guest.started - t0).as_secs_f64();
    if kind.after_open {
        guest.wait_port(VPORT_ID, true, 1, Duration::from_secs(400));
    } else {
        std::thread::sleep(
            (guest.started + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
        );
    }
    let cmdline = cmdline(i, kind.large);
    let mut args = vec![];
    if kind.wait_ack {
        args.extend(["--wait-ack", "150"]);
    }
    let sent_at = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .arg("send")
        .arg("--socket")
        .arg(guest.socket(VPORT_ID))
        .args(["--raw", "-p", &cmdline])
        .arg("--pubkey-file")
        .arg(key)
        .args(&args)
        .output()
        .expect("run send");
    let send_end = (Instant::now() - t0).as_secs_f64();
    let o = guest.finish();
    let run = o.only_run();
    let delivered = run
        .entries
        .get("cache/cmdline")
        .and_then(|e| e.content.clone())
        .is_some_and(|c| c == format!("{cmdline}\n").into_bytes());
    let opened = o
        .port_events(VPORT_ID)
        .first()
        .map(|e| e.0 + started)
        .unwrap_or(f64::NAN);
    let fetch_end = o
        .console_time("VBRUN")
        .map(|t| t + started)
        .unwrap_or(f64::NAN);
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("").trim();
    format!(
        "  guest {i}: {}: {}; send exit {} ({:.1}-{send_end:.1} s: {last}); QEMU start {started:.1} s, \
         port held {opened:.1} s, fetch exit {} at {fetch_end:.1} s (guest uptime {:.1} s)",
        kind.label(),
        if delivered { "DELIVERED" } else { "not delivered" },
        out.status.code().unwrap_or(-1),
        (sent_at - t0).as_secs_f64(),
        run.exit,
        run.t1
    )
}
