//! Host side: `vport-bootargs send`, in place of CloudStack's
//! scripts/vm/hypervisor/kvm/patchviasocket.py.
//!
//! QEMU is the server on the VM's socket (libvirt `<source mode='bind'>`),
//! and what it does with the host's bytes shapes this module (measured, see
//! CONTEXT.md section 3):
//! - it hands them to the guest only once the guest holds the port open, and
//!   leaves them in the socket until then;
//! - if the host disconnects before that, they are dropped.
//!
//! patchviasocket writes and closes at once, so it delivers only when the
//! guest already holds the port open. With `--wait-ack` we stay connected
//! instead, so the bytes wait in the socket until the guest opens the port,
//! and we stop when the guest's `ack:<sha256 of the cmdline>` line comes back.
//! A connection that cannot be made yet (no socket, refused) or that drops
//! (QEMU restarted) is made again every [`RETRY_INTERVAL`], and the whole
//! message is sent again on each new connection.
//!
//! The pure parts (the `%` rule, checking and encoding the message, picking
//! acks out of the guest's bytes) know nothing of sockets and are tested with
//! plain values.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::cli::SendArgs;
use crate::error::{exit, Error, Result};
use crate::protocol::{self, is_openssh_public_key, Message, ACK_PREFIX, CMDLINE_PREFIX, MAX_LINE};
use crate::{debug, info, warn};

/// Pause between connection attempts while waiting for an ack: short, since
/// the guest may be about to read, and a sleep, never a busy loop.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Without `--wait-ack`: how long QEMU may take to accept the bytes. They
/// normally fit in the socket's buffer and the write returns at once.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What QEMU passes on from a host that writes and closes at once.
const CLOSE_AT_ONCE_LIMIT: usize = 4096;
/// Longest line from the guest we look at; an ack is 68 bytes.
const MAX_REPLY_LINE: usize = 1024;

/// What `send` does, with the command line resolved.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub socket: PathBuf,
    pub message: Message,
    /// `None`: send and close (patchviasocket). `Some`: wait this long for
    /// the guest's ack, reconnecting and resending as needed.
    pub wait_ack: Option<Duration>,
    pub retry: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written and closed; nothing is known about the guest.
    Sent { bytes: usize },
    /// The guest acknowledged this cmdline.
    Acked {
        after: Duration,
        /// Connections on which the message was sent.
        sends: u32,
    },
}

pub fn run(args: &SendArgs) -> Result<i32> {
    send(&options(args)?)?;
    Ok(exit::OK)
}

/// Resolves the command line: socket path, cmdline text, public key.
pub fn options(args: &SendArgs) -> Result<SendOptions> {
    let socket = match (&args.socket, &args.vm) {
        (Some(path), _) => path.clone(),
        (None, Some(vm)) => socket_for(&args.socket_dir, vm)?,
        (None, None) => return Err(Error::Usage("send needs -n VM or --socket PATH".into())),
    };
    let cmdline = if args.raw {
        args.cmdline.clone()
    } else {
        spaces_for_percent(&args.cmdline)
    };
    check_cmdline(&cmdline).map_err(|problem| {
        let start: String = cmdline.chars().take(60).collect();
        let more = if start.len() < cmdline.len() {
            "..."
        } else {
            ""
        };
        Error::Usage(format!("-p/--cmdline {start:?}{more}: {problem}"))
    })?;
    let pubkey = if args.no_pubkey {
        None
    } else {
        Some(read_pubkey(&args.pubkey_file)?)
    };
    Ok(SendOptions {
        socket,
        message: Message { cmdline, pubkey },
        wait_ack: args.wait_ack.map(Duration::from_secs_f64),
        retry: RETRY_INTERVAL,
    })
}

/// `<dir>/<vm>.agent`, the path CloudStack's libvirt XML binds QEMU to.
pub fn socket_for(dir: &Path, vm: &str) -> Result<PathBuf> {
    if vm.is_empty() || vm == "." || vm == ".." || vm.contains('/') {
        return Err(Error::Usage(format!(
            "-n/--name {vm:?} is not a VM name (empty, or a path); use --socket PATH for a path"
        )));
    }
    Ok(dir.join(format!("{vm}.agent")))
}

/// The Java side replaces spaces with `%` to pass the cmdline as one
/// argument; patchviasocket.py turns every `%` back into a space.
pub fn spaces_for_percent(text: &str) -> String {
    text.replace('%', " ")
}

/// What the guest would refuse or misread in a cmdline (protocol::Decoder):
/// refused here, before anything is sent.
pub fn check_cmdline(cmdline: &str) -> std::result::Result<(), String> {
    if cmdline.trim().is_empty() {
        return Err("the cmdline is empty".into());
    }
    if let Some(c) = cmdline.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(format!(
            "contains {c:?}; the cmdline must be one line without NUL bytes"
        ));
    }
    let limit = MAX_LINE - CMDLINE_PREFIX.len();
    if cmdline.len() > limit {
        return Err(format!(
            "is {} bytes long; the guest accepts at most {limit}",
            cmdline.len()
        ));
    }
    Ok(())
}

/// A key file's text as it goes on the `pubkey:` line: its trailing newline
/// dropped (patchviasocket.py kept it, which put an empty line between
/// `pubkey:` and `cmdline:`), and only one OpenSSH public key, since the
/// guest refuses the whole message over a bad pubkey line.
pub fn pubkey_line(text: &str) -> std::result::Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.contains(['\n', '\r', '\0']) {
        return Err("holds more than one line; it must hold one OpenSSH public key".into());
    }
    if !is_openssh_public_key(key) {
        return Err("is not an OpenSSH public key (\"<type> <base64> [comment]\")".into());
    }
    Ok(key.to_owned())
}

/// Reads the public key file: missing, unreadable or empty is EX_NOINPUT,
/// as patchviasocket.py refused to send without a key; a file holding
/// something else than one key is EX_DATAERR.
pub fn read_pubkey(path: &Path) -> Result<String> {
    let no_input = |problem: String| Error::NoInput {
        what: "public key file",
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        no_input(match e.kind() {
            io::ErrorKind::NotFound => "does not exist; create it or pass --no-pubkey".into(),
            _ => format!("cannot be read: {e}"),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|_| Error::BadInput {
        what: "public key file",
        path: path.to_owned(),
        problem: "is not UTF-8 text".into(),
    })?;
    if text.trim().is_empty() {
        return Err(no_input(
            "is empty; put the host's public key in it or pass --no-pubkey".into(),
        ));
    }
    pubkey_line(&text).map_err(|problem| Error::BadInput {
        what: "public key file",
        path: path.to_owned(),
        problem,
    })
}

/// The bytes on the wire, CloudStack's format: `pubkey:<key>\ncmdline:<text>\n`,
/// or only the cmdline line without a key.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = String::new();
    if let Some(key) = &message.pubkey {
        out.push_str(protocol::PUBKEY_PREFIX);
        out.push_str(key);
        out.push('\n');
    }
    out.push_str(CMDLINE_PREFIX);
    out.push_str(&message.cmdline);
    out.push('\n');
    out.into_bytes()
}

/// One line the guest wrote back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ack:<hex>`, the hex lowercased.
    Ack(String),
    /// Anything else (its start, for the log).
    Other(String),
}

/// Splits the guest's bytes into lines, however they are cut across reads,
/// and picks out the acks. A line longer than [`MAX_REPLY_LINE`] is skipped
/// up to its newline without being buffered.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    partial: Vec<u8>,
    skipping: bool,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ended) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.skipping {
                self.partial.extend_from_slice(body);
                if self.partial.len() > MAX_REPLY_LINE {
                    self.partial.clear();
                    self.skipping = true;
                    replies.push(Reply::Other(format!(
                        "(a line longer than {MAX_REPLY_LINE} bytes)"
                    )));
                }
            }
            if ended {
                if !self.skipping {
                    replies.push(classify(&std::mem::take(&mut self.partial)));
                }
                self.skipping = false;
            }
        }
        replies
    }
}

fn classify(line: &[u8]) -> Reply {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    match text.strip_prefix(ACK_PREFIX) {
        Some(hex) => Reply::Ack(hex.trim().to_ascii_lowercase()),
        None => Reply::Other(text.chars().take(40).collect()),
    }
}

/// Sends the message; with `wait_ack`, until the guest acknowledges it.
pub fn send(opts: &SendOptions) -> Result<Outcome> {
    let bytes = encode(&opts.message);
    match opts.wait_ack {
        None => send_once(&opts.socket, &bytes),
        Some(wait) => send_until_acked(opts, &bytes, wait),
    }
}

/// patchviasocket's behaviour: connect, write, close.
fn send_once(path: &Path, bytes: &[u8]) -> Result<Outcome> {
    if bytes.len() > CLOSE_AT_ONCE_LIMIT {
        // Measured in tests/vm.rs: a host that closes at once gets one page
        // through QEMU, even to a guest holding its port open.
        warn!(
            "the message is {} bytes; closing at once, only the first {CLOSE_AT_ONCE_LIMIT} reach the guest: use --wait-ack",
            bytes.len()
        );
    }
    let stream = connect(path).map_err(|e| connect_error(path, e))?;
    let (written, result) = write_before(&stream, bytes, Instant::now() + WRITE_TIMEOUT);
    result.map_err(|e| write_error(path, written, bytes.len(), e))?;
    info!(
        "sent {} bytes to {} and closed; not waiting for an ack (QEMU drops them if the guest does not hold its port open: see --wait-ack)",
        bytes.len(),
        path.display()
    );
    Ok(Outcome::Sent { bytes: bytes.len() })
}

/// What was tried, for the message at the deadline.
#[derive(Debug, Default)]
struct Tries {
    attempts: u32,
    sends: u32,
    wrong_acks: u32,
    last_wrong: Option<String>,
    last: String,
}

impl Tries {
    /// Notes why the last attempt ended; logged at info when it differs
    /// from the previous reason, so retrying every 200 ms does not flood
    /// the log.
    fn ended(&mut self, why: String, path: &Path, retry: Duration) {
        if why != self.last {
            info!(
                "{}: {why}; trying again every {} ms until the deadline",
                path.display(),
                retry.as_millis()
            );
        } else {
            debug!("{}: {why} (attempt {})", path.display(), self.attempts);
        }
        self.last = why;
    }
}

/// How one connection ended.
enum Conversation {
    Acked,
    Dropped(String),
    Deadline(String),
}

fn send_until_acked(opts: &SendOptions, bytes: &[u8], wait: Duration) -> Result<Outcome> {
    let path = opts.socket.as_path();
    let start = Instant::now();
    let deadline = start + wait;
    let expected = protocol::sha256_hex(opts.message.cmdline.as_bytes());
    info!(
        "sending to {}; waiting up to {:.1} s for the guest's ack:{expected}",
        path.display(),
        wait.as_secs_f64()
    );
    let mut tries = Tries::default();
    loop {
        tries.attempts += 1;
        match connect(path) {
            Ok(stream) => match converse(&stream, bytes, &expected, deadline, &mut tries, path)? {
                Conversation::Acked => {
                    let after = start.elapsed();
                    info!(
                        "the guest acknowledged the cmdline after {:.2} s ({} send(s))",
                        after.as_secs_f64(),
                        tries.sends
                    );
                    return Ok(Outcome::Acked {
                        after,
                        sends: tries.sends,
                    });
                }
                Conversation::Dropped(why) => tries.ended(why, path, opts.retry),
                Conversation::Deadline(why) => {
                    tries.last = why;
                    break;
                }
            },
            Err(e) if retryable(&e) => tries.ended(not_yet(&e), path, opts.retry),
            Err(e) => return Err(connect_error(path, e)),
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(opts.retry.min(deadline - now));
    }
    Err(deadline_error(path, wait, &expected, &tries))
}

/// One connection: send the whole message, then read the guest's lines
/// until the matching ack, the peer closing, or the deadline. An ack with
/// another hash is logged and waiting goes on: it can be a stale ack of an
/// earlier message, written while no host was connected.
fn converse(
    stream: &UnixStream,
    bytes: &[u8],
    expected: &str,
    deadline: Instant,
    tries: &mut Tries,
    path: &Path,
) -> Result<Conversation> {
    let (written, result) = write_before(stream, bytes, deadline);
    match result {
        Ok(()) => {
            tries.sends += 1;
            debug!("sent {} bytes to {}", bytes.len(), path.display());
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Ok(Conversation::Deadline(format!(
                "connected, but QEMU took only {written} of {} bytes",
                bytes.len()
            )))
        }
        Err(e) if dropped(&e) => {
            return Ok(Conversation::Dropped(format!(
                "the connection was closed after {written} of {} bytes ({e})",
                bytes.len()
            )))
        }
        Err(e) => return Err(Error::io("cannot write to", path, e)),
    }
    use io::ErrorKind::{Interrupted, WouldBlock};
    const CLOSED: &str = "the connection was closed by the other end (QEMU stopped or restarted?)";
    let mut scanner = ReplyScanner::new();
    let mut buf = [0u8; 4096];
    loop {
        if !wait_for(stream.as_fd(), PollFlags::POLLIN, deadline)
            .map_err(|e| Error::io("cannot wait on", path, e))?
        {
            return Ok(Conversation::Deadline(
                "connected and sent the message; no ack came back (the guest has not read it, or did not answer)"
                    .into(),
            ));
        }
        let n = match (&*stream).read(&mut buf) {
            Ok(n) if n > 0 => n,
            Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => continue,
            Ok(_) => return Ok(Conversation::Dropped(CLOSED.into())),
            Err(e) if dropped(&e) => return Ok(Conversation::Dropped(CLOSED.into())),
            Err(e) => return Ok(Conversation::Dropped(format!("reading failed: {e}"))),
        };
        for reply in scanner.feed(&buf[..n]) {
            match reply {
                Reply::Ack(hash) if hash == expected => return Ok(Conversation::Acked),
                Reply::Ack(hash) => {
                    warn!(
                        "the guest acknowledged another cmdline (sha256 {hash}, this one is {expected}); a stale ack? still waiting"
                    );
                    tries.wrong_acks += 1;
                    tries.last_wrong = Some(hash);
                }
                Reply::Other(start) => debug!("ignored a line from the guest: {start:?}"),
            }
        }
    }
}

fn deadline_error(path: &Path, wait: Duration, expected: &str, tries: &Tries) -> Error {
    let secs = wait.as_secs_f64();
    if let Some(wrong) = &tries.last_wrong {
        return Error::Protocol(format!(
            "{}: within {secs} s the guest acknowledged only other cmdlines (wrong acks: {}, the last for sha256 {wrong}), never this one (sha256 {expected})",
            path.display(),
            tries.wrong_acks
        ));
    }
    Error::Unavailable(format!(
        "{}: no ack from the guest within {secs} s (connection attempts: {}, messages sent: {}; last: {})",
        path.display(),
        tries.attempts,
        tries.sends,
        tries.last
    ))
}

/// Connects without blocking: a unix socket whose listen queue is full
/// answers EAGAIN at once instead of making us wait in connect().
fn connect(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Errors that can go away by themselves: QEMU not up yet, restarting, or
/// busy with another client.
fn retryable(e: &io::Error) -> bool {
    not_yet_reason(e).is_some()
}

/// Why a retryable connect failed, in a few words for the log.
fn not_yet(e: &io::Error) -> String {
    not_yet_reason(e).map_or_else(|| e.to_string(), str::to_owned)
}

fn not_yet_reason(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error().map(Errno::from_raw)? {
        Errno::ENOENT | Errno::ENOTDIR => "no socket there (VM not started yet?)",
        Errno::ECONNREFUSED => "connection refused (nothing listening yet)",
        Errno::EAGAIN => "no more connections accepted now (another sender connected?)",
        Errno::ECONNRESET => "connection reset",
        _ => return None,
    })
}

/// Errors that mean the peer went away while we wrote.
fn dropped(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN)
    )
}

fn connect_error(path: &Path, e: io::Error) -> Error {
    let display = path.display();
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ENOTDIR) => Error::NoSocket {
            path: path.to_owned(),
        },
        Some(Errno::EACCES | Errno::EPERM) => Error::NoPermission {
            path: path.to_owned(),
            source: e,
        },
        Some(Errno::ECONNREFUSED) => Error::Unavailable(format!(
            "connection refused on {display}: nothing listens there (VM not running?)"
        )),
        Some(Errno::EAGAIN) => Error::Unavailable(format!(
            "{display} accepts no more connections now (another sender connected?)"
        )),
        Some(Errno::ENAMETOOLONG) => Error::Usage(format!(
            "socket path {display} is too long for a unix socket address (at most 107 bytes)"
        )),
        _ => Error::io("cannot connect to", path, e),
    }
}

fn write_error(path: &Path, written: usize, total: usize, e: io::Error) -> Error {
    let display = path.display();
    if e.kind() == io::ErrorKind::TimedOut {
        Error::Unavailable(format!(
            "{display}: QEMU took only {written} of {total} bytes within {} s",
            WRITE_TIMEOUT.as_secs()
        ))
    } else if dropped(&e) {
        Error::Unavailable(format!(
            "{display}: the connection was closed after {written} of {total} bytes ({e})"
        ))
    } else {
        Error::io("cannot write to", path, e)
    }
}

/// Writes all of `bytes` to the non-blocking stream, waiting for room until
/// `deadline` (an error of kind TimedOut then). Returns how much was written
/// too, for the error message. MSG_NOSIGNAL: a closed peer is EPIPE, not a
/// signal.
fn write_before(stream: &UnixStream, bytes: &[u8], deadline: Instant) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match socket::send(
            stream.as_raw_fd(),
            &bytes[written..],
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => match wait_for(stream.as_fd(), PollFlags::POLLOUT, deadline) {
                Ok(true) => {}
                Ok(false) => return (written, Err(io::ErrorKind::TimedOut.into())),
                Err(e) => return (written, Err(e)),
            },
            Err(e) => return (written, Err(e.into())),
        }
    }
    (written, Ok(()))
}

/// Sleeps in poll() until `fd` has one of `events` (or an error or hangup,
/// which the next read or write reports) or `deadline` passes: true if the
/// caller should try again, false at the deadline.
fn wait_for(fd: BorrowedFd, events: PollFlags, deadline: Instant) -> io::Result<bool> {
    let now = Instant::now();
    if now >= deadline {
        return Ok(false);
    }
    // Rounded up: a timeout rounded down to 0 ms would spin near the deadline.
    let ms = (deadline - now).as_micros().div_ceil(1000);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut [PollFd::new(fd, events)], timeout) {
        Ok(0) => Ok(Instant::now() < deadline),
        Ok(_) | Err(Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@host";

    #[test]
    fn percent_becomes_space_as_in_patchviasocket() {
        assert_eq!(
            spaces_for_percent("type=secstorage%name=s-1-VM%%x"),
            "type=secstorage name=s-1-VM  x"
        );
    }

    #[test]
    fn wire_format_is_pubkey_then_cmdline() {
        let m = Message {
            cmdline: "a=1 b=2".into(),
            pubkey: Some(KEY.into()),
        };
        assert_eq!(
            encode(&m),
            format!("pubkey:{KEY}\ncmdline:a=1 b=2\n").into_bytes()
        );
        let m = Message { pubkey: None, ..m };
        assert_eq!(encode(&m), b"cmdline:a=1 b=2\n");
    }

    #[test]
    fn socket_is_named_after_the_vm() {
        assert_eq!(
            socket_for(Path::new("/var/lib/libvirt/qemu"), "s-1-VM").unwrap(),
            Path::new("/var/lib/libvirt/qemu/s-1-VM.agent")
        );
        for bad in ["", ".", "..", "../etc/x", "a/b"] {
            assert!(
                matches!(socket_for(Path::new("/d"), bad), Err(Error::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_file_trailing_newline_is_dropped() {
        assert_eq!(pubkey_line(&format!("{KEY}\n")).unwrap(), KEY);
        assert_eq!(pubkey_line(&format!("{KEY}\r\n\n")).unwrap(), KEY);
    }

    #[test]
    fn key_file_with_two_lines_or_no_key_is_refused() {
        assert!(pubkey_line(&format!("{KEY}\n{KEY}\n"))
            .unwrap_err()
            .contains("more than one line"));
        assert!(pubkey_line("cmdline:evil=1\n")
            .unwrap_err()
            .contains("not an OpenSSH public key"));
        assert_eq!(pubkey_line(" \n").unwrap_err(), "is empty");
    }

    #[test]
    fn cmdline_the_guest_would_refuse_is_refused() {
        assert!(check_cmdline("a=1 b=2").is_ok());
        assert!(check_cmdline("   ").is_err());
        assert!(check_cmdline("a=1\ncmdline:b=2").is_err());
        assert!(check_cmdline("a=1\rb").is_err());
        assert!(check_cmdline("a\0b").is_err());
        let limit = MAX_LINE - CMDLINE_PREFIX.len();
        assert!(check_cmdline(&"x".repeat(limit)).is_ok());
        assert!(check_cmdline(&"x".repeat(limit + 1)).is_err());
    }

    #[test]
    fn replies_are_acks_or_ignored_lines() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            s.feed(b"hello\r\nack:ABC\nack:de"),
            vec![Reply::Other("hello".into()), Reply::Ack("abc".into())]
        );
        assert_eq!(s.feed(b"f\r\n"), vec![Reply::Ack("def".into())]);
    }

    #[test]
    fn overlong_reply_line_is_skipped_to_its_newline() {
        let mut s = ReplyScanner::new();
        let long = vec![b'x'; MAX_REPLY_LINE + 10];
        let replies = s.feed(&long);
        assert!(matches!(replies.as_slice(), [Reply::Other(_)]));
        assert!(s.partial.is_empty());
        assert_eq!(s.feed(b"xxx\nack:1\n"), vec![Reply::Ack("1".into())]);
    }

    #[test]
    fn connect_errors_map_to_distinct_exit_codes() {
        let p = Path::new("/run/x.agent");
        let code = |errno: Errno| connect_error(p, io::Error::from(errno)).exit_code();
        assert_eq!(code(Errno::ENOENT), exit::NOHOST);
        assert_eq!(code(Errno::ECONNREFUSED), exit::UNAVAILABLE);
        assert_eq!(code(Errno::EACCES), exit::NOPERM);
        assert_eq!(code(Errno::ENAMETOOLONG), exit::USAGE);
        assert!(retryable(&Errno::ENOENT.into()));
        assert!(retryable(&Errno::ECONNREFUSED.into()));
        assert!(!retryable(&Errno::EACCES.into()));
    }

    #[test]
    fn wrong_acks_at_the_deadline_are_a_protocol_error() {
        let p = Path::new("/run/x.agent");
        let mut tries = Tries {
            attempts: 3,
            sends: 1,
            last: "connected".into(),
            ..Tries::default()
        };
        let e = deadline_error(p, Duration::from_secs(1), "ab", &tries);
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().contains("connection attempts: 3"), "{e}");
        tries.wrong_acks = 1;
        tries.last_wrong = Some("cd".into());
        let e = deadline_error(p, Duration::from_secs(1), "ab", &tries);
        assert_eq!(e.exit_code(), exit::PROTOCOL);
        assert!(e.to_string().contains("sha256 cd"), "{e}");
    }

    proptest::proptest! {
        /// Whatever passes the host's checks, the guest's decoder reads back
        /// as the same message: the two sides agree on the format.
        #[test]
        fn what_is_sent_is_what_the_guest_decodes(
            cmdline in "[ -~]{1,200}",
            key in proptest::option::of(proptest::strategy::Just(KEY)),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            proptest::prop_assume!(check_cmdline(&cmdline).is_ok());
            let m = Message { cmdline, pubkey: key.map(str::to_owned) };
            let bytes = encode(&m);
            let mut d = protocol::Decoder::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                d.feed(&bytes[start..cut]).unwrap();
                start = cut;
            }
            proptest::prop_assert_eq!(d.take(), Some(m));
        }

        #[test]
        fn replies_do_not_depend_on_read_boundaries(
            lines in proptest::collection::vec("(ack:)?[0-9a-f]{0,8}", 0..6),
            cuts in proptest::collection::vec(0usize..80, 0..8),
        ) {
            let bytes: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let whole = ReplyScanner::new().feed(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut s = ReplyScanner::new();
            let mut split = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                split.extend(s.feed(&bytes[start..cut]));
                start = cut;
            }
            proptest::prop_assert_eq!(whole, split);
        }
    }
}
