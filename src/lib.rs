//! vport-bootargs: Apache CloudStack boot parameters over virtio-serial,
//! delivered whole.
//!
//! The tree says where each part runs:
//! - [`guest`]: inside the system VM. Find the `*.vport` port, hold it open,
//!   read one whole message, store it, answer with an ack.
//! - [`host`]: on the KVM host. `send` writes the message to the VM's socket
//!   (in place of patchviasocket.py) and can wait for the ack.
//! - [`wire`]: the format both sides share, both directions. Pure.
//! - [`cli`] (feature `cli`): the command line. Nothing else imports clap;
//!   plain option structs cross into the library.
//!
//! Shared: [`error`] (one enum, one exit code per variant), [`log`],
//! [`deadline`] (deadlines as poll timeouts), [`secs`] (spans of time as the
//! command line and the messages write them), [`defaults`], [`files`]
//! (reading small files that may be planted or broken).

pub mod log;

#[cfg(feature = "cli")]
pub mod cli;
pub mod deadline;
pub mod defaults;
pub mod error;
pub mod files;
pub mod guest;
pub mod host;
pub mod secs;
pub mod wire;

pub use error::{Error, Result};
