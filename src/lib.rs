//! vport-bootargs: Apache CloudStack boot parameters over virtio-serial,
//! delivered whole.
//!
//! Guest side: [`ports`] finds the port by name, [`wait`] waits for it to
//! appear, [`reader`] holds it open and reads, [`protocol`] frames the
//! host's lines into a message, [`store`] writes the files atomically,
//! [`fetch`] ties these together. [`cmdline`] reads the stored pairs back.
//! Host side: [`send`]. [`cli`] is the command line over all of it.

pub mod log;

pub mod cli;
pub mod cmdline;
pub mod defaults;
pub mod error;
pub mod fetch;
pub mod pattern;
pub mod ports;
pub mod protocol;
pub mod reader;
pub mod send;
pub mod store;
pub mod wait;

pub use error::{Error, Result};
