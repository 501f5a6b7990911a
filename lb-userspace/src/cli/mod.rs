//! The `xlb` command line: one file per noun, each sending requests through `api::Client` (or
//! driving a tool directly) and printing the typed answer as a table or, with `-o json`, as JSON.

pub mod backend;
pub mod bench;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod decap;
pub mod loadgen;
pub mod node;
pub mod output;
pub mod show;
pub mod vip;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use self::output::{Output, OutputArg};
use crate::{api::Client, config::VipRef};

/// Where the CLI finds the daemon without `--socket` (the daemon's default `[daemon] socket`).
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";

#[derive(Parser)]
#[command(name = "xlb", version, about = "XDP Maglev L4 load balancer")]
pub struct Cli {
    /// Control socket of the daemon (default /run/xlb/xlb.sock; for `xlb daemon`, overrides
    /// `[daemon] socket`).
    #[arg(long, global = true, env = "XLB_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load or adopt the data plane, apply the configuration, serve the CLI.
    Daemon(daemon::DaemonArgs),
    /// Remove everything a stopped daemon left pinned (forwarding stops).
    Detach(daemon::DetachArgs),
    /// Manage VIPs.
    #[command(subcommand)]
    Vip(vip::VipCmd),
    /// Manage a VIP's backends.
    #[command(subcommand)]
    Backend(backend::BackendCmd),
    /// Replace the running configuration with a file (`-` for stdin); the change is diffed and
    /// applied as the minimal set of map updates.
    Apply {
        /// The configuration file (TOML, as `config export` prints it); `-` reads stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Remove vanished backends at once instead of draining them.
        #[arg(long)]
        now: bool,
        /// Apply even if it removes every VIP or detaches the forwarder from an interface.
        #[arg(long)]
        force: bool,
    },
    /// Export or check configuration.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Withdraw every VIP address this node announces (maintenance); forwarding continues for
    /// what still arrives. Kept across restarts until `undrain-node`.
    DrainNode(node::DrainArgs),
    /// Announce again every VIP address that serves.
    UndrainNode {
        #[command(flatten)]
        o: OutputArg,
    },
    /// Interfaces, attach mode, program ids, VIP and backend counts.
    Status {
        #[command(flatten)]
        o: OutputArg,
    },
    /// Per-VIP and per-backend counters and rates, drops and passes by reason.
    Stats {
        #[command(flatten)]
        o: OutputArg,
        /// Refresh every N seconds.
        #[arg(long, num_args = 0..=1, default_missing_value = "1")]
        watch: Option<u64>,
    },
    /// Tracked flows (from the conntrack maps), optionally of one VIP.
    Flows {
        /// Only flows of this VIP (ADDRESS:PORT/PROTOCOL).
        vip: Option<VipRef>,
        /// Most flows to list.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        o: OutputArg,
    },
    /// Which backend a flow goes to, and why (tracked entry or ring slot).
    Explain {
        /// Client address and port.
        src: SocketAddr,
        /// VIP as ADDRESS:PORT/PROTOCOL.
        dst: String,
        /// Explain a connection-opening SYN (always takes the ring).
        #[arg(long)]
        syn: bool,
        #[command(flatten)]
        o: OutputArg,
    },
    /// Record what the forwarder does to packets (pcapng with the verdict and backend of each
    /// packet as its comment, or one line per packet). Needs the daemon; see docs/operations.md.
    Capture(capture::CaptureArgs),
    /// Run the packets of a pcap/pcapng file through the loaded forwarder's tables without
    /// touching live traffic or state, and show what it would do with each.
    Replay(capture::ReplayArgs),
    /// Generate packets towards a VIP from this host (XDP live frames; see docs/loadgen.md).
    Loadgen(loadgen::LoadgenArgs),
    /// Measure: per-packet cost, throughput against a trivial baseline, Maglev builds, memory.
    Bench(bench::BenchArgs),
    /// Backend side: strip xlb's encapsulation on an interface.
    #[command(subcommand)]
    Decap(decap::DecapCmd),
    /// Load the embedded XDP programs into the kernel (verifier included) and report the result.
    Check,
    /// Print a shell completion script (e.g. `xlb completions bash > /etc/bash_completion.d/xlb`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Run one command line.
pub fn run(cli: Cli) -> Result<()> {
    let client = Client::new(
        cli.socket
            .as_deref()
            .unwrap_or(std::path::Path::new(DEFAULT_SOCKET)),
    );
    match cli.command {
        Command::Daemon(a) => daemon::daemon(a, cli.socket),
        Command::Detach(a) => daemon::detach(a),
        Command::Vip(c) => vip::run(&client, c),
        Command::Backend(c) => backend::run(&client, c),
        Command::Apply { file, now, force } => config::apply(&client, &file, now, force),
        Command::Config(c) => config::run(&client, c),
        Command::DrainNode(a) => node::drain(&client, a),
        Command::UndrainNode { o } => node::undrain(&client, o),
        Command::Status { o } => show::status(&client, o),
        Command::Stats { o, watch } => show::stats(&client, o, watch),
        Command::Flows { vip, limit, o } => show::flows(&client, vip, limit, o),
        Command::Explain { src, dst, syn, o } => show::explain(&client, src, &dst, syn, o),
        Command::Capture(a) => capture::capture(&client, a),
        Command::Replay(a) => capture::replay(&client, a),
        Command::Loadgen(a) => loadgen::run(a),
        Command::Bench(a) => bench::bench(a),
        Command::Decap(c) => decap::run(c),
        Command::Check => bench::check(),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Cli;

    /// The `xlb ...` lines of the shell blocks of a markdown text (continuations joined).
    fn doc_commands(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_block = false;
        let mut pending = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if !in_block {
                continue;
            }
            if !pending.is_empty() || t.starts_with("xlb ") {
                pending += t.trim_end_matches('\\');
                pending.push(' ');
                if !t.ends_with('\\') {
                    out.push(std::mem::take(&mut pending));
                }
            }
        }
        out
    }

    /// A documented command line as arguments: up to a comment, pipe or redirection, without
    /// optional `[...]` groups, with the first of `a|b` alternatives.
    fn doc_args(cmd: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut depth = 0i32;
        for w in cmd.split_whitespace() {
            if w.starts_with('#') || ["|", ">", "<", "&&", ";"].contains(&w) {
                break;
            }
            let optional = w.starts_with('[')
                && w[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c == '-' || c.is_ascii_uppercase());
            if depth > 0 || optional {
                depth += w.matches('[').count() as i32 - w.matches(']').count() as i32;
                continue;
            }
            args.push(w.split('|').next().unwrap_or(w).to_string());
        }
        args
    }

    /// Every subcommand and every option says what it is for in `--help`.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != " xlb" {
                missing.push(path.clone());
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.get_help().is_none() && !["help", "version"].contains(&id) {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// Every command the README and docs/ show parses with this CLI: the documentation cannot
    /// drift from the commands it teaches.
    #[test]
    fn documented_commands_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("README.md")];
        for e in std::fs::read_dir(root.join("docs")).expect("docs/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
        let mut checked = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).expect("readable doc");
            for cmd in doc_commands(&text) {
                let args = doc_args(&cmd);
                if let Err(e) = Cli::try_parse_from(&args) {
                    panic!("{}: `{}` does not parse: {e}", f.display(), cmd.trim());
                }
                checked += 1;
            }
        }
        assert!(checked >= 40, "only {checked} documented commands found");
        assert_eq!(
            doc_args("xlb stats [--watch [SECS]] --x # c"),
            ["xlb", "stats", "--x"]
        );
        assert_eq!(
            doc_args("xlb backend drain|undrain [2001:db8::1]:80/tcp a | b"),
            ["xlb", "backend", "drain", "[2001:db8::1]:80/tcp", "a"]
        );
    }

    #[test]
    fn the_cli_is_consistent_and_completes() {
        Cli::command().debug_assert();
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "xlb",
            &mut out,
        );
        let script = String::from_utf8(out).expect("utf-8");
        for sub in [
            "daemon",
            "backend",
            "set-weight",
            "explain",
            "loadgen",
            "decap",
        ] {
            assert!(script.contains(sub), "{sub} missing from the completions");
        }
    }
}
