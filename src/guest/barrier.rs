//! The barrier for hosts without a `*.vport` channel (CloudStack 4.11.3 and
//! later): there the host writes `/var/cache/cloud/cmdline` through the QEMU
//! guest agent, and the system VM's scripts read it as soon as it is
//! non-empty. The barrier runs before those scripts and returns only once
//! the file is
//!
//! - **whole**: qemu-ga writes through a stdio buffer, so until
//!   `guest-file-close` the file can show a cut prefix (8,192 of 9,000
//!   bytes). The file is whole when no process holds it open for writing
//!   ([`openers::writers`]); or when a writer's close was seen this boot
//!   (inotify IN_CLOSE_WRITE on the directory, IN_MOVED_TO for a writer that
//!   renames into place), nothing has modified the file since that close
//!   (no IN_MODIFY, IN_CREATE, IN_DELETE or IN_MOVED_FROM after it), and no
//!   descriptor still open for writing has written through it: each one
//!   found is at position 0 (a handle qemu-ga keeps from a try of patch.sh
//!   whose answer was lost), or none is found (the closer itself, which the
//!   kernel still counts a little after it reports the close, in no
//!   process's table by then); or, with no close seen, when the file was
//!   modified this boot, is not empty, and every descriptor still open for
//!   writing is found at position 0;
//! - **fresh**: written during this boot: a close seen by the watch, or a
//!   modification time after the boot began (CLOCK_REALTIME minus
//!   CLOCK_BOOTTIME). A file from an earlier boot is kept only after the
//!   grace period, which counts from qemu-ga opening its port (the host can
//!   write only from then on), or at the deadline;
//! - **valid**: the checks a cmdline from the port gets ([`check_file`]).
//!
//! A file that fails the checks, or that a writer still holds at the
//! deadline, is moved aside to `cmdline.rejected`: the scripts then find no
//! cmdline, as when the host sends nothing, rather than a wrong one.
//!
//! Each look works on one descriptor, opened once (O_NOFOLLOW,
//! O_NONBLOCK, so a FIFO never blocks): the checks, the mode (0644, as
//! `fetch` stores it; qemu-ga creates the file 0666), the flush. Before
//! releasing, the inode at the path is compared with the descriptor's, so a
//! file renamed into place meanwhile is looked at anew, never released as
//! the one checked.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::time::{clock_gettime, ClockId};

use super::openers::{device_held, writers, Writers};
use super::ports::{self, Port, Selector, Verdict, GUEST_AGENT_PORT};
use super::store::{CMDLINE_FILE, CMDLINE_MODE};
use crate::error::{Error, Result};
use crate::wire::MAX_MESSAGE;
use crate::{deadline, debug, info, warn};

/// Where a file that is never passed on goes, next to the cmdline.
pub const REJECTED_FILE: &str = "cmdline.rejected";

/// The largest cmdline file accepted: the port's limit for a whole message.
/// The port's per-line limit (`MAX_LINE`) is not applied: the file holds
/// nothing but the cmdline, and CloudStack's cmdlines (with
/// `authorized_key=` inside since 2021) can be longer.
pub const MAX_FILE: usize = MAX_MESSAGE;

#[derive(Debug, Clone)]
pub struct BarrierOptions {
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
    pub cache_dir: PathBuf,
    /// The legacy channel's name pattern (`*.vport`): when such a port
    /// exists, `fetch` stores the parameters and the barrier steps aside.
    pub pattern: String,
    /// Waiting for a fresh whole file, from the start.
    pub timeout: Duration,
    /// Waiting for fresh data, once qemu-ga holds its port, when a file from
    /// an earlier boot is there.
    pub grace: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    /// A `*.vport` port exists: `fetch` reads it; nothing to hold.
    VportChannel { port: String },
    /// Neither a `*.vport` port nor the guest agent's: nothing can write.
    NoChannel,
    /// Written and closed during this boot, and valid.
    Fresh {
        bytes: usize,
        /// From seeing the writer's close to the release, when it was seen.
        since_close: Option<Duration>,
    },
    /// Nothing fresh in time; the file from an earlier boot is valid.
    KeptStored { bytes: usize },
}

/// Leaves the checked file as the boot scripts should find it, on its
/// descriptor: mode 0644 ([`leave_mode`]) and flushed to disk. qemu-ga
/// never fsyncs, so the file sits in the page cache: a forced stop soon
/// after (CloudStack stops a VM that does not shut down with `virsh
/// destroy`) left the next boot without a resend a file cut to 69,632 of
/// its 70,000 bytes (seen under libvirt). The boot goes on if the flush
/// fails; the file is whole in memory.
///
/// Then makes sure it is still what the scripts will read: the same inode
/// at the path, and no event about the file since the look. Returns those
/// events (empty when all is well, and the directory is flushed too);
/// otherwise the caller takes them in and looks again.
fn persist(path: &Path, file: &File, watch: &Watch) -> Result<Vec<Event>> {
    leave_mode(path, file);
    if let Err(e) = file.sync_all() {
        warn!("cannot flush the file {} to disk: {e}", path.display());
    }
    // An `until` already past: only what is queued.
    let mut events = watch.wait(Instant::now())?;
    if events.is_empty() && !same_file(path, file) {
        // The rename's event is queued before rename() returns; this only
        // makes sure of a look again.
        events.push(Event::Other);
    }
    if events.is_empty() {
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Err(e) = File::open(dir).and_then(|f| f.sync_all()) {
            warn!("cannot flush the directory {} to disk: {e}", dir.display());
        }
    } else {
        debug!(
            "{} changed after it was checked; looking again",
            path.display()
        );
    }
    Ok(events)
}

/// Whether the path still names the inode `file` is open on.
fn same_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => (p.dev(), p.ino()) == (f.dev(), f.ino()),
        _ => false,
    }
}

/// Gives the file mode 0644, as `fetch` stores it. qemu-ga creates it 0666
/// (seen in the booted image): any local user could then rewrite what
/// root's boot scripts parse on the next boot. Said in one line; a failure
/// (not the file's owner) is a warning, and the boot goes on.
fn leave_mode(path: &Path, file: &File) {
    let Ok(mode) = file.metadata().map(|m| m.mode() & 0o7777) else {
        return;
    };
    if mode == CMDLINE_MODE {
        return;
    }
    let want = nix::sys::stat::Mode::from_bits_truncate(CMDLINE_MODE);
    match nix::sys::stat::fchmod(file.as_raw_fd(), want) {
        Ok(()) => info!(
            "{} was mode {mode:o}{}; made it {CMDLINE_MODE:o}, as `fetch` stores it",
            path.display(),
            if mode & 0o022 != 0 {
                " (writable by other users)"
            } else {
                ""
            }
        ),
        Err(e) => warn!(
            "cannot make {} mode {CMDLINE_MODE:o} (it is {mode:o}): {e}",
            path.display()
        ),
    }
}

/// Checks a cmdline file as a `cmdline:` line from the port is checked
/// (wire::check_cmdline: not empty, one line, no NUL, no carriage return;
/// UTF-8), with one trailing newline allowed (`echo` in patch.sh adds it).
/// Returns the cmdline without that newline.
pub fn check_file(bytes: &[u8]) -> std::result::Result<&str, String> {
    if bytes.len() > MAX_FILE {
        return Err(format!(
            "is {} bytes long; at most {MAX_FILE} are accepted",
            bytes.len()
        ));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!("contains a NUL byte (at byte {at})"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("is not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let line = match text.strip_suffix('\n') {
        Some(l) => l.strip_suffix('\r').unwrap_or(l),
        None => text,
    };
    if line.contains('\n') {
        return Err("holds more than one line; a cmdline is one line".into());
    }
    if line.contains('\r') {
        return Err("contains a carriage return not followed by the final newline".into());
    }
    if line.trim().is_empty() {
        return Err("holds only white space".into());
    }
    Ok(line)
}

/// When this boot began, on the wall clock that file times use.
pub fn boot_time() -> Option<SystemTime> {
    let real = Duration::from(clock_gettime(ClockId::CLOCK_REALTIME).ok()?);
    let up = Duration::from(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?);
    Some(UNIX_EPOCH + real.checked_sub(up)?)
}

/// What the cmdline file is at one look.
#[derive(Debug)]
enum Seen {
    /// Missing or empty: no parameters (init.sh's `[ -s ]` agrees).
    Missing,
    /// A process holds it open for writing: what is there may be cut.
    Writing,
    /// A close was seen and nothing changed the file since, but the kernel
    /// still counts a writer whose descriptor cannot be read: ask again.
    Unsure,
    /// Not readable: qemu-ga creates the file with mode 0 and gives it its
    /// mode only after (qga's safe_open_or_create), and this runs without
    /// CAP_DAC_OVERRIDE; a file that stays so is refused at the deadline.
    Unreadable,
    /// Closed, with this content, read from `file`; `fresh_mtime`:
    /// modified during this boot.
    Closed {
        file: File,
        content: Vec<u8>,
        fresh_mtime: bool,
    },
    /// Not a regular file (a symlink, a directory, a fifo).
    Unusable(String),
}

/// What the cmdline file is now. `closed_since`: a writer's close was seen
/// and nothing has changed the file since ([`Writes::untouched`]); then a
/// writer that has not written does not keep the file from being whole.
fn look(
    path: &Path,
    proc_root: &Path,
    boot: Option<SystemTime>,
    closed_since: bool,
) -> Result<Seen> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Seen::Unusable("is a symlink".into()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(Seen::Unreadable),
        Err(e) => return Err(Error::io("cannot open", path, e)),
    };
    let before = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if !before.is_file() {
        return Ok(Seen::Unusable("is not a regular file".into()));
    }
    let fresh_mtime = match (boot, before.modified()) {
        (Some(boot), Ok(mtime)) => mtime >= boot,
        _ => false,
    };
    // Written this boot, and no descriptor still open has written: the
    // bytes there came through descriptors closed since (a write moves
    // its descriptor's position; `w+` truncates and starts at 0), so this
    // holds for a close from before this run too.
    let closed_before = fresh_mtime && before.len() > 0;
    let writing = |f: &File| -> Result<Option<Seen>> {
        let w = writers(f, proc_root).map_err(|e| Error::io("cannot tell who writes", path, e))?;
        Ok(match w {
            Writers::None => None,
            Writers::Idle if closed_since || closed_before => None,
            Writers::Unseen if closed_since => None,
            Writers::Unknown if closed_since => Some(Seen::Unsure),
            _ => Some(Seen::Writing),
        })
    };
    if let Some(seen) = writing(&file)? {
        return Ok(seen);
    }
    if before.len() == 0 {
        return Ok(Seen::Missing);
    }
    let mut content = Vec::new();
    (&file)
        .take(MAX_FILE as u64 + 1)
        .read_to_end(&mut content)
        .map_err(|e| Error::io("cannot read", path, e))?;
    // A writer that came and went during the read changed the times; one
    // that is still there is counted. Either way, look again.
    let after = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if let Some(seen) = writing(&file)? {
        return Ok(seen);
    }
    if (after.ctime(), after.ctime_nsec(), after.len())
        != (before.ctime(), before.ctime_nsec(), before.len())
    {
        return Ok(Seen::Writing);
    }
    Ok(Seen::Closed {
        file,
        content,
        fresh_mtime,
    })
}

/// Holds the caller until the cmdline file is whole, fresh and valid, or
/// the grace period or deadline says to keep or give up (module comment).
pub fn barrier(opts: &BarrierOptions) -> Result<Released> {
    let start = Instant::now();
    // The watch before the scan: a write made while the ports are looked at
    // is an event, not missed.
    let mut watch = Watch::new(&opts.cache_dir)?;
    let sel = Selector {
        pattern: opts.pattern.clone(),
        name: None,
        // The barrier only looks at names; it never opens a port.
        fifo_stand_in: false,
    };
    let found = ports::scan(&opts.sysfs_root, &opts.dev_root, &sel)
        .map_err(|e| Error::io("cannot scan", opts.sysfs_root.join("class/virtio-ports"), e))?;
    if let Some(port) = ports::chosen(&found) {
        let name = port.name.clone().unwrap_or_default();
        info!(
            "port {name} ({}) is there, so `fetch` stores the parameters from it; not holding the boot",
            port.entry
        );
        return Ok(Released::VportChannel { port: name });
    }
    let Some(agent) = found.iter().find(|p| p.verdict == Verdict::GuestAgent) else {
        info!(
            "no port matching {} and no {GUEST_AGENT_PORT} port: nothing can write the cmdline; not holding the boot",
            opts.pattern
        );
        return Ok(Released::NoChannel);
    };
    hold(opts, &mut watch, agent, start, Keep::AfterGrace)
}

/// When a valid file from an earlier boot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// `grace` after qemu-ga opens its port (no shutdown record).
    AfterGrace,
    /// At once (the previous boot ended in a clean reboot, after which the
    /// host sends nothing); `grace` is then 0.
    AtOnce,
    /// Only at the deadline (after a poweroff a start follows and the host
    /// writes): qemu-ga's open of its port starts no grace period.
    AtDeadline,
}

/// The guest agent's port is there and no `*.vport` port: holds the boot
/// on the cmdline file, with `watch` set up since `start`; `keep` says when
/// a file from an earlier boot is kept.
pub fn hold(
    opts: &BarrierOptions,
    watch: &mut Watch,
    agent: &Port,
    start: Instant,
    keep: Keep,
) -> Result<Released> {
    let path = opts.cache_dir.join(CMDLINE_FILE);
    if keep != Keep::AtDeadline {
        watch.watch_node(&agent.node);
    }
    // Asked after the watch is set, so that an open after this is an event.
    let held = agent.dev.and_then(|(major, minor)| {
        device_held(
            &opts.proc_root,
            nix::sys::stat::makedev(major.into(), minor.into()),
        )
    });
    let mut agent_since = match held {
        _ if keep == Keep::AtOnce => Some(start),
        _ if keep == Keep::AtDeadline => None,
        Some(false) => None,
        // Held, or cannot be told: count the grace period from now.
        _ => Some(start),
    };
    debug!(
        "{GUEST_AGENT_PORT} is {} ({})",
        match held {
            Some(true) => "held by a process",
            Some(false) => "not open yet",
            None => "of unknown state",
        },
        agent.entry
    );
    let boot = boot_time();
    let overall = deadline::after(start, opts.timeout);
    let mut writes = Writes::default();
    let mut said_stale = false;
    let mut said_waiting = false;
    let mut recheck = Recheck::default();
    // Events a release found, taken in before looking again.
    let mut pending: Option<Vec<Event>> = None;
    loop {
        let seen = look(&path, &opts.proc_root, boot, writes.untouched())?;
        let now = Instant::now();
        let mut stale = false;
        let mut ask_again = None;
        match seen {
            Seen::Unusable(why) => return reject(&path, &why),
            Seen::Closed {
                file,
                content,
                fresh_mtime,
            } => {
                let fresh = writes.closed_at.is_some() || fresh_mtime;
                let grace_over = agent_since.is_some_and(|s| now >= deadline::after(s, opts.grace));
                if fresh || grace_over || now >= overall {
                    let Some(bytes) = valid_or_reject(&path, &file, &content)? else {
                        pending = Some(vec![Event::Other]);
                        continue;
                    };
                    let events = persist(&path, &file, watch)?;
                    if !events.is_empty() {
                        pending = Some(events);
                        continue;
                    }
                    if fresh {
                        let since_close = writes.closed_at.map(|t| t.elapsed());
                        info!(
                            "{} is whole, fresh and valid ({bytes} bytes){}; releasing the boot",
                            path.display(),
                            since_close
                                .map(|d| format!(
                                    ", {} us after its writer closed it",
                                    // u64: printing a u128 costs 1.2 KB.
                                    d.as_micros() as u64
                                ))
                                .unwrap_or_else(|| ", written before this started".into())
                        );
                        return Ok(Released::Fresh { bytes, since_close });
                    }
                    info!(
                        "no fresh parameters {}; keeping the cmdline from an earlier boot in {} ({bytes} bytes)",
                        if keep == Keep::AtOnce {
                            "expected after a clean reboot (the host resends nothing)".to_owned()
                        } else if grace_over {
                            format!("within {:?} of qemu-ga opening its port", opts.grace)
                        } else {
                            format!("within {:?}", opts.timeout)
                        },
                        path.display()
                    );
                    return Ok(Released::KeptStored { bytes });
                }
                stale = true;
                if !said_stale {
                    if keep == Keep::AtDeadline {
                        info!(
                            "{} is from an earlier boot; after a poweroff the host writes new parameters: waiting up to {:?} for them",
                            path.display(),
                            opts.timeout
                        );
                    } else {
                        info!(
                            "{} is from an earlier boot; waiting up to {:?} after qemu-ga opens its port for fresh parameters",
                            path.display(),
                            opts.grace
                        );
                    }
                    said_stale = true;
                }
            }
            Seen::Writing | Seen::Unsure if now >= overall => {
                return reject(
                    &path,
                    &format!(
                        "is still open for writing after {:?}, so it may be cut",
                        opts.timeout
                    ),
                );
            }
            Seen::Unreadable if now >= overall => {
                return reject(
                    &path,
                    &format!(
                        "still cannot be read (permission denied) after {:?}",
                        opts.timeout
                    ),
                );
            }
            Seen::Missing if now >= overall => {
                return Err(Error::Unavailable(format!(
                    "no cmdline arrived in {} within {:?} (the host writes it through qemu-ga); the boot goes on without it",
                    path.display(),
                    opts.timeout
                )));
            }
            Seen::Unsure => ask_again = Some(recheck.next(now)),
            Seen::Writing | Seen::Missing | Seen::Unreadable => {
                if !said_waiting {
                    info!(
                        "waiting up to {:?} for the host to write {} through qemu-ga",
                        opts.timeout,
                        path.display()
                    );
                    said_waiting = true;
                }
            }
        }
        if ask_again.is_none() {
            recheck = Recheck::default();
        }
        let until = match agent_since {
            Some(since) if stale => deadline::after(since, opts.grace).min(overall),
            _ => overall,
        };
        let until = ask_again.map_or(until, |t| t.min(until));
        let events = loop {
            let events = match pending.take() {
                Some(events) => events,
                None => watch.wait(until)?,
            };
            // A change alone (a write, a truncation) never makes the file
            // whole: taken in without a look (qemu-ga's writes of a 70 KB
            // cmdline are 17 of them).
            if !events.is_empty()
                && events.iter().all(|e| matches!(e, Event::Changed))
                && Instant::now() < until
            {
                events.iter().for_each(|e| writes.note(e));
                continue;
            }
            break events;
        };
        for event in events {
            writes.note(&event);
            match event {
                Event::Closed => debug!("a writer closed {}", path.display()),
                Event::Changed | Event::Other => {}
                Event::AgentOpened => {
                    debug!("qemu-ga opened its port ({})", agent.entry);
                    agent_since = Some(Instant::now());
                }
            }
        }
    }
}

/// What the watch has seen of the cmdline's writers during this run.
#[derive(Debug, Default)]
struct Writes {
    /// When a writer's close (or a rename into place) was last seen.
    closed_at: Option<Instant>,
    /// Something modified, created or removed the file after that close.
    touched_since: bool,
}

impl Writes {
    fn note(&mut self, event: &Event) {
        match event {
            Event::Closed => {
                self.closed_at = Some(Instant::now());
                self.touched_since = false;
            }
            // An overflow may have lost a modification.
            Event::Changed | Event::Other => self.touched_since = true,
            Event::AgentOpened => {}
        }
    }

    /// A close was seen and nothing has changed the file since: what the
    /// closer left is what is there.
    fn untouched(&self) -> bool {
        self.closed_at.is_some() && !self.touched_since
    }
}

/// When to ask the kernel again while it still counts a writer that
/// cannot be told apart ([`Seen::Unsure`]); no event will come when that
/// count drops. Asks after 1 ms, doubling up to every RECHECK_MAX, until
/// it is certain or the deadline comes: the closer's count drops within
/// milliseconds of its close (docs/current-cloudstack.md, "Cost"), so the
/// first few asks settle that case, and the rest cost a few looks a
/// second.
#[derive(Debug, Default)]
struct Recheck {
    pause: Option<Duration>,
}

const RECHECK_MAX: Duration = Duration::from_millis(250);

impl Recheck {
    fn next(&mut self, now: Instant) -> Instant {
        let pause = self
            .pause
            .map_or(Duration::from_millis(1), |p| (p * 2).min(RECHECK_MAX));
        self.pause = Some(pause);
        now + pause
    }
}

/// The file's length when it passes the checks. Otherwise it is moved
/// aside (an error); None when the path no longer holds the checked file,
/// which is then looked at again.
fn valid_or_reject(path: &Path, file: &File, content: &[u8]) -> Result<Option<usize>> {
    match check_file(content) {
        Ok(_) => Ok(Some(content.len())),
        Err(_) if !same_file(path, file) => Ok(None),
        Err(why) => reject(path, &why).map(|_| None),
    }
}

/// Moves the file aside so that nothing reads it as the parameters, and
/// says why in one line.
fn reject(path: &Path, why: &str) -> Result<Released> {
    let aside = path.with_file_name(REJECTED_FILE);
    let moved = match fs::rename(path, &aside) {
        Ok(()) => format!("moved to {}", aside.display()),
        Err(e) => {
            warn!("cannot move {} aside: {e}", path.display());
            "left in place (cannot be moved)".into()
        }
    };
    Err(Error::BadStored {
        path: path.to_owned(),
        problem: format!(
            "the cmdline written through qemu-ga {why}; {moved}, so the boot scripts find no cmdline"
        ),
    })
}

/// The inotify watch: the cmdline's directory, and the guest agent's device
/// node (IN_OPEN: qemu-ga opened its port; the node is never opened here).
/// Set up before anything else looks, so that no write is missed; the boot
/// job can end its wait from another thread ([`Watch::stopper`]).
pub struct Watch {
    inotify: Inotify,
    dir: WatchDescriptor,
    node: Option<WatchDescriptor>,
    /// Readable (the other end closed) once the wait must end.
    stop: Option<OwnedFd>,
}

#[derive(Debug)]
enum Event {
    /// A writer closed the cmdline, or renamed one into place.
    Closed,
    /// The cmdline was written to, truncated, created, removed or renamed
    /// away.
    Changed,
    /// The queue overflowed (events were lost): look again.
    Other,
    AgentOpened,
}

/// A pipe whose read end (the first) becomes readable, hung up, once the
/// write end is dropped: how one thread tells another that it is done. A
/// pipe, not a socket pair, so that the job needs no AF_UNIX socket.
pub(crate) fn closing_pair() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("cannot make", "a pipe", e.into()))
}

/// Ends a [`Watch`]'s wait from another thread: the watch's next (or
/// current) wait returns an error, so the barrier returns without deciding.
pub struct Stopper(OwnedFd);

impl Stopper {
    pub fn stop(self) {
        // Dropping the pipe's write end is enough: the watch's end hangs up.
        drop(self.0);
    }
}

impl Watch {
    /// Watches `dir` (made if missing) for the cmdline's writes.
    pub fn new(dir: &Path) -> Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| Error::io("cannot start inotify for", dir, e.into()))?;
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| Error::io("cannot create directory", dir, e))?;
        }
        let dir_wd = inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(|e| Error::io("cannot watch", dir, e.into()))?;
        Ok(Watch {
            inotify,
            dir: dir_wd,
            node: None,
            stop: None,
        })
    }

    /// Also watches the guest agent's device node for opens.
    pub fn watch_node(&mut self, node: &Path) {
        self.node = self
            .inotify
            .add_watch(node, AddWatchFlags::IN_OPEN)
            .map_err(|e| debug!("cannot watch {} ({e})", node.display()))
            .ok();
    }

    /// A handle that ends this watch's waits from another thread.
    pub fn stopper(&mut self) -> Result<Stopper> {
        let (mine, theirs) = closing_pair()?;
        self.stop = Some(mine);
        Ok(Stopper(theirs))
    }

    /// Sleeps in poll(2) until an event or `until`; returns what came.
    fn wait(&self, until: Instant) -> Result<Vec<Event>> {
        let mut fds = vec![PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        if let Some(stop) = &self.stop {
            fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, deadline::poll_timeout(until)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) => return Err(Error::io("cannot wait on", "inotify", e.into())),
        }
        if fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty())
        {
            return Err(Error::Unavailable(
                "the wait on the cmdline file was ended: a *.vport port holds the parameters"
                    .into(),
            ));
        }
        let events = match self.inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read", "inotify", e.into())),
        };
        Ok(events
            .into_iter()
            .filter_map(|ev| {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    Some(Event::Other)
                } else if Some(ev.wd) == self.node {
                    Some(Event::AgentOpened)
                } else if ev.wd == self.dir && ev.name.as_deref() == Some(CMDLINE_FILE.as_ref()) {
                    Some(
                        if ev
                            .mask
                            .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)
                        {
                            Event::Closed
                        } else {
                            Event::Changed
                        },
                    )
                } else {
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check_cmdline, CMDLINE_PREFIX, MAX_LINE};
    use std::io::Write;

    /// The longest cmdline the port accepts on one line.
    const PORT_CMDLINE_LIMIT: usize = MAX_LINE - CMDLINE_PREFIX.len();

    #[test]
    fn one_line_with_echos_newline_is_the_cmdline() {
        assert_eq!(check_file(b"a=1 b=2\n"), Ok("a=1 b=2"));
        assert_eq!(check_file(b"a=1 b=2"), Ok("a=1 b=2"));
        assert_eq!(check_file(b"a=1 b=2\r\n"), Ok("a=1 b=2"));
    }

    #[test]
    fn what_the_port_refuses_the_file_refuses_too() {
        assert!(check_file(b"a=1\nb=2\n")
            .unwrap_err()
            .contains("more than one line"));
        assert!(check_file(b"a=1\n\n")
            .unwrap_err()
            .contains("more than one line"));
        assert!(check_file(b"a=\x001\n").unwrap_err().contains("NUL"));
        assert!(check_file(b"a=\xff\n").unwrap_err().contains("UTF-8"));
        assert!(check_file(b"a=1\rb\n")
            .unwrap_err()
            .contains("carriage return"));
        assert!(check_file(b" \n").unwrap_err().contains("white space"));
        assert!(check_file(&vec![b'x'; MAX_FILE + 1])
            .unwrap_err()
            .contains("at most"));
        assert!(check_file(&vec![b'x'; MAX_FILE]).is_ok());
    }

    #[test]
    fn a_70_kb_cmdline_fits() {
        let line = "k=v ".repeat(17_500);
        assert_eq!(
            check_file(format!("{line}\n").as_bytes()),
            Ok(line.as_str())
        );
    }

    proptest::proptest! {
        /// Up to the port's line limit, the file and the port agree.
        #[test]
        fn file_and_port_checks_agree(line in "[ a=\r\n\0é]{0,40}") {
            // The port's decoder takes `\r\n` as a line ending too.
            proptest::prop_assume!(line.len() <= PORT_CMDLINE_LIMIT && !line.ends_with('\r'));
            let file = check_file(format!("{line}\n").as_bytes()).is_ok();
            proptest::prop_assert_eq!(file, check_cmdline(&line).is_ok());
        }
    }

    #[test]
    fn boot_time_is_the_kernels_btime() {
        // /proc/stat's btime: the kernel's own boot time, in whole seconds.
        let stat = fs::read_to_string("/proc/stat").unwrap();
        let btime: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let boot = boot_time().unwrap().duration_since(UNIX_EPOCH).unwrap();
        let off = boot.as_secs_f64() - btime as f64;
        assert!((-1.0..2.0).contains(&off), "boot_time is {off} s off btime");
    }

    #[test]
    fn rechecks_back_off_from_1_ms_to_the_cap() {
        let now = Instant::now();
        let mut r = Recheck::default();
        let pauses: Vec<u128> = (0..11).map(|_| (r.next(now) - now).as_millis()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 250, 250, 250]);
    }

    #[test]
    fn a_writer_that_has_not_written_counts_only_before_a_close() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CMDLINE_FILE);
        fs::write(&path, "a=1\n").unwrap();
        let idle = File::options().write(true).open(&path).unwrap();
        // A /proc of this process only: read whole without root.
        let proc_root = &tmp.path().join("proc");
        let pid = std::process::id().to_string();
        fs::create_dir(proc_root).unwrap();
        std::os::unix::fs::symlink(Path::new("/proc").join(&pid), proc_root.join(&pid)).unwrap();
        assert!(matches!(
            look(&path, proc_root, None, false).unwrap(),
            Seen::Writing
        ));
        assert!(matches!(
            look(&path, proc_root, None, true).unwrap(),
            Seen::Closed { .. }
        ));
        (&idle).write_all(b"a").unwrap();
        assert!(matches!(
            look(&path, proc_root, None, true).unwrap(),
            Seen::Writing
        ));
    }

    #[test]
    fn a_file_still_open_for_writing_is_never_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CMDLINE_FILE);
        let mut w = File::create(&path).unwrap();
        std::io::Write::write_all(&mut w, &[b'x'; 8192]).unwrap();
        assert!(matches!(
            look(&path, Path::new("/proc"), boot_time(), false).unwrap(),
            Seen::Writing
        ));
        drop(w);
        match look(&path, Path::new("/proc"), boot_time(), false).unwrap() {
            Seen::Closed {
                content,
                fresh_mtime,
                ..
            } => {
                assert_eq!(content.len(), 8192);
                assert!(fresh_mtime);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_from_before_the_boot_is_not_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CMDLINE_FILE);
        fs::write(&path, "a=1\n").unwrap();
        let before_boot = boot_time().unwrap() - Duration::from_secs(60);
        let secs = before_boot.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let t = nix::sys::time::TimeVal::new(secs, 0);
        nix::sys::stat::utimes(&path, &t, &t).unwrap();
        assert!(matches!(
            look(&path, Path::new("/proc"), boot_time(), false).unwrap(),
            Seen::Closed {
                fresh_mtime: false,
                ..
            }
        ));
    }

    #[test]
    fn missing_and_empty_are_no_parameters() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CMDLINE_FILE);
        assert!(matches!(
            look(&path, Path::new("/proc"), None, false).unwrap(),
            Seen::Missing
        ));
        fs::write(&path, "").unwrap();
        assert!(matches!(
            look(&path, Path::new("/proc"), None, false).unwrap(),
            Seen::Missing
        ));
    }
}
