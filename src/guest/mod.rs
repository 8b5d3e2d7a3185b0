//! Guest side: what runs inside the system VM at boot.
//!
//! [`ports`] finds the port by name ([`pattern`] matches it), [`wait`] waits
//! for it to appear, [`port`] holds it open and reads, [`store`] writes the
//! files atomically, [`fetch`] is the boot job that ties them together, and
//! [`cmdline`] reads the stored `key=value` pairs back for `get` and `show`.
//! Where the host has no `*.vport` channel and writes the cmdline through
//! the QEMU guest agent instead, [`barrier`] holds the boot until that file
//! is whole, fresh and valid ([`openers`] tells who has it open). [`boot`]
//! is the one boot job that runs both sides at once, taking from
//! [`shutdown`] how the previous boot ended. Each job first restricts
//! itself to the paths it needs ([`sandbox`]) and to the system calls it
//! makes ([`filter`]).

pub mod barrier;
pub mod boot;
pub mod cmdline;
pub mod fetch;
pub mod filter;
pub mod openers;
pub mod pattern;
pub mod port;
pub mod ports;
pub mod sandbox;
pub mod shutdown;
pub mod store;
pub mod wait;

pub use fetch::{fetch, FetchOptions, Outcome};
