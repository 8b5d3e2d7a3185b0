//! Reading the port: open it once, hold it open until the message is whole,
//! and wait for the host on events, never by spinning.
//!
//! What the driver does (drivers/char/virtio_console.c):
//! - a second open() of a port fails with EBUSY (EMFILE on older kernels);
//! - read() returns 0 while the host is not connected: "no connection", not
//!   end of data (port_fops_read), and poll() then reports POLLIN|POLLHUP
//!   without pause, so a level-triggered wait would spin;
//! - the port's wait queue is woken when data arrives and when the host
//!   connects or disconnects, so an edge-triggered epoll sleeps until then;
//! - closing the port discards unread data, and QEMU drops what the host
//!   wrote while the guest did not hold the port open: hence one open, kept.
//!
//! A FIFO standing in for the port (tests, `--no-ack`) behaves the same way:
//! read() == 0 while no writer is connected, an epoll edge when one writes
//! or leaves.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::stat::{major, minor};

use super::ports::Port;
use crate::error::{Error, Result};
use crate::wire::{nak_line, Decoder, Line, Message};
use crate::{deadline, debug, info, warn};

/// An open port, held until dropped.
pub struct PortReader {
    file: File,
    epoll: Epoll,
    label: String,
    port: Port,
    writable: bool,
}

/// When a wait for the message ends.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Where the wait ends, unless data is still arriving ...
    pub soft: Instant,
    /// ... then it goes on while bytes of a cmdline, pubkey or end line
    /// keep coming within `quiet` of each other, but never past `hard`.
    pub hard: Instant,
    pub quiet: Duration,
    /// Quiet time, host still connected, that completes an unframed message.
    pub settle: Duration,
}

/// How a wait for the message ended.
#[derive(Debug)]
pub enum Received {
    Message(Message),
    /// The deadline passed without a whole message; the decoder holds
    /// whatever came.
    TimedOut,
}

impl PortReader {
    /// Opens the port once. `writable` is needed only for the ack; a
    /// read-only open lets a FIFO stand in for the port.
    pub fn open(port: &Port, writable: bool) -> Result<Self> {
        let label = format!(
            "{} ({})",
            port.name.as_deref().unwrap_or("?"),
            port.node.display()
        );
        // Check the node before opening it: opening the wrong device could
        // be opening the guest agent's port.
        check_node(port, &std::fs::metadata(&port.node))?;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
            .open(&port.node)
            .map_err(|e| open_error(port, e))?;
        // And again on what was opened, in case the node changed meanwhile.
        check_node(port, &file.metadata())?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::io("cannot create epoll for", &port.node, e.into()))?;
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        epoll
            .add(file.as_fd(), EpollEvent::new(flags, 0))
            .map_err(|e| Error::io("cannot watch", &port.node, e.into()))?;
        info!("opened port {label}");
        Ok(Self {
            file,
            epoll,
            label,
            port: port.clone(),
            writable,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Reads until `decoder` holds a whole message or the deadlines pass.
    ///
    /// A framed message is whole the moment its end line arrives and
    /// matches. An unframed one (patchviasocket.py) once a cmdline line has
    /// arrived, no cmdline, pubkey or end line is half-way, and the host
    /// disconnected or sent nothing that counts for `settle`; ignored lines
    /// do not count.
    ///
    /// read() == 0 does not drop an unfinished line: the driver reports
    /// "host connected" on its control virtqueue, after the data that came
    /// on the data virtqueue, so a read right after the data can return 0
    /// while the host is still there and still sending. If the host did
    /// leave, its resend runs into the kept bytes, and the decoder's merge
    /// rule keeps only the resend.
    pub fn receive(&mut self, decoder: &mut Decoder, d: &Deadlines) -> Result<Received> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut progress = decoder.progress();
        let mut last_progress: Option<Instant> = None;
        let mut last_bytes: Option<Instant> = None;
        let mut logged_pending = 0;
        loop {
            // Drain everything readable: with an edge-triggered epoll, a
            // wake-up is only promised for what happens after this.
            let mut disconnected = false;
            let mut got_data = false;
            loop {
                match self.file.read(&mut buf) {
                    Ok(0) => {
                        if got_data {
                            // The case that makes read() == 0 no proof of a
                            // disconnect; counted by tests/vm.rs.
                            debug!(
                                "read() returned 0 right after data ({} bytes of a line pending)",
                                decoder.pending()
                            );
                        }
                        disconnected = true;
                        break;
                    }
                    Ok(n) => {
                        got_data = true;
                        last_bytes = Some(Instant::now());
                        decoder.feed(&buf[..n]).map_err(|e| self.bad_data(e))?;
                        for line in decoder.drain_lines() {
                            self.log_line(&line);
                        }
                        if decoder.framed() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.raw_os_error() == Some(Errno::ENODEV as i32) => {
                        return Err(Error::PortGone {
                            name: self.port.name.clone().unwrap_or_default(),
                            node: self.port.node.clone(),
                        });
                    }
                    Err(e) => return Err(Error::io("cannot read port", &self.port.node, e)),
                }
            }
            let now = Instant::now();
            if decoder.progress() != progress {
                progress = decoder.progress();
                last_progress = Some(now);
            }
            if decoder.framed() {
                if decoder.after_end() > 0 {
                    info!(
                        "ignored {} bytes after the end line (not part of the message)",
                        decoder.after_end()
                    );
                }
                return self.conclude(decoder);
            }
            if disconnected {
                let pending = decoder.pending();
                if pending > 0 && pending != logged_pending {
                    info!(
                        "host disconnected in the middle of a line ({pending} bytes so far); keeping them, \
                         as the driver can report a disconnect right after data while the host is still there: \
                         a resend that runs into them is recovered"
                    );
                    logged_pending = pending;
                }
                if decoder.can_conclude() {
                    debug!("host disconnected after a whole message");
                    return self.conclude(decoder);
                }
            }
            let settle_from = last_progress.or(last_bytes).unwrap_or(now);
            if decoder.can_conclude() && now >= deadline::after(settle_from, d.settle) {
                debug!(
                    "nothing more from the host for {:?}; message complete",
                    d.settle
                );
                return self.conclude(decoder);
            }
            let arriving_until = last_progress.map(|t| deadline::after(t, d.quiet));
            if now >= d.soft {
                let arriving = arriving_until.is_some_and(|t| now < t);
                if now >= d.hard || !arriving {
                    return Ok(Received::TimedOut);
                }
            }
            let mut until = d.hard;
            if now < d.soft {
                until = until.min(d.soft);
            } else if let Some(t) = arriving_until {
                until = until.min(t);
            }
            if decoder.can_conclude() {
                until = until.min(deadline::after(settle_from, d.settle));
            }
            self.wait(until)?;
        }
    }

    fn conclude(&self, decoder: &mut Decoder) -> Result<Received> {
        match decoder.finish() {
            Ok(Some(m)) => Ok(Received::Message(m)),
            Ok(None) => Ok(Received::TimedOut),
            Err(e) => Err(self.bad_data(e)),
        }
    }

    pub fn bad_data(&self, e: crate::wire::ProtocolError) -> Error {
        Error::BadData {
            port: self.label.clone(),
            problem: e.to_string(),
        }
    }

    fn log_line(&mut self, line: &Line) {
        match line {
            Line::Cmdline => info!("received a cmdline line"),
            Line::Pubkey => info!("received a pubkey line"),
            Line::Empty { lines: 1 } => debug!("ignored an empty line"),
            Line::Empty { lines } => debug!("ignored {lines} empty lines"),
            Line::Unknown { first, lines: 1 } => {
                debug!("ignored a line with an unknown prefix: {first:?}")
            }
            Line::Unknown { first, lines } => {
                debug!("ignored {lines} lines with unknown prefixes, the first: {first:?}")
            }
            Line::Joined { dropped } => info!(
                "a cut line ran into the host's resend: dropped {dropped} bytes of it (a cut copy of what \
                 was resent), kept the resent line"
            ),
            Line::End { len } => {
                debug!("the end line matches the {len} bytes before it; message complete")
            }
            Line::EndMismatch { why, discarded } => {
                warn!("discarded {discarded} bytes: {why}; waiting for the message again");
                self.nak(why);
            }
            Line::Refused(e) => info!(
                "refused: {e}; final once a cmdline line completes the message, unless an end line \
                 shows a damaged copy"
            ),
        }
    }

    /// Tells the host to send again, best effort: one non-blocking write,
    /// only on a port opened for writing.
    fn nak(&mut self, why: &str) {
        if !self.writable {
            return;
        }
        let line = nak_line(why);
        match self.file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => debug!("asked the host to send again"),
            Ok(n) => debug!("asking the host to send again was cut short after {n} bytes"),
            Err(e) => debug!("could not ask the host to send again ({e})"),
        }
    }

    /// Sleeps until the port's next event (data, host connect or
    /// disconnect) or `until`.
    fn wait(&self, until: Instant) -> Result<()> {
        let mut events = [EpollEvent::empty(); 1];
        match self.epoll.wait(&mut events, deadline::epoll_timeout(until)) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(Error::io("cannot wait on port", &self.port.node, e.into())),
        }
    }

    /// Writes `line` back to the host, best effort: the port is
    /// non-blocking, and a host that is gone or reads nothing is fine.
    ///
    /// EAGAIN means the driver holds the host for disconnected, which can be
    /// stale: a host's first bytes come on the data virtqueue and can be read
    /// before the driver has handled QEMU's "host connected" message, which
    /// comes on the control virtqueue (seen in tests/vm.rs: a read of 0 right
    /// after the data). So on EAGAIN wait up to `wait` for the port to become
    /// writable (the driver wakes the port on host connect) and try again.
    pub fn ack(&mut self, line: &str, wait: Duration) {
        let until = deadline::in_(wait);
        let mut watching_out = false;
        loop {
            match self.file.write(line.as_bytes()) {
                Ok(n) if n == line.len() => {
                    return info!("acknowledged to the host: {}", line.trim_end())
                }
                Ok(n) => return debug!("ack cut short after {n} bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < until => {
                    if !watching_out {
                        // Host connect shows as EPOLLOUT only.
                        let flags =
                            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
                        if self
                            .epoll
                            .modify(self.file.as_fd(), &mut EpollEvent::new(flags, 0))
                            .is_err()
                        {
                            return debug!("ack not sent ({e}); the host is not listening");
                        }
                        watching_out = true;
                    }
                    if self.wait(until).is_err() {
                        return debug!("ack not sent ({e}); the host is not listening");
                    }
                }
                Err(e) => return debug!("ack not sent ({e}); the host is not listening"),
            }
        }
    }
}

/// A character device must be the one sysfs names for the port.
fn check_node(port: &Port, meta: &io::Result<std::fs::Metadata>) -> Result<()> {
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            return Err(Error::io(
                "cannot find port node",
                &port.node,
                io::Error::new(e.kind(), e.to_string()),
            ))
        }
    };
    if !meta.file_type().is_char_device() {
        return super::ports::check_stand_in(port, meta);
    }
    let rdev = meta.rdev();
    let found = (major(rdev) as u32, minor(rdev) as u32);
    match port.dev {
        Some(expected) if expected == found => Ok(()),
        expected => Err(Error::DeviceMismatch {
            name: port.name.clone().unwrap_or_default(),
            node: port.node.clone(),
            found: format!("{}:{}", found.0, found.1),
            expected: expected
                .map(|(a, b)| format!("{a}:{b}"))
                .unwrap_or_else(|| "unknown".into()),
        }),
    }
}

fn open_error(port: &Port, e: io::Error) -> Error {
    let busy = [Errno::EBUSY as i32, Errno::EMFILE as i32];
    if e.raw_os_error().is_some_and(|c| busy.contains(&c)) {
        Error::PortBusy {
            name: port.name.clone().unwrap_or_default(),
            node: port.node.clone(),
        }
    } else {
        Error::io("cannot open port", &port.node, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_opener_errors_mean_port_busy_exit_75() {
        // EBUSY from virtio_console's port_fops_open; EMFILE on old kernels.
        let port = Port {
            entry: "vport0p1".into(),
            name: Some("s-1-VM.vport".into()),
            dev: Some((251, 1)),
            node: "/dev/vport0p1".into(),
            link: None,
            verdict: super::super::ports::Verdict::Chosen,
            fifo_stand_in: false,
        };
        for errno in [Errno::EBUSY, Errno::EMFILE] {
            let e = open_error(&port, io::Error::from_raw_os_error(errno as i32));
            assert!(matches!(e, Error::PortBusy { .. }), "{errno}: {e}");
            assert_eq!(e.exit_code(), crate::error::exit::BUSY);
            assert_eq!(
                e.to_string(),
                "port s-1-VM.vport (/dev/vport0p1) is held by another process; \
                 stop it or pick another port with --name"
            );
        }
        let e = open_error(&port, io::Error::from_raw_os_error(Errno::ENOENT as i32));
        assert_eq!(e.exit_code(), crate::error::exit::IO);
    }
}
