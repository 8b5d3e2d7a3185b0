//! What the VM test suites share beyond the harness: the message the host
//! sends, what a fetch must leave behind, and the host's side of a port
//! (write and close, wait for the ack, `vport-bootargs send`). The checks
//! fail the test with the guest's console and port events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{Entry, Guest, Outcome, Run, GA_ID, VPORT_ID};
use vport_bootargs::wire::digest_hex as sha256_hex;

pub const PUBKEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtLXRlc3Qta2V5LWZvci12cG9ydC1ib290YXJncw vm-test@host";

/// A CloudStack-like cmdline, tagged with the test that sends it.
pub fn cmdline(test: &str) -> String {
    format!(
        "template=domP type=secstorage host=10.1.1.1 port=8250 name=s-1-VM zone=1 pod=1 \
         guid=s-1-VM workers=5 eth0ip=169.254.3.4 eth0mask=255.255.0.0 \
         authorized_key=c3NoLWVkMjU1MTk= test={test}"
    )
}

/// What patchviasocket.py writes: the pubkey line, then the cmdline line.
pub fn message(cmdline: &str) -> String {
    format!("pubkey:{PUBKEY}\ncmdline:{cmdline}\n")
}

/// A cmdline of several pages (more than the guest's one-page reads).
pub fn large_cmdline(test: &str) -> String {
    let mut cmdline = cmdline(test);
    for i in 0..800 {
        cmdline += &format!(" key{i}=value-{i:04}");
    }
    assert!(cmdline.len() > 3 * 4096);
    cmdline
}

/// What a fetch that stored `cmdline` with the test key leaves behind:
/// exactly these files, with these modes, and no temp file.
fn stored(cmdline: &str) -> Vec<(String, Entry)> {
    let file = |mode, text: String| Entry {
        kind: 'f',
        mode,
        content: Some(text.into_bytes()),
    };
    let dir = |mode| Entry {
        kind: 'd',
        mode,
        content: None,
    };
    vec![
        ("cache".into(), dir(0o755)),
        (
            "cache/authorized_keys".into(),
            file(0o600, format!("{PUBKEY}\n")),
        ),
        ("cache/cmdline".into(), file(0o644, format!("{cmdline}\n"))),
        ("ssh".into(), dir(0o700)),
        (
            "ssh/authorized_keys".into(),
            file(0o600, format!("{PUBKEY}\n")),
        ),
    ]
}

pub fn fail(o: &Outcome, why: &str) -> ! {
    panic!(
        "{why}\n--- port events: {:?}\n--- guest console:\n{}",
        o.port_events(VPORT_ID)
            .into_iter()
            .chain(o.port_events(GA_ID))
            .collect::<Vec<_>>(),
        o.console_text()
    );
}

pub fn assert_exit(o: &Outcome, run: &Run, code: i32) {
    if run.exit != code {
        fail(o, &format!("fetch exited {}, expected {code}", run.exit));
    }
}

pub fn assert_stored(o: &Outcome, run: &Run, cmdline: &str) {
    assert_exit(o, run, 0);
    let want: Vec<(String, Entry)> = stored(cmdline);
    let got: Vec<(String, Entry)> = run.entries.clone().into_iter().collect();
    if got != want {
        fail(
            o,
            &format!("stored files differ\n  got:  {got:?}\n  want: {want:?}"),
        );
    }
}

pub fn assert_nothing_written(o: &Outcome, run: &Run) {
    if !run.entries.is_empty() {
        fail(o, &format!("files were written: {:?}", run.entries));
    }
}

/// The guest agent's port was never opened (QMP saw no open of it).
pub fn assert_guest_agent_untouched(o: &Outcome) {
    if o.port_events(GA_ID).iter().any(|(_, open)| *open) {
        fail(o, "the guest agent's port was opened");
    }
}

/// The helper opened its port once and held it: it logs each open, and
/// QMP's first event for the port is an open. (QMP throttles
/// VSERPORT_CHANGE to one per second per port, so its events alone cannot
/// count quick reopenings.)
pub fn assert_opened_once(o: &Outcome) {
    let opens = o
        .helper_log()
        .iter()
        .filter(|l| l.contains("opened port"))
        .count();
    if opens != 1 {
        fail(o, &format!("the helper opened its port {opens} times"));
    }
    if o.port_events(VPORT_ID).first().map(|e| e.1) != Some(true) {
        fail(o, "QMP did not see the guest open its port");
    }
}

/// patchviasocket.py's way: connect, write, close at once.
pub fn send_and_close(guest: &Guest, bytes: &[u8]) {
    let mut s = guest.connect(VPORT_ID);
    s.write_all(bytes)
        .unwrap_or_else(|e| guest.fail(&format!("host write failed: {e}")));
}

/// Reads the guest's `ack:` line.
pub fn read_ack(guest: &Guest, s: &UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .unwrap_or_else(|e| guest.fail(&format!("no ack from the guest: {e}")));
    line
}

pub fn ack_for(cmdline: &str) -> String {
    format!("ack:{}\n", sha256_hex(cmdline.as_bytes()))
}

/// Runs the host build of `vport-bootargs send` against a guest's socket.
pub fn run_send(guest: &Guest, cmdline: &str, key_file: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .arg("send")
        .arg("--socket")
        .arg(guest.socket(VPORT_ID))
        .args(["--raw", "-p", cmdline])
        .arg("--pubkey-file")
        .arg(key_file)
        .args(extra)
        .output()
        .expect("run vport-bootargs send")
}

pub fn assert_sent(o: &Outcome, out: &Output) {
    if !out.status.success() {
        fail(
            o,
            &format!(
                "send failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
}

/// The test key in a file, as CloudStack's agent keeps it.
pub fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("id_rsa.pub.cloud");
    std::fs::write(&path, format!("{PUBKEY}\n")).unwrap();
    path
}
