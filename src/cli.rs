//! The command line: clap definitions and what each command does with the
//! library. `main.rs` only parses, calls `run` and maps errors to exit codes;
//! the man page is generated from `Cli::command()`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cmdline;
use crate::defaults;
use crate::error::{exit, Error, Result};
use crate::fetch::{self, FetchOptions, Outcome};
use crate::ports::{self, Selector};
use crate::store::{self, Targets};

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
    /// More log lines (debug level).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
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
        #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
        cache_dir: PathBuf,
    },
    /// Host side: send the parameters to a VM's socket (replaces patchviasocket.py).
    Send(SendArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The cmdline as stored.
    Raw,
    /// One NAME='value' line per pair, safe to source in /bin/sh.
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
    fn selector(&self) -> Selector {
        Selector {
            pattern: self.pattern.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Seconds to wait for a whole message once the port is open.
    #[arg(long, value_name = "SECS", value_parser = secs, default_value_t = defaults::TIMEOUT_SECS)]
    pub timeout: f64,
    /// Seconds to wait for a matching port to appear.
    #[arg(long, value_name = "SECS", value_parser = secs, default_value_t = defaults::PORT_TIMEOUT_SECS)]
    pub port_timeout: f64,
    /// When a cmdline is already stored (reboot): seconds to wait for fresh data before keeping it.
    #[arg(long, value_name = "SECS", value_parser = secs, default_value_t = defaults::GRACE_SECS)]
    pub grace: f64,
    /// Seconds of quiet after a cmdline line, host still connected, that end the message.
    #[arg(long, value_name = "SECS", value_parser = secs, default_value_t = defaults::SETTLE_SECS)]
    pub settle: f64,
    /// Directory for `cmdline` and `authorized_keys`.
    #[arg(long, value_name = "DIR", default_value = defaults::CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Directory for the second `authorized_keys` (made mode 0700).
    #[arg(long, value_name = "DIR", default_value = defaults::SSH_DIR)]
    pub ssh_dir: PathBuf,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Do not write the ack back; the port is then opened read-only.
    #[arg(long)]
    pub no_ack: bool,
}

/// Arguments of `send`: patchviasocket.py's `-n VM -p CMDLINE` work as they
/// are; the rest is optional.
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
    #[arg(short = 'p', long = "cmdline", value_name = "TEXT")]
    pub cmdline: String,
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
    #[arg(long, value_name = "SECS", value_parser = secs)]
    pub wait_ack: Option<f64>,
}

fn secs(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&v) {
        return Err(format!("{s:?} is out of range (0 to one year)"));
    }
    Ok(v)
}

/// Runs the parsed command; returns the exit code for a success or a "not
/// found" (`get`), and an error for everything else.
pub fn run(cli: Cli) -> Result<i32> {
    crate::log::set_level(if cli.verbose {
        crate::log::DEBUG
    } else if cli.quiet {
        crate::log::WARN
    } else {
        crate::log::INFO
    });
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Fetch(args) => {
            let opts = FetchOptions {
                sysfs_root: cli.sysfs_root,
                dev_root: cli.dev_root,
                selector: args.select.selector(),
                targets: Targets {
                    cache_dir: args.cache_dir,
                    ssh_dir: args.ssh_dir,
                },
                timeout: Duration::from_secs_f64(args.timeout),
                port_timeout: Duration::from_secs_f64(args.port_timeout),
                grace: Duration::from_secs_f64(args.grace),
                settle: Duration::from_secs_f64(args.settle),
                ack: !args.no_ack,
            };
            match fetch::fetch(&opts)? {
                Outcome::Stored { .. } | Outcome::KeptStored => Ok(exit::OK),
            }
        }
        Command::Ports { json, select } => {
            let found =
                ports::scan(&cli.sysfs_root, &cli.dev_root, &select.selector()).map_err(|e| {
                    Error::io("cannot scan", cli.sysfs_root.join("class/virtio-ports"), e)
                })?;
            let written = if json {
                write_ports_json(&mut out, &found)
            } else {
                write_ports_table(&mut out, &found)
            };
            written.map_err(stdout_error)?;
            Ok(exit::OK)
        }
        Command::Get { key, cache_dir } => {
            let text = stored(&cache_dir)?;
            match cmdline::get(&text, &key) {
                Some(v) => {
                    writeln!(out, "{v}").map_err(stdout_error)?;
                    Ok(exit::OK)
                }
                None => {
                    crate::debug!(
                        "{key:?} is not in {}",
                        cache_dir.join(store::CMDLINE_FILE).display()
                    );
                    Ok(exit::NOT_FOUND)
                }
            }
        }
        Command::Show { format, cache_dir } => {
            let text = stored(&cache_dir)?;
            match format {
                Format::Raw => writeln!(out, "{text}"),
                Format::Env => cmdline::write_env(&mut out, &text),
                Format::Json => cmdline::write_json(&mut out, &text),
            }
            .map_err(stdout_error)?;
            Ok(exit::OK)
        }
        Command::Send(args) => crate::send::run(&args),
    }
}

fn stored(cache_dir: &std::path::Path) -> Result<String> {
    store::stored_cmdline(cache_dir)?.ok_or_else(|| Error::NoInput {
        what: "no stored cmdline in",
        path: cache_dir.join(store::CMDLINE_FILE),
        problem: "missing or empty; run `vport-bootargs fetch` first".into(),
    })
}

fn stdout_error(e: io::Error) -> Error {
    Error::io("cannot write to", "standard output", e)
}

fn dev_string(p: &ports::Port) -> String {
    p.dev
        .map(|(a, b)| format!("{a}:{b}"))
        .unwrap_or_else(|| "-".into())
}

/// `ports`: one row per port, the chosen one marked.
pub fn write_ports_table(out: &mut impl Write, found: &[ports::Port]) -> io::Result<()> {
    if found.is_empty() {
        return writeln!(out, "no virtio ports");
    }
    writeln!(
        out,
        "{:<10} {:<16} {:<8} {:<28} VERDICT",
        "PORT", "NODE", "DEV", "NAME"
    )?;
    for p in found {
        writeln!(
            out,
            "{:<10} {:<16} {:<8} {:<28} {}",
            p.entry,
            p.node.display(),
            dev_string(p),
            p.name.as_deref().unwrap_or("-"),
            p.verdict.describe()
        )?;
    }
    Ok(())
}

/// `ports --json`: an array of objects with the same facts as the table.
pub fn write_ports_json(out: &mut impl Write, found: &[ports::Port]) -> io::Result<()> {
    use crate::cmdline::json_string as s;
    let opt = |v: Option<String>| v.map(|v| s(&v)).unwrap_or_else(|| "null".into());
    let rows: Vec<String> = found
        .iter()
        .map(|p| {
            format!(
                "{{\"port\":{},\"node\":{},\"dev\":{},\"name\":{},\"link\":{},\"chosen\":{},\"verdict\":{}}}",
                s(&p.entry),
                s(&p.node.to_string_lossy()),
                opt(p.dev.map(|(a, b)| format!("{a}:{b}"))),
                opt(p.name.clone()),
                opt(p.link.as_ref().map(|l| l.to_string_lossy().into_owned())),
                p.verdict == ports::Verdict::Chosen,
                s(&p.verdict.describe()),
            )
        })
        .collect();
    writeln!(out, "[{}]", rows.join(","))
}
