//! A fake sysfs + /dev tree for running the binary without a virtio device:
//! `<root>/sys/class/virtio-ports/vportNpM/{name,dev}` as files, and
//! `<root>/dev/vportNpM` as a FIFO standing in for the port (read() == 0
//! while no writer is connected, as the port reads 0 while the host is not).
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCx root@host";
pub const CMDLINE: &str =
    "template=domP type=secstorage name=s-1-VM eth0ip=169.254.3.4 authorized_key=QUJD==";

pub fn message() -> String {
    format!("pubkey:{KEY}\ncmdline:{CMDLINE}\n")
}

pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/class/virtio-ports")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        Tree { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn sys(&self) -> PathBuf {
        self.root().join("sys")
    }
    pub fn dev(&self) -> PathBuf {
        self.root().join("dev")
    }
    pub fn cache(&self) -> PathBuf {
        self.root().join("var/cache/cloud")
    }
    pub fn ssh(&self) -> PathBuf {
        self.root().join("root/.ssh")
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

    pub fn add_sysfs(&self, entry: &str, name: Option<&str>, dev: &str) {
        let dir = self.sys().join("class/virtio-ports").join(entry);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        if let Some(name) = name {
            fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        }
    }

    /// The udev symlink `/dev/virtio-ports/<name> -> ../<entry>`.
    pub fn add_link(&self, name: &str, entry: &str) {
        let links = self.dev().join("virtio-ports");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(format!("../{entry}"), links.join(name)).unwrap();
    }

    /// The binary with the tree's roots and directories.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"));
        c.arg("--sysfs-root")
            .arg(self.sys())
            .arg("--dev-root")
            .arg(self.dev())
            .arg(sub);
        c
    }

    /// `fetch --no-ack` with short deadlines, extra arguments appended.
    pub fn fetch(&self, extra: &[&str]) -> Command {
        let mut c = self.cmd("fetch");
        c.args(["--no-ack", "--fifo-stand-in"])
            .arg("--cache-dir")
            .arg(self.cache())
            .arg("--ssh-dir")
            .arg(self.ssh())
            .args(["--timeout", "20", "--port-timeout", "10", "--grace", "1"])
            .args(extra);
        c
    }

    pub fn spawn_fetch(&self, extra: &[&str]) -> Child {
        self.fetch(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn read(&self, path: PathBuf) -> Option<String> {
        fs::read_to_string(path).ok()
    }
    pub fn stored_cmdline(&self) -> Option<String> {
        self.read(self.cache().join("cmdline"))
    }
}

/// Connects to the FIFO as the host would (blocking until the helper holds
/// it open), writes `bytes`, and disconnects.
pub fn host_write(node: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(node).unwrap();
    f.write_all(bytes).unwrap();
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

pub fn finish(child: Child) -> (i32, String) {
    let out: Output = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every file below `dir`, relative, sorted: to show nothing else was left.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
