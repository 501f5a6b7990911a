//! The `xlb` command: daemon, operator CLI, decap helper.

use anyhow::Result;
use clap::{Parser, Subcommand};
use xlb::dataplane::{Dataplane, LoadOptions};

#[derive(Parser)]
#[command(name = "xlb", version, about = "XDP Maglev L4 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the embedded XDP programs into the kernel (verifier included) and report the result.
    Check,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check => {
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            for name in [
                lb_common::prog_names::FORWARD,
                lb_common::prog_names::DECAP,
                lb_common::prog_names::PASS,
            ] {
                let id = dp.program(name)?.info()?.id();
                println!("{name}: loaded, program id {id}");
            }
            Ok(())
        }
    }
}
