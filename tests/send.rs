//! `vport-bootargs send` against unix sockets served by the test itself, in
//! place of QEMU: the exact bytes on the wire, acks, reconnects, deadlines
//! and the exit code of every refusal.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::{message, stderr, with_end_line, Running, CMDLINE, GUARD, KEY};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vport_bootargs::wire::{ack_line, digest_hex};

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Host {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(host.key(), format!("{KEY}\n")).unwrap();
        host
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn socket(&self) -> PathBuf {
        self.path().join("s-1-VM.agent")
    }
    fn key(&self) -> PathBuf {
        self.path().join("id_rsa.pub.cloud")
    }
    fn listen(&self) -> UnixListener {
        UnixListener::bind(self.socket()).unwrap()
    }
    /// QEMU's side: listens on the socket and hands the first connection to `qemu`, in a thread.
    fn serve<T: Send + 'static>(
        &self,
        qemu: impl FnOnce(UnixStream) -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let listener = self.listen();
        thread::spawn(move || qemu(accept(&listener)))
    }
    /// `send --socket S --pubkey-file K` (unless `--no-pubkey`) plus `args`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"));
        c.arg("send").arg("--socket").arg(self.socket());
        if !args.contains(&"--no-pubkey") {
            c.arg("--pubkey-file").arg(self.key());
        }
        c.args(args);
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

/// What `send` writes for `cmdline` with the test key: CloudStack's lines
/// and the end line.
fn sent(cmdline: &str) -> Vec<u8> {
    with_end_line(&message(cmdline, Some(KEY)))
}

/// The sender's next connection, waited for at most GUARD (reads on it time out after GUARD).
fn accept(listener: &UnixListener) -> UnixStream {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::try_from(GUARD).unwrap()).unwrap();
    assert!(ready > 0, "the sender did not connect within {GUARD:?}");
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream
}

/// Everything the sender wrote before closing (patchviasocket's behaviour).
fn read_to_end(mut stream: UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    got
}

/// Reads up to the end of the `cmdline:` line; the sender stays connected.
fn read_message(stream: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(at) = text.find("cmdline:") {
            if text[at..].contains('\n') {
                return got;
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "sender closed before a whole message: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// After the sender has exited: no connection was ever made.
fn assert_nothing_connected(listener: &UnixListener) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(_) => panic!("the sender connected although it refused its input"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn percent_becomes_space_and_key_newline_is_dropped_on_the_wire() {
    let host = Host::new();
    let server = host.serve(read_to_end);
    let out = host.run(&["-p", "a%b%%c=d"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        server.join().unwrap(),
        with_end_line(&format!("pubkey:{KEY}\ncmdline:a b  c=d\n"))
    );
}

#[test]
fn raw_keeps_percent_and_no_pubkey_sends_only_the_cmdline() {
    let host = Host::new();
    let server = host.serve(read_to_end);
    let out = host.run(&["--raw", "--no-pubkey", "-p", "a%b"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.join().unwrap(), with_end_line("cmdline:a%b\n"));
}

#[test]
fn patchviasocket_arguments_name_the_agent_socket() {
    let host = Host::new();
    let server = host.serve(read_to_end);
    let out = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .args(["send", "-n", "s-1-VM", "-p", CMDLINE, "--socket-dir"])
        .arg(host.path())
        .arg("--pubkey-file")
        .arg(host.key())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.join().unwrap(), sent(CMDLINE));
}

#[test]
fn missing_key_file_is_exit_66_and_nothing_is_sent() {
    let host = Host::new();
    fs::remove_file(host.key()).unwrap();
    let listener = host.listen();
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&host.key().display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_nothing_connected(&listener);
}

#[test]
fn empty_key_file_is_exit_66_and_nothing_is_sent() {
    let host = Host::new();
    fs::write(host.key(), "\n").unwrap();
    let listener = host.listen();
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    assert_nothing_connected(&listener);
}

#[test]
fn key_file_that_is_not_one_key_is_exit_65_and_nothing_is_sent() {
    let host = Host::new();
    let listener = host.listen();
    fs::write(host.key(), format!("{KEY}\ncmdline:evil=1\n")).unwrap();
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than one line"),
        "{}",
        stderr(&out)
    );
    fs::write(host.key(), "hello\n").unwrap();
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert_nothing_connected(&listener);
}

#[test]
fn cmdline_with_a_newline_or_nothing_is_a_usage_error() {
    let host = Host::new();
    let listener = host.listen();
    for bad in ["a=1\ncmdline:b=2", "%%%", ""] {
        let out = host.run(&["-p", bad]);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {}", stderr(&out));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .args(["send", "-n", "../x", "-p", CMDLINE])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert_nothing_connected(&listener);
}

#[test]
fn missing_socket_is_exit_68_naming_it() {
    let host = Host::new();
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(68), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&host.socket().display().to_string()), "{err}");
    assert!(err.contains("not running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// CloudStack 4.11.3 and later define only the guest agent's channel: its
/// socket is there, ours is not. `send` says so, and with --wait-ack does
/// not wait for a channel that will never come (exit 68, not 69 at the
/// deadline).
#[test]
fn vm_with_only_the_guest_agents_socket_has_no_vport_channel_exit_68() {
    let host = Host::new();
    let _agent = UnixListener::bind(host.path().join("s-1-VM.org.qemu.guest_agent.0")).unwrap();
    for wait in [None, Some("60")] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"));
        c.args(["send", "-n", "s-1-VM", "--no-pubkey", "-p", CMDLINE])
            .arg("--socket-dir")
            .arg(host.path());
        if let Some(secs) = wait {
            c.args(["--wait-ack", secs]);
        }
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(68), "{wait:?}: {err}");
        assert!(err.contains("no s-1-VM.vport channel"), "{err}");
        assert!(err.contains(&host.socket().display().to_string()), "{err}");
    }
}

#[test]
fn refused_connection_is_exit_69_naming_the_socket() {
    let host = Host::new();
    // The socket file stays after its listener is gone: connect() is refused.
    drop(host.listen());
    let out = host.run(&["-p", CMDLINE]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains(&host.socket().display().to_string()), "{err}");
}

#[test]
fn permission_denied_is_exit_77_even_with_wait_ack() {
    let host = Host::new();
    let _listener = host.listen();
    let euid = fs::metadata("/proc/self").unwrap().uid();
    let out = if euid == 0 {
        // root passes every permission check: run the sender as nobody,
        // from a copy it can execute, against the root-only (0700) dir.
        let bin_dir = tempfile::tempdir().unwrap();
        fs::set_permissions(bin_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = bin_dir.path().join("vport-bootargs");
        fs::copy(env!("CARGO_BIN_EXE_vport-bootargs"), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(host.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["send", "--no-pubkey", "--wait-ack", "30", "-p", CMDLINE])
            .arg("--socket")
            .arg(host.socket())
            .output()
            .unwrap()
    } else {
        fs::set_permissions(host.socket(), fs::Permissions::from_mode(0o000)).unwrap();
        host.run(&["--no-pubkey", "--wait-ack", "30", "-p", CMDLINE])
    };
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&host.socket().display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn matching_ack_ends_wait_ack_with_exit_0() {
    let host = Host::new();
    let server = host.serve(|mut s| {
        let got = read_message(&mut s);
        s.write_all(ack_line(CMDLINE).as_bytes()).unwrap();
        // Held open: the sender must end on the ack, not on our close.
        let rest = read_to_end(s);
        (got, rest)
    });
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (got, rest) = server.join().unwrap();
    assert_eq!(got, sent(CMDLINE));
    assert!(rest.is_empty(), "sent again on the same connection");
    assert!(stderr(&out).contains("acknowledged"), "{}", stderr(&out));
}

#[test]
fn ack_is_matched_against_the_cmdline_after_percent_substitution() {
    let host = Host::new();
    let server = host.serve(|mut s| {
        read_message(&mut s);
        // Acked in pieces, with a CRLF, after an unrelated line.
        let ack = ack_line("a=1 b=2");
        s.write_all(b"hello\r\n").unwrap();
        s.write_all(&ack.as_bytes()[..10]).unwrap();
        thread::sleep(Duration::from_millis(50));
        s.write_all(ack.trim_end().as_bytes()[10..].as_ref())
            .unwrap();
        s.write_all(b"\r\n").unwrap();
        read_to_end(s);
    });
    let out = host.run(&["-p", "a=1%b=2", "--wait-ack", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    server.join().unwrap();
}

#[test]
fn stale_ack_is_logged_and_waiting_goes_on() {
    let host = Host::new();
    let server = host.serve(|mut s| {
        s.write_all(ack_line("an older cmdline").as_bytes())
            .unwrap();
        read_message(&mut s);
        s.write_all(ack_line(CMDLINE).as_bytes()).unwrap();
        read_to_end(s);
    });
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&digest_hex(b"an older cmdline")), "{err}");
    server.join().unwrap();
}

#[test]
fn only_wrong_acks_until_the_deadline_is_exit_76() {
    let host = Host::new();
    let server = host.serve(|mut s| {
        read_message(&mut s);
        s.write_all(ack_line("something else").as_bytes()).unwrap();
        read_to_end(s);
    });
    // 3 s, not 1: the wrong ack must come back before the deadline even on
    // a loaded machine.
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "3"]);
    assert_eq!(out.status.code(), Some(76), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap();
    assert!(last.contains(&digest_hex(b"something else")), "{err}");
    assert!(last.contains(&digest_hex(CMDLINE.as_bytes())), "{err}");
    server.join().unwrap();
}

#[test]
fn dropped_connection_is_made_again_and_the_message_resent() {
    let host = Host::new();
    let listener = host.listen();
    let server = thread::spawn(move || {
        // First connection: read the message, then drop it, as QEMU does
        // when it restarts (the bytes are lost).
        let mut first = accept(&listener);
        let a = read_message(&mut first);
        drop(first);
        let mut second = accept(&listener);
        let b = read_message(&mut second);
        second.write_all(ack_line(CMDLINE).as_bytes()).unwrap();
        read_to_end(second);
        (a, b)
    });
    let opts = vport_bootargs::host::SendOptions {
        socket: host.socket(),
        message: vport_bootargs::wire::Message {
            cmdline: CMDLINE.into(),
            pubkey: Some(KEY.into()),
        },
        wait_ack: Some(Duration::from_secs(30)),
        wait_taken: Duration::from_secs(4),
        retry: vport_bootargs::host::RETRY_INTERVAL,
    };
    let outcome = vport_bootargs::host::send(&opts).unwrap();
    assert!(
        matches!(
            outcome,
            vport_bootargs::host::Outcome::Acked { sends: 2, .. }
        ),
        "{outcome:?}"
    );
    let (a, b) = server.join().unwrap();
    assert_eq!(a, sent(CMDLINE));
    assert_eq!(b, sent(CMDLINE));
}

#[test]
fn socket_that_appears_late_still_gets_the_message() {
    let host = Host::new();
    let mut send = Running::spawn(&mut host.command(&["-p", CMDLINE, "--wait-ack", "60"]));
    // QEMU not started yet: the sender finds no socket and says so; then
    // QEMU listens.
    send.wait_for_line("no socket there");
    let listener = host.listen();
    let mut s = accept(&listener);
    let got = read_message(&mut s);
    s.write_all(ack_line(CMDLINE).as_bytes()).unwrap();
    let out = send.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(got, sent(CMDLINE));
}

#[test]
fn guest_that_opens_late_gets_what_was_sent_while_connected() {
    // QEMU leaves the host's bytes in the socket until the guest opens its
    // port: the server here reads nothing for a second, then reads and acks.
    let host = Host::new();
    let server = host.serve(|mut s| {
        thread::sleep(Duration::from_secs(1));
        let got = read_message(&mut s);
        s.write_all(ack_line(CMDLINE).as_bytes()).unwrap();
        read_to_end(s);
        got
    });
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.join().unwrap(), sent(CMDLINE));
}

#[test]
fn no_socket_until_the_deadline_is_exit_69_saying_what_was_tried() {
    let host = Host::new();
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "1"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap();
    assert!(last.contains(&host.socket().display().to_string()), "{err}");
    assert!(last.contains("connection attempts: "), "{err}");
    assert!(last.contains("messages sent: 0"), "{err}");
    assert!(last.contains("no socket there"), "{err}");
}

#[test]
fn silent_guest_until_the_deadline_is_exit_69() {
    let host = Host::new();
    let server = host.serve(|mut s| {
        let got = read_message(&mut s);
        read_to_end(s);
        got
    });
    let out = host.run(&["-p", CMDLINE, "--wait-ack", "1"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("messages sent: 1"), "{err}");
    assert!(err.contains("no ack came back"), "{err}");
    assert_eq!(server.join().unwrap(), sent(CMDLINE));
}

/// QEMU's side holding the connection without reading: it waits until the
/// message is queued to it (poll, never a read), then hands the stream to
/// `then`.
fn hold_unread(then: impl FnOnce(UnixStream) + Send + 'static) -> impl FnOnce(UnixStream) {
    move |stream: UnixStream| {
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::try_from(GUARD).unwrap()).unwrap();
        assert!(ready > 0, "nothing was written within {GUARD:?}");
        then(stream)
    }
}

#[test]
fn message_qemu_never_takes_is_exit_75_after_wait_taken() {
    let host = Host::new();
    // A guest that does not hold its port: QEMU accepts, reads nothing, and
    // stays until send has given up.
    let (done, gave_up) = std::sync::mpsc::channel::<()>();
    let qemu = host.serve(hold_unread(move |stream| {
        let _ = gave_up.recv_timeout(GUARD);
        drop(stream);
    }));
    let out = host.run(&["--wait-taken", "0.5", "-p", CMDLINE]);
    drop(done);
    qemu.join().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
}

#[test]
fn qemu_closing_before_taking_the_message_is_exit_69() {
    let host = Host::new();
    // The VM stops while the message waits in QEMU's socket: QEMU closes
    // with the bytes unread.
    let qemu = host.serve(hold_unread(drop));
    let out = host.run(&["--wait-taken", "30", "-p", CMDLINE]);
    qemu.join().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("QEMU closed the connection before taking the message"),
        "{}",
        stderr(&out)
    );
}

/// The guest stores a framed body byte for byte, so `send` sends any
/// cmdline or key the guest can store, prefixes inside values included.
#[test]
fn cmdline_and_key_comment_holding_the_prefixes_are_sent_as_they_are() {
    let host = Host::new();
    let (kind, base64) = KEY.split_once(' ').unwrap();
    let base64 = base64.split(' ').next().unwrap();
    let key = format!("{kind} {base64} cloud@mgmt cmdline:keyring");
    fs::write(host.key(), format!("{key}\n")).unwrap();
    let cmdline = "template=domP note=pubkey:and_cmdline:inside zone=1";
    let server = host.serve(read_to_end);
    let out = host.run(&["--raw", "-p", cmdline]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        server.join().unwrap(),
        with_end_line(&message(cmdline, Some(&key)))
    );
}
