//! Reading small files that someone else may have planted or broken (a
//! sysfs attribute, the stored cmdline, the host's key file): never blocking,
//! never reading more than the caller can use, never reading what is not a
//! regular file. A FIFO in such a place would block open() and read()
//! forever, and a link to /dev/zero would be read until memory runs out.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

/// Why a file was not read.
#[derive(Debug)]
pub enum Refused {
    Missing,
    /// A symlink where `follow` was false.
    Symlink,
    /// Not a regular file; what it is instead ("a FIFO", ...).
    NotRegular(&'static str),
    /// Longer than the limit, which it carries.
    TooLarge(usize),
    Io(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => write!(f, "does not exist"),
            Refused::Symlink => write!(f, "is a symlink; refusing to follow it"),
            Refused::NotRegular(kind) => write!(f, "is {kind}, not a regular file"),
            Refused::TooLarge(limit) => write!(f, "is larger than {limit} bytes"),
            Refused::Io(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// The whole of `path`, at most `limit` bytes, if it is a regular file.
/// Opened O_NONBLOCK (a FIFO's open() does not wait for a writer) and, unless
/// `follow`, O_NOFOLLOW; checked with fstat on the opened file, so what is
/// read is what was checked.
pub fn read_regular(path: &Path, limit: usize, follow: bool) -> Result<Vec<u8>, Refused> {
    let mut flags = OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Refused::Missing,
            // O_NOFOLLOW on a symlink: ELOOP.
            _ if !follow && is_symlink(path) => Refused::Symlink,
            _ => Refused::Io(e),
        })?;
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotRegular(kind(&meta.file_type())));
    }
    read_at_most(file, limit)
}

fn read_at_most(file: File, limit: usize) -> Result<Vec<u8>, Refused> {
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(Refused::Io)?;
    if bytes.len() > limit {
        return Err(Refused::TooLarge(limit));
    }
    Ok(bytes)
}

fn is_symlink(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// What a file is, for messages: "a directory", "a FIFO", ...
pub fn kind(ft: &FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "an unknown kind of file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn fifo_symlink_device_and_oversized_files_are_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer: a blocking open would never return.
        assert!(matches!(
            read_regular(&fifo, 10, true),
            Err(Refused::NotRegular("a FIFO"))
        ));
        let link = tmp.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            read_regular(&link, 10, false),
            Err(Refused::Symlink)
        ));
        assert!(matches!(
            read_regular(&link, 10, true),
            Err(Refused::NotRegular("a character device"))
        ));
        let big = tmp.path().join("big");
        fs::write(&big, "12345678901").unwrap();
        assert!(matches!(
            read_regular(&big, 10, true),
            Err(Refused::TooLarge(10))
        ));
        assert_eq!(read_regular(&big, 11, false).unwrap(), b"12345678901");
        assert!(matches!(
            read_regular(&tmp.path().join("none"), 10, true),
            Err(Refused::Missing)
        ));
        assert!(matches!(
            read_regular(tmp.path(), 10, true),
            Err(Refused::NotRegular("a directory"))
        ));
    }
}
