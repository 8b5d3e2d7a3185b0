//! Waiting for the port to appear: kernel uevents (the port's node comes
//! with `add`, its name with `change`) wake a rescan at once, and a rescan
//! every RESCAN_MS is the safety net for a missed event or a tree that sends
//! none (a fake tree in tests; a container without the uevent socket).
//!
//! And knowing when it will not: QEMU adds every port of a virtio-serial
//! device as soon as the driver says it is ready, and names each one right
//! after the driver acknowledges it (hw/char/virtio-serial-bus.c: PORT_ADD
//! for all ports on DEVICE_READY, PORT_NAME on PORT_READY). So once every
//! port is there and named, nothing matches, and the list has not changed
//! for a quiet time, the host offers no such channel: CloudStack 4.11.3 and
//! later define only the guest agent's. The same when sysfs shows no virtio
//! console device at all. A console device whose driver has not bound yet
//! (virtio_console loaded late) is waited for.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::ports::{self, Port, Selector};
use crate::defaults::RESCAN_MS;
use crate::error::{Error, Result};
use crate::secs::Secs;
use crate::{deadline, debug, info, warn};

/// How the wait for a port ended.
#[derive(Debug)]
pub enum Found {
    Port(Port),
    /// The host offers no matching port; says what there is instead.
    NoChannel(String),
    TimedOut,
    /// The `wake` descriptor became readable (its writer closed): the
    /// caller's other side has decided.
    Woken,
}

/// Returns the chosen port once it exists; [`Found::NoChannel`] once the
/// ports have been all there, all named and none matching for `settled`
/// (or sysfs shows no virtio console device for that long);
/// [`Found::TimedOut`] at the deadline.
pub fn wait_for_port(
    sysfs_root: &Path,
    dev_root: &Path,
    sel: &Selector,
    deadline: Instant,
    settled: Duration,
) -> Result<Found> {
    wait_for_port_seeing(
        sysfs_root,
        dev_root,
        sel,
        deadline,
        settled,
        &mut |_| {},
        None,
    )
}

/// [`wait_for_port`], showing every scan that chose no port to `seen`
/// first: the boot job starts its guest agent side from there as soon as
/// that port is named, without waiting for the no-channel decision. Ends
/// with [`Found::Woken`] as soon as `wake` is readable (the boot job's
/// file side closes its end when it has decided), checked before each scan
/// and waited on with the uevents.
pub fn wait_for_port_seeing(
    sysfs_root: &Path,
    dev_root: &Path,
    sel: &Selector,
    deadline: Instant,
    settled: Duration,
    seen: &mut dyn FnMut(&[Port]),
    wake: Option<BorrowedFd<'_>>,
) -> Result<Found> {
    let uevents = uevent_socket();
    let mut announced = false;
    let start = Instant::now();
    let mut last: Option<Vec<(String, Option<String>)>> = None;
    let mut changed = start;
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
            return Ok(Found::Port(port.clone()));
        }
        seen(&found);
        let now = Instant::now();
        let snapshot: Vec<(String, Option<String>)> = found
            .iter()
            .map(|p| (p.entry.clone(), p.name.clone()))
            .collect();
        if last.as_ref() != Some(&snapshot) {
            if last.is_some() {
                debug!(
                    "ports after {:.3} s: {}",
                    Secs(now - start),
                    describe(&found)
                );
            }
            last = Some(snapshot);
            changed = now;
        }
        let none_offered = no_channel(sysfs_root, &found);
        if let Some(what) = &none_offered {
            if now >= deadline::after(changed, settled) {
                return Ok(Found::NoChannel(what.clone()));
            }
        }
        if now >= deadline {
            return Ok(Found::TimedOut);
        }
        if !announced {
            debug!(
                "no port matching {} yet among {} port(s); waiting",
                sel.describe(),
                found.len()
            );
            match &uevents {
                Ok(_) => debug!("waiting on kernel uevents"),
                Err(why) => info!("{why}; rescanning every {RESCAN_MS} ms instead"),
            }
            announced = true;
        }
        let mut until = deadline.min(now + Duration::from_millis(RESCAN_MS.into()));
        if none_offered.is_some() {
            until = until.min(deadline::after(changed, settled));
        }
        if wait_uevent(uevents.as_ref().ok(), wake, until) {
            return Ok(Found::Woken);
        }
    }
}

fn describe(found: &[Port]) -> String {
    if found.is_empty() {
        return "none".into();
    }
    let all: Vec<String> = found
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p.entry,
                p.name.as_deref().unwrap_or("(no name yet)")
            )
        })
        .collect();
    all.join(", ")
}

/// Whether what sysfs shows now means "no matching channel", and if so
/// what there is instead: every port named and none chosen, with every
/// virtio console device bound to its driver; or no virtio console device
/// at all. None while that cannot be known (a port without its name yet, a
/// device whose driver has not bound, a tree without /sys/bus).
fn no_channel(sysfs_root: &Path, found: &[Port]) -> Option<String> {
    let devices = console_devices(sysfs_root);
    if devices.unbound > 0 {
        return None;
    }
    if !found.is_empty() {
        let all_named = found.iter().all(|p| p.name.is_some());
        return all_named.then(|| format!("the only virtio ports are {}", describe(found)));
    }
    (devices.known && devices.bound == 0).then(|| "there is no virtio console device".into())
}

#[derive(Debug, Default)]
struct ConsoleDevices {
    /// sysfs has the buses to tell (a real sysfs, not a test's fake tree).
    known: bool,
    bound: usize,
    /// Console devices seen on PCI or the virtio bus whose virtio_console
    /// (or virtio_pci, virtio_mmio) driver has not bound yet.
    unbound: usize,
}

/// virtio console devices: on the virtio bus `device` is 0x0003 (virtio
/// spec 5.3); on PCI, vendor 0x1af4 with device 0x1003 (transitional) or
/// 0x1043 (modern). virtio-mmio transports count as unbound while their
/// driver is not bound, since their device type shows only after.
fn console_devices(sysfs_root: &Path) -> ConsoleDevices {
    let bus = sysfs_root.join("bus");
    // Bounded and non-blocking like every sysfs attribute (ports::read_attr);
    // one that cannot be read counts as absent.
    let read = |dir: &Path, attr: &str| {
        ports::read_attr(dir, attr)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let entries = |dir: std::path::PathBuf| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let mut c = ConsoleDevices {
        known: bus.join("pci/devices").is_dir() || bus.join("virtio/devices").is_dir(),
        ..ConsoleDevices::default()
    };
    let mut on_virtio_bus = 0;
    for dev in entries(bus.join("virtio/devices")) {
        if read(&dev, "device").trim() == "0x0003" {
            on_virtio_bus += 1;
            if dev.join("driver").exists() {
                c.bound += 1;
            } else {
                c.unbound += 1;
            }
        }
    }
    let pci_consoles = entries(bus.join("pci/devices"))
        .iter()
        .filter(|d| {
            read(d, "vendor").trim() == "0x1af4"
                && matches!(read(d, "device").trim(), "0x1003" | "0x1043")
        })
        .count();
    // A PCI console without its virtio device: virtio_pci not loaded yet.
    c.unbound += pci_consoles.saturating_sub(on_virtio_bus);
    c.unbound += entries(bus.join("platform/devices"))
        .iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("virtio_mmio"))
                && !d.join("driver").exists()
        })
        .count();
    c
}

/// A socket on the kernel's uevent multicast group, or why there is none
/// (then the periodic rescan alone does the work). A unit's sandbox can
/// forbid it (RestrictAddressFamilies= without AF_NETLINK).
// nix's netlink socket, no uevent crate: an event only wakes a rescan, so
// nothing in it is parsed.
fn uevent_socket() -> std::result::Result<OwnedFd, String> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(|e| format!("no uevent socket ({e})"))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &NetlinkAddr::new(0, 1),
    )
    .map_err(|e| format!("cannot bind the uevent socket ({e})"))?;
    Ok(sock)
}

/// Waits until `until` for uevents (on `sock`, if there is one) or for
/// `wake`, and drains the uevents; which event it was does not matter,
/// since the caller rescans either way. True once `wake` is readable.
fn wait_uevent(sock: Option<&OwnedFd>, wake: Option<BorrowedFd<'_>>, until: Instant) -> bool {
    let mut fds: Vec<PollFd> = wake
        .into_iter()
        .chain(sock.map(|s| s.as_fd()))
        .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    let woke = poll(&mut fds, deadline::poll_timeout(until)).unwrap_or(0) > 0;
    let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
    if woke && wake.is_some() && ready(&fds[0]) {
        return true;
    }
    let uevent = fds.last().is_some_and(ready);
    drop(fds);
    let Some(sock) = sock else {
        return false;
    };
    if woke && uevent {
        let mut buf = [0u8; 8192];
        let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
        while let Ok(n) = recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            if buf[..n].windows(12).any(|w| w == b"virtio-ports") {
                let action = buf[..n].split(|&b| b == b'@').next().unwrap_or_default();
                debug!(
                    "uevent {} for a virtio port; rescanning",
                    String::from_utf8_lossy(action)
                );
            }
        }
    }
    false
}
