//! The command line, the only part of the crate that knows clap: the
//! definitions here, [`run`] turning them into the library's plain option
//! structs, [`render`] printing results. `main.rs` only parses, calls
//! [`run::run`] and maps errors to exit codes; the man pages are generated
//! from `Cli::command()` (examples/gen-docs.rs).

pub mod render;
pub mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::defaults;
use crate::guest::ports::Selector;
use crate::secs::Secs;

#[derive(Debug, Parser)]
#[command(
    name = "vport-bootargs",
    version,
    // A later option overrides an earlier one, so a unit's drop-in can
    // append `--timeout 600` to the defaults it was given.
    args_override_self = true,
    about = "Reads Apache CloudStack boot parameters from the system VM's virtio-serial port",
    long_about = "Inside a CloudStack system VM on KVM, finds the virtio-serial port named *.vport \
(never the QEMU guest agent's), holds it open until the host's pubkey: and cmdline: lines \
have arrived whole, and stores them atomically where the system VM's scripts read them. \
On the host, `send` writes those lines to the VM's socket and can wait for the guest's ack."
)]
pub struct Cli {
    /// Where sysfs is mounted (ports are found under <DIR>/class/virtio-ports).
    #[arg(long, global = true, value_name = "DIR", default_value = defaults::SYSFS_ROOT)]
    pub sysfs_root: PathBuf,
    /// Where the device nodes are (<DIR>/vportNpM).
    #[arg(long, global = true, value_name = "DIR", default_value = defaults::DEV_ROOT)]
    pub dev_root: PathBuf,
    /// More log lines (debug level). With -q too, the later one counts.
    #[arg(short, long, global = true, overrides_with = "quiet")]
    pub verbose: bool,
    /// Only warnings and errors. With -v too, the later one counts.
    #[arg(short, long, global = true, overrides_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The boot job: wait for the port, read the host's message, store it.
    Fetch(FetchArgs),
    /// List every virtio port and whether it would be read.
    Ports {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print one value from the stored cmdline (exit 1 when absent).
    Get {
        /// The key, e.g. `type` or `public.network.device`.
        key: String,
        #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
        cache_dir: PathBuf,
    },
    /// Print the stored cmdline.
    Show {
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// `--format env`: put PREFIX before every name (e.g. `cs_`), so
        /// that keys such as PATH or IFS are set as `cs_PATH`, `cs_IFS`
        /// instead of being left out. It must hold a lower-case letter.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
        cache_dir: PathBuf,
    },
    /// Host side: send the parameters to a VM's socket (replaces
    /// patchviasocket.py), or with --guest-agent write them through the QEMU
    /// guest agent and read them back (replaces patch.sh).
    #[command(after_help = SEND_EXAMPLES)]
    Send(SendArgs),
    /// Where the host has no *.vport channel and writes the cmdline through
    /// the QEMU guest agent: wait until that file is whole, fresh and valid.
    Barrier(BarrierArgs),
    /// The boot job (the unit's ExecStart): fetch and barrier at once, the
    /// first to be certain releasing the boot; how long stored parameters
    /// wait follows from the shutdown record.
    Boot(BootArgs),
    /// At shutdown (the unit's ExecStop): record whether this boot ends in
    /// a reboot or a poweroff, for the next boot.
    RecordShutdown(RecordArgs),
}

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The cmdline file: seconds after qemu-ga opens its port to wait for a
    /// fresh one before keeping one from an earlier boot (with no shutdown record).
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::BARRIER_GRACE))]
    pub file_grace: Secs,
    /// The cmdline file: seconds to wait for one written during this boot.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::BARRIER_TIMEOUT))]
    pub file_timeout: Secs,
    /// Where procfs is mounted (who holds the file or the port open).
    #[arg(long, value_name = "DIR", default_value = defaults::PROC_ROOT)]
    pub proc_root: PathBuf,
    /// Directory of the shutdown record (read and removed at boot).
    #[arg(long, value_name = "DIR", default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Directory of the shutdown record.
    #[arg(long, value_name = "DIR", default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Record this instead of asking systemd which shutdown target is being started.
    #[arg(long = "as", value_name = "END", value_enum)]
    pub as_: Option<End>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum End {
    /// A clean reboot: the host sends nothing next boot.
    Reboot,
    /// A poweroff or halt: a start follows, and the host writes.
    Poweroff,
}

#[derive(Debug, Args)]
pub struct BarrierArgs {
    /// Seconds to wait for a cmdline written during this boot.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::BARRIER_TIMEOUT))]
    pub timeout: Secs,
    /// When the cmdline is from an earlier boot: seconds after qemu-ga opens its port to wait for a fresh one before keeping it.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::BARRIER_GRACE))]
    pub grace: Secs,
    /// Directory of `cmdline`.
    #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Where procfs is mounted (who holds the file or the port open).
    #[arg(long, value_name = "DIR", default_value = defaults::PROC_ROOT)]
    pub proc_root: PathBuf,
    /// Name glob of the legacy channel; when such a port exists, `fetch` reads it and this does nothing.
    #[arg(long, value_name = "GLOB", default_value = defaults::PATTERN)]
    pub pattern: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The cmdline as stored.
    Raw,
    /// One NAME='value' line per pair, safe to source in /bin/sh; names
    /// the shell itself uses (PATH, IFS, PS1...) are left out, see --prefix.
    Env,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Glob on the whole port name; the guest agent's port never matches.
    #[arg(long, value_name = "GLOB", default_value = defaults::PATTERN)]
    pub pattern: String,
    /// Read exactly the port with this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

impl SelectArgs {
    pub fn selector(&self) -> Selector {
        Selector {
            pattern: self.pattern.clone(),
            name: self.name.clone(),
            fifo_stand_in: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Seconds to wait for a whole message once the port is open.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::TIMEOUT))]
    pub timeout: Secs,
    /// Seconds to wait for a matching port to appear.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::PORT_TIMEOUT))]
    pub port_timeout: Secs,
    /// When a cmdline is already stored (reboot): seconds to wait for fresh data before keeping it.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::GRACE))]
    pub grace: Secs,
    /// Seconds of quiet after a cmdline line, host still connected, that end the message.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::SETTLE))]
    pub settle: Secs,
    /// Seconds the virtio ports must stay all named and unchanged, none matching,
    /// before the host counts as offering no channel (exit 0, nothing written).
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::NO_CHANNEL_AFTER))]
    pub no_channel_after: Secs,
    /// Directory for `cmdline` and `authorized_keys`.
    #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Directory for the second `authorized_keys`: made mode 0700 when
    /// missing; an existing one only loses group and world write.
    #[arg(long, value_name = "DIR", default_value = defaults::SSH_DIR)]
    pub ssh_dir: PathBuf,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Do not write the ack back; the port is then opened read-only.
    #[arg(long)]
    pub no_ack: bool,
    /// Accept a FIFO as the port's node, for tests and trying it out
    /// against a fake tree (with --no-ack). Without it the node must be the
    /// character device whose numbers sysfs gives for the port.
    #[arg(long)]
    pub fifo_stand_in: bool,
}

const SEND_EXAMPLES: &str = "Examples:
  CloudStack 4.9 to 4.11.2, in place of patchviasocket.py:
    vport-bootargs send -n s-1-VM -p 'template=domP%type=secstorage' --wait-ack 4
  CloudStack 4.11.3 and later, in place of patch.sh (the same -n and -c):
    vport-bootargs send --guest-agent -n s-1-VM -c 'template=domP type=secstorage'";

/// Arguments of `send`: patchviasocket.py's `-n VM -p CMDLINE` work as they
/// are, and with `--guest-agent` patch.sh's `-n VM -c CMDLINE`; the rest is
/// optional.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The VM's name; the socket is <socket-dir>/<VM>.agent.
    #[arg(
        short = 'n',
        long = "name",
        value_name = "VM",
        required_unless_present = "socket"
    )]
    pub vm: Option<String>,
    /// The cmdline, one line; `%` stands for a space, as in patchviasocket.py.
    #[arg(
        short = 'p',
        long = "cmdline",
        value_name = "TEXT",
        required_unless_present = "guest_agent"
    )]
    pub cmdline: Option<String>,
    /// Keep `%` as it is instead of turning it into a space.
    #[arg(long)]
    pub raw: bool,
    /// The socket's path, instead of -n.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["vm", "socket_dir"])]
    pub socket: Option<PathBuf>,
    /// Directory of the VMs' sockets.
    #[arg(long, value_name = "DIR", default_value = defaults::SOCKET_DIR)]
    pub socket_dir: PathBuf,
    /// Public key file to send as the pubkey: line (one OpenSSH public key; a
    /// trailing newline is dropped; missing or empty is an error).
    #[arg(long, value_name = "FILE", default_value = defaults::PUBKEY_FILE)]
    pub pubkey_file: PathBuf,
    /// Send no pubkey: line.
    #[arg(long, conflicts_with = "pubkey_file")]
    pub no_pubkey: bool,
    /// Stay connected until the guest acknowledges this cmdline, for at most
    /// SECS; a missing socket, a refused or dropped connection is retried
    /// every 200 ms, sending the message again on each new connection.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse)]
    pub wait_ack: Option<Secs>,
    /// Without --wait-ack: wait at most SECS, before closing, for QEMU to take
    /// every byte from the socket (it does once the guest holds its port open,
    /// and drops what it has not taken when we close); exit 75 if it has not.
    /// The default fits the CloudStack agent's 5 s limit on the script.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::WAIT_TAKEN))]
    pub wait_taken: Secs,
    /// In place of CloudStack's patch.sh (4.11.3 and later, no *.vport
    /// channel): write the cmdline to a file in the guest through the QEMU
    /// guest agent, with `virsh`, and read it back; exit 0 only when it
    /// reads back the same. Takes patch.sh's -n VM -c CMDLINE.
    #[arg(
        long,
        requires = "agent_cmdline",
        conflicts_with_all = ["cmdline", "raw", "socket", "socket_dir", "pubkey_file", "no_pubkey", "wait_ack", "wait_taken"]
    )]
    pub guest_agent: bool,
    /// --guest-agent: the cmdline, as patch.sh's -c: its words are written
    /// joined by single spaces, with a newline, as patch.sh's `echo` does.
    #[arg(short = 'c', value_name = "CMDLINE", requires = "guest_agent")]
    pub agent_cmdline: Option<String>,
    /// --guest-agent: the file in the guest.
    #[arg(long, value_name = "PATH", default_value = defaults::GUEST_CMDLINE_PATH, requires = "guest_agent")]
    pub path: String,
    /// --guest-agent: the virsh to run (for another connection URI, a
    /// wrapper script that runs `virsh -c URI "$@"`).
    #[arg(long, value_name = "PATH", default_value = defaults::VIRSH, requires = "guest_agent")]
    pub virsh: PathBuf,
    /// --guest-agent: the whole delivery's deadline, from the start until
    /// the read-back matched, waiting for the agent to connect included.
    #[arg(long, value_name = "SECS", value_parser = Secs::parse, default_value_t = Secs(defaults::WAIT_AGENT), requires = "guest_agent")]
    pub wait_agent: Secs,
}
