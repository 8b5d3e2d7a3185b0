//! What the integration tests share: a fake sysfs + /dev tree to run the
//! binary without a virtio device, a running child whose log lines a test
//! can wait on, the host's end of a FIFO port, and one seeded random source.
//!
//! The tree is `<root>/sys/class/virtio-ports/vportNpM/{name,dev}` as files
//! and `<root>/dev/vportNpM` as a FIFO standing in for the port: read() == 0
//! while no writer is connected, as the port reads 0 while the host is not.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

pub const BIN: &str = env!("CARGO_BIN_EXE_vport-bootargs");
pub const PORT: &str = "s-1-VM.vport";
pub const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCx root@host";
pub const CMDLINE: &str =
    "template=domP type=secstorage name=s-1-VM eth0ip=169.254.3.4 authorized_key=QUJD==";
/// How long a test waits for something the program under test must do
/// before it fails the test: a hang guard, not a timing assertion.
pub const GUARD: Duration = Duration::from_secs(60);

/// CloudStack's message: `pubkey:` (when given), then `cmdline:`.
pub fn message(cmdline: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("pubkey:{key}\ncmdline:{cmdline}\n"),
        None => format!("cmdline:{cmdline}\n"),
    }
}

/// `body` as `send` writes it: its lines, then the end line.
pub fn with_end_line(body: &str) -> Vec<u8> {
    let end = vport_bootargs::wire::end_line(body.as_bytes());
    format!("{body}{end}").into_bytes()
}

pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    /// No ports yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/class/virtio-ports")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        Tree { dir }
    }

    /// One port, named `s-1-VM.vport`, at vport0p1.
    pub fn with_port() -> Self {
        let t = Self::new();
        t.add_port("vport0p1", Some(PORT));
        t
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }
    pub fn sys(&self) -> PathBuf {
        self.path("sys")
    }
    pub fn dev(&self) -> PathBuf {
        self.path("dev")
    }
    pub fn cache(&self) -> PathBuf {
        self.path("var/cache/cloud")
    }
    pub fn ssh(&self) -> PathBuf {
        self.path("root/.ssh")
    }
    pub fn node(&self, entry: &str) -> PathBuf {
        self.dev().join(entry)
    }

    /// A port `entry` (e.g. vport0p1) named `name` (None: no name yet),
    /// with a FIFO as its node.
    pub fn add_port(&self, entry: &str, name: Option<&str>) -> PathBuf {
        let n: u32 = entry.rsplit('p').next().unwrap().parse().unwrap_or(0);
        self.add_sysfs(entry, name, &format!("251:{n}"));
        let node = self.node(entry);
        nix::unistd::mkfifo(&node, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        node
    }

    /// The sysfs class entry of port `entry`.
    pub fn class(&self, entry: &str) -> PathBuf {
        self.sys().join("class/virtio-ports").join(entry)
    }

    pub fn add_sysfs(&self, entry: &str, name: Option<&str>, dev: &str) {
        let dir = self.class(entry);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        if let Some(name) = name {
            fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        }
    }

    /// `<sys>/bus/virtio/devices/virtioN` of type `id`, bound to its
    /// driver or not.
    pub fn add_virtio_device(&self, n: u32, id: &str, bound: bool) {
        let dir = self.sys().join(format!("bus/virtio/devices/virtio{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("device"), format!("{id}\n")).unwrap();
        if bound {
            fs::create_dir_all(dir.join("driver")).unwrap();
        }
    }

    /// `<sys>/bus/pci/devices/<slot>` with `vendor` and `device`.
    pub fn add_pci_device(&self, slot: &str, vendor: &str, device: &str) {
        let dir = self.sys().join("bus/pci/devices").join(slot);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
        fs::write(dir.join("device"), format!("{device}\n")).unwrap();
    }

    /// The udev symlink `/dev/virtio-ports/<name> -> ../<entry>`.
    pub fn add_link(&self, name: &str, entry: &str) {
        let links = self.dev().join("virtio-ports");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(format!("../{entry}"), links.join(name)).unwrap();
    }

    /// The binary with the tree's roots.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--sysfs-root")
            .arg(self.sys())
            .arg("--dev-root")
            .arg(self.dev())
            .arg(sub)
            .stdin(Stdio::null());
        c
    }

    /// `fetch --no-ack` on this tree; `opts` replace the defaults of
    /// `--settle 0.05 --timeout 20 --grace 20 --port-timeout 20`, and other
    /// options in `opts` are added.
    pub fn fetch(&self, opts: &[(&str, &str)]) -> Command {
        self.fetch_with(&self.cache(), &self.ssh(), opts)
    }

    pub fn fetch_with(&self, cache: &Path, ssh: &Path, opts: &[(&str, &str)]) -> Command {
        self.fetch_command(cache, ssh, opts, false)
    }

    /// [`Tree::fetch`] with the ack and the nak written back, as in
    /// production: into the FIFO, where the host's end finds them
    /// ([`left_in_pipe`]) once `fetch` has stopped reading.
    pub fn fetch_acking(&self, opts: &[(&str, &str)]) -> Command {
        self.fetch_command(&self.cache(), &self.ssh(), opts, true)
    }

    fn fetch_command(&self, cache: &Path, ssh: &Path, opts: &[(&str, &str)], ack: bool) -> Command {
        let mut c = self.cmd("fetch");
        if !ack {
            c.arg("--no-ack");
        }
        c.arg("--fifo-stand-in")
            .arg("--cache-dir")
            .arg(cache)
            .arg("--ssh-dir")
            .arg(ssh);
        let defaults = [
            ("--settle", "0.05"),
            ("--timeout", "20"),
            ("--grace", "20"),
            ("--port-timeout", "20"),
        ];
        for (opt, default) in defaults {
            let value = opts
                .iter()
                .find(|(o, _)| *o == opt)
                .map_or(default, |o| o.1);
            c.args([opt, value]);
        }
        for (opt, value) in opts {
            if !defaults.iter().any(|(o, _)| o == opt) {
                c.args([opt, value]);
            }
        }
        c
    }

    /// Writes `bytes` into the FIFO of `entry` and keeps it open, as a host
    /// that is connected before the helper starts: the data waits in the
    /// pipe, and nothing races the reader. The pipe is grown to 1 MiB so
    /// that messages over the limits fit without a reader.
    pub fn offer(&self, entry: &str, bytes: &[u8]) -> File {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.node(entry))
            .unwrap();
        fcntl(f.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    pub fn stored_cmdline(&self) -> Option<String> {
        read(&self.cache().join("cmdline"))
    }

    /// Targets holding the old parameters, as after an earlier boot.
    pub fn store_old(&self) {
        write_file(&self.cache().join("cmdline"), &format!("{CMDLINE_OLD}\n"));
        write_file(
            &self.cache().join("authorized_keys"),
            &format!("{KEY_OLD}\n"),
        );
        write_file(&self.ssh().join("authorized_keys"), &format!("{KEY_OLD}\n"));
    }

    /// What each target holds (cmdline, the cache's and the ssh dir's
    /// authorized_keys), None when missing.
    pub fn targets(&self) -> [Option<String>; 3] {
        [
            read(&self.cache().join("cmdline")),
            read(&self.cache().join("authorized_keys")),
            read(&self.ssh().join("authorized_keys")),
        ]
    }
}

pub const KEY_OLD: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCold old@host";
pub const KEY_NEW: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAInew new@host";
pub const CMDLINE_OLD: &str = "type=secstorage name=s-1-VM gen=old";
pub const CMDLINE_NEW: &str = "type=consoleproxy name=v-2-VM gen=new";

pub fn old_targets() -> [Option<String>; 3] {
    [
        Some(format!("{CMDLINE_OLD}\n")),
        Some(format!("{KEY_OLD}\n")),
        Some(format!("{KEY_OLD}\n")),
    ]
}

pub fn new_targets() -> [Option<String>; 3] {
    [
        Some(format!("{CMDLINE_NEW}\n")),
        Some(format!("{KEY_NEW}\n")),
        Some(format!("{KEY_NEW}\n")),
    ]
}

/// Whatever is waiting in the FIFO `host` holds open (non-blocking).
pub fn left_in_pipe(host: &File) -> Vec<u8> {
    let fd = host.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*host).read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

pub fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

pub fn write_file(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub fn code(out: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    out.status.code().unwrap_or_else(|| {
        panic!(
            "killed by {:?}: {}",
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to its end, failing the test if that takes over GUARD. The
/// output is read meanwhile, so a large one cannot stall the child.
pub fn run_guarded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as nix::libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(GUARD) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill(2) on our own child, still unreaped.
            unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) };
            panic!("{cmd:?} hung for {GUARD:?}");
        }
    }
}

/// The one `error:` line of a failed run.
pub fn error_line(out: &Output) -> String {
    let text = stderr(out);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{text}");
    errors[0].to_owned()
}

/// Every path below `dir`, relative, sorted (empty when `dir` is missing):
/// to show exactly what is there and that nothing else was left.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A running child (the binary) whose stderr lines the test can wait on.
pub struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    log: String,
    opened: bool,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            log: String::new(),
            opened: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the log line containing `needle` and returns it; fails the
    /// test if the child's log ends first or nothing comes within GUARD.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let until = Instant::now() + GUARD;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log += &line;
                    self.log.push('\n');
                    self.opened |= line.contains("opened port");
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no log line with {needle:?} ({e}); the log:\n{}", self.log),
            }
        }
    }

    /// Connects to the FIFO `node` as the host does, once `fetch` has logged
    /// that it holds the port open. The open never blocks: if fetch is gone,
    /// it fails (ENXIO) instead of waiting for a reader forever.
    pub fn connect(&mut self, node: &Path) -> File {
        if !self.opened {
            self.wait_for_line("opened port");
            self.opened = true;
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(node)
            .unwrap_or_else(|e| panic!("cannot connect to {node:?}: {e}; log:\n{}", self.log));
        // Blocking writes from here: the reader drains the pipe.
        fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        f
    }

    /// Connects, writes `bytes` and disconnects.
    pub fn host_write(&mut self, node: &Path, bytes: &[u8]) {
        self.connect(node).write_all(bytes).unwrap();
    }

    /// Waits until the child sleeps in the kernel waiting for an event
    /// (poll or epoll), as /proc/<pid>/syscall shows: the program is
    /// waiting, and what the test does next comes late to it.
    pub fn wait_until_asleep(&self) {
        self.wait_until_asleep_after(0);
    }

    /// How many times the child has gone to sleep so far (its voluntary
    /// context switches).
    pub fn sleeps(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the child has gone to sleep more than `sleeps` times and
    /// sleeps in a wait now: it has woken up, done its work (a rescan, a
    /// read) and waits again.
    pub fn wait_until_asleep_after(&self, sleeps: u64) {
        use nix::libc;
        // poll and epoll_wait exist only as older x86_64 entry points.
        #[cfg(target_arch = "x86_64")]
        let old = [libc::SYS_poll, libc::SYS_epoll_wait];
        #[cfg(not(target_arch = "x86_64"))]
        let old = [];
        let waits: Vec<String> = [
            libc::SYS_ppoll,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_pwait2,
        ]
        .iter()
        .chain(&old)
        .map(|n| n.to_string())
        .collect();
        let until = Instant::now() + GUARD;
        let path = format!("/proc/{}/syscall", self.pid());
        loop {
            let now = fs::read_to_string(&path).unwrap_or_default();
            let nr = now.split(' ').next().unwrap_or("");
            if waits.iter().any(|w| w == nr)
                && proc_state(self.pid()) == Some('S')
                && self.sleeps() > sleeps
            {
                return;
            }
            assert!(Instant::now() < until, "never asleep in a wait: {now}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits, without reaping it, until the child has exited; its
    /// /proc/<pid>/stat stays readable until `finish`.
    pub fn wait_exited_unreaped(&self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap();
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the child and returns its status and whole stderr.
    pub fn finish(mut self) -> Output {
        let status = self.child.wait().unwrap();
        // The reader thread ends at EOF, which exit brings.
        for line in self.lines.iter() {
            self.log += &line;
            self.log.push('\n');
        }
        Output {
            status,
            stdout: Vec::new(),
            stderr: self.log.into_bytes(),
        }
    }
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// CPU time (utime + stime) of process `pid` so far, in milliseconds, from
/// /proc/<pid>/stat (readable until the process is reaped).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: state is field 3; utime, stime are 14, 15.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as u64;
    ticks * 1000 / hz
}

/// The tests' one random source (xorshift64*). Seeded from `$var` when it
/// is set, so that a failure replays, else from the clock; the seed is
/// printed either way.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(var: &str) -> (Self, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{var}={seed}");
        (Rng(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
