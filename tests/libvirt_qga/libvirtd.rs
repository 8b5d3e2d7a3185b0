//! The private libvirtd that the guest agent's libvirt tests (libvirt_qga.rs
//! and the host side's tests) boot their domains under.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A libvirtd (and virtlogd) of this test's own, in a mount namespace of
/// its own with fresh /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
/// /var/cache/libvirt: the machine's libvirtd, if any, is neither used nor
/// disturbed, and a restart of it does not cut this test's consoles (which
/// go through virtlogd). Stopped, by process id, when dropped.
pub struct Libvirtd {
    dir: PathBuf,
    pid: u32,
}

impl Libvirtd {
    pub fn start(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        // As on these machines without systemd: QEMU runs as root, no
        // security driver (CONTEXT of the test machines; README).
        let setup = r#"
            # libvirtd resolves its compiled-in default group (Debian's:
            # libvirt-qemu) before it reads qemu.conf, so that group must
            # exist even with `group = "root"` there.
            getent group libvirt >/dev/null || groupadd -r libvirt
            getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
            getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu libvirt-qemu
            conf=/etc/libvirt/qemu.conf
            grep -q '^user = "root"' $conf || printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n' >>$conf
        "#;
        let st = Command::new("sh").args(["-ec", setup]).status().unwrap();
        assert!(st.success(), "cannot set up libvirt");
        let daemons = r#"
            for d in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
                mkdir -p $d
                mount -t tmpfs -o mode=0755 tmpfs $d
            done
            mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu
            virtlogd -d -p "$1/virtlogd.pid"
            libvirtd -d -p "$1/libvirtd.pid"
        "#;
        let st = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-ec",
                daemons,
                "sh",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "cannot start a private libvirtd");
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = read_pid(&dir.join("libvirtd.pid")) {
                let d = Libvirtd {
                    dir: dir.to_owned(),
                    pid,
                };
                if d.virsh(&["uri"]).status.success() {
                    return d;
                }
                std::mem::forget(d);
            }
            assert!(
                Instant::now() < until,
                "the private libvirtd does not answer"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--target={}", self.pid))
            .arg("--mount")
            .args(["virsh", "-c", "qemu:///system"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run virsh")
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for name in ["libvirtd.pid", "virtlogd.pid"] {
            if let Some(pid) = read_pid(&self.dir.join(name)) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
