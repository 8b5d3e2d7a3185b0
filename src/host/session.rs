//! One `send`: connect, write the message, and either close
//! (patchviasocket's way) or wait for the guest's ack, reconnecting and
//! resending until the deadline.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::error::{Error, Result};
use crate::secs::{Millis, Secs};
use crate::wire::{digest_hex, encode, Message, Reply, ReplyScanner};
use crate::{deadline, debug, info, warn};

use super::socket::{
    connect, connect_error, dropped, no_channel, not_yet, retryable, wait_for, wait_taken,
    write_before, write_error, Taken,
};

/// Pause between connection attempts while waiting for an ack: short, since
/// the guest may be about to read, and a sleep, never a busy loop.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Without `--wait-ack`: how long QEMU may take to accept the bytes. They
/// normally fit in the socket's buffer and the write returns at once.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What `send` does, with the command line resolved.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub socket: PathBuf,
    pub message: Message,
    /// `None`: send and close (patchviasocket). `Some`: wait this long for
    /// the guest's ack, reconnecting and resending as needed.
    pub wait_ack: Option<Duration>,
    /// Without `wait_ack`: how long to wait, before closing, for QEMU to
    /// take every byte from the socket.
    pub wait_taken: Duration,
    pub retry: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, taken by QEMU from the socket (so passed to a guest that
    /// holds its port open), and closed.
    Taken { bytes: usize, after: Duration },
    /// The guest acknowledged this cmdline.
    Acked {
        after: Duration,
        /// Connections on which the message was sent.
        sends: u32,
    },
}
/// Sends the message; with `wait_ack`, until the guest acknowledges it.
pub fn send(opts: &SendOptions) -> Result<Outcome> {
    let bytes = encode(&opts.message);
    match opts.wait_ack {
        None => send_once(&opts.socket, &bytes, opts.wait_taken),
        Some(wait) => send_until_acked(opts, &bytes, wait),
    }
}

/// patchviasocket's behaviour, connect, write, close, except that it closes
/// only once QEMU has taken every byte from the socket (or `wait` has
/// passed: exit 75). QEMU reads the host's socket only while the guest
/// holds the port open, and drops what it has not read when the host
/// closes (even a held port got only the first 4 KiB of a larger message
/// from a host that closed at once); its send queue (SIOCOUTQ) says what it
/// has not read yet.
fn send_once(path: &Path, bytes: &[u8], wait: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let stream = connect(path).map_err(|e| connect_error(path, e))?;
    let (written, result) = write_before(&stream, bytes, deadline::in_(WRITE_TIMEOUT));
    result.map_err(|e| write_error(path, written, bytes.len(), e))?;
    match wait_taken(&stream, deadline::after(start, wait))
        .map_err(|e| Error::io("cannot wait on", path, e))?
    {
        Taken::All => {
            let after = start.elapsed();
            info!(
                "sent {} bytes to {}; QEMU took them all after {:.3} s (the guest holds its port open); closed",
                bytes.len(),
                path.display(),
                Secs(after)
            );
            Ok(Outcome::Taken {
                bytes: bytes.len(),
                after,
            })
        }
        Taken::Closed => Err(Error::Unavailable(format!(
            "{}: QEMU closed the connection before taking the message (VM stopped?)",
            path.display()
        ))),
        Taken::NotYet => Err(Error::NotTaken {
            path: path.to_owned(),
            secs: Secs(wait),
        }),
    }
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
                Millis(retry)
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
    let deadline = deadline::after(start, wait);
    let expected = digest_hex(opts.message.cmdline.as_bytes());
    info!(
        "sending to {}; waiting up to {:.1} s for the guest's ack:{expected}",
        path.display(),
        Secs(wait)
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
                        Secs(after),
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
            // A VM running without the channel will not grow one: say so at once.
            Err(e) if retryable(&e) && no_channel(path).is_none() => {
                tries.ended(not_yet(&e), path, opts.retry)
            }
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
                Reply::Nak(why) => {
                    // The guest discarded a damaged copy (its end line did
                    // not match); it waits for the message again.
                    warn!("the guest discarded the message ({why}); sending it again");
                    let (written, result) = write_before(stream, bytes, deadline);
                    match result {
                        Ok(()) => tries.sends += 1,
                        Err(e) if dropped(&e) => {
                            return Ok(Conversation::Dropped(format!(
                                "the connection was closed after {written} of {} bytes ({e})",
                                bytes.len()
                            )))
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Ok(Conversation::Deadline(
                                "the guest asked for the message again; QEMU did not take all of it".into(),
                            ))
                        }
                        Err(e) => return Err(Error::io("cannot write to", path, e)),
                    }
                }
                Reply::Other(start) => debug!("ignored a line from the guest: {start:?}"),
            }
        }
    }
}

fn deadline_error(path: &Path, wait: Duration, expected: &str, tries: &Tries) -> Error {
    let secs = Secs(wait);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

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
}
