//! What each command does: the parsed arguments become the library's plain
//! option structs, and the result an exit code.

use std::io::{self, Write};
use std::path::Path;

use super::render::{write_ports_json, write_ports_table};
use super::{Cli, Command, End, FetchArgs, Format};
use crate::error::{exit, Error, Result};
use crate::guest::barrier::{self, BarrierOptions};
use crate::guest::boot::{self, BootOptions};
use crate::guest::fetch::{self, FetchOptions, Outcome};
use crate::guest::ports::Selector;
use crate::guest::sandbox::{self, Access};
use crate::guest::shutdown::{self, Ended};
use crate::guest::store::{self, Targets};
use crate::guest::{cmdline, ports};
use crate::host::{self, qga, AgentOptions, SendRequest, Target};

/// Runs the parsed command; returns the exit code for a success or a "not
/// found" (`get`), and an error for everything else.
pub fn run(cli: Cli) -> Result<i32> {
    // -v and -q override each other (clap keeps the later one only).
    crate::log::set_level(if cli.verbose {
        crate::log::DEBUG
    } else if cli.quiet {
        crate::log::WARN
    } else {
        crate::log::INFO
    });
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if matches!(
        cli.command,
        Command::Fetch(_) | Command::Boot(_) | Command::Ports { .. }
    ) && !cli.sysfs_root.is_dir()
    {
        return Err(Error::Usage(format!(
            "--sysfs-root {}: no such directory",
            cli.sysfs_root.display()
        )));
    }
    match cli.command {
        Command::Fetch(args) => {
            let opts = fetch_options(&cli.sysfs_root, &cli.dev_root, args);
            sandbox::restrict_job(&Access::for_fetch(&opts))?;
            match fetch::fetch(&opts)? {
                Outcome::Stored { .. } | Outcome::KeptStored | Outcome::NoChannel => Ok(exit::OK),
            }
        }
        Command::Boot(args) => {
            let fetch = fetch_options(&cli.sysfs_root, &cli.dev_root, args.fetch);
            let barrier = BarrierOptions {
                sysfs_root: cli.sysfs_root,
                dev_root: cli.dev_root,
                proc_root: args.proc_root,
                cache_dir: fetch.targets.cache_dir.clone(),
                pattern: fetch.selector.pattern.clone(),
                timeout: args.file_timeout.0,
                grace: args.file_grace.0,
            };
            let opts = BootOptions {
                fetch,
                barrier,
                state_dir: args.state_dir,
            };
            sandbox::restrict_job(&Access::for_boot(&opts))?;
            boot::boot(&opts)?;
            Ok(exit::OK)
        }
        Command::RecordShutdown(args) => {
            let ended = match args.as_ {
                Some(End::Reboot) => Some(Ended::Reboot),
                Some(End::Poweroff) => Some(Ended::Poweroff),
                None => Ended::from_jobs(&shutdown::current_jobs()?),
            };
            match ended {
                Some(ended) => {
                    let path = shutdown::record(&args.state_dir, ended)?;
                    crate::info!(
                        "this boot ends in a {}; recorded in {}",
                        ended.word(),
                        path.display()
                    );
                }
                None => crate::info!(
                    "no reboot, poweroff or halt is under way (stopped by hand?); recording nothing"
                ),
            }
            Ok(exit::OK)
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
        Command::Show {
            format,
            prefix,
            cache_dir,
        } => {
            if let Some(prefix) = &prefix {
                if format != Format::Env {
                    return Err(Error::Usage("--prefix goes with --format env".into()));
                }
                cmdline::check_env_prefix(prefix).map_err(Error::Usage)?;
            }
            let text = stored(&cache_dir)?;
            match format {
                Format::Raw => writeln!(out, "{text}"),
                Format::Env => cmdline::write_env(&mut out, &text, prefix.as_deref().unwrap_or(""))
                    .map(|skipped| {
                        for s in skipped {
                            crate::warn!(
                                "left out key {:?}: {}{}",
                                s.key,
                                s.why,
                                if prefix.is_none() && !s.why.contains("NUL") {
                                    " (--prefix sets it under another name)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }),
                Format::Json => cmdline::write_json(&mut out, &text),
            }
            .map_err(stdout_error)?;
            Ok(exit::OK)
        }
        Command::Barrier(args) => {
            let opts = BarrierOptions {
                sysfs_root: cli.sysfs_root,
                dev_root: cli.dev_root,
                proc_root: args.proc_root,
                cache_dir: args.cache_dir,
                pattern: args.pattern,
                timeout: args.timeout.0,
                grace: args.grace.0,
            };
            sandbox::restrict_job(&Access::for_barrier(&opts))?;
            barrier::barrier(&opts)?;
            Ok(exit::OK)
        }
        Command::Send(args) if args.guest_agent => {
            let (Some(vm), Some(cmdline)) = (args.vm, args.agent_cmdline) else {
                return Err(Error::Usage(
                    "send --guest-agent needs -n VM and -c CMDLINE".into(),
                ));
            };
            let text = qga::patch_sh_text(&cmdline).ok_or_else(|| {
                Error::Usage("send --guest-agent: -c CMDLINE is empty (no words)".into())
            })?;
            host::deliver(&AgentOptions {
                vm,
                text,
                path: args.path,
                virsh: args.virsh,
                wait: args.wait_agent.0,
            })?;
            Ok(exit::OK)
        }
        Command::Send(args) => {
            let target = match (args.socket, args.vm) {
                (Some(path), _) => Target::Socket(path),
                (None, Some(name)) => Target::Vm {
                    name,
                    socket_dir: args.socket_dir,
                },
                (None, None) => {
                    return Err(Error::Usage("send needs -n VM or --socket PATH".into()))
                }
            };
            let request = SendRequest {
                target,
                cmdline: args.cmdline.unwrap_or_default(),
                raw: args.raw,
                pubkey_file: (!args.no_pubkey).then_some(args.pubkey_file),
                wait_ack: args.wait_ack.map(|s| s.0),
                wait_taken: args.wait_taken.0,
            };
            host::send(&host::resolve(&request)?)?;
            Ok(exit::OK)
        }
    }
}

fn fetch_options(sysfs_root: &Path, dev_root: &Path, args: FetchArgs) -> FetchOptions {
    FetchOptions {
        sysfs_root: sysfs_root.to_owned(),
        dev_root: dev_root.to_owned(),
        selector: Selector {
            fifo_stand_in: args.fifo_stand_in,
            ..args.select.selector()
        },
        targets: Targets {
            cache_dir: args.cache_dir,
            ssh_dir: args.ssh_dir,
        },
        timeout: args.timeout.0,
        port_timeout: args.port_timeout.0,
        grace: args.grace.0,
        settle: args.settle.0,
        no_channel_after: args.no_channel_after.0,
        ack: !args.no_ack,
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
    if e.kind() == io::ErrorKind::BrokenPipe {
        reader_gone();
    }
    Error::io("cannot write to", "standard output", e)
}

/// Standard output's reader has gone (`vport-bootargs ports | head -1`):
/// end as coreutils do, quietly, by SIGPIPE. Rust starts programs with
/// SIGPIPE ignored (so that a closed stderr or socket is an error, not a
/// death); it is set back to the default only here, for this one signal.
fn reader_gone() -> ! {
    use nix::libc;
    // SAFETY: plain libc calls; nothing else is running in this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
