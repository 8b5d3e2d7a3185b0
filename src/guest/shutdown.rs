//! The shutdown record: how the previous boot ended, which says whether the
//! host will send this boot.
//!
//! At shutdown the boot job's unit stops (it is `Conflicts=shutdown.target`,
//! `RemainAfterExit=yes`, so its `ExecStop` runs while the filesystems are
//! still mounted) and `record-shutdown` asks systemd which target is being
//! started: `reboot.target` or `kexec.target` is a clean reboot, after which
//! neither CloudStack era sends anything (CLOUDSTACK-8933; current
//! CloudStack's reboot only calls `virsh reboot`); `poweroff.target` or
//! `halt.target` is a poweroff, after which a start follows and the host
//! writes new parameters. No record at boot means the previous boot did not
//! shut down at all (`virsh destroy`, `virsh reset`, a crash) or had no
//! such unit (a first boot). The record is consumed at boot, so a boot that
//! then crashes leaves none.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::store::write_atomic;
use crate::error::{Error, Result};
use crate::warn;

/// The record's name in the state directory.
pub const RECORD_FILE: &str = "shutdown";

/// How a boot ended, as far as the guest could tell at its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `reboot.target`, `kexec.target` or `soft-reboot.target`: the VM
    /// keeps running, and the host sends nothing.
    Reboot,
    /// `poweroff.target` or `halt.target`: the VM stops; a start follows.
    Poweroff,
}

impl Ended {
    pub fn word(self) -> &'static str {
        match self {
            Ended::Reboot => "reboot",
            Ended::Poweroff => "poweroff",
        }
    }

    pub fn parse(word: &str) -> Option<Ended> {
        match word {
            "reboot" => Some(Ended::Reboot),
            "poweroff" => Some(Ended::Poweroff),
            _ => None,
        }
    }

    /// The shutdown being carried out, from `systemctl list-jobs
    /// --no-legend` (`JOB UNIT TYPE STATE` per line): the first job that
    /// starts one of the shutdown targets. None when there is none (the
    /// unit was stopped by hand, not by a shutdown).
    pub fn from_jobs(jobs: &str) -> Option<Ended> {
        jobs.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, unit, kind) = (fields.next()?, fields.next()?, fields.next()?);
            if kind != "start" {
                return None;
            }
            match unit {
                "reboot.target" | "kexec.target" | "soft-reboot.target" => Some(Ended::Reboot),
                "poweroff.target" | "halt.target" => Some(Ended::Poweroff),
                _ => None,
            }
        })
    }
}

/// Asks systemd for its job queue (`systemctl list-jobs`, found on PATH).
pub fn current_jobs() -> Result<String> {
    let out = Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--no-pager"])
        .output()
        .map_err(|e| Error::io("cannot run", "systemctl list-jobs", e))?;
    if !out.status.success() {
        return Err(Error::Unavailable(format!(
            "systemctl list-jobs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("cannot open directory", dir, e.into()))
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Writes the record durably (temp file, fsync, rename, fsync of the
/// directory; the directory is made if missing).
pub fn record(state_dir: &Path, ended: Ended) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(state_dir)
        .map_err(|e| Error::io("cannot create directory", state_dir, e))?;
    let dirfd = open_dir(state_dir)?;
    let line = format!("{}\n", ended.word());
    write_atomic(&dirfd, state_dir, RECORD_FILE, line.as_bytes(), 0o644)?;
    Ok(state_dir.join(RECORD_FILE))
}

/// Reads and removes the record (the removal made durable), so that this
/// boot, if it crashes, leaves none. A record that cannot be read or says
/// something else is reported and counts as none; so does a missing state
/// directory.
pub fn take(state_dir: &Path) -> Option<Ended> {
    let path = state_dir.join(RECORD_FILE);
    let mut text = String::new();
    match File::open(&path).and_then(|f| f.take(64).read_to_string(&mut text)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("cannot read the shutdown record {}: {e}", path.display());
            return None;
        }
    }
    let ended = Ended::parse(text.trim());
    if ended.is_none() {
        warn!(
            "the shutdown record {} holds {:?}, neither reboot nor poweroff; taking it as no record",
            path.display(),
            text.trim()
        );
    }
    let removed = std::fs::remove_file(&path)
        .and_then(|()| File::open(state_dir))
        .and_then(|d| d.sync_all());
    if let Err(e) = removed {
        warn!(
            "cannot remove the shutdown record {} for good: {e}",
            path.display()
        );
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_target_being_started_says_how_the_boot_ends() {
        let reboot =
            "  412 systemd-reboot.service start waiting\n  409 reboot.target start waiting\n";
        assert_eq!(Ended::from_jobs(reboot), Some(Ended::Reboot));
        let poweroff =
            "1 poweroff.target start waiting\n2 systemd-poweroff.service start waiting\n";
        assert_eq!(Ended::from_jobs(poweroff), Some(Ended::Poweroff));
        assert_eq!(
            Ended::from_jobs("7 halt.target start waiting\n"),
            Some(Ended::Poweroff)
        );
        assert_eq!(
            Ended::from_jobs("7 kexec.target start waiting\n"),
            Some(Ended::Reboot)
        );
        // A stop by hand: no shutdown target in the queue.
        assert_eq!(
            Ended::from_jobs("9 vport-bootargs.service stop running\n"),
            None
        );
        assert_eq!(Ended::from_jobs(""), None);
        assert_eq!(Ended::from_jobs("3 reboot.target stop waiting\n"), None);
    }

    #[test]
    fn a_record_is_read_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        record(&dir, Ended::Poweroff).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(RECORD_FILE)).unwrap(),
            "poweroff\n"
        );
        assert_eq!(take(&dir), Some(Ended::Poweroff));
        assert_eq!(take(&dir), None);
        std::fs::write(dir.join(RECORD_FILE), "sideways\n").unwrap();
        assert_eq!(take(&dir), None);
        assert!(!dir.join(RECORD_FILE).exists());
    }
}
