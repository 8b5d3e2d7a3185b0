//! Host side: `vport-bootargs send`, in place of CloudStack's
//! scripts/vm/hypervisor/kvm/patchviasocket.py. [`request`] resolves what to
//! send where, [`session`] sends it (and waits for the ack), [`socket`] is
//! the unix socket to QEMU.
//!
//! QEMU is the server on the VM's socket (libvirt `<source mode='bind'>`),
//! and what it does with the host's bytes shapes this module (measured in the
//! VM tests):
//! - it hands them to the guest only once the guest holds the port open, and
//!   leaves them in the socket until then;
//! - if the host disconnects before that, they are dropped.
//!
//! patchviasocket writes and closes at once, so it delivers only when the
//! guest already holds the port open, and says nothing either way. Without
//! `--wait-ack` we close only once QEMU has taken every byte (SIOCOUTQ is 0),
//! or exit 75 when it has not within `--wait-taken`. With `--wait-ack` we stay connected
//! instead, so the bytes wait in the socket until the guest opens the port,
//! and we stop when the guest's `ack:<sha256 of the cmdline>` line comes back.
//! A connection that cannot be made yet (no socket, refused) or that drops
//! (QEMU restarted) is made again every [`session::RETRY_INTERVAL`], and the whole
//! message is sent again on each new connection.
//!
//! The format itself (encoding, checks, acks) is in [`crate::wire`].
//!
//! `send --guest-agent` is the other host path, in place of CloudStack's
//! patch.sh (4.11.3 and later, no `*.vport` channel): [`agent`] drives
//! `virsh` to write the cmdline file through the QEMU guest agent and read
//! it back; [`qga`] is its pure part (the agent's JSON, the domain's XML).

pub mod agent;
pub mod qga;
pub mod request;
pub mod session;
pub mod socket;

pub use agent::{deliver, AgentOptions, Delivered};
pub use request::{resolve, socket_for, spaces_for_percent, SendRequest, Target};
pub use session::{send, Outcome, SendOptions, RETRY_INTERVAL};
