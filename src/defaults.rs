//! Production defaults, in one place. Everything that touches the outside
//! world takes its root or directory as a value; these are only the values
//! the command line starts from.

use std::time::Duration;

pub const SYSFS_ROOT: &str = "/sys";
pub const DEV_ROOT: &str = "/dev";
pub const CACHE_DIR: &str = "/var/cache/cloud";
pub const SSH_DIR: &str = "/root/.ssh";
pub const PATTERN: &str = "*.vport";

/// How long to wait for the host's message once the port is open.
pub const TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for a matching port to appear.
pub const PORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for fresh data when a cmdline is already stored (reboot).
pub const GRACE: Duration = Duration::from_secs(5);
/// The quiet after a cmdline line, with the host still connected, after
/// which the message counts as complete.
pub const SETTLE: Duration = Duration::from_millis(200);
/// On a reboot, past the grace period: the wait goes on while bytes of a
/// cmdline, pubkey or end line keep coming within this of each other (a
/// message in flight), never past the timeout.
pub const ARRIVING_QUIET: Duration = Duration::from_secs(1);
/// How long the ports must stay all named and unchanged, none matching,
/// before the host counts as offering no channel. QEMU adds and names all
/// ports within milliseconds of the driver's start (measured in
/// tests/vm.rs); this is that with a wide margin for a starved TCG guest.
pub const NO_CHANNEL_AFTER: Duration = Duration::from_secs(2);
/// Interval of the safety-net rescan while waiting for a port.
pub const RESCAN_MS: u16 = 500;

/// `barrier` (hosts without a `*.vport` port, where qemu-ga writes the
/// cmdline): how long to wait for a fresh whole file, and, when a file
/// from an earlier boot is there, how long after qemu-ga opens its port
/// before it is kept.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(180);
pub const BARRIER_GRACE: Duration = Duration::from_secs(10);
pub const PROC_ROOT: &str = "/proc";
/// Where the shutdown record is kept (the unit's StateDirectory=).
pub const STATE_DIR: &str = "/var/lib/vport-bootargs";

/// Host side (`send`), as CloudStack's patchviasocket.py has them.
pub const SOCKET_DIR: &str = "/var/lib/libvirt/qemu";
pub const PUBKEY_FILE: &str = "/root/.ssh/id_rsa.pub.cloud";
/// `send` without `--wait-ack`: how long to wait for QEMU to take the bytes
/// before closing; under the 5 s the CloudStack agent gives the script.
pub const WAIT_TAKEN: Duration = Duration::from_secs(4);

/// `send --guest-agent` (patch.sh's place): the file it writes in the
/// guest, the virsh it runs, and how long the whole delivery may take, from
/// the start to the confirmed read-back; under the 300 s after which the
/// CloudStack agent kills patch.sh, so that our one line says why first.
pub const GUEST_CMDLINE_PATH: &str = "/var/cache/cloud/cmdline";
pub const VIRSH: &str = "virsh";
pub const WAIT_AGENT: Duration = Duration::from_secs(240);
