//! Waiting for the port to appear: kernel uevents (the port's node comes
//! with `add`, its name with `change`) wake a rescan at once, and a rescan
//! every RESCAN_MS is the safety net for a missed event or a tree that sends
//! none (a fake tree in tests; a container without the uevent socket).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::ports::{self, Port, Selector};
use crate::defaults::RESCAN_MS;
use crate::error::{Error, Result};
use crate::{deadline, debug, warn};

/// Returns the chosen port once it exists, or None at the deadline.
pub fn wait_for_port(
    sysfs_root: &Path,
    dev_root: &Path,
    sel: &Selector,
    deadline: Instant,
) -> Result<Option<Port>> {
    let uevents = uevent_socket();
    let mut announced = false;
    loop {
        let found = ports::scan(sysfs_root, dev_root, sel)
            .map_err(|e| Error::io("cannot scan", sysfs_root.join("class/virtio-ports"), e))?;
        if let Some(port) = ports::chosen(&found) {
            let others: Vec<String> = found
                .iter()
                .filter(|p| matches!(p.verdict, ports::Verdict::AlsoMatches { .. }))
                .map(|p| format!("{} ({})", p.name.as_deref().unwrap_or(""), p.entry))
                .collect();
            if !others.is_empty() {
                warn!(
                    "several ports match {}: chose {} ({}), the first in vportNpM order; also: {}",
                    sel.describe(),
                    port.name.as_deref().unwrap_or(""),
                    port.entry,
                    others.join(", ")
                );
            }
            return Ok(Some(port.clone()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        if !announced {
            debug!(
                "no port matching {} yet among {} port(s); waiting",
                sel.describe(),
                found.len()
            );
            announced = true;
        }
        let until = deadline.min(now + Duration::from_millis(RESCAN_MS.into()));
        match &uevents {
            Some(sock) => wait_uevent(sock, until),
            None => std::thread::sleep(until - now),
        }
    }
}

/// A socket on the kernel's uevent multicast group, or None where it cannot
/// be had (then the periodic rescan alone does the work).
// nix's netlink socket, no uevent crate: an event only wakes a rescan, so
// nothing in it is parsed.
fn uevent_socket() -> Option<OwnedFd> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(|e| debug!("no uevent socket ({e}); rescanning every {RESCAN_MS} ms"))
    .ok()?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &NetlinkAddr::new(0, 1),
    )
    .map_err(|e| debug!("cannot bind uevent socket ({e}); rescanning every {RESCAN_MS} ms"))
    .ok()?;
    Some(sock)
}

/// Waits until `until` for uevents and drains them; which event it was
/// does not matter, since the caller rescans either way.
fn wait_uevent(sock: &OwnedFd, until: Instant) {
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, deadline::poll_timeout(until)).unwrap_or(0) > 0 {
        let mut buf = [0u8; 8192];
        let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
        while let Ok(n) = recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            if buf[..n].windows(12).any(|w| w == b"virtio-ports") {
                debug!("uevent for a virtio port; rescanning");
            }
        }
    }
}
