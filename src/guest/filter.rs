//! The boot job's own system-call filter: a seccomp BPF program of about
//! 220 instructions, built in microseconds and installed right after
//! Landlock, before any thread is started. It replaces the unit's
//! `SystemCallFilter=`, `SystemCallArchitectures=`,
//! `MemoryDenyWriteExecute=`, `RestrictNamespaces=`, `RestrictSUIDSGID=`,
//! `RestrictRealtime=`, `LockPersonality=` and `ProtectClock=`: systemd
//! compiles those with libseccomp at every start, which under TCG cost
//! about 2 s of every boot (docs/packaging.md has the figures).
//!
//! An allow list, from what the jobs call (strace of the test suites and
//! of booted system VMs, glibc and musl builds): file and directory calls
//! (Landlock decides which paths), poll, epoll and inotify, pipes, memory,
//! signals to itself, threads, time, and the uevent socket. Anything else
//! fails with ENOSYS, so that a C library's fallback (glibc's clone3 to
//! clone) still works and a call the list missed is an error the job
//! reports, not a killed boot. Some calls are allowed only with some
//! arguments, failing with EPERM (EAFNOSUPPORT for a socket) otherwise:
//!
//! - `mmap`, `mprotect`: never executable memory;
//! - `clone`: threads only, in no new namespace (no process: nothing to
//!   run);
//! - `socket`: the kernel's uevents only (AF_NETLINK, NETLINK_KOBJECT_UEVENT);
//! - `tgkill`: this process's own threads (`abort()`);
//! - `open`, `openat`, `fchmod`: no set-user-ID or set-group-ID bit.
//!
//! Not allowed at all, among others: `execve`, `kill`, `ptrace`,
//! `process_vm_readv`, `ioctl`, `mount`, `unshare`, `setns`, `bpf`,
//! `personality`, `settimeofday`, `clock_settime`, `sched_setscheduler`,
//! `keyctl`, `seccomp` and `prctl`. A foreign architecture's calls kill
//! the process; x32's on x86_64 fail with ENOSYS.

use std::io;
use std::path::PathBuf;

use nix::libc;

use crate::error::{Error, Result};

// Classic BPF, include/uapi/linux/filter.h and bpf_common.h.
/// BPF_LD | BPF_W | BPF_ABS (the first two are 0).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x05 | 0x10;
const JSET_K: u16 = 0x05 | 0x40;
const RET_K: u16 = 0x06;

// struct seccomp_data: nr, arch, instruction pointer, then six u64
// arguments; the low word of each comes first on both little-endian
// targets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32's calls on x86_64: the same arch word, this bit in the number.
const X32_BIT: u32 = 0x4000_0000;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// What an argument must be for the call to be allowed.
#[derive(Clone, Copy)]
enum Must {
    /// None of these bits set.
    Clear(u32, u32),
    /// All of these bits set (tested as any: used with one bit).
    Set(u32, u32),
    /// Equal to this.
    Eq(u32, u32),
    /// This process's id.
    OwnPid(u32),
}

const PROT_EXEC: u32 = libc::PROT_EXEC as u32;
const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
const NEW_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// System-call numbers as u16 (all are below 1024 on both targets):
/// a quarter of the space of `c_long`s in the binary.
macro_rules! numbers {
    ($($(#[$m:meta])* $nr:path,)*) => {
        &[$($(#[$m])* ($nr as u16),)*]
    };
}

/// The calls allowed whatever their arguments.
const PLAIN: &[u16] = numbers![
    // Files and directories (Landlock decides where).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    // Waiting.
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_restart_syscall,
    // The uevent socket, once made.
    libc::SYS_bind,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_getsockname,
    libc::SYS_setsockopt,
    // Memory.
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Signals, threads, the process.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // x86_64's older forms, which musl uses there.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
];

/// The calls allowed only with some arguments, and the error otherwise.
const CHECKED: &[(u16, &[Must], i32)] = &[
    (
        libc::SYS_mmap as u16,
        &[Must::Clear(2, PROT_EXEC)],
        libc::EPERM,
    ),
    (
        libc::SYS_mprotect as u16,
        &[Must::Clear(2, PROT_EXEC)],
        libc::EPERM,
    ),
    (
        libc::SYS_clone as u16,
        &[
            Must::Set(0, libc::CLONE_THREAD as u32),
            Must::Clear(0, NEW_NAMESPACES),
        ],
        libc::EPERM,
    ),
    (
        libc::SYS_socket as u16,
        &[
            Must::Eq(0, libc::AF_NETLINK as u32),
            Must::Eq(2, libc::NETLINK_KOBJECT_UEVENT as u32),
        ],
        libc::EAFNOSUPPORT,
    ),
    (libc::SYS_tgkill as u16, &[Must::OwnPid(0)], libc::EPERM),
    (
        libc::SYS_openat as u16,
        &[Must::Clear(3, SUID_SGID)],
        libc::EPERM,
    ),
    (
        libc::SYS_fchmod as u16,
        &[Must::Clear(1, SUID_SGID)],
        libc::EPERM,
    ),
    #[cfg(target_arch = "x86_64")]
    (
        libc::SYS_open as u16,
        &[Must::Clear(2, SUID_SGID)],
        libc::EPERM,
    ),
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program for a process whose id is `pid`.
fn program(pid: u32) -> Vec<libc::sock_filter> {
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    let mut p = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, kill),
        stmt(LD_W_ABS, NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // x32's (and -1, a tracer's cancelled call) fail as unknown.
        p.extend([
            jump(JSET_K, X32_BIT, 0, 1),
            stmt(RET_K, errno(libc::ENOSYS)),
        ]);
    }
    for &nr in PLAIN {
        p.extend([jump(JEQ_K, nr.into(), 0, 1), stmt(RET_K, ALLOW)]);
    }
    for &(nr, musts, denied) in CHECKED {
        // Each test loads its argument and jumps to the error when it
        // fails; after the last, the allow. Every path ends in a return,
        // so the number need not be loaded again.
        let n = musts.len();
        p.push(jump(JEQ_K, nr.into(), 0, (2 * n + 2) as u8));
        for (i, m) in musts.iter().enumerate() {
            let fail = (2 * (n - i) - 1) as u8;
            let (idx, test) = match *m {
                Must::Clear(a, bits) => (a, jump(JSET_K, bits, fail, 0)),
                Must::Set(a, bits) => (a, jump(JSET_K, bits, 0, fail)),
                Must::Eq(a, v) => (a, jump(JEQ_K, v, 0, fail)),
                Must::OwnPid(a) => (a, jump(JEQ_K, pid, 0, fail)),
            };
            p.extend([stmt(LD_W_ABS, arg(idx)), test]);
        }
        p.extend([stmt(RET_K, ALLOW), stmt(RET_K, errno(denied))]);
    }
    p.push(stmt(RET_K, errno(libc::ENOSYS)));
    p
}

/// What [`install`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// The filter is installed; its length in instructions.
    Enforced { len: usize },
    /// This kernel has no seccomp filters.
    Unsupported,
}

/// Installs the filter on every thread of the process (there should be
/// one). Needs no-new-privileges, which Landlock's restriction has set; it
/// is set again here for a kernel without Landlock.
pub fn install() -> Result<Filtered> {
    let prog = program(std::process::id());
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(filter_error("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    // SAFETY: fprog points at `prog`, alive across the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
            return Ok(Filtered::Unsupported);
        }
        return Err(Error::io(
            "cannot install the system-call filter:",
            PathBuf::from("seccomp"),
            e,
        ));
    }
    Ok(Filtered::Enforced { len: prog.len() })
}

fn filter_error(call: &'static str) -> Error {
    Error::io(
        "cannot install the system-call filter:",
        PathBuf::from(call),
        io::Error::last_os_error(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Runs `f` in a forked child with the filter installed; the child's
    /// exit code is what `f` returns (0 for what the test expects). A fork,
    /// not a thread: TSYNC would filter the whole test runner.
    fn filtered(f: fn() -> i32) -> i32 {
        // SAFETY: the child only installs the filter, runs `f` (plain
        // system calls, no allocation after the filter but the program's)
        // and exits with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let code = match install() {
                    Ok(Filtered::Enforced { .. }) => f(),
                    _ => 99,
                };
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waiting for our own child.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    #[test]
    fn the_jobs_calls_work_under_the_filter() {
        assert_eq!(
            filtered(|| {
                let mut fds = [0; 2];
                // SAFETY: plain calls on our own descriptors.
                unsafe {
                    if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                        return 1;
                    }
                    if libc::write(fds[1], b"x".as_ptr().cast(), 1) != 1 {
                        return 2;
                    }
                    let mut b = [0u8; 1];
                    if libc::read(fds[0], b.as_mut_ptr().cast(), 1) != 1 {
                        return 3;
                    }
                    let s = libc::socket(
                        libc::AF_NETLINK,
                        libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                        libc::NETLINK_KOBJECT_UEVENT,
                    );
                    if s < 0 {
                        return 4;
                    }
                    drop(OwnedFd::from_raw_fd(s));
                }
                if std::thread::spawn(|| 7).join().ok() != Some(7) {
                    return 5;
                }
                if std::fs::read_dir("/proc/self/fd")
                    .map(|d| d.count())
                    .unwrap_or(0)
                    == 0
                {
                    return 6;
                }
                0
            }),
            0
        );
    }

    #[test]
    fn what_the_jobs_never_do_is_refused() {
        assert_eq!(
            filtered(|| {
                // SAFETY: each call is refused before it runs; were it not,
                // each is harmless (signal 0, a socket closed at exit, an
                // anonymous mapping).
                unsafe {
                    if errno_of(libc::kill(1, 0) as libc::c_long) != libc::ENOSYS {
                        return 1;
                    }
                    let inet = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if errno_of(inet as libc::c_long) != libc::EAFNOSUPPORT {
                        return 2;
                    }
                    let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    if errno_of(unix as libc::c_long) != libc::EAFNOSUPPORT {
                        return 3;
                    }
                    let route = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM, 0);
                    if errno_of(route as libc::c_long) != libc::EAFNOSUPPORT {
                        return 4;
                    }
                    let exec = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if exec != libc::MAP_FAILED
                        || io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                    {
                        return 5;
                    }
                    if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNET))
                        != libc::ENOSYS
                    {
                        return 6;
                    }
                    // A process, not a thread.
                    let fork = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                    if errno_of(fork) != libc::EPERM {
                        return 7;
                    }
                    let path = b"/\0";
                    let argv = [std::ptr::null::<libc::c_char>()];
                    let ex = libc::execve(path.as_ptr().cast(), argv.as_ptr(), argv.as_ptr());
                    if errno_of(ex as libc::c_long) != libc::ENOSYS {
                        return 8;
                    }
                    if errno_of(libc::ioctl(0, libc::FIONREAD, &mut 0) as libc::c_long)
                        != libc::ENOSYS
                    {
                        return 9;
                    }
                    if errno_of(libc::syscall(libc::SYS_tgkill, 1, 1, 0)) != libc::EPERM {
                        return 10;
                    }
                    if errno_of(libc::syscall(libc::SYS_fchmod, 0, 0o4755)) != libc::EPERM {
                        return 11;
                    }
                    if errno_of(libc::syscall(
                        libc::SYS_ptrace,
                        libc::PTRACE_ATTACH,
                        1,
                        0,
                        0,
                    )) != libc::ENOSYS
                    {
                        return 12;
                    }
                }
                0
            }),
            0
        );
    }

    #[test]
    fn every_jump_stays_inside_the_program() {
        let p = program(1);
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(),
                    "jump at {i}"
                );
            }
        }
        assert_eq!(p.last().unwrap().k, errno(libc::ENOSYS));
        assert!(p.len() < 4096);
    }
}
