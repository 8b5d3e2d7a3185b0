//! Who has a file or a device open, as the kernel tells it. The barrier
//! uses this to know whether qemu-ga still holds the cmdline open for
//! writing (then what is on disk may be cut) and whether qemu-ga holds its
//! port (then the host can write).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use crate::debug;

/// Whether any process (this one included) has `file`'s inode open for
/// writing. `file` must be open read-only.
///
/// First asks the kernel for a read lease: fcntl(F_SETLEASE, F_RDLCK) fails
/// with EAGAIN exactly while the inode is open for writing anywhere
/// (fs/locks.c, check_conflicting_open), and the lease is dropped again at
/// once so that no writer is ever kept waiting. Where leases are not
/// available (leases-enable=0, a file system without them, a caller that
/// neither owns the file nor has CAP_LEASE), falls back to reading every
/// process's open files under `proc_root`.
pub fn open_for_writing(file: &File, proc_root: &Path) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor this function borrows.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if rc == 0 {
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Ok(false);
    }
    match Errno::last() {
        Errno::EAGAIN => Ok(true),
        e => {
            debug!(
                "no read lease ({e}); looking for writers under {}",
                proc_root.display()
            );
            let meta = file.metadata()?;
            writer_in_proc(proc_root, meta.dev(), meta.ino())
        }
    }
}

/// Whether a descriptor under `proc_root/PID/fd` refers to inode
/// (`dev`, `ino`) with write access (the access mode in `fdinfo`'s `flags`,
/// octal).
pub fn writer_in_proc(proc_root: &Path, dev: u64, ino: u64) -> io::Result<bool> {
    let mut found = false;
    each_fd(proc_root, |fd_path, fdinfo| {
        let Ok(meta) = fs::metadata(fd_path) else {
            return false;
        };
        if meta.dev() != dev || meta.ino() != ino {
            return false;
        }
        let writable = fs::read_to_string(fdinfo).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .map(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
        });
        found = writable.unwrap_or(true);
        found
    })?;
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

fn each_fd(proc_root: &Path, f: impl FnMut(&Path, &Path) -> bool) -> io::Result<()> {
    let mut denied = false;
    each_fd_or_denied(proc_root, f, &mut denied)
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
        let proc_root = Path::new("/proc");
        assert!(!open_for_writing(&reader, proc_root).unwrap());
        let writer = OpenOptions::new().append(true).open(&path).unwrap();
        assert!(open_for_writing(&reader, proc_root).unwrap());
        drop(writer);
        assert!(!open_for_writing(&reader, proc_root).unwrap());
    }

    #[test]
    fn proc_fallback_reads_the_access_mode_from_fdinfo() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("cmdline");
        fs::write(&target, "a=1\n").unwrap();
        let meta = fs::metadata(&target).unwrap();
        let proc_root = tmp.path().join("proc");
        for (pid, flags) in [("7", "0100000"), ("9", "0100002")] {
            fs::create_dir_all(proc_root.join(pid).join("fd")).unwrap();
            fs::create_dir_all(proc_root.join(pid).join("fdinfo")).unwrap();
            symlink(&target, proc_root.join(pid).join("fd/3")).unwrap();
            fs::write(
                proc_root.join(pid).join("fdinfo/3"),
                format!("pos:\t0\nflags:\t{flags}\n"),
            )
            .unwrap();
        }
        assert!(writer_in_proc(&proc_root, meta.dev(), meta.ino()).unwrap());
        fs::remove_file(proc_root.join("9/fd/3")).unwrap();
        assert!(!writer_in_proc(&proc_root, meta.dev(), meta.ino()).unwrap());
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
