//! Storing the parameters where the system VM's scripts read them, so that
//! after a crash each file is the old one or the new one, never torn.
//!
//! Each file: a temp file in the target's own directory (created with
//! O_EXCL|O_NOFOLLOW), written, fsync'd, renamed over the target, then the
//! directory fsync'd. rename() replaces a symlink planted at the target
//! instead of following it, and the directory is opened with O_NOFOLLOW, so
//! nothing is written outside the configured directories.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};
use crate::wire::Message;

pub const CMDLINE_FILE: &str = "cmdline";
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";

pub const CMDLINE_MODE: u32 = 0o644;
pub const KEYS_MODE: u32 = 0o600;
pub const CACHE_DIR_MODE: u32 = 0o755;
pub const SSH_DIR_MODE: u32 = 0o700;

/// Where the files go.
#[derive(Debug, Clone)]
pub struct Targets {
    pub cache_dir: PathBuf,
    pub ssh_dir: PathBuf,
}

impl Targets {
    pub fn cmdline(&self) -> PathBuf {
        self.cache_dir.join(CMDLINE_FILE)
    }
}

/// Stores a whole message: the key files first, the cmdline last, since
/// scripts that wait for the cmdline file take it as "parameters are here".
/// Without a pubkey the key files are left as they are.
pub fn store(message: &Message, targets: &Targets) -> Result<()> {
    // Every directory is opened (and refused, if it is a symlink or not a
    // directory) before any file is written, so that a refused directory
    // leaves all the files as they were.
    let cache = open_dir(&targets.cache_dir, CACHE_DIR_MODE, false)?;
    if let Some(key) = &message.pubkey {
        // OpenSSH's StrictModes refuses keys in a group- or world-writable
        // ~/.ssh, so the directory is made 0700 whatever it was.
        let ssh = open_dir(&targets.ssh_dir, SSH_DIR_MODE, true)?;
        let content = format!("{key}\n");
        write_atomic(
            &cache,
            &targets.cache_dir,
            AUTHORIZED_KEYS_FILE,
            content.as_bytes(),
            KEYS_MODE,
        )?;
        write_atomic(
            &ssh,
            &targets.ssh_dir,
            AUTHORIZED_KEYS_FILE,
            content.as_bytes(),
            KEYS_MODE,
        )?;
    }
    let content = format!("{}\n", message.cmdline);
    write_atomic(
        &cache,
        &targets.cache_dir,
        CMDLINE_FILE,
        content.as_bytes(),
        CMDLINE_MODE,
    )
}

/// The stored cmdline, without its newline; None when the file is missing
/// or holds only white space.
pub fn stored_cmdline(cache_dir: &Path) -> Result<Option<String>> {
    let path = cache_dir.join(CMDLINE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| Error::BadStored {
        path: path.clone(),
        problem: "not valid UTF-8".into(),
    })?;
    let text = text.trim_end_matches('\n');
    Ok((!text.trim().is_empty()).then(|| text.to_owned()))
}

/// Opens `dir` (creating it, and any missing parents, with `mode`) as a
/// directory fd, refusing a symlink in its place. With `enforce_mode` an
/// existing directory is chmod'ed to `mode`.
fn open_dir(dir: &Path, mode: u32, enforce_mode: bool) -> Result<OwnedFd> {
    let open = || {
        nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let fd = match open() {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            create_dirs(dir, mode)?;
            open().map_err(|e| dir_error(dir, e))?
        }
        Err(e) => return Err(dir_error(dir, e)),
    };
    if enforce_mode {
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| Error::io("cannot set the mode of", dir, e.into()))?;
    }
    Ok(fd)
}

fn dir_error(dir: &Path, e: Errno) -> Error {
    let is_link = dir
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    match e {
        // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR (or ELOOP).
        Errno::ELOOP | Errno::ENOTDIR if is_link => Error::io(
            "refusing to write through a symlink at",
            dir,
            io::Error::other("it should be a directory"),
        ),
        Errno::ENOTDIR => Error::io("cannot use", dir, io::Error::other("it is not a directory")),
        e => Error::io("cannot open directory", dir, e.into()),
    }
}

fn create_dirs(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))?;
    // mkdir's mode is cut by the umask; set exactly what was asked.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot set the mode of", dir, e))
}

/// Replaces `dir/name` with `content` atomically (see the module comment).
// Kept over tempfile's persist and atomic-write-file: the temp name is fixed,
// so the next run removes a leftover, and every call is relative to a
// directory fd opened with O_NOFOLLOW.
pub fn write_atomic(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: u32,
) -> Result<()> {
    let tmp = temp_name(name);
    let target = dir.join(name);
    let raw = dirfd.as_raw_fd();
    // A temp file left by a run that crashed is removed, not piled up.
    match unlinkat(Some(raw), tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        // Usually there is no temp file at all: name the directory, not it.
        Err(Errno::EROFS) => return Err(Error::io("cannot write in", dir, Errno::EROFS.into())),
        Err(e) => {
            return Err(Error::io(
                "cannot remove stale temp file",
                dir.join(&tmp),
                e.into(),
            ))
        }
    }
    let fd = openat(
        Some(raw),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(|e| Error::io("cannot create", dir.join(&tmp), e.into()))?;
    let mut file = unsafe { File::from_raw_fd(fd) };
    let written = (|| -> io::Result<()> {
        fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))?;
        file.write_all(content)?;
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        let _ = unlinkat(Some(raw), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(Error::io("cannot write", dir.join(&tmp), e));
    }
    if let Err(e) = renameat(
        Some(raw),
        tmp.as_str(),
        Some(raw),
        OsStr::from_bytes(name.as_bytes()),
    ) {
        let _ = unlinkat(Some(raw), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(Error::io("cannot replace", target, e.into()));
    }
    // The rename is durable only once the directory is.
    nix::unistd::fsync(dirfd.as_fd().as_raw_fd())
        .map_err(|e| Error::io("cannot sync directory", dir, e.into()))
}

/// The temp file's name for a target: hidden, and one per target, so a
/// crashed run leaves at most one, which the next run removes.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.vport-bootargs.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn targets(root: &Path) -> Targets {
        Targets {
            cache_dir: root.join("var/cache/cloud"),
            ssh_dir: root.join("root/.ssh"),
        }
    }

    #[test]
    fn creates_directories_and_files_with_exact_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let t = targets(tmp.path());
        let m = Message {
            cmdline: "a=b".into(),
            pubkey: Some("ssh-ed25519 AAAA k".into()),
        };
        store(&m, &t).unwrap();
        assert_eq!(fs::read_to_string(t.cmdline()).unwrap(), "a=b\n");
        assert_eq!(mode(&t.cmdline()), 0o644);
        for dir in [&t.cache_dir, &t.ssh_dir] {
            let keys = dir.join(AUTHORIZED_KEYS_FILE);
            assert_eq!(fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAAA k\n");
            assert_eq!(mode(&keys), 0o600);
        }
        assert_eq!(mode(&t.cache_dir), 0o755);
        assert_eq!(mode(&t.ssh_dir), 0o700);
    }

    #[test]
    fn group_writable_ssh_dir_is_made_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let t = targets(tmp.path());
        fs::create_dir_all(&t.ssh_dir).unwrap();
        fs::set_permissions(&t.ssh_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let m = Message {
            cmdline: "a=b".into(),
            pubkey: Some("ssh-ed25519 AAAA".into()),
        };
        store(&m, &t).unwrap();
        assert_eq!(mode(&t.ssh_dir), 0o700);
    }

    #[test]
    fn stale_temp_file_is_replaced_not_piled_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join(temp_name("cmdline")), "torn").unwrap();
        let fd = open_dir(dir, CACHE_DIR_MODE, false).unwrap();
        write_atomic(&fd, dir, "cmdline", b"new\n", 0o644).unwrap();
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cmdline"]);
    }

    #[test]
    fn symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("elsewhere");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("cache")).unwrap();
        let err = open_dir(&tmp.path().join("cache"), CACHE_DIR_MODE, false).unwrap_err();
        assert!(err
            .to_string()
            .contains("refusing to write through a symlink"));
        assert_eq!(err.exit_code(), crate::error::exit::IO);
    }

    #[test]
    fn stored_cmdline_ignores_blank_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(stored_cmdline(tmp.path()).unwrap(), None);
        fs::write(tmp.path().join(CMDLINE_FILE), " \n").unwrap();
        assert_eq!(stored_cmdline(tmp.path()).unwrap(), None);
        fs::write(tmp.path().join(CMDLINE_FILE), "a=b\n").unwrap();
        assert_eq!(stored_cmdline(tmp.path()).unwrap().as_deref(), Some("a=b"));
    }
}
