//! `send --guest-agent`: in place of CloudStack's
//! scripts/vm/hypervisor/kvm/patch.sh (4.11.3 and later), which writes the
//! cmdline into the guest's /var/cache/cloud/cmdline through the QEMU guest
//! agent. The same file and the same bytes as patch.sh (`echo $cmdline`),
//! but:
//! - it waits on libvirt's agent-lifecycle event (one `virsh event`
//!   process), not a `guest-ping` process every 0.1 s, and every wait has a
//!   deadline;
//! - everything else goes through ONE `virsh` shell (commands on its stdin,
//!   one connection to libvirtd), and guest-file-write and guest-file-close
//!   go to it together, so no process start lies between them (qemu-ga
//!   writes through a stdio buffer: until the close, the guest sees the
//!   file cut at a 4 KiB boundary, or empty);
//! - it reads the file back and compares its sha256 with what it sent, and
//!   sends again (same bytes, same file) while that differs and time is
//!   left.
//!
//! We drive `virsh` rather than link libvirt: the binary is one static musl
//! executable for guest and host, and every KVM host of CloudStack has
//! virsh. The JSON and the XML are read in [`super::qga`].

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags};

use super::qga::{self, Channel};
use crate::error::{Error, Result};
use crate::secs::{Millis, Secs};
use crate::wire::digest_hex;
use crate::{deadline, debug, info, warn};

/// Between two looks at the domain's XML while waiting for the agent's
/// event: the safety net for a connect that happened after the first look
/// but before `virsh event` had registered with libvirtd (its start takes
/// milliseconds; the event would then never come). A command in the shell
/// already open, no process.
pub const RECHECK: Duration = Duration::from_secs(2);
/// The most one qemu-agent-command may take (`--timeout`); less when the
/// deadline is nearer. qemu-ga answers these in milliseconds.
pub const COMMAND_TIMEOUT_SECS: u64 = 10;
/// Writes (with read-back) of one delivery at most, while they differ.
pub const MAX_WRITES: u32 = 3;
/// Beyond `--timeout`, how long virsh itself may take to answer.
const VIRSH_SLACK: Duration = Duration::from_secs(5);

/// One delivery through the guest agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The libvirt domain (patch.sh's `-n`).
    pub vm: String,
    /// Exactly what to write (see [`qga::patch_sh_text`]).
    pub text: String,
    /// The file in the guest.
    pub path: String,
    /// The `virsh` to run (a name looked up in PATH, or a path).
    pub virsh: PathBuf,
    /// The whole delivery, from the start to the confirmed read-back.
    pub wait: Duration,
}

/// What a confirmed delivery took.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub bytes: usize,
    /// From the start until the agent was connected (zero-ish when it
    /// already was).
    pub connected_after: Duration,
    /// From the start until the read-back matched.
    pub confirmed_after: Duration,
    /// Host clock, from sending guest-file-write until guest-file-close
    /// had answered: the most the guest could see the file cut.
    pub write_to_close: Duration,
    /// guest-file-write calls (more than one when a read-back differed).
    pub writes: u32,
    /// `virsh` processes started.
    pub processes: u32,
}

/// Writes `opts.text` to `opts.path` in the guest and reads it back.
pub fn deliver(opts: &AgentOptions) -> Result<Delivered> {
    check_quotable("domain name", &opts.vm)?;
    check_quotable("guest path", &opts.path)?;
    let start = Instant::now();
    let until = deadline::after(start, opts.wait);
    // The waiter first, so that a connect after our first look at the XML
    // is reported to it (or, in its own start-up, caught by the recheck).
    let mut waiter = Waiter::spawn(&opts.virsh, &opts.vm, opts.wait)?;
    let mut shell = Shell::spawn(&opts.virsh)?;
    let mut d = Delivery {
        opts,
        shell: &mut shell,
        until,
    };
    let result = d.run(&mut waiter, start);
    waiter.stop();
    shell.quit();
    result.map(|mut delivered| {
        delivered.processes = 2;
        info!(
            "delivered {} bytes to {}:{} and read them back the same (sha256 {}); agent connected {:.3} s after the start, confirmed {:.3} s after the start; write to close {:.1} ms; {} write(s), {} virsh processes",
            delivered.bytes,
            opts.vm,
            opts.path,
            &digest_hex(opts.text.as_bytes())[..16],
            Secs(delivered.connected_after),
            Secs(delivered.confirmed_after),
            Millis(delivered.write_to_close),
            delivered.writes,
            delivered.processes,
        );
        delivered
    })
}

/// The VM's name and the path go into the shell's command lines between
/// single quotes (virsh's parser, like sh's, has no escape inside them).
fn check_quotable(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains(['\'', '\\']) || value.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "{what} {value:?}: must be non-empty, without quotes, backslashes or control characters"
        )));
    }
    Ok(())
}

struct Delivery<'a> {
    opts: &'a AgentOptions,
    shell: &'a mut Shell,
    until: Instant,
}

/// What a read-back found.
enum Landed {
    Same,
    Differs { bytes: usize },
}

impl Delivery<'_> {
    fn run(&mut self, waiter: &mut Waiter, start: Instant) -> Result<Delivered> {
        let vm = self.opts.vm.clone();
        self.check_running()?;
        let connected_after = self.wait_connected(waiter)?.duration_since(start);
        debug!("the guest agent of {vm} is connected");
        let mut writes = 0;
        loop {
            let step = self.sync().and_then(|()| {
                writes += 1;
                let window = self.write()?;
                Ok((window, self.read_back()?))
            });
            match step {
                Ok((write_to_close, Landed::Same)) => {
                    return Ok(Delivered {
                        bytes: self.opts.text.len(),
                        connected_after,
                        confirmed_after: start.elapsed(),
                        write_to_close,
                        writes,
                        processes: 0,
                    })
                }
                Ok((_, Landed::Differs { bytes })) => {
                    if writes >= MAX_WRITES || Instant::now() >= self.until {
                        return Err(Error::ReadBackDiffers {
                            vm,
                            path: self.opts.path.clone(),
                            sent: self.opts.text.len(),
                            got: bytes,
                            writes,
                        });
                    }
                    // Safe to repeat: the same bytes to the same file, and
                    // what is there now is wrong anyway.
                    warn!(
                        "{vm}:{} read back {bytes} bytes, not the {} sent; writing it again",
                        self.opts.path,
                        self.opts.text.len()
                    );
                }
                Err(Gone::Agent(why)) => {
                    // qemu-ga went away (restarted, or the guest rebooting):
                    // wait for it again, within the deadline.
                    if Instant::now() >= self.until {
                        return Err(Error::AgentNotAnswering {
                            vm,
                            secs: Secs(self.opts.wait),
                            detail: why,
                        });
                    }
                    warn!("the guest agent of {vm} did not answer ({why}); waiting for it again");
                    self.wait_connected(waiter)?;
                }
                Err(Gone::Fatal(e)) => return Err(e),
                Err(Gone::Refused(e)) => {
                    return Err(Error::Unavailable(format!("virsh qemu-agent-command: {e}")))
                }
            }
        }
    }

    /// `virsh domstate`: the domain must exist and run.
    fn check_running(&mut self) -> Result<()> {
        let vm = &self.opts.vm;
        let answer = self.shell.run(&[format!("domstate '{vm}'")], self.until)?;
        let a = &answer[0];
        if let Some(e) = a.error() {
            return Err(Error::NoDomain {
                vm: vm.clone(),
                detail: e,
            });
        }
        let state = a.other.join(" ");
        if state.trim() != "running" {
            return Err(Error::NotRunning {
                vm: vm.clone(),
                state: state.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Until the agent's channel is connected: the waiter's event, or the
    /// channel's state in the domain's XML (looked at first, and again
    /// every [`RECHECK`]).
    fn wait_connected(&mut self, waiter: &mut Waiter) -> Result<Instant> {
        let vm = self.opts.vm.clone();
        loop {
            let answer = self.shell.run(&[format!("dumpxml '{vm}'")], self.until)?;
            if let Some(e) = answer[0].error() {
                return Err(Error::NoDomain { vm, detail: e });
            }
            match qga::agent_channel(&answer[0].other.join("\n")) {
                Channel::Missing => return Err(Error::NoAgentChannel { vm }),
                Channel::Connected => return Ok(Instant::now()),
                Channel::Disconnected => {}
            }
            if Instant::now() >= self.until {
                return Err(Error::AgentNotConnected {
                    vm,
                    secs: Secs(self.opts.wait),
                });
            }
            let next = deadline::in_(RECHECK).min(self.until);
            if waiter.connected_before(next) {
                debug!("agent-lifecycle event: the guest agent of {vm} connected");
                return Ok(Instant::now());
            }
        }
    }

    fn agent_command(&self, json: &str) -> String {
        let left = self.until.saturating_duration_since(Instant::now());
        let secs = left.as_secs().clamp(1, COMMAND_TIMEOUT_SECS);
        format!(
            "qemu-agent-command --timeout {secs} '{}' '{json}'",
            self.opts.vm
        )
    }

    /// guest-sync with a fresh id: its answer must carry that id.
    fn sync(&mut self) -> Result<(), Gone> {
        let id = fresh_id();
        let cmd = self.agent_command(&qga::sync(id));
        let answer = self.shell.run(&[cmd], self.until)?;
        let json = answer[0].json_or_gone()?;
        match qga::return_int(&json) {
            Some(got) if got == id as i64 => Ok(()),
            _ => Err(Gone::Fatal(Error::SyncMismatch {
                vm: self.opts.vm.clone(),
                sent: id,
                got: json,
            })),
        }
    }

    /// Opens (w+), then writes and closes in one go; the host-clock span
    /// from the write's sending to the close's answer.
    fn write(&mut self) -> Result<Duration, Gone> {
        let handle = self.open("w+")?;
        let text = self.opts.text.as_bytes();
        let cmds = [
            self.agent_command(&qga::file_write(handle, text)),
            self.agent_command(&qga::file_close(handle)),
        ];
        let sent = Instant::now();
        let answers = self.shell.run(&cmds, self.until)?;
        let window = answers[1]
            .at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(sent);
        let written = self
            .file_answer(&answers[0], "guest-file-write")
            .map(|j| qga::written_count(&j));
        let closed = self.file_answer(&answers[1], "guest-file-close");
        match written? {
            Some(n) if n == text.len() => {}
            other => {
                return Err(Gone::Fatal(self.file_error(
                    "guest-file-write",
                    &format!("wrote {other:?} of {} bytes", text.len()),
                )))
            }
        }
        closed?;
        debug!(
            "guest-file-write and guest-file-close answered {:.1} ms after the write was sent",
            Millis(window)
        );
        Ok(window)
    }

    fn open(&mut self, mode: &str) -> Result<i64, Gone> {
        let cmd = self.agent_command(&qga::file_open(&self.opts.path, mode));
        let answer = self.shell.run(&[cmd], self.until)?;
        let json = self.file_answer(&answer[0], "guest-file-open")?;
        qga::return_int(&json).ok_or_else(|| Gone::Fatal(self.file_error("guest-file-open", &json)))
    }

    /// Reads the file back (mode r) until qemu-ga says eof, or it is longer
    /// than what was sent.
    fn read_back(&mut self) -> Result<Landed, Gone> {
        let handle = self.open("r")?;
        let want = self.opts.text.as_bytes();
        let mut got = Vec::new();
        let result = loop {
            // One byte more than sent: a longer file shows at once.
            let cmd = self.agent_command(&qga::file_read(handle, want.len() + 1));
            let answer = match self.shell.run(&[cmd], self.until) {
                Ok(a) => a,
                Err(e) => break Err(Gone::from(e)),
            };
            let json = match self.file_answer(&answer[0], "guest-file-read") {
                Ok(j) => j,
                Err(e) => break Err(e),
            };
            let Some(chunk) = qga::read_chunk(&json) else {
                break Err(Gone::Fatal(self.file_error("guest-file-read", &json)));
            };
            got.extend_from_slice(&chunk.bytes);
            if chunk.eof || chunk.bytes.is_empty() || got.len() > want.len() {
                break Ok(());
            }
        };
        let close = self.agent_command(&qga::file_close(handle));
        let closed = self
            .shell
            .run(&[close], self.until)
            .map_err(Gone::from)
            .and_then(|a| self.file_answer(&a[0], "guest-file-close").map(drop));
        result?;
        closed?;
        if digest_hex(&got) == digest_hex(want) {
            Ok(Landed::Same)
        } else {
            Ok(Landed::Differs { bytes: got.len() })
        }
    }

    /// A guest-file-* answer; qemu-ga's refusal is the file's error.
    fn file_answer(&self, a: &Answer, command: &'static str) -> Result<String, Gone> {
        a.json_or_gone().map_err(|g| match g {
            Gone::Refused(e) => Gone::Fatal(self.file_error(command, &e)),
            g => g,
        })
    }

    fn file_error(&self, command: &'static str, detail: &str) -> Error {
        Error::GuestFile {
            vm: self.opts.vm.clone(),
            path: self.opts.path.clone(),
            command,
            detail: detail.to_owned(),
        }
    }
}

/// A failed agent command: the agent is gone for now (wait for it again),
/// the command was refused (libvirt's or qemu-ga's error), or anything else.
enum Gone {
    Agent(String),
    Refused(String),
    Fatal(Error),
}

impl From<Error> for Gone {
    fn from(e: Error) -> Self {
        Gone::Fatal(e)
    }
}

impl From<Gone> for Error {
    fn from(g: Gone) -> Self {
        match g {
            Gone::Fatal(e) => e,
            Gone::Agent(why) | Gone::Refused(why) => {
                Error::Unavailable(format!("virsh qemu-agent-command: {why}"))
            }
        }
    }
}

/// A guest-sync id no earlier run sent (patch.sh's is always 1234567890,
/// so an answer left over from it cannot pass for ours).
fn fresh_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let id = (nanos ^ (u64::from(std::process::id()) << 40)) & ((1 << 53) - 1);
    id.max(1)
}

/// What one command printed in the shell.
#[derive(Debug, Default)]
struct Answer {
    /// A line starting with `{`: an agent command's answer.
    json: Option<String>,
    /// `error: ...` lines.
    errors: Vec<String>,
    /// Everything else (domstate's state, dumpxml's XML).
    other: Vec<String>,
    /// Host clock: when its end mark arrived.
    at: Option<Instant>,
}

impl Answer {
    fn error(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }

    /// The JSON answer; an error that says the agent is not there (not
    /// connected, not responding, timed out) is [`Gone::Agent`], any other
    /// (qemu-ga refused the command, the domain is gone) is
    /// [`Gone::Refused`].
    fn json_or_gone(&self) -> Result<String, Gone> {
        if let Some(json) = &self.json {
            return Ok(json.clone());
        }
        let e = self.error().unwrap_or_else(|| "no answer".into());
        if agent_absent(&e) {
            return Err(Gone::Agent(e));
        }
        Err(Gone::Refused(e))
    }
}

/// libvirt's words for an agent that is not (or no longer) there:
/// VIR_ERR_AGENT_UNRESPONSIVE ("Guest agent is not responding: ..."), and
/// its timeout and not-connected messages.
pub fn agent_absent(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "not responding",
        "not connected",
        "not available",
        "timed out",
        "timeout",
    ]
    .iter()
    .any(|w| e.contains(w))
}

/// One long-lived `virsh` reading commands on its stdin: one connection to
/// libvirtd for the whole delivery. After each command we send `echo MARK`
/// and read its output (stdout and stderr through one pipe, in the order
/// virsh wrote them; virsh writes at once, unbuffered) up to MARK. virsh
/// prints a prompt (`virsh # `) and, through readline, echoes each command
/// it reads: both are skipped.
struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    out: OwnedFd,
    buf: Vec<u8>,
    marks: u64,
    path: PathBuf,
}

const PROMPT: &str = "virsh # ";

impl Shell {
    fn spawn(virsh: &Path) -> Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("cannot make a pipe for", virsh, e.into()))?;
        let err = write
            .try_clone()
            .map_err(|e| Error::io("cannot make a pipe for", virsh, e))?;
        let child = Command::new(virsh)
            .arg("-q")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| Error::io("cannot run", virsh, e))?;
        let mut shell = Shell {
            stdin: None,
            child,
            out: read,
            buf: Vec::new(),
            marks: 0,
            path: virsh.to_owned(),
        };
        shell.stdin = shell.child.stdin.take();
        Ok(shell)
    }

    /// Sends `cmds` in one write, each followed by its mark, and reads
    /// their answers in order, for at most until `until` (+ a margin for
    /// virsh itself, since the agent commands have their own `--timeout`).
    fn run(&mut self, cmds: &[String], until: Instant) -> Result<Vec<Answer>> {
        let mut input = String::new();
        let mut marks = Vec::new();
        for cmd in cmds {
            self.marks += 1;
            let (stem, n) = (
                format!("vport-bootargs-mark-{}-", std::process::id()),
                self.marks,
            );
            // Quoted in part, so that virsh's echo of the command line
            // does not hold the mark its output does.
            input.push_str(&format!("{cmd}\necho {stem}\"{n}.\"\n"));
            marks.push(format!("{stem}{n}."));
        }
        let stdin = self.stdin.as_mut().expect("the shell's stdin is open");
        if let Err(e) = stdin
            .write_all(input.as_bytes())
            .and_then(|_| stdin.flush())
        {
            return Err(self.died(&format!("cannot write to it: {e}")));
        }
        let limit = deadline::after(until, VIRSH_SLACK);
        let mut answers = Vec::new();
        for (mark, cmd) in marks.iter().zip(cmds) {
            let output = self.until_mark(mark, limit)?;
            let mut a = Answer {
                at: Some(Instant::now()),
                ..Answer::default()
            };
            for line in output.lines() {
                let mut line = line;
                while let Some(rest) = line.strip_prefix(PROMPT) {
                    line = rest;
                }
                let line = line.trim_end();
                if line.is_empty() || line == cmd || line.starts_with("echo vport-bootargs-mark-") {
                    continue;
                }
                if let Some(e) = line.strip_prefix("error: ") {
                    a.errors.push(e.to_owned());
                } else if line.starts_with('{') && a.json.is_none() {
                    a.json = Some(line.to_owned());
                } else {
                    a.other.push(line.to_owned());
                }
            }
            answers.push(a);
        }
        Ok(answers)
    }

    /// The output up to `mark`, which is taken from the buffer with it.
    /// virsh's echo ends its output with no newline (the next prompt
    /// follows at once), so the mark is looked for anywhere.
    fn until_mark(&mut self, mark: &str, limit: Instant) -> Result<String> {
        loop {
            if let Some(at) = find(&self.buf, mark.as_bytes()) {
                let output = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + mark.len());
                return Ok(output);
            }
            match read_before(&self.out, limit) {
                Ok(Some(bytes)) if bytes.is_empty() => return Err(self.died("it exited")),
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => {
                    let _ = self.child.kill();
                    return Err(Error::Unavailable(format!(
                        "{} did not answer before the deadline; stopped it",
                        self.path.display()
                    )));
                }
                Err(e) => return Err(Error::io("cannot read from", &self.path, e)),
            }
        }
    }

    fn died(&mut self, what: &str) -> Error {
        let status = self.child.wait().ok();
        Error::Unavailable(format!(
            "{} (the shell): {what}{}",
            self.path.display(),
            status.map(|s| format!(" ({s})")).unwrap_or_default()
        ))
    }

    /// Ends the shell: `quit` and end of input, then reaps it (killing it
    /// if it does not end within a second).
    fn quit(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let until = deadline::in_(Duration::from_secs(1));
        while read_before(&self.out, until).is_ok_and(|r| r.is_some_and(|b| !b.is_empty())) {}
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Up to 64 KiB from `fd` once it is readable; None when `limit` passed
/// first, Some(empty) at end of file. poll(2) sleeps until then.
fn read_before(fd: &OwnedFd, limit: Instant) -> io::Result<Option<Vec<u8>>> {
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, deadline::poll_timeout(limit)) {
            Ok(0) => {
                if Instant::now() >= limit {
                    return Ok(None);
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let mut buf = vec![0u8; 65536];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `virsh event --domain VM --event agent-lifecycle --loop`: one line per
/// change of the agent's connection, until stopped.
struct Waiter {
    child: Option<Child>,
    out: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl Waiter {
    fn spawn(virsh: &Path, vm: &str, wait: Duration) -> Result<Self> {
        // Its own limit, past ours, in case we die without stopping it.
        let secs = wait.as_secs().saturating_add(VIRSH_SLACK.as_secs() + 1);
        let mut child = Command::new(virsh)
            .args(["-q", "event", "--domain", vm, "--event", "agent-lifecycle"])
            .args(["--loop", "--timeout", &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("cannot run", virsh, e))?;
        let out = child.stdout.take().map(OwnedFd::from);
        Ok(Waiter {
            child: Some(child),
            out,
            buf: Vec::new(),
        })
    }

    /// Sleeps until an event says the agent connected (true) or `limit`
    /// (false). A waiter that has ended only sleeps until `limit`: the
    /// caller's recheck of the XML then carries on alone.
    fn connected_before(&mut self, limit: Instant) -> bool {
        loop {
            while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                if qga::is_agent_connected_event(&String::from_utf8_lossy(&line)) {
                    return true;
                }
            }
            let Some(out) = &self.out else {
                std::thread::sleep(limit.saturating_duration_since(Instant::now()));
                return false;
            };
            match read_before(out, limit) {
                Ok(Some(bytes)) if !bytes.is_empty() => self.buf.extend_from_slice(&bytes),
                Ok(None) => return false,
                _ => {
                    debug!("virsh event ended; the domain's XML alone is watched");
                    self.out = None;
                }
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirts_agent_absent_errors_are_told_from_the_others() {
        assert!(agent_absent(
            "Guest agent is not responding: QEMU guest agent is not connected"
        ));
        assert!(agent_absent(
            "Guest agent is not responding: Guest agent not available for now"
        ));
        assert!(!agent_absent("internal error: unable to execute QEMU agent command 'guest-file-open': Failed to open file '/var/cache/cloud/cmdline': No such file or directory"));
        assert!(!agent_absent(
            "Requested operation is not valid: domain is not running"
        ));
    }

    #[test]
    fn names_that_cannot_go_between_single_quotes_are_refused() {
        assert!(check_quotable("domain name", "s-1-VM").is_ok());
        for bad in ["", "a'b", "a\\b", "a\nb"] {
            assert!(check_quotable("domain name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sync_ids_are_fresh_and_never_patch_shs() {
        let a = fresh_id();
        assert!(a > 0 && a < 1 << 53);
        assert_ne!(a, 1234567890);
    }
}
