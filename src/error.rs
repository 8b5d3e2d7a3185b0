//! One error type for the whole program; each variant carries the path, port
//! or value it concerns and maps to one sysexits(3) exit code.

use std::io;
use std::path::PathBuf;

use crate::secs::Secs;

/// Exit codes (sysexits.h), documented in the README.
// sysexits(3) values by name; the exitcode crate is these same constants.
pub mod exit {
    pub const OK: i32 = 0;
    /// `get`: the key is not in the stored cmdline.
    pub const NOT_FOUND: i32 = 1;
    /// EX_USAGE: bad command line.
    pub const USAGE: i32 = 64;
    /// EX_DATAERR: the host (or a stored file) sent data we refuse.
    pub const DATA: i32 = 65;
    /// EX_UNAVAILABLE: no port, or nothing arrived before the deadline.
    pub const UNAVAILABLE: i32 = 69;
    /// EX_IOERR: reading or writing a file or the port failed.
    pub const IO: i32 = 74;
    /// EX_TEMPFAIL: the port is held by another process (guest), or QEMU
    /// did not take the message before `send` had to close (host).
    pub const BUSY: i32 = 75;
    pub const TEMPFAIL: i32 = 75;
    /// EX_NOPERM: the host side was refused access to the socket.
    pub const NOPERM: i32 = 77;
    /// EX_PROTOCOL: the guest answered with a wrong acknowledgement.
    pub const PROTOCOL: i32 = 76;
    /// EX_NOINPUT: an input file (the host's public key) is missing or empty.
    pub const NOINPUT: i32 = 66;
    /// EX_NOHOST: `send` found no socket for the VM (not running, or a wrong
    /// name or directory).
    pub const NOHOST: i32 = 68;
    /// EX_CANTCREAT: `send --guest-agent` read the file back from the guest
    /// and it differed from what was written, every time.
    pub const CANTCREAT: i32 = 73;
    /// EX_CONFIG: `send --guest-agent`: the domain has no guest agent
    /// channel (org.qemu.guest_agent.0) in its XML.
    pub const CONFIG: i32 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "port {name} ({node}) is held by another process; stop it or pick another port with --name"
    )]
    PortBusy { name: String, node: PathBuf },

    #[error("port {name} ({node}) was unplugged while it was being read")]
    PortGone { name: String, node: PathBuf },

    #[error(
        "{node} is device {found} but sysfs says port {name} is {expected}; refusing to read it"
    )]
    DeviceMismatch {
        name: String,
        node: PathBuf,
        found: String,
        expected: String,
    },

    #[error("no virtio port matching {pattern} appeared under {dir} within {secs} s")]
    NoPort {
        pattern: String,
        dir: PathBuf,
        secs: Secs,
    },

    #[error("no complete message arrived on port {name} within {secs} s")]
    Timeout { name: String, secs: Secs },

    #[error("bad data from the host on port {port}: {problem}")]
    BadData { port: String, problem: String },

    #[error("bad stored data in {path}: {problem}")]
    BadStored { path: PathBuf, problem: String },

    #[error("{0}")]
    Usage(String),

    #[error("{what} {path}: {problem}")]
    NoInput {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },

    #[error("{what} {path}: {problem}")]
    BadInput {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },

    #[error(
        "no socket at {path}: the VM is not running on this host (libvirt removes a domain's channel sockets when it stops), or its name or --socket-dir is wrong"
    )]
    NoSocket { path: PathBuf },

    #[error(
        "no socket at {path}: VM {vm} is running but has no {vm}.vport channel (only the guest agent's, {agent}); CloudStack 4.11.3 and later pass the parameters through the guest agent"
    )]
    NoChannel {
        path: PathBuf,
        vm: String,
        agent: PathBuf,
    },

    #[error("permission denied on {path}: {source}")]
    NoPermission {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{0}")]
    Protocol(String),

    #[error("{0}")]
    Unavailable(String),

    #[error("domain {vm}: {detail} (virsh domstate/dumpxml; is it defined on this host, under that name?)")]
    NoDomain { vm: String, detail: String },

    #[error("domain {vm} is not running (virsh domstate says {state:?}); start it first")]
    NotRunning { vm: String, state: String },

    #[error(
        "domain {vm} has no guest agent channel (<channel> with target name='org.qemu.guest_agent.0') in its XML; nothing can write the cmdline through qemu-ga"
    )]
    NoAgentChannel { vm: String },

    #[error(
        "the guest agent of domain {vm} did not connect within {secs} s (its channel is never state='connected'): is qemu-guest-agent installed and enabled in the template?"
    )]
    AgentNotConnected { vm: String, secs: Secs },

    #[error(
        "the guest agent of domain {vm} was connected but did not answer within {secs} s: {detail}"
    )]
    AgentNotAnswering {
        vm: String,
        secs: Secs,
        detail: String,
    },

    #[error("domain {vm}: guest-sync with id {sent} was answered {got}; another client on the agent's channel?")]
    SyncMismatch { vm: String, sent: u64, got: String },

    #[error("{vm}:{path}: {command} failed: {detail}")]
    GuestFile {
        vm: String,
        path: String,
        command: &'static str,
        detail: String,
    },

    #[error(
        "{vm}:{path}: read back {got} bytes that differ from the {sent} written, after {writes} write(s); the guest's file is not what was sent"
    )]
    ReadBackDiffers {
        vm: String,
        path: String,
        sent: usize,
        got: usize,
        writes: u32,
    },

    #[error(
        "{path}: QEMU had not taken the message from the socket after {secs} s (the guest does not \
         hold its port open yet); closing, so QEMU drops it: nothing was delivered, send again"
    )]
    NotTaken { path: PathBuf, secs: Secs },
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } => exit::IO,
            Error::PortBusy { .. } => exit::BUSY,
            Error::NotTaken { .. } => exit::TEMPFAIL,
            Error::PortGone { .. } | Error::NoPort { .. } | Error::Timeout { .. } => {
                exit::UNAVAILABLE
            }
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::DeviceMismatch { .. } => exit::UNAVAILABLE,
            Error::BadData { .. } | Error::BadStored { .. } => exit::DATA,
            Error::Usage(_) => exit::USAGE,
            Error::NoInput { .. } => exit::NOINPUT,
            Error::BadInput { .. } => exit::DATA,
            Error::NoSocket { .. } | Error::NoChannel { .. } => exit::NOHOST,
            Error::NoPermission { .. } => exit::NOPERM,
            Error::Protocol(_) => exit::PROTOCOL,
            Error::NoDomain { .. } | Error::NotRunning { .. } => exit::NOHOST,
            Error::NoAgentChannel { .. } => exit::CONFIG,
            Error::AgentNotConnected { .. } | Error::AgentNotAnswering { .. } => exit::UNAVAILABLE,
            Error::SyncMismatch { .. } => exit::PROTOCOL,
            Error::GuestFile { .. } => exit::IO,
            Error::ReadBackDiffers { .. } => exit::CANTCREAT,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
