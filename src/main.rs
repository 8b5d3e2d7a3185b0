//! `vport-bootargs`: parse the command line, run the command, map errors to
//! exit codes. Everything else is in the library (src/lib.rs).

use clap::Parser;
use vport_bootargs::cli::{run::run, Cli};
use vport_bootargs::error::exit;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else clap
            // refuses is a usage error (EX_USAGE), not clap's own 2.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            vport_bootargs::log::emit(vport_bootargs::log::ERROR, format_args!("{e}"));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
