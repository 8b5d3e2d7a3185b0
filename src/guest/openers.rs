//! Who has a file or a device open, as the kernel tells it. The barrier
//! uses this to know whether qemu-ga still holds the cmdline open for
//! writing, and whether that descriptor has written (then what is on disk
//! may be cut), and whether qemu-ga holds its port (then the host can
//! write).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use crate::debug;

/// Who holds a file open for writing, as the kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Nobody.
    None,
    /// The kernel counts a writer; every descriptor open for writing under
    /// `/proc` is at position 0 (opened, never written through), and all
    /// could be read.
    Idle,
    /// The kernel counts a writer that no descriptor under `/proc` shows,
    /// and all could be read: the count of a descriptor being closed (the
    /// close is reported before the count drops), or one in flight.
    Unseen,
    /// A descriptor open for writing has moved from position 0: it has
    /// written, and may write more.
    Written,
    /// The kernel counts a writer and some processes' descriptors cannot
    /// be read (no CAP_SYS_PTRACE): one of them may be the writer.
    Unknown,
}

/// Who holds `file`'s inode open for writing (this process included).
/// `file` must be open read-only.
///
/// First the kernel's own count, asked through a read lease
/// ([`no_writer_by_lease`]); only when it counts a writer (or leases are
/// not available) the descriptors under `proc_root`, for their positions.
pub fn writers(file: &File, proc_root: &Path) -> io::Result<Writers> {
    let by_lease = match no_writer_by_lease(file) {
        Ok(true) => return Ok(Writers::None),
        Ok(false) => true,
        Err(e) => {
            debug!(
                "no read lease ({e}); looking for writers under {}",
                proc_root.display()
            );
            false
        }
    };
    let meta = file.metadata()?;
    let found = writers_in_proc(proc_root, meta.dev(), meta.ino())?;
    Ok(if found.written {
        Writers::Written
    } else if found.any && !found.denied {
        Writers::Idle
    } else if !by_lease && !found.any {
        // As before leases: what cannot be read is not counted.
        Writers::None
    } else if found.denied {
        // One of the descriptors not read may be one that has written.
        Writers::Unknown
    } else {
        Writers::Unseen
    })
}

/// Whether the kernel counts no writer of `file`'s inode:
/// fcntl(F_SETLEASE, F_RDLCK) fails with EAGAIN exactly while the inode is
/// open for writing anywhere (fs/locks.c, check_conflicting_open). Errors
/// where leases are not available (leases-enable=0, a file system without
/// them, a caller that neither owns the file nor has CAP_LEASE).
///
/// The lease is dropped by the next call. A writer's open() that comes in
/// between breaks it: the opener sleeps in break_lease() until the lease
/// is gone (so for one fcntl call, not the 45 s of lease-break-time), and
/// the kernel signals the lease's holder, with SIGIO unless F_SETSIG chose
/// another signal. SIGIO's default action ends the process (it did: exit
/// 157 under a writer opening the file in a loop), so the signal is SIGURG,
/// whose default action is to ignore it (signal(7)), chosen on this
/// descriptor only: nothing process-wide changes, so this is safe in a
/// library (a program with its own SIGURG handler would see a stray one).
pub fn no_writer_by_lease(file: &File) -> io::Result<bool> {
    // F_SETSIG from include/uapi/asm-generic/fcntl.h (x86_64, aarch64);
    // the libc crate does not export it.
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor this function borrows.
    if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0 {
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Ok(true);
    }
    match Errno::last() {
        Errno::EAGAIN => Ok(false),
        e => Err(e.into()),
    }
}

/// The descriptors open for writing on one inode, from `/proc`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProcWriters {
    /// At least one was found.
    pub any: bool,
    /// One of them is past position 0 (or its position cannot be read).
    pub written: bool,
    /// Some process's descriptors could not be listed.
    pub denied: bool,
}

/// The descriptors under `proc_root/PID/fd` that refer to inode (`dev`,
/// `ino`) with write access (the access mode in `fdinfo`'s `flags`, octal),
/// and whether one has written (`pos` in `fdinfo` past 0).
pub fn writers_in_proc(proc_root: &Path, dev: u64, ino: u64) -> io::Result<ProcWriters> {
    let mut found = ProcWriters::default();
    let mut denied = false;
    each_fd_or_denied(
        proc_root,
        |fd_path, fdinfo| {
            let Ok(meta) = fs::metadata(fd_path) else {
                return false;
            };
            if meta.dev() != dev || meta.ino() != ino {
                return false;
            }
            let info = fs::read_to_string(fdinfo).unwrap_or_default();
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            let writable = field("flags:")
                .and_then(|f| u32::from_str_radix(&f, 8).ok())
                .map(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            if writable.unwrap_or(true) {
                found.any = true;
                let pos = field("pos:").and_then(|p| p.parse::<u64>().ok());
                found.written |= pos != Some(0);
            }
            // A writer that has written settles it; keep looking otherwise.
            found.written
        },
        &mut denied,
    )?;
    found.denied = denied;
    Ok(found)
}

/// Whether some process holds the character device `rdev` open: None when
/// that cannot be told (the other processes' descriptors are not readable
/// without CAP_SYS_PTRACE when they hold capabilities this one lacks).
pub fn device_held(proc_root: &Path, rdev: u64) -> Option<bool> {
    let mut found = false;
    let mut denied = false;
    let scanned = each_fd_or_denied(
        proc_root,
        |fd_path, _| {
            found = fs::metadata(fd_path)
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == rdev);
            found
        },
        &mut denied,
    );
    match scanned {
        Ok(()) if found => Some(true),
        Ok(()) if !denied => Some(false),
        _ => None,
    }
}

/// Calls `f(proc/PID/fd/N, proc/PID/fdinfo/N)` for every descriptor until it
/// returns true. Processes that exit meanwhile are skipped; a process whose
/// descriptors cannot be listed sets `denied`.
fn each_fd_or_denied(
    proc_root: &Path,
    mut f: impl FnMut(&Path, &Path) -> bool,
    denied: &mut bool,
) -> io::Result<()> {
    let own = std::process::id().to_string();
    for entry in fs::read_dir(proc_root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = entry.path();
        let fds = match fs::read_dir(dir.join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                if pid != own {
                    *denied = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            let fdinfo = dir.join("fdinfo").join(fd.file_name());
            if f(&fd.path(), &fdinfo) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_writer_anywhere_is_seen_and_its_close_too() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cmdline");
        fs::write(&path, "a=1\n").unwrap();
        let reader = File::open(&path).unwrap();
        // A /proc of this process only: read whole without root.
        let proc_root = &tmp.path().join("proc");
        let pid = std::process::id().to_string();
        fs::create_dir(proc_root).unwrap();
        symlink(Path::new("/proc").join(&pid), proc_root.join(&pid)).unwrap();
        assert_eq!(writers(&reader, proc_root).unwrap(), Writers::None);
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        assert_eq!(writers(&reader, proc_root).unwrap(), Writers::Idle);
        std::io::Write::write_all(&mut writer, b"a").unwrap();
        assert_eq!(writers(&reader, proc_root).unwrap(), Writers::Written);
        drop(writer);
        assert_eq!(writers(&reader, proc_root).unwrap(), Writers::None);
    }

    #[test]
    fn proc_fallback_reads_the_access_mode_and_the_position_from_fdinfo() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("cmdline");
        fs::write(&target, "a=1\n").unwrap();
        let meta = fs::metadata(&target).unwrap();
        let proc_root = tmp.path().join("proc");
        for (pid, flags, pos) in [("7", "0100000", 5), ("9", "0100002", 0), ("11", "01", 9)] {
            fs::create_dir_all(proc_root.join(pid).join("fd")).unwrap();
            fs::create_dir_all(proc_root.join(pid).join("fdinfo")).unwrap();
            symlink(&target, proc_root.join(pid).join("fd/3")).unwrap();
            fs::write(
                proc_root.join(pid).join("fdinfo/3"),
                format!("pos:\t{pos}\nflags:\t{flags}\n"),
            )
            .unwrap();
        }
        let found = |root: &Path| writers_in_proc(root, meta.dev(), meta.ino()).unwrap();
        // 7 only reads; 9 writes from position 0; 11 has written.
        assert_eq!(
            found(&proc_root),
            ProcWriters {
                any: true,
                written: true,
                denied: false
            }
        );
        fs::remove_file(proc_root.join("11/fd/3")).unwrap();
        assert_eq!(
            found(&proc_root),
            ProcWriters {
                any: true,
                written: false,
                denied: false
            }
        );
        fs::remove_file(proc_root.join("9/fd/3")).unwrap();
        assert_eq!(found(&proc_root), ProcWriters::default());
    }

    #[test]
    fn a_held_device_is_found_by_its_number() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path().join("proc");
        fs::create_dir_all(proc_root.join("42/fd")).unwrap();
        let null = fs::metadata("/dev/null").unwrap().rdev();
        assert_eq!(device_held(&proc_root, null), Some(false));
        symlink("/dev/null", proc_root.join("42/fd/0")).unwrap();
        assert_eq!(device_held(&proc_root, null), Some(true));
        assert_eq!(device_held(&proc_root, null + 1), Some(false));
    }
}
