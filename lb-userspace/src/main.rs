//! The `xlb` command: parse the command line, run it, report an error in one line.

use clap::Parser as _;

fn main() {
    let cli = xlb::cli::Cli::parse();
    if let Err(e) = xlb::cli::run(cli) {
        eprintln!("xlb: {e:#}");
        std::process::exit(1);
    }
}
