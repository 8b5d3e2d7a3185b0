//! The boot job: find the port, read one whole message, store it, ack it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::port::{PortReader, Received};
use super::ports::{Selector, GUEST_AGENT_PORT};
use super::store::{self, Targets};
use super::wait::wait_for_port;
use crate::error::{Error, Result};
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
    /// Quiet time after a cmdline line that ends the message.
    pub settle: Duration,
    /// Write `ack:<sha256>` back; false opens the port read-only.
    pub ack: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh message was stored.
    Stored { port: String, pubkey: bool },
    /// Nothing fresh within the grace period; the stored cmdline stays.
    KeptStored,
}

pub fn fetch(opts: &FetchOptions) -> Result<Outcome> {
    if opts.selector.name.as_deref() == Some(GUEST_AGENT_PORT) {
        return Err(Error::Usage(format!(
            "--name {GUEST_AGENT_PORT}: that is the QEMU guest agent's port, which this program never opens"
        )));
    }
    let start = Instant::now();
    let reboot = match store::stored_cmdline(&opts.targets.cache_dir) {
        Ok(stored) => stored.is_some(),
        // A damaged file (an older, non-atomic writer; a bad disk) must not
        // keep fresh parameters out: read the port as on a first boot.
        Err(e @ Error::BadStored { .. }) => {
            warn!("{e}; reading the port as on a first boot");
            false
        }
        Err(e) => return Err(e),
    };
    if reboot {
        info!(
            "{} already holds a cmdline; once the port is open, waiting up to {:?} for fresh parameters",
            opts.targets.cmdline().display(),
            opts.grace
        );
    }
    // The grace period is the host's time to speak once we listen, so it
    // counts from opening the port; the port itself can appear seconds after
    // this starts (virtio_console loaded late by udev, seen in the image
    // test), and waiting for it only `grace` would drop fresh parameters.
    let port_wait = opts.port_timeout;
    let Some(port) = wait_for_port(
        &opts.sysfs_root,
        &opts.dev_root,
        &opts.selector,
        deadline::after(start, port_wait),
    )?
    else {
        if reboot {
            return kept(opts);
        }
        return Err(Error::NoPort {
            pattern: opts.selector.describe(),
            dir: opts.sysfs_root.join("class/virtio-ports"),
            secs: port_wait.as_secs_f64(),
        });
    };
    store::check_targets(&opts.targets)?;
    let mut reader = PortReader::open(&port, opts.ack)?;
    let opened = Instant::now();
    let mut decoder = Decoder::new();
    let first_wait = if reboot { opts.grace } else { opts.timeout };
    let mut received = reader.receive(
        &mut decoder,
        deadline::after(opened, first_wait),
        opts.settle,
    )?;
    if reboot && matches!(received, Received::TimedOut) && decoder.received_any() {
        // Data started arriving within the grace period: the host is
        // sending, so give it the full timeout to finish.
        info!(
            "fresh data is arriving; waiting up to {:?} for the rest",
            opts.timeout
        );
        received = reader.receive(
            &mut decoder,
            deadline::after(opened, opts.timeout),
            opts.settle,
        )?;
    }
    let message = match received {
        Received::Message(m) => m,
        Received::TimedOut if reboot && !decoder.received_any() => return kept(opts),
        Received::TimedOut => {
            if decoder.pending() > 0 {
                warn!(
                    "dropping {} bytes of an unfinished line at the deadline",
                    decoder.pending()
                );
            }
            return Err(Error::Timeout {
                name: reader.label().to_owned(),
                secs: if reboot { opts.timeout } else { first_wait }.as_secs_f64(),
            });
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

fn kept(opts: &FetchOptions) -> Result<Outcome> {
    info!(
        "no fresh parameters within the grace period of {:?}; keeping those in {}",
        opts.grace,
        opts.targets.cmdline().display()
    );
    Ok(Outcome::KeptStored)
}
