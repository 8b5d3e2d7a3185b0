//! The boot job (`vport-bootargs boot`, the one unit's ExecStart): one
//! process that releases CloudStack's boot scripts at the first moment it
//! is certain of their parameters, whichever way the host sends them.
//!
//! - The watch on the cmdline's directory is set up before anything else,
//!   so that a write made through qemu-ga while the ports are still being
//!   named is an event, never missed.
//! - A thread waits for a `*.vport` port ([`wait`]). As soon as a scan
//!   shows every port named, the guest agent's among them, and no `*.vport`
//!   port, a second thread holds on the cmdline file ([`barrier::hold`]),
//!   without waiting for the no-channel decision. The job's own thread
//!   takes whichever ends first.
//! - A `*.vport` port wins: the file's thread is stopped (its watch's wait
//!   ends; it never decides after that), and [`fetch`] stores what the
//!   port brings. The file thread's decision is the job's, and ends it as
//!   soon as it comes, without the no-channel decision (the ports named
//!   and unchanged for `--no-channel-after`) and without the end of a scan
//!   under way (its sysfs reads take up to 0.6 s under TCG): after a clean
//!   reboot that is at once. The port thread is left to end at its next
//!   poll ([`Found::Woken`]); whatever it finds then is not acted on.
//!   Neither port: nothing can send, and the job ends.
//!
//! How long a stored cmdline waits for fresh parameters follows from how
//! the previous boot ended ([`shutdown`]): [`Rule`].

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::barrier::{self, BarrierOptions, Keep, Released, Watch};
use super::fetch::{self, FetchOptions, Outcome};
use super::ports::{Port, Verdict, GUEST_AGENT_PORT};
use super::shutdown::{self, Ended, RECORD_FILE};
use super::wait::{wait_for_port_seeing, Found};
use crate::error::{Error, Result};
use crate::{deadline, debug, info};

#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The port side; its `grace` is the one for a boot with no record.
    pub fetch: FetchOptions,
    /// The guest agent's file side; its `grace` likewise. Its cache
    /// directory is the fetch side's.
    pub barrier: BarrierOptions,
    /// Where the shutdown record is kept.
    pub state_dir: PathBuf,
}

/// How long a stored cmdline waits for fresh parameters this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing stored: the host's parameters are awaited until the
    /// deadline.
    NothingStored,
    /// After a clean reboot the host sends nothing: the stored cmdline is
    /// kept at once (a message already arriving on the port is still read).
    KeepAtOnce,
    /// After a poweroff a start follows and the host writes: fresh
    /// parameters are awaited until the deadline, where a valid stored
    /// cmdline is kept.
    AwaitFresh,
    /// No record (reset, destroyed, crashed, or none was made): fresh
    /// parameters get the grace period.
    Grace,
}

impl Rule {
    pub fn new(ended: Option<Ended>, stored: bool) -> Rule {
        match (stored, ended) {
            (false, _) => Rule::NothingStored,
            (true, Some(Ended::Reboot)) => Rule::KeepAtOnce,
            (true, Some(Ended::Poweroff)) => Rule::AwaitFresh,
            (true, None) => Rule::Grace,
        }
    }

    fn keep(self) -> Keep {
        match self {
            Rule::KeepAtOnce => Keep::AtOnce,
            Rule::AwaitFresh => Keep::AtDeadline,
            Rule::NothingStored | Rule::Grace => Keep::AfterGrace,
        }
    }

    /// The grace for a side whose deadline is `timeout` and whose grace
    /// with no record is `grace`.
    fn grace(self, grace: Duration, timeout: Duration) -> Duration {
        match self {
            Rule::KeepAtOnce => Duration::ZERO,
            Rule::AwaitFresh => timeout,
            Rule::NothingStored | Rule::Grace => grace,
        }
    }
}

/// What the job ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum Booted {
    /// A `*.vport` port was read.
    Port(Outcome),
    /// The cmdline file written through qemu-ga was decided on.
    File(Released),
    /// Neither a `*.vport` port nor the guest agent's: nothing can send.
    NoChannel,
}

/// Runs the boot job (module comment) until the boot scripts can go on.
pub fn boot(opts: &BootOptions) -> Result<Booted> {
    fetch::refuse_guest_agent_name(&opts.fetch)?;
    let start = Instant::now();
    let cache_dir = &opts.fetch.targets.cache_dir;
    let mut watch = Watch::new(cache_dir)?;
    let stopper = watch.stopper()?;
    let ended = shutdown::take(&opts.state_dir);
    let stored = fetch::holds_cmdline(&opts.fetch)?;
    let rule = Rule::new(ended, stored);
    say_rule(opts, ended, rule);

    let mut fopts = opts.fetch.clone();
    fopts.grace = rule.grace(fopts.grace, fopts.timeout);
    let mut bopts = opts.barrier.clone();
    bopts.cache_dir = cache_dir.clone();
    bopts.grace = rule.grace(bopts.grace, bopts.timeout);

    // The port wait has a thread of its own, and this one takes the first
    // of its result and the file side's decision: a sysfs scan under way
    // when the file side decides (ports::scan and the console devices'
    // reads, up to 0.6 s under TCG) must not hold the job until it ends.
    let sides = Arc::new(Sides::default());
    // The file side also closes `decided` when it returns, which ends the
    // port wait at its next poll (Found::Woken): the port thread, left to
    // end on its own, does not scan on until the port timeout.
    let (woken, decided) = barrier::closing_pair()?;
    {
        let sides = Arc::clone(&sides);
        let fopts = fopts.clone();
        let mut watch = Some(watch);
        let mut decided = Some(decided);
        thread::spawn(move || {
            let _failed = SaysFailed(&sides);
            let found = wait_for_port_seeing(
                &fopts.sysfs_root,
                &fopts.dev_root,
                &fopts.selector,
                deadline::after(start, fopts.port_timeout),
                fopts.no_channel_after,
                &mut |ports: &[Port]| {
                    // Every port named and none matching: QEMU names all
                    // ports within milliseconds of each other, so this
                    // comes long before the no-channel decision, and a
                    // vport port still unnamed never lets the file side
                    // start (and speak) first.
                    if ports.iter().any(|p| p.name.is_none()) {
                        return;
                    }
                    let Some(agent) = ports.iter().find(|p| p.verdict == Verdict::GuestAgent)
                    else {
                        return;
                    };
                    let Some(mut watch) = watch.take() else {
                        return;
                    };
                    debug!(
                        "every port is named, {GUEST_AGENT_PORT} ({}) among them, and none matches {}: watching the cmdline file",
                        agent.entry,
                        fopts.selector.describe()
                    );
                    let (agent, bopts) = (agent.clone(), bopts.clone());
                    let entry = agent.entry.clone();
                    let decided = decided.take();
                    // Spawned under the lock that the file thread takes to
                    // say it decided: its handle is stored before then.
                    let mut told = sides.lock();
                    let file_sides = Arc::clone(&sides);
                    let handle = thread::spawn(move || {
                        let released =
                            barrier::hold(&bopts, &mut watch, &agent, start, rule.keep());
                        file_sides.tell(First::File);
                        drop(decided);
                        released
                    });
                    told.file = Some((handle, entry));
                },
                Some(woken.as_fd()),
            );
            sides.tell(First::Ports(found));
        });
    }
    let (first, file_side) = sides.first();
    let found = match first {
        First::File => return file_side.map_or_else(unbegun, |(handle, _)| joined(handle)),
        First::Ports(found) => found,
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            stopper.stop();
            if let Some((handle, _)) = file_side {
                let _ = handle.join();
            }
            return Err(e);
        }
    };
    match (found, file_side) {
        (Found::Port(port), file_side) => {
            // The port wins: the file side ends before the port is read,
            // so that nothing but fetch writes the cmdline from here on.
            stopper.stop();
            if let Some((handle, _)) = file_side {
                let _ = handle.join();
            }
            // The file side may have moved a bad file aside meanwhile.
            let stored = stored && fopts.targets.cmdline().exists();
            if stored && rule == Rule::Grace {
                info!(
                    "once port {} is open, waiting up to {:?} for fresh parameters",
                    port.name.as_deref().unwrap_or(""),
                    fopts.grace
                );
            }
            fetch::fetch_from(&fopts, &port, stored).map(Booted::Port)
        }
        (Found::NoChannel(what), Some((handle, _))) => {
            fetch::say_no_channel(&fopts, &what);
            joined(handle)
        }
        // The file side closed `decided` without saying it decided: its
        // thread panicked (joined says so).
        (Found::Woken, Some((handle, _))) => joined(handle),
        // Only the file side closes `decided`, so there is one.
        (Found::Woken, None) => unbegun(),
        (Found::TimedOut, Some((handle, entry))) => {
            debug!(
                "the ports did not settle within {:?}; {GUEST_AGENT_PORT} ({entry}) is there, so the cmdline file decides",
                fopts.port_timeout
            );
            joined(handle)
        }
        (Found::NoChannel(what), None) => {
            info!(
                "the host provides no port matching {} and no {GUEST_AGENT_PORT} port ({what}): nothing can send the parameters; not holding the boot",
                fopts.selector.describe()
            );
            Ok(Booted::NoChannel)
        }
        (Found::TimedOut, None) if stored => {
            info!(
                "no port matching {} and no {GUEST_AGENT_PORT} port appeared within {:?}; keeping the cmdline in {}",
                fopts.selector.describe(),
                fopts.port_timeout,
                fopts.targets.cmdline().display()
            );
            Ok(Booted::Port(Outcome::KeptStored))
        }
        (Found::TimedOut, None) => Err(fetch::no_port(&fopts)),
    }
}

/// What the port thread and the file thread tell the job's thread.
#[derive(Default)]
struct Sides {
    told: Mutex<Told>,
    came: Condvar,
}

/// The file side's thread and the guest agent's port entry.
type FileSide = (JoinHandle<Result<Released>>, String);

#[derive(Default)]
struct Told {
    /// Once the file side is started.
    file: Option<FileSide>,
    /// Whichever came first; what comes after is not looked at.
    first: Option<First>,
}

enum First {
    /// The file side's wait returned (decided, or failed): what its
    /// thread returns is the job's.
    File,
    /// The port wait ended.
    Ports(Result<Found>),
}

impl Sides {
    // A thread that panicked holding the lock left nothing half-done in
    // `Told` (each change is one assignment), so a poisoned lock is taken.
    fn lock(&self) -> MutexGuard<'_, Told> {
        self.told.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tell(&self, what: First) {
        self.lock().first.get_or_insert(what);
        self.came.notify_one();
    }

    /// Waits for the first word, and takes the file side's thread.
    fn first(&self) -> (First, Option<FileSide>) {
        let mut told = self.lock();
        loop {
            if let Some(first) = told.first.take() {
                return (first, told.file.take());
            }
            told = self.came.wait(told).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Says that the port wait failed if its thread panics before it says how
/// the wait ended (tests unwind; the release build aborts), so that the
/// job's thread does not wait for a word that never comes.
struct SaysFailed<'a>(&'a Sides);

impl Drop for SaysFailed<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.tell(First::Ports(Err(Error::Unavailable(
                "the wait for a port failed".into(),
            ))));
        }
    }
}

fn unbegun() -> Result<Booted> {
    Err(Error::Unavailable(
        "the wait on the cmdline file ended before it began".into(),
    ))
}

fn joined(handle: JoinHandle<Result<Released>>) -> Result<Booted> {
    match handle.join() {
        Ok(released) => released.map(Booted::File),
        Err(_) => Err(Error::Unavailable(
            "the wait on the cmdline file failed".into(),
        )),
    }
}

/// The one line that says which rule applies and why.
fn say_rule(opts: &BootOptions, ended: Option<Ended>, rule: Rule) {
    let record = opts.state_dir.join(RECORD_FILE);
    let cmdline = opts.fetch.targets.cmdline();
    let cmdline = cmdline.display();
    let how = match ended {
        Some(e) => format!("the previous boot ended in a {} ({})", e.word(), record.display()),
        None => format!(
            "no record of how the previous boot ended in {} (a reset, a destroy, a crash, or a boot without this package)",
            record.display()
        ),
    };
    match rule {
        Rule::NothingStored => info!(
            "{cmdline} holds no cmdline: waiting for the host's parameters ({how})"
        ),
        Rule::KeepAtOnce => info!(
            "{how}, after which CloudStack sends nothing: keeping the cmdline in {cmdline} at once unless fresh parameters are already arriving"
        ),
        Rule::AwaitFresh => info!(
            "{how}, so a start follows and the host writes new parameters: waiting for them up to {:?}, keeping the cmdline in {cmdline} only then",
            opts.fetch.timeout.max(opts.barrier.timeout)
        ),
        Rule::Grace => info!(
            "{how}: fresh parameters get a grace period before the cmdline in {cmdline} is kept"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_the_previous_boot_ended_sets_the_rule() {
        assert_eq!(Rule::new(Some(Ended::Reboot), true), Rule::KeepAtOnce);
        assert_eq!(Rule::new(Some(Ended::Poweroff), true), Rule::AwaitFresh);
        assert_eq!(Rule::new(None, true), Rule::Grace);
        for ended in [None, Some(Ended::Reboot), Some(Ended::Poweroff)] {
            assert_eq!(Rule::new(ended, false), Rule::NothingStored);
        }
        let (grace, timeout) = (Duration::from_secs(5), Duration::from_secs(180));
        assert_eq!(Rule::KeepAtOnce.grace(grace, timeout), Duration::ZERO);
        assert_eq!(Rule::AwaitFresh.grace(grace, timeout), timeout);
        assert_eq!(Rule::Grace.grace(grace, timeout), grace);
    }
}
