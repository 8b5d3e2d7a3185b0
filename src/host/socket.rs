//! The unix socket to QEMU: non-blocking connect, writes and waits with
//! deadlines, and what each errno means to the caller.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::deadline;
use crate::error::Error;

use super::session::WRITE_TIMEOUT;

/// Connects without blocking: a unix socket whose listen queue is full
/// answers EAGAIN at once instead of making us wait in connect().
///
/// connect() to a path that is not a socket (a regular file, a directory)
/// answers ECONNREFUSED, as a socket nobody listens on does; that is told
/// apart here and returned as ENOTSOCK, which is not retried and is
/// reported as what the path is.
pub(super) fn connect(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(UnixStream::from(fd)),
        Err(Errno::ECONNREFUSED) if not_a_socket(path).is_some() => Err(Errno::ENOTSOCK.into()),
        Err(e) => Err(e.into()),
    }
}

/// What is at `path` when it is there and is not a socket.
fn not_a_socket(path: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    (!meta.file_type().is_socket()).then(|| crate::files::kind(&meta.file_type()))
}

/// Errors that can go away by themselves: QEMU not up yet, restarting, or
/// busy with another client.
pub(super) fn retryable(e: &io::Error) -> bool {
    not_yet_reason(e).is_some()
}

/// Why a retryable connect failed, in a few words for the log.
pub(super) fn not_yet(e: &io::Error) -> String {
    not_yet_reason(e).map_or_else(|| e.to_string(), str::to_owned)
}

fn not_yet_reason(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error().map(Errno::from_raw)? {
        Errno::ENOENT | Errno::ENOTDIR => "no socket there: the VM is not running (yet?)",
        Errno::ECONNREFUSED => "connection refused (nothing listening yet)",
        Errno::EAGAIN => "no more connections accepted now (another sender connected?)",
        Errno::ECONNRESET => "connection reset",
        _ => return None,
    })
}

/// Errors that mean the peer went away while we wrote.
pub(super) fn dropped(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN)
    )
}

pub(super) fn connect_error(path: &Path, e: io::Error) -> Error {
    let display = path.display();
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ENOTDIR) => no_channel(path).unwrap_or(Error::NoSocket {
            path: path.to_owned(),
        }),
        Some(Errno::EACCES | Errno::EPERM) => Error::NoPermission {
            path: path.to_owned(),
            source: e,
        },
        Some(Errno::ENOTSOCK) => Error::Unavailable(format!(
            "{display} is {}, not a socket; are the VM's name and --socket-dir (or --socket) right?",
            not_a_socket(path).unwrap_or("not a socket")
        )),
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

/// For a missing `<dir>/<vm>.agent`: QEMU creates all of a domain's channel
/// sockets when it starts and libvirt removes them when it stops, so the
/// guest agent's socket `<dir>/<vm>.org.qemu.guest_agent.0` beside it means
/// the VM runs without a `*.vport` channel (CloudStack 4.11.3 and later).
/// Waiting would not help.
pub(super) fn no_channel(path: &Path) -> Option<Error> {
    use std::os::unix::fs::FileTypeExt;
    let vm = path.file_name()?.to_str()?.strip_suffix(".agent")?;
    let agent = path.with_file_name(format!("{vm}.org.qemu.guest_agent.0"));
    let is_socket = agent.metadata().is_ok_and(|m| m.file_type().is_socket());
    is_socket.then(|| Error::NoChannel {
        path: path.to_owned(),
        vm: vm.to_owned(),
        agent,
    })
}

pub(super) fn write_error(path: &Path, written: usize, total: usize, e: io::Error) -> Error {
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
pub(super) fn write_before(
    stream: &UnixStream,
    bytes: &[u8],
    deadline: Instant,
) -> (usize, io::Result<()>) {
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

// SIOCOUTQ is TIOCOUTQ on Linux (include/uapi/linux/sockios.h); on a unix
// stream socket it is what the peer has not read yet (skb memory, not
// bytes: 768 for a 159-byte message).
nix::ioctl_read_bad!(siocoutq, nix::libc::TIOCOUTQ, nix::libc::c_int);

/// What the peer (QEMU) has not read yet, as SIOCOUTQ counts it.
pub(super) fn unread(stream: &UnixStream) -> io::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: the fd is open for the call, and the ioctl writes one c_int.
    unsafe { siocoutq(stream.as_raw_fd(), &mut n) }.map_err(io::Error::from)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// How a wait for QEMU to take what was written ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    All,
    NotYet,
    /// The peer closed the connection first.
    Closed,
}

/// Nothing is left unread: the peer read it all, or it closed and the
/// kernel freed what it had not read, which SIOCOUTQ cannot tell apart. The
/// kernel marks the second: a peer that closes with bytes unread sets
/// ECONNRESET on this socket before freeing them (unix_release_sock).
fn taken_or_discarded(stream: &UnixStream) -> io::Result<Taken> {
    match stream.take_error()? {
        Some(e) if e.raw_os_error() == Some(Errno::ECONNRESET as i32) => Ok(Taken::Closed),
        Some(e) => Err(e),
        None => Ok(Taken::All),
    }
}

/// Waits until the peer has read everything written to `stream`, or
/// `deadline`. Each skb the peer consumes wakes the socket's writers
/// (unix_write_space, EPOLLOUT), so an edge-triggered epoll sleeps until
/// then; a check every RECHECK is only the safety net.
pub(super) fn wait_taken(stream: &UnixStream, deadline: Instant) -> io::Result<Taken> {
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(500);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let flags = EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
    epoll.add(stream.as_fd(), EpollEvent::new(flags, 0))?;
    loop {
        if unread(stream)? == 0 {
            return taken_or_discarded(stream);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Taken::NotYet);
        }
        let mut events = [EpollEvent::empty(); 1];
        let until = deadline.min(now + RECHECK);
        match epoll.wait(&mut events, deadline::epoll_timeout(until)) {
            Ok(1)
                if events[0]
                    .events()
                    .intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP) =>
            {
                // Hung up: what it did not read is gone, unless it read it all.
                return if unread(stream)? == 0 {
                    taken_or_discarded(stream)
                } else {
                    Ok(Taken::Closed)
                };
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sleeps in poll() until `fd` has one of `events` (or an error or hangup,
/// which the next read or write reports) or `deadline` passes: true if the
/// caller should try again, false at the deadline.
pub(super) fn wait_for(fd: BorrowedFd, events: PollFlags, deadline: Instant) -> io::Result<bool> {
    if Instant::now() >= deadline {
        return Ok(false);
    }
    match nix::poll::poll(
        &mut [PollFd::new(fd, events)],
        deadline::poll_timeout(deadline),
    ) {
        Ok(0) => Ok(Instant::now() < deadline),
        Ok(_) | Err(Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

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
        assert!(!retryable(&Errno::ENOTSOCK.into()));
    }

    #[test]
    fn missing_vport_socket_beside_the_guest_agents_means_no_channel() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s-4-VM.agent");
        let e = connect_error(&path, Errno::ENOENT.into());
        assert!(matches!(e, Error::NoSocket { .. }), "{e}");
        assert!(e.to_string().contains("not running"), "{e}");
        let agent = tmp.path().join("s-4-VM.org.qemu.guest_agent.0");
        let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
        let e = connect_error(&path, Errno::ENOENT.into());
        assert_eq!(e.exit_code(), exit::NOHOST);
        assert!(
            e.to_string().contains("no s-4-VM.vport channel")
                && e.to_string().contains(&*path.to_string_lossy()),
            "{e}"
        );
        assert!(no_channel(&path).is_some());
    }

    #[test]
    fn a_file_or_directory_at_the_socket_path_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("vm.agent");
        std::fs::write(&file, "").unwrap();
        for (path, what) in [
            (file.as_path(), "a regular file"),
            (tmp.path(), "a directory"),
        ] {
            let e = connect(path).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(Errno::ENOTSOCK as i32), "{path:?}");
            let msg = connect_error(path, e).to_string();
            assert!(msg.contains(&format!("is {what}, not a socket")), "{msg}");
        }
    }
}
