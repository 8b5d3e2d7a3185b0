//! Storing the parameters where the system VM's scripts read them, so that
//! after a crash each file is the old one or the new one, never torn.
//!
//! Each file: a temp file in the target's own directory (created with
//! O_EXCL|O_NOFOLLOW), written, fsync'd, renamed over the target, then the
//! directory fsync'd. rename() replaces a symlink planted at the target
//! instead of following it, and the directory is opened with O_NOFOLLOW, so
//! nothing is written outside the configured directories. Missing
//! directories are made with mkdirat() and opened with openat(O_NOFOLLOW)
//! relative to their parent's descriptor, and modes are set with fchmod()
//! on what was opened: nothing is done by path after a check by path.
//!
//! Two runs on one directory take turns: each directory is locked (flock)
//! while it is written, so the fixed temp names (one per target, removed by
//! the next run after a crash or a SIGTERM) are never shared.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{faccessat, unlinkat, AccessFlags, UnlinkatFlags};

use crate::error::{Error, Result};
use crate::files::{self, Refused};
use crate::wire::{Message, MAX_MESSAGE};
use crate::{deadline, info};

pub const CMDLINE_FILE: &str = "cmdline";
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";

pub const CMDLINE_MODE: u32 = 0o644;
pub const KEYS_MODE: u32 = 0o600;
pub const CACHE_DIR_MODE: u32 = 0o755;
pub const SSH_DIR_MODE: u32 = 0o700;
/// Parent directories this program has to create (e.g. `/var/cache`).
pub const PARENT_DIR_MODE: u32 = 0o755;

/// How long to wait for another run that is storing in the same directory:
/// it takes milliseconds; this only keeps a stopped one from hanging us.
const LOCK_WAIT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Cache,
    Ssh,
}

impl Role {
    fn option(self) -> &'static str {
        match self {
            Role::Cache => "--cache-dir",
            Role::Ssh => "--ssh-dir",
        }
    }
}

/// Stores a whole message: the key files first, the cmdline last, since
/// scripts that wait for the cmdline file take it as "parameters are here".
/// Without a pubkey the key files are left as they are.
pub fn store(message: &Message, targets: &Targets) -> Result<()> {
    check_distinct(targets)?;
    // Every directory is opened (and refused, if it is a symlink or not a
    // directory) before any file is written, so that a refused directory
    // leaves all the files as they were.
    let cache = open_target(&targets.cache_dir, Role::Cache)?;
    let ssh = match &message.pubkey {
        Some(_) => Some(open_target(&targets.ssh_dir, Role::Ssh)?),
        None => None,
    };
    let cache = lock(cache, &targets.cache_dir)?;
    remove_leftovers(&cache);
    if let (Some(key), Some(ssh)) = (&message.pubkey, ssh) {
        let ssh = lock(ssh, &targets.ssh_dir)?;
        remove_leftovers(&ssh);
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

/// Refuses, before the port is opened, what [`store`] would refuse after
/// the host's message has been read (a one-shot delivery would then be
/// lost): a directory that is a symlink or not a directory, one that cannot
/// be written (a read-only filesystem), the root directory, a shared sticky
/// directory as the ssh dir, the ssh dir being the cache dir. A missing
/// directory is fine when its nearest existing parent is a writable
/// directory. Also removes the temp files a killed run left.
pub fn check_targets(targets: &Targets) -> Result<()> {
    check_distinct(targets)?;
    for (dir, role) in [
        (&targets.cache_dir, Role::Cache),
        (&targets.ssh_dir, Role::Ssh),
    ] {
        match open_nofollow(dir) {
            Ok(fd) => {
                check_existing(&fd, dir, role)?;
                check_writable(&fd, dir)?;
                // Only when no other run is storing there: its temp files
                // are not leftovers.
                if let Ok(locked) = Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
                    remove_leftovers(&locked);
                }
            }
            Err(Errno::ENOENT) => check_creatable(dir)?,
            Err(e) => return Err(dir_error(dir, e)),
        }
    }
    Ok(())
}

/// The stored cmdline, without its newline; None when the file is missing
/// or holds only white space. Read only when it is a regular file (not
/// through a symlink, never a FIFO or a device) of at most the message
/// limit, and refused when it holds a NUL byte, which no message can carry.
pub fn stored_cmdline(cache_dir: &Path) -> Result<Option<String>> {
    let path = cache_dir.join(CMDLINE_FILE);
    let bad = |problem: String| Error::BadStored {
        path: path.clone(),
        problem,
    };
    let bytes = match files::read_regular(&path, MAX_MESSAGE, false) {
        Ok(b) => b,
        Err(Refused::Missing) => return Ok(None),
        Err(Refused::Io(e)) => return Err(Error::io("cannot read", path, e)),
        Err(why) => return Err(bad(why.to_string())),
    };
    if bytes.contains(&0) {
        return Err(bad("holds a NUL byte".into()));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".into()))?;
    let text = text.trim_end_matches('\n');
    Ok((!text.trim().is_empty()).then(|| text.to_owned()))
}

/// The two directories must be two, and neither may be `/`.
fn check_distinct(targets: &Targets) -> Result<()> {
    for (dir, role) in [
        (&targets.cache_dir, Role::Cache),
        (&targets.ssh_dir, Role::Ssh),
    ] {
        if same_dir(dir, Path::new("/")) {
            return Err(Error::Usage(format!(
                "{} {}: refusing to store files in the root directory",
                role.option(),
                dir.display()
            )));
        }
    }
    if same_dir(&targets.cache_dir, &targets.ssh_dir) {
        return Err(Error::Usage(format!(
            "--ssh-dir {} is the cache directory {}: the keys need a directory of their own \
             (OpenSSH wants it 0700; the cache is 0755)",
            targets.ssh_dir.display(),
            targets.cache_dir.display()
        )));
    }
    Ok(())
}

/// Same directory: same inode when both exist, else the same path.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// Rules for a directory that exists, on its opened descriptor.
fn check_existing(fd: &OwnedFd, dir: &Path, role: Role) -> Result<()> {
    let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io("cannot stat", dir, e.into()))?;
    if role == Role::Ssh && st.st_mode & 0o1000 != 0 {
        return Err(Error::Usage(format!(
            "--ssh-dir {} is a shared directory (sticky bit, mode {:o}, like /tmp): \
             refusing to keep keys in it or to change its mode",
            dir.display(),
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Writable where that can be known before writing: access(2) answers
/// EROFS for a read-only filesystem, and EACCES by mode for non-root.
fn check_writable(fd: &OwnedFd, dir: &Path) -> Result<()> {
    faccessat(
        Some(fd.as_raw_fd()),
        ".",
        AccessFlags::W_OK | AccessFlags::X_OK,
        AtFlags::empty(),
    )
    .map_err(|e| Error::io("cannot write in", dir, e.into()))
}

/// A missing directory: its nearest existing parent must be a writable
/// directory, since that is where it will be made.
fn check_creatable(dir: &Path) -> Result<()> {
    let mut parent = dir;
    loop {
        parent = match parent.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match open_following(parent) {
            Ok(fd) => return check_writable(&fd, parent),
            Err(Errno::ENOENT) if parent != Path::new(".") => continue,
            Err(e) => return Err(dir_error(parent, e)),
        }
    }
}

fn open_nofollow(dir: &Path) -> nix::Result<OwnedFd> {
    open_dir_fd(None, dir, OFlag::O_NOFOLLOW)
}

/// An existing parent of a target: symlinks in it are the system's layout.
fn open_following(dir: &Path) -> nix::Result<OwnedFd> {
    open_dir_fd(None, dir, OFlag::empty())
}

fn open_dir_fd<P: ?Sized + nix::NixPath>(
    at: Option<&OwnedFd>,
    path: &P,
    extra: OFlag,
) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra;
    let fd = match at {
        Some(at) => openat(Some(at.as_raw_fd()), path, flags, Mode::empty())?,
        None => nix::fcntl::open(path, flags, Mode::empty())?,
    };
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a target directory, making it (and missing parents) if needed, and
/// applies its mode rules: a directory we make gets exactly its mode (0755
/// cache, 0700 ssh); an existing ssh dir loses only group and world write,
/// what OpenSSH's StrictModes refuses, and is otherwise left as it is.
fn open_target(dir: &Path, role: Role) -> Result<OwnedFd> {
    let mode = match role {
        Role::Cache => CACHE_DIR_MODE,
        Role::Ssh => SSH_DIR_MODE,
    };
    let fd = match open_nofollow(dir) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return create_dirs(dir, mode),
        Err(e) => return Err(dir_error(dir, e)),
    };
    check_existing(&fd, dir, role)?;
    if role == Role::Ssh {
        let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io("cannot stat", dir, e.into()))?;
        let current = st.st_mode & 0o7777;
        if current & 0o022 != 0 {
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(current & !0o022))
                .map_err(|e| Error::io("cannot set the mode of", dir, e.into()))?;
            info!(
                "{} was group- or world-writable (mode {current:o}), which OpenSSH refuses; made it {:o}",
                dir.display(),
                current & !0o022
            );
        }
    }
    Ok(fd)
}

/// Makes `dir` and its missing parents: from the nearest existing parent
/// down, each made with mkdirat() and opened with openat(O_NOFOLLOW) in the
/// descriptor of the one above, its mode set with fchmod() on that
/// descriptor (mkdir's mode is cut by the umask), and the parent fsync'd
/// so that the new entry is on disk. The last gets `mode`; it is never more
/// open than that, even for a moment.
fn create_dirs(dir: &Path, mode: u32) -> Result<OwnedFd> {
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut base = dir;
    let mut fd = loop {
        let Some(name) = base.file_name() else {
            return Err(dir_error(dir, Errno::ENOENT));
        };
        missing.push(name);
        base = match base.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match open_following(base) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if base != Path::new(".") => continue,
            Err(e) => return Err(dir_error(base, e)),
        }
    };
    let mut path = base.to_path_buf();
    while let Some(name) = missing.pop() {
        path.push(name);
        let want = if missing.is_empty() {
            mode
        } else {
            PARENT_DIR_MODE
        };
        let made = match mkdirat(Some(fd.as_raw_fd()), name, Mode::from_bits_truncate(want)) {
            Ok(()) => true,
            // Made meanwhile by someone else: used as it is.
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(Error::io("cannot create directory", &path, e.into())),
        };
        let child =
            open_dir_fd(Some(&fd), name, OFlag::O_NOFOLLOW).map_err(|e| dir_error(&path, e))?;
        if made {
            fchmod(child.as_raw_fd(), Mode::from_bits_truncate(want))
                .map_err(|e| Error::io("cannot set the mode of", &path, e.into()))?;
            // The new entry is on disk only once its parent is: without
            // this, a power cut could lose the directory with the files
            // stored (and fsync'd) in it.
            nix::unistd::fsync(fd.as_raw_fd())
                .map_err(|e| Error::io("cannot flush", path.parent().unwrap_or(&path), e.into()))?;
        }
        fd = child;
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

/// Takes the directory's lock, waiting up to LOCK_WAIT while another run
/// holds it. flock(2) has no timeout, so the blocking call runs on a thread
/// and the wait for its answer has the deadline: asleep in the kernel, not
/// retrying.
fn lock(fd: OwnedFd, dir: &Path) -> Result<Flock<OwnedFd>> {
    let fd = match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => return Ok(locked),
        Err((back, Errno::EWOULDBLOCK)) => back,
        Err((_, e)) => return Err(Error::io("cannot lock", dir, e.into())),
    };
    info!(
        "another process is storing in {}; waiting for it",
        dir.display()
    );
    // The answer comes back in a slot, and the thread waiting for it is
    // unparked: parked with a timeout, it sleeps in the kernel (futex) until
    // either. (A park and a Mutex, not an mpsc channel: the channel's code
    // was 8 KB of the static binary; docs/packaging.md.)
    let waiting = thread::current();
    let answer = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&answer);
    thread::spawn(move || {
        let got = Flock::lock(fd, FlockArg::LockExclusive).map_err(|(_, e)| e);
        *slot.lock().unwrap() = Some(got);
        waiting.unpark();
    });
    let until = deadline::in_(LOCK_WAIT);
    loop {
        // park_timeout may also return early (spuriously, or for an
        // earlier unpark): without an answer, park again.
        if let Some(got) = answer.lock().unwrap().take() {
            return got.map_err(|e| Error::io("cannot lock", dir, e.into()));
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // The thread stays blocked in flock(); the process is about to exit.
            return Err(Error::Unavailable(format!(
                "{} stayed locked by another process for {} s",
                dir.display(),
                LOCK_WAIT.as_secs()
            )));
        }
        thread::park_timeout(left);
    }
}

/// Removes the temp files a killed run left, best effort: a later write
/// removes its own anyway. Only with the directory locked.
fn remove_leftovers(dirfd: &OwnedFd) {
    for name in [CMDLINE_FILE, AUTHORIZED_KEYS_FILE] {
        let _ = unlinkat(
            Some(dirfd.as_raw_fd()),
            temp_name(name).as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
    }
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

    fn with_key() -> Message {
        Message {
            cmdline: "a=b".into(),
            pubkey: Some("ssh-ed25519 AAAA".into()),
        }
    }

    #[test]
    fn existing_ssh_dir_loses_only_group_and_world_write() {
        let tmp = tempfile::tempdir().unwrap();
        let t = targets(tmp.path());
        fs::create_dir_all(&t.ssh_dir).unwrap();
        for (before, after) in [(0o777, 0o755), (0o750, 0o750), (0o2770, 0o2750)] {
            fs::set_permissions(&t.ssh_dir, fs::Permissions::from_mode(before)).unwrap();
            store(&with_key(), &t).unwrap();
            assert_eq!(mode(&t.ssh_dir), after, "{before:o}");
        }
    }

    #[test]
    fn sticky_shared_ssh_dir_is_refused_and_left_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let t = targets(tmp.path());
        fs::create_dir_all(&t.ssh_dir).unwrap();
        fs::set_permissions(&t.ssh_dir, fs::Permissions::from_mode(0o1777)).unwrap();
        for err in [
            check_targets(&t).unwrap_err(),
            store(&with_key(), &t).unwrap_err(),
        ] {
            assert!(err.to_string().contains("sticky bit"), "{err}");
            assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        }
        assert_eq!(mode(&t.ssh_dir), 0o1777);
        assert!(!t.cmdline().exists());
    }

    #[test]
    fn ssh_dir_equal_to_cache_dir_or_root_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let same = Targets {
            cache_dir: cache.clone(),
            ssh_dir: cache.join("."),
        };
        for t in [
            same.clone(),
            Targets {
                ssh_dir: cache.join("x/.."),
                ..same.clone()
            },
        ] {
            fs::create_dir_all(cache.join("x")).unwrap();
            let err = check_targets(&t).unwrap_err();
            assert!(err.to_string().contains("is the cache directory"), "{err}");
            assert!(store(&with_key(), &t).is_err());
        }
        let missing = Targets {
            cache_dir: tmp.path().join("a/b"),
            ssh_dir: tmp.path().join("a/b/"),
        };
        assert!(check_targets(&missing).is_err());
        for root in ["/", "//", "/."] {
            let t = Targets {
                cache_dir: root.into(),
                ssh_dir: tmp.path().join("ssh"),
            };
            let err = check_targets(&t).unwrap_err();
            assert!(err.to_string().contains("root directory"), "{err}");
            assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        }
    }

    #[test]
    fn missing_dirs_are_made_below_the_nearest_existing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let t = targets(tmp.path());
        check_targets(&t).unwrap();
        assert!(!t.cache_dir.exists(), "a check makes nothing");
        store(&with_key(), &t).unwrap();
        assert_eq!(mode(&tmp.path().join("var")), PARENT_DIR_MODE);
        assert_eq!(mode(&tmp.path().join("root")), PARENT_DIR_MODE);
        assert_eq!(mode(&t.ssh_dir), SSH_DIR_MODE);
        // A missing directory whose nearest parent is a file cannot be made.
        fs::write(tmp.path().join("file"), "").unwrap();
        let t = Targets {
            cache_dir: tmp.path().join("file/cache"),
            ssh_dir: tmp.path().join("ssh"),
        };
        let err = check_targets(&t).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn stale_temp_file_is_replaced_not_piled_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join(temp_name("cmdline")), "torn").unwrap();
        let fd = open_target(dir, Role::Cache).unwrap();
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
        let err = open_target(&tmp.path().join("cache"), Role::Cache).unwrap_err();
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
