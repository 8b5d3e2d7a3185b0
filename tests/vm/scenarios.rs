//! The scenarios both architectures run, written once: tests/vm.rs calls
//! them on x86_64 guests and tests/vm_arm64.rs on aarch64 guests, each
//! through its own [`Suite`]. A suite adds its own checks on the outcome a
//! scenario returns.

use std::io::Write;
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::checks::*;
use crate::harness::{
    self, Arch, Config, Guest, Order, Outcome, GA_ID, GA_NAME, VPORT_ID, VPORT_NAME,
};
use crate::report;

/// One architecture's guests.
pub struct Suite {
    pub arch: Arch,
    /// How long a guest may take to boot and open its port.
    pub boot_limit: Duration,
}

impl Suite {
    /// Boots a guest; the first one also records the machine in the report.
    pub fn boot(&self, cfg: Config) -> Guest {
        static MACHINE: OnceLock<()> = OnceLock::new();
        let guest = Guest::start(&Config {
            arch: self.arch,
            ..cfg
        });
        MACHINE.get_or_init(|| {
            let art = harness::artifacts(self.arch);
            report::record(
                "01-machine",
                &report::machine(
                    guest.arch.qemu(),
                    guest.accel.name(),
                    &art.rust_target,
                    art.binary_size,
                    &art.kernel_package,
                ),
            );
        });
        guest
    }

    /// Boots a guest and waits for the helper to open its port; returns
    /// the guest and when QMP saw the open.
    pub fn boot_held(&self, cfg: Config) -> (Guest, Instant) {
        let guest = self.boot(cfg);
        let opened = guest.wait_port(VPORT_ID, true, 1, self.boot_limit);
        (guest, opened)
    }

    /// Waits for the guest to power off, and reports how long it ran and
    /// when its init started.
    pub fn finish(&self, guest: Guest, test: &str) -> Outcome {
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

    /// patchviasocket.py's way: connect, write, close at once, `delay`
    /// after the helper opened the port; the cmdline tagged `test` is
    /// stored.
    pub fn write_once_after(&self, cfg: Config, delay: Duration, test: &str) -> Outcome {
        let (guest, opened) = self.boot_held(cfg);
        std::thread::sleep((opened + delay).saturating_duration_since(Instant::now()));
        let cmdline = cmdline(test);
        send_and_close(&guest, message(&cmdline).as_bytes());
        let o = self.finish(guest, test);
        assert_stored(&o, o.only_run(), &cmdline);
        o
    }

    /// Both port orders: the port is found by name, whatever its number,
    /// and is `/dev/vportN<port_suffix>` (the port number follows the
    /// order of the channels). Returns the node's name.
    pub fn port_order(&self, order: Order, port_suffix: &str, test: &str) -> String {
        let cfg = Config {
            scenario: "order",
            order,
            ..Config::default()
        };
        let o = self.write_once_after(cfg, Duration::ZERO, test);
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
        entry.to_owned()
    }

    /// A host that stays connected: it writes the message, reads the ack
    /// and is still connected while the guest finishes and powers off.
    /// The ack is the cmdline's and the cmdline is stored.
    pub fn ack_while_connected(&self, cfg: Config, cmdline: &str, test: &str) -> Outcome {
        let (guest, _) = self.boot_held(cfg);
        let mut s = guest.connect(VPORT_ID);
        s.write_all(message(cmdline).as_bytes())
            .unwrap_or_else(|e| guest.fail(&format!("host write failed: {e}")));
        let ack = read_ack(&guest, &s);
        let o = self.finish(guest, test);
        drop(s);
        if ack != ack_for(cmdline) {
            fail(&o, &format!("ack {ack:?}, expected {:?}", ack_for(cmdline)));
        }
        assert_stored(&o, o.only_run(), cmdline);
        o
    }

    /// The host that stays connected, with the helper saying the message
    /// completed while it did.
    pub fn keep_open(&self) {
        let cfg = Config {
            scenario: "keep-open",
            ..Config::default()
        };
        let o = self.ack_while_connected(cfg, &cmdline("keep-open"), "keep-open");
        if !o.log_has("message complete") && !o.log_has("acknowledged") {
            fail(
                &o,
                "no sign of the message completing while the host stayed",
            );
        }
        assert_guest_agent_untouched(&o);
    }

    /// `runs` fetches in one guest, each with fresh directories: the host
    /// reads `ack:<sha256 of the cmdline>` every time and each cmdline is
    /// stored. Returns the outcome and the round trips (write to ack, ms).
    pub fn ack_every_time(&self, runs: usize, fetch_args: &[&str]) -> (Outcome, Vec<f64>) {
        let guest = self.boot(Config {
            scenario: "ack",
            runs: runs as u32,
            fetch_args: fetch_args.iter().map(|a| a.to_string()).collect(),
            ..Config::default()
        });
        let mut rtt_ms = Vec::new();
        let mut sent = Vec::new();
        for i in 1..=runs {
            guest.wait_port(VPORT_ID, true, i, self.boot_limit);
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
        let o = self.finish(guest, "ack");
        assert_eq!(o.runs.len(), runs);
        for (run, cmdline) in o.runs.iter().zip(&sent) {
            assert_stored(&o, run, cmdline);
        }
        assert_guest_agent_untouched(&o);
        (o, rtt_ms)
    }

    /// The host never comes: the helper waits on the open port without
    /// spinning, then gives up with 69 and writes nothing. Also reports its
    /// CPU time and memory over 10 s of that wait.
    pub fn silent_host(&self) {
        let guest = self.boot(Config {
            scenario: "silent",
            fetch_args: vec!["--timeout".into(), "13".into()],
            sample_secs: Some(10),
            ..Config::default()
        });
        let o = self.finish(guest, "silent");
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
        // USER_HZ is 100 on x86 and arm64 Linux: one tick is 10 ms.
        let cpu_ms = (last.ticks - first.ticks) * 10;
        report::record(
            "20-silent",
            &[
                format!(
                    "helper CPU time (utime+stime) while waiting {} s for a silent host: \
                     {cpu_ms} ms (total since exec {} ms)",
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

    /// `vport-bootargs send` with `extra` options to a guest already
    /// holding its port: send succeeds and the cmdline is stored. Returns
    /// the outcome and send's output.
    pub fn send_to_held_port(
        &self,
        scenario: &'static str,
        cmdline: &str,
        extra: &[&str],
    ) -> (Outcome, Output) {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(&dir);
        let (guest, _) = self.boot_held(Config {
            scenario,
            ..Config::default()
        });
        let out = run_send(&guest, cmdline, &key, extra);
        let o = self.finish(guest, scenario);
        assert_sent(&o, &out);
        assert_stored(&o, o.only_run(), cmdline);
        (o, out)
    }

    /// The guest agent's host side is connected all along, as libvirt's
    /// is; the helper never opens its port, and a guest process that opens
    /// it after fetch ended gets what the host wrote.
    pub fn guest_agent_port_is_left_free(&self) {
        let guest = self.boot(Config {
            scenario: "guest-agent",
            read_guest_agent: true,
            ..Config::default()
        });
        let mut ga = guest.connect(GA_ID);
        guest.wait_port(VPORT_ID, true, 1, self.boot_limit);
        let cmdline = cmdline("guest-agent");
        send_and_close(&guest, message(&cmdline).as_bytes());
        guest.wait_port(GA_ID, true, 1, Duration::from_secs(120));
        ga.write_all(b"ga-ping\n").unwrap();
        let o = self.finish(guest, "guest-agent");
        drop(ga);
        assert_stored(&o, o.only_run(), &cmdline);
        let read = o
            .guest_agent
            .clone()
            .unwrap_or_else(|| fail(&o, "the guest did not read the guest agent's port"));
        let expected_node = format!("/dev/{}", o.entry_named(GA_NAME).unwrap());
        assert_eq!(read.node, expected_node);
        if read.rc != 0 || !read.err.is_empty() {
            fail(
                &o,
                &format!("opening {} failed: rc {} {}", read.node, read.rc, read.err),
            );
        }
        assert_eq!(read.data, b"ga-ping\n", "bytes from the host's GA socket");
        // The only opener of the guest agent's port was that guest process,
        // after fetch had ended (the guest prints VBRUN when it has).
        let fetch_ended = o
            .console_time("VBRUN")
            .unwrap_or_else(|| fail(&o, "no VBRUN line"));
        let ga_opens: Vec<f64> = o
            .port_events(GA_ID)
            .iter()
            .filter(|e| e.1)
            .map(|e| e.0)
            .collect();
        if ga_opens.len() != 1 || ga_opens[0] < fetch_ended {
            fail(
                &o,
                &format!(
                    "the guest agent's port was opened at {ga_opens:?} s, fetch ended at \
                     {fetch_ended:.2} s"
                ),
            );
        }
    }
}
