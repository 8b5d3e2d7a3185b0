//! Writes the man pages (section 8) and the bash completion from the clap
//! definitions, so they never drift from `--help`:
//!
//!     cargo run --example gen-docs -- OUT_DIR
//!
//! gives OUT_DIR/vport-bootargs.8, one OUT_DIR/vport-bootargs-CMD.8 per
//! command, and OUT_DIR/vport-bootargs.bash. The Debian package build runs
//! it; clap_mangen and clap_complete are dev-dependencies, not in the binary.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::{generate, Shell};
use clap_mangen::Man;
use vport_bootargs::cli::Cli;

const SECTION: &str = "8";

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUT_DIR");
        return ExitCode::from(64);
    };
    match write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: cannot write into {}: {e}", out.display());
            ExitCode::from(74)
        }
    }
}

fn write_all(out: &Path) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    // build() propagates the global options into each subcommand.
    let mut cmd = Cli::command();
    cmd.build();
    let name = cmd.get_name().to_owned();

    write_to(&out.join(format!("{name}.{SECTION}")), |w| {
        Man::new(cmd.clone()).section(SECTION).render(w)
    })?;
    // After build() each subcommand's display name is "vport-bootargs-CMD".
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let page = sub.get_display_name().unwrap_or(sub.get_name());
        write_to(&out.join(format!("{page}.{SECTION}")), |w| {
            Man::new(sub.clone()).section(SECTION).render(w)
        })?;
    }
    write_to(&out.join(format!("{name}.bash")), |w| {
        generate(Shell::Bash, &mut cmd, name.clone(), w);
        Ok(())
    })
}

fn write_to(path: &Path, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    f(&mut w)?;
    w.flush()
}
