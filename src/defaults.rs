//! Production defaults, in one place. Everything that touches the outside
//! world takes its root or directory as a value; these are only the values
//! the command line starts from.

pub const SYSFS_ROOT: &str = "/sys";
pub const DEV_ROOT: &str = "/dev";
pub const CACHE_DIR: &str = "/var/cache/cloud";
pub const SSH_DIR: &str = "/root/.ssh";
pub const PATTERN: &str = "*.vport";

/// Seconds to wait for the host's message once the port is open.
pub const TIMEOUT_SECS: f64 = 180.0;
/// Seconds to wait for a matching port to appear.
pub const PORT_TIMEOUT_SECS: f64 = 30.0;
/// Seconds to wait for fresh data when a cmdline is already stored (reboot).
pub const GRACE_SECS: f64 = 5.0;
/// Seconds of quiet after a cmdline line, with the host still connected,
/// after which the message counts as complete.
pub const SETTLE_SECS: f64 = 0.2;
/// On a reboot, past the grace period: the wait goes on while bytes of a
/// cmdline, pubkey or end line keep coming within this many seconds of each
/// other (a message in flight), never past the timeout.
pub const ARRIVING_QUIET_SECS: f64 = 1.0;
/// Seconds the ports must stay all named and unchanged, none matching,
/// before the host counts as offering no channel. QEMU adds and names all
/// ports within milliseconds of the driver's start (measured in
/// tests/vm.rs); this is that with a wide margin for a starved TCG guest.
pub const NO_CHANNEL_AFTER_SECS: f64 = 2.0;
/// Interval of the safety-net rescan while waiting for a port.
pub const RESCAN_MS: u16 = 500;

/// `barrier` (hosts without a `*.vport` port, where qemu-ga writes the
/// cmdline): seconds to wait for a fresh whole file, and, when a file from
/// an earlier boot is there, seconds after qemu-ga opens its port before it
/// is kept.
pub const BARRIER_TIMEOUT_SECS: f64 = 180.0;
pub const BARRIER_GRACE_SECS: f64 = 10.0;
pub const PROC_ROOT: &str = "/proc";
/// Where the shutdown record is kept (the unit's StateDirectory=).
pub const STATE_DIR: &str = "/var/lib/vport-bootargs";

/// Host side (`send`), as CloudStack's patchviasocket.py has them.
pub const SOCKET_DIR: &str = "/var/lib/libvirt/qemu";
pub const PUBKEY_FILE: &str = "/root/.ssh/id_rsa.pub.cloud";
/// `send` without `--wait-ack`: seconds to wait for QEMU to take the bytes
/// before closing; under the 5 s the CloudStack agent gives the script.
pub const WAIT_TAKEN_SECS: f64 = 4.0;
