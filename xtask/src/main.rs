//! Build, setup, demo, test and bench orchestration: only what cargo cannot do by itself.

mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "xlb development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain, bpf-linker and the packages the tests need (idempotent).
    Setup,
    /// Run every test in the workspace, including the privileged namespace and XDP tests.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build and run the self-contained demo on network namespaces.
    Demo,
    /// Build release binaries and run the benchmarks: `xlb bench` (per packet, throughput,
    /// Maglev, memory) and the control-plane figures (`xlb-ctlbench`).
    Bench {
        /// One JSON object (xlb bench's, with the control-plane figures under `control_plane`).
        #[arg(long)]
        json: bool,
        /// Skip the namespace throughput runs.
        #[arg(long)]
        no_throughput: bool,
    },
    /// cargo fmt --check and clippy -D warnings on host crates and on lb-ebpf for the BPF target.
    Lint,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args } => {
            setup::run()?;
            util::test(&args)
        }
        Command::Demo => {
            setup::run()?;
            util::demo()
        }
        Command::Lint => util::lint(),
        Command::Bench {
            json,
            no_throughput,
        } => {
            setup::run()?;
            util::bench(json, no_throughput)
        }
    }
}
