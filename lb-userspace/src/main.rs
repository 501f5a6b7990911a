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
    /// In the driver, before an skb exists: the fast one.
    Native,
    /// After the stack builds an skb: works everywhere, much slower.
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
        /// The configuration file (TOML, as `config export` prints it); `-` reads stdin.
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
        /// Only flows of this VIP (ADDRESS:PORT/PROTOCOL).
        vip: Option<xlb::config::VipRef>,
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
    Capture(CaptureArgs),
    /// Run the packets of a pcap/pcapng file through the loaded forwarder's tables without
    /// touching live traffic or state, and show what it would do with each.
    Replay {
        /// Capture file (pcap or pcapng, Ethernet frames).
        file: PathBuf,
        /// Write the output frames to this pcapng file.
        #[arg(short = 'w', long = "write")]
        write: Option<PathBuf>,
        /// Print each output frame in hex.
        #[arg(short = 'x', long)]
        hex: bool,
        /// The daemon's pin directory (default: asked from the daemon).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[command(flatten)]
        o: OutputArg,
    },
    /// Generate packets towards a VIP from this host (XDP live frames; see docs/loadgen.md).
    Loadgen(LoadgenArgs),
    /// Measure: per-packet cost, throughput against a trivial baseline, Maglev builds, memory.
    Bench {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Skip the namespace throughput runs.
        #[arg(long)]
        no_throughput: bool,
        /// Seconds per throughput run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Per-packet: batches of runs (min and median are over batch means).
        #[arg(long, default_value_t = 15)]
        batches: usize,
        /// Per-packet: BPF_PROG_TEST_RUN calls per batch.
        #[arg(long, default_value_t = 2000)]
        runs_per_batch: usize,
    },
    /// Backend side: strip xlb's encapsulation on an interface.
    #[command(subcommand)]
    Decap(DecapCmd),
    /// Load the embedded XDP programs into the kernel (verifier included) and report the result.
    Check,
    /// Print a shell completion script (e.g. `xlb completions bash > /etc/bash_completion.d/xlb`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GenKind {
    /// UDP datagrams.
    Udp,
    /// TCP SYNs: every packet opens a flow.
    Syn,
    /// TCP ACKs: packets of established flows.
    Ack,
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    /// Live frames, or AF_PACKET where the kernel refuses them.
    Auto,
    /// XDP live frames only.
    LiveFrames,
    /// An AF_PACKET socket.
    AfPacket,
}

#[derive(clap::Args)]
struct LoadgenArgs {
    /// Interface the frames leave from.
    #[arg(long)]
    iface: String,
    /// Destination as ADDRESS:PORT (the VIP).
    #[arg(long)]
    dst: SocketAddr,
    /// Destination MAC (the LB's or the next hop's); default: resolved from the route to --dst.
    #[arg(long)]
    dst_mac: Option<String>,
    /// Source address of flow 0 (default: the interface's first address of the VIP's family).
    #[arg(long)]
    src: Option<IpAddr>,
    /// Source port of flow 0; flows take consecutive ports, then the next source addresses.
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    /// Distinct flows.
    #[arg(long, default_value_t = 1024)]
    flows: u32,
    /// Frame size in bytes without FCS (minimum 60).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// What each frame is.
    #[arg(long, value_enum, default_value_t = GenKind::Udp)]
    kind: GenKind,
    /// Packets per second over all threads (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds to run.
    #[arg(long)]
    duration: Option<f64>,
    /// Packets to send.
    #[arg(long)]
    count: Option<u64>,
    /// Generator threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// How frames leave: XDP live frames (fastest), AF_PACKET, or live frames falling back to
    /// AF_PACKET where the kernel refuses them.
    #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
    method: MethodArg,
    #[command(flatten)]
    o: OutputArg,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FramesArg {
    /// As they arrived (replayable with `xlb replay`).
    Received,
    /// As the forwarder sent them: encapsulated or MAC-rewritten.
    Sent,
}

#[derive(clap::Args)]
struct CaptureArgs {
    /// Only packets of this VIP (ADDRESS:PORT/PROTOCOL).
    #[arg(long)]
    vip: Option<xlb::config::VipRef>,
    /// Only packets sent to this backend address.
    #[arg(long)]
    backend: Option<IpAddr>,
    /// Only these outcomes (repeatable): forward, forwards, drops, passes, all, or a reason such
    /// as drop_no_backend or pass_not_vip (`xlb stats` lists them).
    #[arg(long = "outcome", value_name = "OUTCOME")]
    outcomes: Vec<String>,
    /// Keep one matching packet in N (sampling, decided in the forwarder).
    #[arg(long, default_value_t = 1)]
    sample: u32,
    /// Frame bytes kept per packet (at most 2048; 0: all of that).
    #[arg(long, default_value_t = 0)]
    snaplen: u32,
    /// Record frames as they arrived (replayable with `xlb replay`) or as the forwarder sent
    /// them (encapsulated or MAC-rewritten).
    #[arg(long, value_enum, default_value_t = FramesArg::Received)]
    frames: FramesArg,
    /// Write pcapng to this file (`-`: stdout, e.g. `| tcpdump -nr -`).
    #[arg(short = 'w', long = "write")]
    write: Option<PathBuf>,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    count: Option<u64>,
    /// Stop before the output exceeds this size (e.g. 64M, 1G).
    #[arg(long, default_value = "64M", value_parser = xlb::capture::client::parse_size)]
    max_size: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    #[command(flatten)]
    o: OutputArg,
}

#[derive(Subcommand)]
enum DecapCmd {
    /// Attach (or update) the decap program; it stays attached after this command exits.
    Attach {
        /// The backend's interface that receives the tunnelled packets.
        iface: String,
        /// Tunnel endpoint address of this host (repeatable; default: the interface's addresses).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// GUE destination port.
        #[arg(long, default_value_t = lb_common::GUE_PORT_DEFAULT)]
        gue_port: u16,
        /// XDP mode: native (in the driver) or generic (after the stack builds an skb; slow).
        #[arg(long, value_enum, default_value_t = ModeArg::Native)]
        mode: ModeArg,
        /// Where the link and maps are pinned (bpffs), one directory per interface.
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the decap program and remove its pins.
    Detach {
        /// The interface to detach from.
        iface: String,
        /// Where `attach` pinned it.
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Addresses and counters of the decap program on an interface.
    Status {
        /// The interface to report on.
        iface: String,
        /// Where `attach` pinned it.
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
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut std::io::stdout());
            Ok(())
        }
        Command::Loadgen(a) => loadgen_cmd(a),
        Command::Capture(a) => capture_cmd(&socket, a),
        Command::Replay {
            file,
            write,
            hex,
            pin_dir,
            o,
        } => replay_cmd(&socket, file, write, hex, pin_dir, o),
        Command::Bench {
            json,
            no_throughput,
            seconds,
            batches,
            runs_per_batch,
        } => {
            let r = xlb::bench::run(&xlb::bench::Options {
                throughput: !no_throughput,
                batches: batches.max(1),
                per_batch: runs_per_batch.max(1),
                seconds,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", xlb::bench::render(&r));
            }
            Ok(())
        }
        Command::Check => {
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            for &name in lb_common::prog_names::ALL {
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

fn loadgen_cmd(a: LoadgenArgs) -> Result<()> {
    use std::io::Write as _;
    use xlb::loadgen::{self, Kind};
    let c = std::ffi::CString::new(a.iface.clone())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        anyhow::bail!("no interface {:?} in this network namespace", a.iface);
    }
    let src = match a.src {
        Some(s) => s,
        None => decap::iface_addrs(&a.iface)?
            .into_iter()
            .find(|x| x.is_ipv4() == a.dst.is_ipv4())
            .ok_or_else(|| {
                anyhow::anyhow!("{} has no address of the VIP's family; give --src", a.iface)
            })?,
    };
    let opts = loadgen::Options {
        iface: a.iface.clone(),
        ifindex,
        src_mac: loadgen::iface_mac(&a.iface)?,
        dst_mac: match &a.dst_mac {
            Some(m) => loadgen::parse_mac(m)?,
            None => resolve_mac(a.dst.ip(), &a.iface)?,
        },
        src,
        dst: a.dst.ip(),
        dport: a.dst.port(),
        sport: a.sport,
        flows: a.flows,
        size: a.size,
        kind: match a.kind {
            GenKind::Udp => Kind::Udp,
            GenKind::Syn => Kind::Syn,
            GenKind::Ack => Kind::Ack,
        },
        rate: a.rate,
        duration: a.duration.map(std::time::Duration::from_secs_f64),
        count: a.count,
        threads: a.threads.unwrap_or_else(loadgen::ncpus),
        method: match a.method {
            MethodArg::Auto => loadgen::Method::Auto,
            MethodArg::LiveFrames => loadgen::Method::LiveFrames,
            MethodArg::AfPacket => loadgen::Method::AfPacket,
        },
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let json = a.o.output == cli::Output::Json;
    let mut prev = (0u64, std::time::Duration::ZERO);
    let size = opts.size.max(60);
    let s = loadgen::run(&opts, stop, |n, t| {
        let dt = (t - prev.1).as_secs_f64();
        let pps = (n - prev.0) as f64 / dt.max(1e-9);
        prev = (n, t);
        if !json {
            eprint!(
                "\r{:>6.1}s  {:>12} packets  {:>8} pps  {:>8}bit/s   ",
                t.as_secs_f64(),
                n,
                cli::human(pps),
                cli::human(pps * size as f64 * 8.0)
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        eprintln!();
        println!(
            "sent {} packets of {} bytes in {:.2} s: {} pps, {}bit/s ({} threads, {} flows, {})",
            s.packets,
            s.frame_size,
            s.seconds,
            cli::human(s.pps),
            cli::human(s.bits_per_second),
            s.threads,
            s.flows,
            match s.method {
                loadgen::Method::AfPacket => "AF_PACKET",
                _ => "XDP live frames",
            }
        );
    }
    Ok(())
}

/// The next-hop MAC towards `dst`, which must be routed out of `iface`.
fn resolve_mac(dst: IpAddr, iface: &str) -> Result<[u8; 6]> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let r = xlb::nexthop::Resolver::new()?;
        let nh = r
            .resolve(dst, false)
            .await
            .map_err(|e| anyhow::anyhow!("resolving the next hop of {dst}: {e}; give --dst-mac"))?;
        if nh.ifname != iface {
            anyhow::bail!(
                "the route to {dst} leaves via {}, not {iface}; give --dst-mac for {iface}",
                nh.ifname
            );
        }
        Ok(nh.dst_mac)
    })
}

fn capture_cmd(socket: &std::path::Path, a: CaptureArgs) -> Result<()> {
    use xlb::capture::{Filter, client};
    let json = a.o.output == cli::Output::Json;
    let opts = client::Options {
        filter: Filter {
            vip: a.vip,
            backend: a.backend,
            outcomes: a.outcomes,
            sample: a.sample,
            snaplen: a.snaplen,
            output: a.frames == FramesArg::Sent,
        },
        write: a.write,
        count: a.count,
        max_bytes: a.max_size,
        duration: a
            .duration
            .map(|d| std::time::Duration::from_secs_f64(d.max(0.0))),
        json,
    };
    let r = client::run(socket, &opts).map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} packets captured ({} bytes), {} matched in the forwarder, {} lost to a full ring; ended by {}",
        r.captured, r.bytes, r.matched, r.lost, r.ended_by
    );
    Ok(())
}

fn replay_cmd(
    socket: &std::path::Path,
    file: PathBuf,
    write: Option<PathBuf>,
    hex: bool,
    pin_dir: Option<PathBuf>,
    o: OutputArg,
) -> Result<()> {
    let status = xlb::api::call(socket, xlb::api::Request::Status).ok();
    let from_daemon = |k: &str| status.as_ref().and_then(|s| s.get(k).cloned());
    let pin_dir = match pin_dir {
        Some(p) => p,
        None => from_daemon("pin_dir")
            .and_then(|v| v.as_str().map(PathBuf::from))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the daemon is not reachable to ask its pin directory: give --pin-dir"
                )
            })?,
    };
    let live_program = from_daemon("forward_program_id")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32)
        .filter(|id| *id != 0);
    let r = xlb::replay::replay(&xlb::replay::Options {
        file,
        pin_dir,
        write,
        hex,
        live_program,
    })
    .map_err(anyhow::Error::msg)?;
    if o.output == cli::Output::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", xlb::replay::render(&r, hex));
    }
    Ok(())
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
