//! The boot job's own restriction: Landlock (Linux 5.13 and later), set
//! right after the command line is parsed, before any thread is started or
//! any port or file is read. From then on the process, and every thread and
//! child it starts, opens files only beneath the paths given here, with the
//! rights given here, whatever the host sends it.
//!
//! This replaces the unit's mount-namespace settings (`ProtectSystem=strict`,
//! `ReadWritePaths=`, `ProtectHome=`), which under TCG cost seconds of
//! systemd's setup on every boot (docs/packaging.md has the figures).
//!
//! Three system calls, no crate: `landlock_create_ruleset`,
//! `landlock_add_rule` (one path-beneath rule per path),
//! `landlock_restrict_self` (after `PR_SET_NO_NEW_PRIVS`, which the kernel
//! requires of a process without `CAP_SYS_ADMIN`). The rights handled are
//! all the filesystem rights of the kernel's ABI, up to ABI 3, so what is
//! not allowed here is denied: on bookworm's 6.1 (ABI 2) that is every
//! open, create, remove, rename and link; truncation by `truncate()` arrives
//! with ABI 3 (opening a file for writing is denied on ABI 2 already).
//! A kernel without Landlock, or booted without it in `lsm=`, refuses the
//! first call (ENOSYS, EOPNOTSUPP): the job then says so and runs with the
//! unit's other protections only.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;

use super::barrier::BarrierOptions;
use super::boot::BootOptions;
use super::fetch::FetchOptions;
use crate::error::{Error, Result};

/// Where the job may go: read-only trees (sysfs, procfs), device trees
/// (opened for reading and writing: the port, for the ack), and trees it
/// writes (the cache and ssh directories, the state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub read: Vec<PathBuf>,
    pub devices: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl Access {
    /// `fetch`: reads sysfs, opens the port under the dev root (for
    /// writing too: the ack), stores into the cache and ssh directories.
    pub fn for_fetch(opts: &FetchOptions) -> Access {
        Access {
            read: vec![opts.sysfs_root.clone()],
            devices: vec![opts.dev_root.clone()],
            write: vec![opts.targets.cache_dir.clone(), opts.targets.ssh_dir.clone()],
        }
    }

    /// `barrier`: reads sysfs and procfs (who holds the file or the guest
    /// agent's port open), watches the dev root without opening a device,
    /// and may move the cmdline aside in the cache directory.
    pub fn for_barrier(opts: &BarrierOptions) -> Access {
        Access {
            read: vec![
                opts.sysfs_root.clone(),
                opts.dev_root.clone(),
                opts.proc_root.clone(),
            ],
            devices: vec![],
            write: vec![opts.cache_dir.clone()],
        }
    }
}

/// The boot job: both sides at once, and it reads and removes the
/// shutdown record in the state directory.
impl Access {
    pub fn for_boot(opts: &BootOptions) -> Access {
        let fetch = Access::for_fetch(&opts.fetch);
        let barrier = Access::for_barrier(&opts.barrier);
        let mut access = Access {
            read: vec![
                opts.fetch.sysfs_root.clone(),
                opts.barrier.proc_root.clone(),
            ],
            devices: fetch.devices,
            write: fetch.write,
        };
        for p in barrier.write.into_iter().chain([opts.state_dir.clone()]) {
            if !access.write.contains(&p) {
                access.write.push(p);
            }
        }
        access
    }
}

/// What [`restrict`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    /// The process is restricted; the kernel's Landlock ABI.
    Enforced { abi: u32 },
    /// This kernel has no Landlock (or it is not in the active LSMs).
    Unsupported,
}

// The filesystem rights, include/uapi/linux/landlock.h.
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
/// ABI 1: everything from EXECUTE to MAKE_SYM.
const ABI1_ALL: u64 = (1 << 13) - 1;
/// ABI 2: linking or renaming into another directory.
const REFER: u64 = 1 << 13;
/// ABI 3: truncate().
const TRUNCATE: u64 = 1 << 14;

const READ: u64 = READ_FILE | READ_DIR;
/// Storing atomically: temporary file, rename over the target, the
/// directories made where missing; the barrier moves a bad cmdline aside.
const WRITE: u64 = READ | WRITE_FILE | MAKE_REG | MAKE_DIR | REMOVE_FILE | REFER | TRUNCATE;
const DEVICE: u64 = READ_FILE | WRITE_FILE | READ_DIR;
/// What a rule on a file (not a directory) may hold.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The rights this kernel's ABI knows (and the job handles).
fn handled(abi: u32) -> u64 {
    match abi {
        0 => 0,
        1 => ABI1_ALL,
        2 => ABI1_ALL | REFER,
        _ => ABI1_ALL | REFER | TRUNCATE,
    }
}

/// Restricts the calling thread, and every thread and process it starts
/// afterwards, to `access`. Call it before starting any other thread.
pub fn restrict(access: &Access) -> Result<Restricted> {
    // SAFETY: the version query takes no attribute (NULL, 0).
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(Restricted::Unsupported),
            _ => Err(landlock_error("landlock_create_ruleset", e)),
        };
    }
    let abi = abi as u32;
    let handled = handled(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: attr is a valid ruleset attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(landlock_error(
            "landlock_create_ruleset",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (paths, rights) in [
        (&access.read, READ),
        (&access.devices, DEVICE),
        (&access.write, WRITE),
    ] {
        for path in paths {
            add_rule(&ruleset, path, rights & handled)?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(landlock_error(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the ruleset descriptor is open; no flags.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) } != 0 {
        return Err(landlock_error(
            "landlock_restrict_self",
            io::Error::last_os_error(),
        ));
    }
    Ok(Restricted::Enforced { abi })
}

/// One path-beneath rule. A path not there yet (a cache directory that
/// the store will make) gives its rule to the nearest ancestor that is,
/// where the directories will be made; a file gets only a file's rights.
fn add_rule(ruleset: &OwnedFd, path: &Path, rights: u64) -> Result<()> {
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("/"));
    let file = open_path(existing).map_err(|e| Error::io("cannot open", existing, e))?;
    let is_dir = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", existing, e))?
        .is_dir();
    let rule = PathBeneathAttr {
        allowed_access: if is_dir { rights } else { rights & FILE_RIGHTS },
        parent_fd: file.as_raw_fd(),
    };
    // SAFETY: rule is a valid path-beneath attribute; its fd stays open
    // for the call.
    let added = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0u32,
        )
    };
    if added != 0 {
        return Err(Error::io(
            "cannot add a Landlock rule for",
            existing,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn open_path(path: &Path) -> io::Result<File> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a NUL-terminated path; O_PATH opens nothing's contents.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open() just returned this descriptor.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn landlock_error(call: &'static str, source: io::Error) -> Error {
    Error::io(
        "cannot restrict the process with Landlock:",
        PathBuf::from(call),
        source,
    )
}

/// Restricts the job to its paths (Landlock) and to its system calls
/// ([`super::filter`]), and says how, once, at debug level when enforced and
/// as a warning when this kernel cannot.
pub fn restrict_job(access: &Access) -> Result<()> {
    match restrict(access)? {
        Restricted::Enforced { abi } => crate::debug!(
            "restricted to its paths with Landlock (ABI {abi}): read {}; devices {}; write {}",
            list(&access.read),
            list(&access.devices),
            list(&access.write)
        ),
        Restricted::Unsupported => crate::warn!(
            "this kernel has no Landlock (not built in, or not in lsm=): running without the restriction to its paths"
        ),
    }
    match super::filter::install()? {
        super::filter::Filtered::Enforced { len } => crate::debug!(
            "restricted to the system calls it makes ({len} instructions of seccomp filter)"
        ),
        super::filter::Filtered::Unsupported => crate::warn!(
            "this kernel has no seccomp filters: running without the system-call filter"
        ),
    }
    Ok(())
}

fn list(paths: &[PathBuf]) -> String {
    let v: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::ErrorKind;
    use std::time::Duration;

    /// Runs `f` on a thread of its own restricted to `access`: Landlock
    /// restricts the calling thread only, so the test runner's stay free.
    fn restricted<T: Send + 'static>(access: Access, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            assert!(
                matches!(restrict(&access), Ok(Restricted::Enforced { .. })),
                "this kernel must have Landlock for these tests"
            );
            f()
        })
        .join()
        .unwrap()
    }

    /// A fake tree, and `fetch`'s rules for it (through the same
    /// [`Access::for_fetch`] the command uses).
    fn tree() -> (tempfile::TempDir, Access) {
        let t = tempfile::tempdir().unwrap();
        for d in [
            "sys/class/virtio-ports/vport1p1",
            "dev",
            "cache",
            "ssh",
            "outside",
            "proc/1",
        ] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(
            t.path().join("sys/class/virtio-ports/vport1p1/name"),
            "s.vport\n",
        )
        .unwrap();
        fs::write(t.path().join("dev/vport1p1"), "").unwrap();
        fs::write(t.path().join("outside/file"), "x").unwrap();
        fs::write(t.path().join("proc/1/mem"), "").unwrap();
        let opts = FetchOptions {
            sysfs_root: t.path().join("sys"),
            dev_root: t.path().join("dev"),
            selector: crate::guest::ports::Selector {
                pattern: "*.vport".into(),
                name: None,
                fifo_stand_in: true,
            },
            targets: crate::guest::store::Targets {
                cache_dir: t.path().join("cache"),
                ssh_dir: t.path().join("ssh"),
            },
            timeout: Duration::ZERO,
            port_timeout: Duration::ZERO,
            grace: Duration::ZERO,
            settle: Duration::ZERO,
            no_channel_after: Duration::ZERO,
            ack: true,
        };
        (t, Access::for_fetch(&opts))
    }

    fn barrier_access(root: &Path) -> Access {
        Access::for_barrier(&BarrierOptions {
            sysfs_root: root.join("sys"),
            dev_root: root.join("dev"),
            proc_root: root.join("proc"),
            cache_dir: root.join("cache"),
            pattern: "*.vport".into(),
            timeout: Duration::ZERO,
            grace: Duration::ZERO,
        })
    }

    fn denied<T: std::fmt::Debug>(what: &str, r: io::Result<T>) {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::PermissionDenied, "{what}");
    }

    #[test]
    fn restricted_job_writes_its_directories_and_reads_sysfs() {
        let (t, access) = tree();
        let root = t.path().to_owned();
        restricted(access, move || {
            fs::write(root.join("cache/cmdline.tmp"), "a=1").unwrap();
            fs::rename(root.join("cache/cmdline.tmp"), root.join("cache/cmdline")).unwrap();
            fs::create_dir_all(root.join("ssh/sub")).unwrap();
            fs::remove_file(root.join("cache/cmdline")).unwrap();
            let name = fs::read_to_string(root.join("sys/class/virtio-ports/vport1p1/name"));
            assert_eq!(name.unwrap(), "s.vport\n");
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(root.join("dev/vport1p1"))
                .unwrap();
        });
    }

    #[test]
    fn restricted_job_cannot_write_outside_its_directories() {
        let (t, access) = tree();
        let root = t.path().to_owned();
        restricted(access, move || {
            denied("create outside", fs::write(root.join("outside/new"), "x"));
            denied(
                "overwrite outside",
                fs::write(root.join("outside/file"), "y"),
            );
            denied("remove outside", fs::remove_file(root.join("outside/file")));
            denied("read outside", fs::read(root.join("outside/file")));
            let name = root.join("sys/class/virtio-ports/vport1p1/name");
            denied("write sysfs", OpenOptions::new().write(true).open(name));
            denied("create in /dev", fs::write(root.join("dev/planted"), "x"));
            denied("procfs", fs::read(root.join("proc/1/mem")));
            denied(
                "move in from outside",
                fs::rename(root.join("outside/file"), root.join("cache/file")),
            );
        });
        assert_eq!(
            fs::read_to_string(t.path().join("outside/file")).unwrap(),
            "x"
        );
    }

    #[test]
    fn restricted_barrier_reads_proc_and_opens_no_device() {
        let (t, _) = tree();
        let root = t.path().to_owned();
        restricted(barrier_access(&root), move || {
            fs::read(root.join("proc/1/mem")).unwrap();
            denied(
                "write procfs",
                OpenOptions::new().write(true).open(root.join("proc/1/mem")),
            );
            denied(
                "open the port for writing",
                OpenOptions::new()
                    .write(true)
                    .open(root.join("dev/vport1p1")),
            );
            denied(
                "write ssh",
                fs::write(root.join("ssh/authorized_keys"), "k"),
            );
            fs::write(root.join("cache/cmdline"), "a=1").unwrap();
            fs::rename(root.join("cache/cmdline"), root.join("cache/cmdline.bad")).unwrap();
        });
    }

    #[test]
    fn restricted_job_cannot_open_devices_outside_its_device_tree() {
        let (_t, access) = tree();
        restricted(access, || {
            for dev in ["/dev/null", "/dev/zero"] {
                let e = OpenOptions::new().read(true).open(dev).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{dev}");
            }
        });
    }

    #[test]
    fn missing_directory_is_allowed_through_its_nearest_ancestor() {
        let (t, mut access) = tree();
        access.write = vec![t.path().join("cache/cloud/deeper")];
        let root = t.path().to_owned();
        restricted(access, move || {
            fs::create_dir_all(root.join("cache/cloud/deeper")).unwrap();
            fs::write(root.join("cache/cloud/deeper/cmdline"), "a=1").unwrap();
            let e = fs::write(root.join("ssh/x"), "x").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        });
    }

    #[test]
    fn handled_rights_follow_the_kernels_abi() {
        assert_eq!(handled(1) & REFER, 0);
        assert_eq!(handled(2) & (REFER | TRUNCATE), REFER);
        assert_eq!(handled(6) & TRUNCATE, TRUNCATE);
        assert_eq!(handled(6) >> 15, 0, "no right this code does not know");
    }
}
