//! The end line, the merge rule, the deadline rules and the no-channel case,
//! end to end against a fake tree whose port is a FIFO (`--no-ack` opens it
//! read-only): read() == 0 while no writer is connected, as the real port
//! reads 0 while the host is not. The real driver is tested in tests/vm.rs.
//!
//! Nothing here asserts a duration: where a rule is about time (the settle,
//! the grace period) the test sets the other deadlines far away, so that
//! the wrong rule shows as a wrong exit code or log line, not a slow test.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{with_end_line, Running, Tree, CMDLINE, KEY, PORT};

const OLD: &str = "type=old name=s-1-VM\n";

/// CloudStack's lines for `cmdline` with the test key, no end line.
fn body(cmdline: &str) -> String {
    common::message(cmdline, Some(KEY))
}

/// What `vport-bootargs send` writes: the lines and the end line.
fn framed(cmdline: &str) -> Vec<u8> {
    with_end_line(&body(cmdline))
}

/// A stored cmdline (only), as after an earlier boot.
fn store_old(t: &Tree) {
    common::write_file(&t.cache().join("cmdline"), OLD);
}

/// `fetch -v --no-ack` with far deadlines; `extra` overrides them.
fn spawn(t: &Tree, extra: &[(&str, &str)]) -> Running {
    let far = [
        ("--timeout", "60"),
        ("--port-timeout", "60"),
        ("--grace", "60"),
        ("--settle", "60"),
    ];
    // The first of an option wins: `extra` before `far`.
    let opts: Vec<(&str, &str)> = extra.iter().chain(&far).copied().collect();
    Running::spawn(t.fetch(&opts).arg("-v"))
}

/// Waits for the run to exit; its exit code and log.
fn finish(run: Running) -> (i32, String) {
    let out = run.finish();
    (common::code(&out), common::stderr(&out))
}

/// Runs `run` with a host on `node` that writes with `host` and stays until the run exits.
fn with_host(mut run: Running, node: &Path, host: impl FnOnce(&mut File) + Send) -> (i32, String) {
    let mut conn = run.connect(node);
    let conn = &mut conn;
    // The writes go on in a thread while the run is waited for; the
    // connection is dropped only after both.
    thread::scope(|s| {
        let writer = s.spawn(move || host(conn));
        let (code, err) = finish(run);
        // A write fails (EPIPE) only once the run is gone: its log says why.
        if writer.join().is_err() {
            panic!("the host's writes failed; the log:\n{err}");
        }
        (code, err)
    })
}

/// The run exited 0 and stored CMDLINE.
fn assert_stored(t: &Tree, code: i32, err: &str) {
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

/// Where `needle` first occurs in `hay`.
fn at(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn sleep_ms(ms: u64) {
    thread::sleep(Duration::from_millis(ms));
}

// ---------------------------------------------------------------------------
// The end line.

#[test]
fn framed_message_is_complete_at_its_end_line_while_the_host_stays() {
    let t = Tree::with_port();
    // --settle 60: only the end line can end this before the test's patience.
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&framed(CMDLINE)).unwrap()
    });
    assert_stored(&t, code, &err);
    assert!(err.contains("the end line matches"), "{err}");
    assert!(!err.contains("nothing more from the host"), "{err}");
}

#[test]
fn bytes_after_the_end_line_are_not_part_of_the_message() {
    let t = Tree::with_port();
    let mut bytes = framed(CMDLINE);
    bytes.extend_from_slice(b"cmdline:type=later\n");
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&bytes).unwrap()
    });
    assert_stored(&t, code, &err);
    assert!(err.contains("ignored 19 bytes after the end line"), "{err}");
}

#[test]
fn end_line_that_does_not_match_is_discarded_and_the_next_copy_stored() {
    let t = Tree::with_port();
    let good = framed(CMDLINE);
    let mut bad = good.clone();
    // Corrupt one byte of the cmdline: a different, well-formed line.
    let i = at(&bad, b"s-1-VM") + 2;
    bad[i] = b'2';
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&bad).unwrap();
        sleep_ms(300);
        host.write_all(&good).unwrap();
    });
    assert_stored(&t, code, &err);
    let discarded: Vec<&str> = err.lines().filter(|l| l.contains("discarded")).collect();
    assert_eq!(discarded.len(), 1, "{err}");
    assert!(discarded[0].contains("a cut or a corruption"), "{err}");
}

#[test]
fn a_discarded_copy_is_answered_with_a_nak_and_the_stored_one_with_its_ack() {
    // Without --no-ack, as in production: the replies go back into the
    // FIFO. Both copies come in one read, so fetch stops reading at the
    // good copy's end line and leaves its own replies there.
    let t = Tree::with_port();
    let good = framed(CMDLINE);
    let mut bytes = good.clone();
    let i = at(&bytes, b"s-1-VM") + 2;
    bytes[i] = b'2';
    bytes.extend_from_slice(&good);
    let host = t.offer("vport0p1", &bytes);
    let out = common::run_guarded(&mut t.fetch_acking(&[]));
    let err = common::stderr(&out);
    assert_stored(&t, common::code(&out), &err);
    let replies = String::from_utf8(common::left_in_pipe(&host)).unwrap();
    let replies: Vec<&str> = replies.split_inclusive('\n').collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(
        replies[0].starts_with("nak:") && replies[0].contains("a cut or a corruption"),
        "{replies:?}"
    );
    assert_eq!(replies[1], vport_bootargs::wire::ack_line(CMDLINE));
}

#[test]
fn corrupted_copy_that_is_not_utf8_is_discarded_not_refused() {
    let t = Tree::with_port();
    let good = framed(CMDLINE);
    let mut bad = good.clone();
    let i = at(&bad, b"secstorage");
    bad[i] = 0xff;
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&bad).unwrap();
        host.write_all(&good).unwrap();
    });
    assert_stored(&t, code, &err);
}

#[test]
fn framed_message_without_a_cmdline_is_refused_with_65() {
    let t = Tree::with_port();
    let bytes = with_end_line(&format!("pubkey:{KEY}\n"));
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&bytes).unwrap()
    });
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("holds no cmdline line"), "{err}");
    assert!(!t.root().join("var").exists(), "nothing written");
}

/// cloud-early-config's KVM loop, as CloudStack 4.10-4.11 shipped it in
/// behaviour: `cmdline:` lines to the cmdline file (every `cmdline:` in the
/// line stripped, unquoted echo), `pubkey:` lines to both key files, every
/// other line ignored.
const CLOUD_EARLY_CONFIG_LOOP: &str = r#"
while read line; do
  if [[ $line == cmdline:* ]]; then
    cmd=${line//cmdline:/}
    echo $cmd > "$OUT/cmdline"
  elif [[ $line == pubkey:* ]]; then
    pubkey=${line//pubkey:/}
    echo $pubkey > "$OUT/authorized_keys"
  fi
done < "$IN"
"#;

#[test]
fn cloud_early_config_loop_ignores_the_end_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("port");
    fs::write(&input, framed(CMDLINE)).unwrap();
    let out = Command::new("bash")
        .args(["-c", CLOUD_EARLY_CONFIG_LOOP])
        .env("IN", &input)
        .env("OUT", dir.path())
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("cmdline"), format!("{CMDLINE}\n"));
    assert_eq!(read("authorized_keys"), format!("{KEY}\n"));
}

// ---------------------------------------------------------------------------
// The merge rule: a cut line joined to its resend.

#[test]
fn cut_line_joined_to_its_resend_stores_the_resend_never_the_join() {
    // The host is cut off mid-line and sends again before the guest sees a
    // disconnect: one writer, so the FIFO shows none.
    let t = Tree::with_port();
    let run = spawn(&t, &[("--settle", "0.3")]);
    let (code, err) = with_host(run, &t.node("vport0p1"), |host| {
        host.write_all(b"cmdline:type=secstorage eth0ip=169.2")
            .unwrap();
        sleep_ms(200);
        host.write_all(b"cmdline:type=secstorage eth0ip=169.254.3.4\n")
            .unwrap();
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        t.stored_cmdline().unwrap(),
        "type=secstorage eth0ip=169.254.3.4\n"
    );
    assert!(
        err.contains("ran into the host's resend: dropped 36 bytes"),
        "{err}"
    );
}

#[test]
fn partial_line_then_disconnect_then_resend_stores_the_resend() {
    let t = Tree::with_port();
    let node = t.node("vport0p1");
    let mut run = spawn(&t, &[("--settle", "0.3")]);
    // A cut copy of the line it sends again.
    run.host_write(&node, b"cmdline:a=1 gen=wh");
    sleep_ms(300);
    run.host_write(&node, b"cmdline:a=1 gen=whole\n");
    let (code, err) = finish(run);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "a=1 gen=whole\n");
    assert!(
        err.contains("host disconnected in the middle of a line (18 bytes so far); keeping them"),
        "{err}"
    );
    assert!(err.contains("dropped 18 bytes of it"), "{err}");
}

#[test]
fn framed_resend_after_a_cut_copy_is_found_by_its_length() {
    let t = Tree::with_port();
    let node = t.node("vport0p1");
    let mut run = spawn(&t, &[]);
    let whole = framed(CMDLINE);
    // Cut inside the end line itself: no prefix to rejoin on, only the
    // resend's length and digest find it.
    let cut = whole.len() - 30;
    run.host_write(&node, &whole[..cut]);
    run.host_write(&node, &whole);
    let (code, err) = finish(run);
    assert_stored(&t, code, &err);
    assert!(err.contains("the end line matches"), "{err}");
}

// ---------------------------------------------------------------------------
// Deadlines that keep good data.

#[test]
fn whole_cmdline_at_the_deadline_is_stored() {
    // The settle (60 s) outlasts the timeout (2 s): the deadline comes with
    // a whole cmdline and the host still connected.
    let t = Tree::with_port();
    let run = spawn(&t, &[("--timeout", "2")]);
    let (code, err) = with_host(run, &t.node("vport0p1"), |host| {
        host.write_all(body(CMDLINE).as_bytes()).unwrap()
    });
    assert_stored(&t, code, &err);
    assert!(
        err.contains("the deadline came with a whole cmdline"),
        "{err}"
    );
}

#[test]
fn ignored_lines_do_not_extend_the_settle() {
    // A cmdline, then an unknown line every 100 ms for longer than the
    // timeout: the settle (0.5 s) ends the message, not the deadline.
    let t = Tree::with_port();
    let run = spawn(&t, &[("--settle", "0.5"), ("--timeout", "8")]);
    let (code, err) = with_host(run, &t.node("vport0p1"), |host| {
        host.write_all(body(CMDLINE).as_bytes()).unwrap();
        for _ in 0..100 {
            if host.write_all(b"hello:still here\n").is_err() {
                break;
            }
            sleep_ms(100);
        }
    });
    assert_stored(&t, code, &err);
    assert!(err.contains("nothing more from the host"), "{err}");
    assert!(!err.contains("the deadline came"), "{err}");
}

#[test]
fn reboot_with_stray_bytes_in_the_grace_period_keeps_the_stored_cmdline() {
    let t = Tree::new();
    store_old(&t);
    let node = t.add_port("vport0p1", Some(PORT));
    // --timeout 60: the old rule waited for it, then exited 69.
    let mut run = spawn(&t, &[("--grace", "1")]);
    run.host_write(&node, b"hello:junk\n");
    // A cut line, as QEMU leaves of a host that wrote more than a page and
    // closed.
    run.host_write(
        &node,
        format!("pubkey:{KEY}\ncmdline:type=new x=").as_bytes(),
    );
    let (code, err) = finish(run);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), OLD);
    assert!(
        err.contains(
            "(only stray bytes came, and 19 bytes of an unfinished line); keeping those in"
        ),
        "{err}"
    );
}

#[test]
fn reboot_with_a_message_still_arriving_at_the_end_of_grace_stores_it() {
    let t = Tree::new();
    store_old(&t);
    let node = t.add_port("vport0p1", Some(PORT));
    let bytes = framed(CMDLINE);
    let (code, err) = with_host(spawn(&t, &[("--grace", "1")]), &node, |host| {
        // 10 pieces 300 ms apart: the grace period ends half-way.
        for piece in bytes.chunks(bytes.len().div_ceil(10)) {
            host.write_all(piece).unwrap();
            sleep_ms(300);
        }
    });
    assert_stored(&t, code, &err);
}

// ---------------------------------------------------------------------------
// No *.vport channel.

#[test]
fn named_ports_none_matching_exit_0_saying_no_channel_and_write_nothing() {
    let t = Tree::new();
    store_old(&t);
    t.add_virtio_device(0, "0x0003", true);
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let (code, err) = finish(spawn(&t, &[("--no-channel-after", "0.5")]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "the host provides no channel matching pattern *.vport (the only virtio ports are \
             vport0p1=org.qemu.guest_agent.0"
        ),
        "{err}"
    );
    assert!(err.contains("QEMU guest agent instead"), "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), OLD, "stored files kept");
    assert!(!t.ssh().exists(), "nothing written");
}

#[test]
fn no_virtio_console_device_exits_0_saying_so() {
    let t = Tree::new();
    t.add_pci_device("0000:00:01.0", "0x8086", "0x7000");
    t.add_virtio_device(0, "0x0002", true);
    let (code, err) = finish(spawn(&t, &[("--no-channel-after", "0.5")]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("there is no virtio console device"), "{err}");
    assert!(!t.root().join("var").exists(), "nothing written");
}

#[test]
fn console_device_without_its_driver_yet_is_waited_for() {
    // virtio_console not loaded yet: a console on PCI and on the virtio
    // bus, no ports. Not "no channel": the port comes with the driver.
    let t = Tree::new();
    t.add_pci_device("0000:00:04.0", "0x1af4", "0x1003");
    t.add_virtio_device(1, "0x0003", false);
    let mut run = spawn(&t, &[("--no-channel-after", "0.3"), ("--settle", "0.2")]);
    sleep_ms(1500);
    t.add_virtio_device(1, "0x0003", true);
    t.add_port("vport1p1", Some("org.qemu.guest_agent.0"));
    let node = t.add_port("vport1p2", Some(PORT));
    run.host_write(&node, &framed(CMDLINE));
    let (code, err) = finish(run);
    assert_stored(&t, code, &err);
}

#[test]
fn port_without_its_name_yet_is_not_taken_for_no_channel() {
    let t = Tree::new();
    t.add_virtio_device(0, "0x0003", true);
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    t.add_port("vport0p2", None);
    let (code, err) = finish(spawn(
        &t,
        &[("--no-channel-after", "0.2"), ("--port-timeout", "1.5")],
    ));
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("no virtio port matching pattern *.vport appeared"),
        "{err}"
    );
}

#[test]
fn port_named_late_is_read_not_taken_for_no_channel() {
    let t = Tree::new();
    t.add_virtio_device(0, "0x0003", true);
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let node = t.add_port("vport0p2", None);
    let mut run = spawn(&t, &[("--no-channel-after", "0.5"), ("--settle", "0.2")]);
    sleep_ms(1000);
    fs::write(
        t.sys().join("class/virtio-ports/vport0p2/name"),
        "s-1-VM.vport\n",
    )
    .unwrap();
    run.host_write(&node, &framed(CMDLINE));
    let (code, err) = finish(run);
    assert_stored(&t, code, &err);
}

// ---------------------------------------------------------------------------
// The sender: what the host knows.

mod sender {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn send(dir: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"));
        c.arg("send")
            .arg("--socket")
            .arg(dir.join("s.agent"))
            .args(["--no-pubkey", "--raw", "-p", CMDLINE])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn listen(dir: &Path) -> UnixListener {
        UnixListener::bind(dir.join("s.agent")).unwrap()
    }

    /// What `send --no-pubkey` writes for CMDLINE.
    fn expected() -> Vec<u8> {
        with_end_line(&common::message(CMDLINE, None))
    }

    #[test]
    fn without_wait_ack_send_closes_once_the_peer_has_read_everything() {
        // A peer that reads only after a while, as QEMU does once the
        // guest opens its port.
        let dir = tempfile::tempdir().unwrap();
        let listener = listen(dir.path());
        let run = Running::spawn(&mut send(dir.path(), &["-v", "--wait-taken", "30"]));
        let (mut peer, _) = listener.accept().unwrap();
        sleep_ms(800);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        let (code, err) = finish(run);
        assert_eq!(code, 0, "{err}");
        assert_eq!(got, expected());
        assert!(err.contains("QEMU took them all"), "{err}");
    }

    #[test]
    fn without_wait_ack_a_peer_that_never_reads_is_exit_75() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listen(dir.path());
        let out = send(dir.path(), &["--wait-taken", "0.5"]).output().unwrap();
        drop(listener);
        assert_eq!(out.status.code(), Some(75), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("QEMU had not taken the message from the socket after 0.5 s")
                && err.contains("nothing was delivered"),
            "{err}"
        );
    }

    #[test]
    fn wait_ack_sends_again_when_the_guest_discards_a_damaged_copy() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listen(dir.path());
        let run = Running::spawn(&mut send(dir.path(), &["--wait-ack", "30"]));
        let (peer, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(peer.try_clone().unwrap());
        let mut writer: UnixStream = peer;
        let copy = |r: &mut BufReader<UnixStream>| {
            let mut got = Vec::new();
            for _ in 0..2 {
                r.read_until(b'\n', &mut got).unwrap();
            }
            got
        };
        let first = copy(&mut reader);
        writer
            .write_all(b"nak:the end line did not match\n")
            .unwrap();
        let second = copy(&mut reader);
        writer
            .write_all(vport_bootargs::wire::ack_line(CMDLINE).as_bytes())
            .unwrap();
        let (code, err) = finish(run);
        assert_eq!(code, 0, "{err}");
        assert_eq!((first, second), (expected(), expected()));
        assert!(err.contains("(2 send(s))"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// An earlier build of the helper, from before the end line.

/// The commit before the end line existed (the restructured layout).
const EARLIER: &str = "0f06237";

/// Builds the helper as it was at [`EARLIER`] (git archive, cargo build
/// --offline into target/earlier-build, kept between runs).
fn earlier_helper() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join("target/earlier-build");
    let src = out.join("src");
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).unwrap();
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C '{}' archive {EARLIER} | tar -x -C '{}'",
            repo.display(),
            src.display()
        ))
        .status()
        .unwrap();
    assert!(
        archive.success(),
        "cannot check out {EARLIER} (a shallow clone? fetch the history first)"
    );
    let build = Command::new("cargo")
        .args(["build", "--offline", "--quiet", "--bin", "vport-bootargs"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", out.join("target"))
        .status()
        .unwrap();
    assert!(build.success(), "building {EARLIER} failed");
    out.join("target/debug/vport-bootargs")
}

#[test]
#[ignore = "builds the helper of an earlier commit; run by tests/run-all.sh"]
fn earlier_build_ignores_the_end_line_and_stores_the_message() {
    let old = earlier_helper();
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some(PORT));
    let run = Running::spawn(
        Command::new(old)
            .arg("--sysfs-root")
            .arg(t.sys())
            .arg("--dev-root")
            .arg(t.dev())
            // That build took a FIFO for the port without being asked
            // (--fifo-stand-in came later) and does not know the option.
            .args(["-v", "fetch", "--no-ack", "--cache-dir"])
            .arg(t.cache())
            .arg("--ssh-dir")
            .arg(t.ssh())
            .args(["--timeout", "60"]),
    );
    let (code, err) = with_host(run, &node, |host| host.write_all(&framed(CMDLINE)).unwrap());
    assert_stored(&t, code, &err);
    assert_eq!(
        fs::read_to_string(t.cache().join("authorized_keys")).unwrap(),
        format!("{KEY}\n")
    );
    assert!(
        err.contains("ignored a line with an unknown prefix: \"end:"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// What the host sent is what is stored (issue 19).

/// A cmdline holding both prefixes inside a value, framed as docs/protocol.md
/// says: once the digest matches, the body is stored byte for byte.
#[test]
fn framed_body_holding_the_prefixes_in_a_value_is_stored_byte_for_byte() {
    let t = Tree::with_port();
    let cmdline = "template=domP name=s-1-VM note=pubkey:and_cmdline:inside zone=1";
    let key = format!("{KEY} cloud@mgmt cmdline:keyring");
    let bytes = with_end_line(&common::message(cmdline, Some(&key)));
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&bytes).unwrap()
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{cmdline}\n"));
    assert_eq!(t.targets()[1].as_deref(), Some(format!("{key}\n").as_str()));
    assert!(!err.contains("ran into"), "{err}");
}

/// patchviasocket.py-style one-shot hosts: text inside a value or a key
/// comment that looks like a prefix is data, as cloud-early-config's loop
/// stored it.
#[test]
fn legacy_host_prefix_inside_a_value_or_key_comment_is_data() {
    let noted = format!("{CMDLINE} note=see-cmdline:docs host=10.1.1.1");
    let holding_pubkey = format!("{CMDLINE} keyring=pubkey:none");
    let commented = format!("{KEY} cloud@mgmt cmdline:keyring");
    for (cmdline, key) in [
        (noted.as_str(), KEY),
        (CMDLINE, commented.as_str()),
        (holding_pubkey.as_str(), KEY),
    ] {
        let t = Tree::with_port();
        let node = t.node("vport0p1");
        let mut run = spawn(&t, &[("--settle", "0.2")]);
        run.host_write(&node, common::message(cmdline, Some(key)).as_bytes());
        let (code, err) = finish(run);
        assert_eq!(code, 0, "{cmdline:?} {key:?}: {err}");
        assert_eq!(
            t.targets(),
            [
                Some(format!("{cmdline}\n")),
                Some(format!("{key}\n")),
                Some(format!("{key}\n"))
            ],
            "{err}"
        );
        assert!(!err.contains("ran into"), "{err}");
    }
}

/// A stray writer's junk line alone, then a framed message after the
/// settle time: the junk decides nothing (no `cmdline:` line came with it).
#[test]
fn junk_line_alone_then_a_framed_message_after_the_settle_is_stored() {
    let t = Tree::with_port();
    let run = spawn(&t, &[("--settle", "0.2")]);
    let (code, err) = with_host(run, &t.node("vport0p1"), |host| {
        host.write_all(b"\xff\xfe garbage\n").unwrap();
        sleep_ms(500);
        host.write_all(&framed(CMDLINE)).unwrap();
    });
    assert_stored(&t, code, &err);
}

/// 30,000 bytes of a 40,009-byte framed message, then the whole message:
/// the cut part and the resend are one line longer than the line limit,
/// but the resend is whole and its digest matches.
#[test]
fn long_cut_then_its_whole_framed_resend_is_stored() {
    let t = Tree::with_port();
    let end_len = |body: &str| vport_bootargs::wire::end_line(body.as_bytes()).len();
    let filler = |n: usize| format!("{CMDLINE} pad={}", "p".repeat(n));
    let n = 40_009 - 8 - 1 - CMDLINE.len() - 5 - end_len(&format!("cmdline:{}\n", filler(39_900)));
    let cmdline = filler(n);
    let whole = with_end_line(&format!("cmdline:{cmdline}\n"));
    assert_eq!(whole.len(), 40_009);
    let (code, err) = with_host(spawn(&t, &[]), &t.node("vport0p1"), |host| {
        host.write_all(&whole[..30_000]).unwrap();
        sleep_ms(300);
        host.write_all(&whole).unwrap();
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{cmdline}\n"));
    assert!(err.contains("the end line matches"), "{err}");
}

/// docs/protocol.md: the end line's N goes up to 262144, the message
/// limit; the end line itself is not part of the message.
#[test]
fn framed_body_of_the_whole_message_limit_is_stored() {
    for len in [262_100, 262_144] {
        let t = Tree::with_port();
        let head = format!("pubkey:{KEY}\n");
        let ignored = format!("x:{}\n", "y".repeat(60_000)).repeat(4);
        let rest = len - head.len() - ignored.len() - "cmdline:\n".len();
        let cmdline = format!("{CMDLINE} pad={}", "p".repeat(rest - CMDLINE.len() - 5));
        let body = format!("{head}{ignored}cmdline:{cmdline}\n");
        assert_eq!(body.len(), len);
        let _host = t.offer("vport0p1", &with_end_line(&body));
        let out = common::run_guarded(&mut t.fetch(&[]));
        assert_eq!(common::code(&out), 0, "{len}: {}", common::stderr(&out));
        assert_eq!(t.stored_cmdline().unwrap(), format!("{cmdline}\n"));
    }
}
