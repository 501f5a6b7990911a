//! The `xlb` command: daemon, operator CLI, decap helper.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use xlb::{
    cli::{self, BackendCmd, ConfigCmd, OutputArg, VipCmd},
    config::{Config, DEFAULT_PATH},
    dataplane::{AttachMode, Dataplane, LoadOptions, pin},
    decap,
};

#[derive(Parser)]
#[command(name = "xlb", version, about = "XDP Maglev L4 load balancer")]
struct Cli {
    /// Control socket of the daemon.
    #[arg(
        long,
        global = true,
        env = "XLB_SOCKET",
        default_value = "/run/xlb/xlb.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Native,
    Generic,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load or adopt the data plane, apply the configuration, serve the CLI.
    Daemon {
        /// Configuration file (default /etc/xlb/xlb.toml; absent: start empty).
        #[arg(long)]
        config: Option<PathBuf>,
        /// On exit, detach the forwarder and remove pinned maps and state instead of leaving
        /// forwarding running for the next daemon.
        #[arg(long)]
        detach: bool,
        /// Log format (text suits journald; json suits log shippers).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Remove everything a stopped daemon left pinned (forwarding stops).
    Detach {
        /// Read the pin directory and state file from this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Manage a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Replace the running configuration with a file (`-` for stdin); the change is diffed and
    /// applied as the minimal set of map updates.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Remove vanished backends at once instead of draining them.
        #[arg(long)]
        now: bool,
    },
    /// Export or check configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
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
        vip: Option<xlb::config::VipRef>,
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
    /// Backend side: strip xlb's encapsulation on an interface.
    #[command(subcommand)]
    Decap(DecapCmd),
    /// Load the embedded XDP programs into the kernel (verifier included) and report the result.
    Check,
}

#[derive(Subcommand)]
enum DecapCmd {
    /// Attach (or update) the decap program; it stays attached after this command exits.
    Attach {
        iface: String,
        /// Tunnel endpoint address of this host (repeatable; default: the interface's addresses).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// GUE destination port.
        #[arg(long, default_value_t = lb_common::GUE_PORT_DEFAULT)]
        gue_port: u16,
        #[arg(long, value_enum, default_value_t = ModeArg::Native)]
        mode: ModeArg,
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the decap program and remove its pins.
    Detach {
        iface: String,
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Addresses and counters of the decap program on an interface.
    Status {
        iface: String,
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        o: OutputArg,
    },
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("XLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // journald stamps lines itself; timestamps only when not under systemd.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match (format, journald) {
        (LogFormat::Json, _) => b.json().init(),
        (LogFormat::Text, true) => b.without_time().with_ansi(false).init(),
        (LogFormat::Text, false) => b.init(),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("xlb: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket;
    match cli.command {
        Command::Daemon {
            config,
            detach,
            log_format,
        } => {
            init_logs(log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(xlb::daemon::run(xlb::daemon::Options { config, detach }))
        }
        Command::Detach { config } => {
            let path = config.unwrap_or_else(|| DEFAULT_PATH.into());
            let cfg = match std::fs::read_to_string(&path) {
                Ok(t) => {
                    Config::parse(&t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                Err(_) => Config::default(),
            };
            let removed = pin::remove_all(&cfg.daemon.pin_dir)?;
            let _ = std::fs::remove_file(&cfg.daemon.state_file);
            println!(
                "removed {} (forwarder detached from: {})",
                cfg.daemon.pin_dir.display(),
                if removed.is_empty() {
                    "-".into()
                } else {
                    removed.join(", ")
                }
            );
            Ok(())
        }
        Command::Vip(c) => cli::vip(&socket, c),
        Command::Backend(c) => cli::backend(&socket, c),
        Command::Apply { file, now } => cli::apply(&socket, &file, now),
        Command::Config(c) => cli::config(&socket, c),
        Command::Status { o } => cli::status(&socket, o),
        Command::Stats { o, watch } => cli::stats(&socket, o, watch),
        Command::Flows { vip, limit, o } => cli::flows(&socket, vip, limit, o),
        Command::Explain { src, dst, syn, o } => cli::explain(&socket, src, &dst, syn, o),
        Command::Decap(c) => decap_cmd(c),
        Command::Check => {
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            for name in [
                lb_common::prog_names::FORWARD,
                lb_common::prog_names::DECAP,
                lb_common::prog_names::PASS,
            ] {
                let info = dp.program(name)?.info()?;
                println!(
                    "{name}: loaded, program id {}, {} BPF instructions ({} verified), {} bytes JITed",
                    info.id(),
                    info.size_translated().unwrap_or(0) / 8,
                    info.verified_instruction_count().unwrap_or(0),
                    info.size_jitted()
                );
            }
            Ok(())
        }
    }
}

fn decap_cmd(c: DecapCmd) -> Result<()> {
    match c {
        DecapCmd::Attach {
            iface,
            addresses,
            gue_port,
            mode,
            pin_dir,
        } => {
            let mode = match mode {
                ModeArg::Native => AttachMode::Native,
                ModeArg::Generic => AttachMode::Generic,
            };
            let (addrs, a) = decap::attach(&pin_dir, &iface, &addresses, gue_port, mode)?;
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            if a.fell_back {
                eprintln!("xlb: FALLBACK: {iface} refused native XDP; decap runs in generic mode");
            }
            println!(
                "decap {} on {iface} ({:?} XDP) for {}",
                if a.replaced { "updated" } else { "attached" },
                a.mode,
                list.join(", ")
            );
            Ok(())
        }
        DecapCmd::Detach { iface, pin_dir } => {
            decap::detach(&pin_dir, &iface)?;
            println!("decap detached from {iface}");
            Ok(())
        }
        DecapCmd::Status { iface, pin_dir, o } => {
            let (addrs, [ok, pass, drop]) = decap::status(&pin_dir, &iface)?;
            let v = serde_json::json!({
                "interface": iface,
                "addresses": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "decapsulated": {"packets": ok.packets, "bytes": ok.bytes},
                "passed": {"packets": pass.packets, "bytes": pass.bytes},
                "dropped": {"packets": drop.packets, "bytes": drop.bytes},
            });
            if o.output == cli::Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("decap on {iface} for {}", list.join(", "));
                println!("  decapsulated {} packets, {} bytes", ok.packets, ok.bytes);
                println!(
                    "  passed       {} packets (not xlb's tunnels)",
                    pass.packets
                );
                println!(
                    "  dropped      {} packets (malformed tunnels)",
                    drop.packets
                );
            }
            Ok(())
        }
    }
}
