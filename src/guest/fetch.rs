//! The boot job: find the port, read one whole message, store it, ack it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::port::{Deadlines, PortReader, Received};
use super::ports::{Port, Selector, GUEST_AGENT_PORT};
use super::store::{self, Targets};
use super::wait::{wait_for_port, Found};
use crate::defaults::ARRIVING_QUIET;
use crate::error::{Error, Result};
use crate::secs::Secs;
use crate::wire::{ack_line, Decoder};
use crate::{deadline, info, warn};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub selector: Selector,
    pub targets: Targets,
    /// Waiting for a whole message once the port is open.
    pub timeout: Duration,
    /// Waiting for a matching port to appear.
    pub port_timeout: Duration,
    /// Waiting for fresh data when a cmdline is already stored.
    pub grace: Duration,
    /// Quiet time after a cmdline line that ends an unframed message.
    pub settle: Duration,
    /// How long the ports must stay all named and unchanged, none
    /// matching, before the host counts as offering no channel.
    pub no_channel_after: Duration,
    /// Write `ack:<sha256>` back; false opens the port read-only.
    pub ack: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh message was stored.
    Stored { port: String, pubkey: bool },
    /// Nothing fresh within the grace period; the stored cmdline stays.
    KeptStored,
    /// The host offers no matching port (CloudStack 4.11.3 and later: only
    /// the guest agent's); nothing was read or written.
    NoChannel,
}

pub fn fetch(opts: &FetchOptions) -> Result<Outcome> {
    refuse_guest_agent_name(opts)?;
    let start = Instant::now();
    let reboot = holds_cmdline(opts)?;
    // The grace period is the host's time to speak once we listen, so it
    // counts from opening the port; the port itself can appear seconds after
    // this starts (virtio_console loaded late by udev, seen in the image
    // test), and waiting for it only `grace` would drop fresh parameters.
    let port_wait = opts.port_timeout;
    let port = match wait_for_port(
        &opts.sysfs_root,
        &opts.dev_root,
        &opts.selector,
        deadline::after(start, port_wait),
        opts.no_channel_after,
    )? {
        Found::Port(port) => port,
        Found::NoChannel(what) => {
            say_no_channel(opts, &what);
            return Ok(Outcome::NoChannel);
        }
        // Woken is for a wait given a `wake` descriptor; this one has none.
        Found::TimedOut | Found::Woken if reboot => return kept(opts, None),
        Found::TimedOut | Found::Woken => return Err(no_port(opts)),
    };
    // Said only once there is a port to wait on: on a host without one the
    // stored cmdline is not this job's to keep.
    if reboot {
        info!(
            "{} already holds a cmdline; once the port is open, waiting up to {:?} for fresh parameters",
            opts.targets.cmdline().display(),
            opts.grace
        );
    }
    fetch_from(opts, &port, reboot)
}

/// `--name org.qemu.guest_agent.0` is a usage error: that port is never opened.
pub fn refuse_guest_agent_name(opts: &FetchOptions) -> Result<()> {
    if opts.selector.name.as_deref() == Some(GUEST_AGENT_PORT) {
        return Err(Error::Usage(format!(
            "--name {GUEST_AGENT_PORT}: that is the QEMU guest agent's port, which this program never opens"
        )));
    }
    Ok(())
}

/// Whether a cmdline from an earlier boot is stored (the reboot case). A
/// damaged one (an older, non-atomic writer; a bad disk) must not keep
/// fresh parameters out: the port is then read as on a first boot.
pub fn holds_cmdline(opts: &FetchOptions) -> Result<bool> {
    match store::stored_cmdline(&opts.targets.cache_dir) {
        Ok(stored) => Ok(stored.is_some()),
        Err(e @ Error::BadStored { .. }) => {
            warn!("{e}; reading the port as on a first boot");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn say_no_channel(opts: &FetchOptions, what: &str) {
    info!(
        "the host provides no channel matching {} ({what}, unchanged for {:.1} s); CloudStack \
         4.11.3 and later send the parameters through the QEMU guest agent instead",
        opts.selector.describe(),
        Secs(opts.no_channel_after)
    );
}

pub(crate) fn no_port(opts: &FetchOptions) -> Error {
    Error::NoPort {
        pattern: opts.selector.describe(),
        dir: opts.sysfs_root.join("class/virtio-ports"),
        secs: Secs(opts.port_timeout),
    }
}

/// Reads `port` and stores what the host sends. `reboot`: a cmdline is
/// stored already, kept if nothing fresh comes within `opts.grace` of
/// opening the port (0: only a message already arriving is waited for;
/// `opts.timeout` or more: kept only at the deadline).
pub fn fetch_from(opts: &FetchOptions, port: &Port, reboot: bool) -> Result<Outcome> {
    store::check_targets(&opts.targets)?;
    let mut reader = PortReader::open(port, opts.ack)?;
    let opened = Instant::now();
    let mut decoder = Decoder::new();
    // On a reboot the wait ends with the grace period, unless a message is
    // arriving then; never past --timeout either way.
    let hard = deadline::after(opened, opts.timeout);
    let soft = if reboot {
        deadline::after(opened, opts.grace).min(hard)
    } else {
        hard
    };
    let deadlines = Deadlines {
        soft,
        hard,
        quiet: ARRIVING_QUIET,
        settle: opts.settle,
    };
    let message = match reader.receive(&mut decoder, &deadlines)? {
        Received::Message(m) => m,
        Received::TimedOut => {
            match decoder.finish() {
                // Good data is never thrown away at a deadline.
                Ok(Some(m)) => {
                    info!("the deadline came with a whole cmdline; storing it without waiting any longer");
                    m
                }
                Err(e) => return Err(reader.bad_data(e)),
                Ok(None) if reboot => return kept(opts, Some(&decoder)),
                Ok(None) => {
                    if decoder.pending() > 0 {
                        warn!(
                            "dropped {} bytes of an unfinished line at the deadline",
                            decoder.pending()
                        );
                    }
                    return Err(Error::Timeout {
                        name: reader.label().to_owned(),
                        secs: Secs(opts.timeout),
                    });
                }
            }
        }
    };
    store::store(&message, &opts.targets)?;
    info!(
        "stored the cmdline ({} bytes) in {}{}",
        message.cmdline.len(),
        opts.targets.cmdline().display(),
        if message.pubkey.is_some() {
            " and the public key in both authorized_keys files"
        } else {
            ""
        }
    );
    if opts.ack {
        reader.ack(&ack_line(&message.cmdline), opts.settle);
    }
    Ok(Outcome::Stored {
        port: reader.label().to_owned(),
        pubkey: message.pubkey.is_some(),
    })
}

/// Keeps the stored parameters, saying in one line what (if anything)
/// came instead of a whole message.
fn kept(opts: &FetchOptions, decoder: Option<&Decoder>) -> Result<Outcome> {
    let what = match decoder {
        Some(d) if d.pending() > 0 => format!(
            " (only stray bytes came, and {} bytes of an unfinished line)",
            d.pending()
        ),
        Some(d) if d.received_any() => " (only stray bytes came)".to_owned(),
        _ => String::new(),
    };
    let within = if opts.grace.is_zero() {
        "nothing was arriving on the port".to_owned()
    } else if opts.grace >= opts.timeout {
        format!("no fresh parameters within {:?}", opts.timeout)
    } else {
        format!(
            "no fresh parameters within the grace period of {:?}",
            opts.grace
        )
    };
    info!(
        "{within}{what}; keeping those in {}",
        opts.targets.cmdline().display()
    );
    Ok(Outcome::KeptStored)
}
