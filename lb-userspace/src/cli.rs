//! The operator commands (ipvsadm/cilium style): each sends one request to the daemon and prints
//! the answer as a table, or as JSON with `-o json`.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::{
    api::{self, Request},
    config::{BackendConfig, Config, FwdMode, HashMode, Protocol, Vip, VipRef},
    view::*,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Clone, Copy, Debug)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a VIP (ADDRESS:PORT/PROTOCOL; port 0 = every port of the address).
    Add {
        /// ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp or [2001:db8::1]:443/tcp.
        vip: VipRef,
        /// What a flow is hashed on.
        #[arg(long, value_enum, default_value_t = HashArg::FiveTuple)]
        hash: HashArg,
        /// How packets reach the backends.
        #[arg(long, value_enum, default_value_t = FwdArg::Ipip)]
        forwarding: FwdArg,
        /// Do not track flows (stateless: every packet follows the ring).
        #[arg(long)]
        no_conntrack: bool,
        /// Maglev ring size (prime); default: the daemon's `ring_size`.
        #[arg(long)]
        ring_size: Option<u32>,
    },
    /// Remove a VIP: its packets pass to the kernel from then on.
    Remove {
        /// ADDRESS:PORT/PROTOCOL of the VIP.
        vip: VipRef,
    },
    /// List VIPs.
    List {
        #[command(flatten)]
        o: OutputArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HashArg {
    /// Addresses, ports and protocol: each connection on its own.
    FiveTuple,
    /// Source address only: all of a client's connections on one backend (affinity).
    SrcIp,
    /// Source and destination address and protocol, no ports.
    SrcDstIp,
    /// Source address and destination port (affinity per service on a port-0 VIP).
    SrcIpDstPort,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FwdArg {
    /// IP-in-IP (IPv6-in-IPv6, 4in6, 6in4 by the backend's family).
    Ipip,
    /// GUE (IP in UDP): crosses families, spreads over the backends' RSS queues.
    Gue,
    /// L2 direct server return: only the destination MAC is rewritten (same segment).
    L2,
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// Relative share of new flows.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Add it drained (no new flows until `undrain`).
        #[arg(long)]
        drain: bool,
    },
    /// Remove a backend. It is drained first (tracked flows continue until idle or the drain
    /// timeout) unless --now, which re-picks its flows immediately.
    Remove {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// Remove at once: mark it down so its tracked flows are re-picked on their next packet.
        #[arg(long)]
        now: bool,
    },
    /// Stop sending new flows to a backend; its tracked flows continue.
    Drain {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
    },
    /// Change a backend's weight (0 takes no new flows).
    SetWeight {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// New weight: a relative share of new flows (0: none, like drain).
        weight: u32,
    },
    /// List backends with state, ring share, next hop and counters.
    List {
        /// Only this VIP's backends (default: every VIP's).
        vip: Option<VipRef>,
        #[command(flatten)]
        o: OutputArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the running configuration as TOML (accepted back by `xlb apply -f`).
    Export,
    /// Validate a configuration file without a daemon.
    Check {
        /// The TOML file; every error is reported with its place.
        file: PathBuf,
    },
}

fn call(socket: &Path, r: Request) -> Result<Value> {
    api::call(socket, r).map_err(|e| anyhow!(e))
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

pub fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn report(v: &Value) {
    let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    println!(
        "applied: {} VIP(s) added, {} changed, {} removed; {} backend(s) added, {} removed, {} draining; {} ring swap(s) in {} us",
        g("vips_added"),
        g("vips_changed"),
        g("vips_removed"),
        g("backends_added"),
        g("backends_removed"),
        g("backends_draining"),
        g("rings_swapped"),
        g("elapsed_us")
    );
}

pub fn vip(socket: &Path, cmd: VipCmd) -> Result<()> {
    match cmd {
        VipCmd::Add {
            vip,
            hash,
            forwarding,
            no_conntrack,
            ring_size,
        } => {
            let mut v = Vip::new(vip);
            v.hash = match hash {
                HashArg::FiveTuple => HashMode::FiveTuple,
                HashArg::SrcIp => HashMode::SrcIp,
                HashArg::SrcDstIp => HashMode::SrcDstIp,
                HashArg::SrcIpDstPort => HashMode::SrcIpDstPort,
            };
            v.forwarding = match forwarding {
                FwdArg::Ipip => FwdMode::Ipip,
                FwdArg::Gue => FwdMode::Gue,
                FwdArg::L2 => FwdMode::L2,
            };
            v.conntrack = !no_conntrack;
            v.ring_size = ring_size;
            report(&call(socket, Request::VipAdd { vip: v })?);
        }
        VipCmd::Remove { vip } => report(&call(socket, Request::VipRemove { vip })?),
        VipCmd::List { o } => {
            let v = call(socket, Request::VipList)?;
            if o.output == Output::Json {
                return print_json(&v);
            }
            let vips: Vec<VipView> = serde_json::from_value(v)?;
            let rows = vips
                .into_iter()
                .map(|v| {
                    vec![
                        v.vip,
                        v.id.to_string(),
                        v.hash,
                        v.forwarding,
                        if v.conntrack { "yes" } else { "no" }.into(),
                        v.ring_size.to_string(),
                        format!("{}/{}", v.in_ring, v.backends),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "VIP",
                        "ID",
                        "HASH",
                        "FORWARDING",
                        "CONNTRACK",
                        "RING",
                        "IN-RING/BACKENDS"
                    ],
                    rows
                )
            );
        }
    }
    Ok(())
}

pub fn backend(socket: &Path, cmd: BackendCmd) -> Result<()> {
    let set = |vip, address, weight, drain| Request::BackendSet {
        vip,
        address,
        weight,
        drain,
    };
    let req = match cmd {
        BackendCmd::Add {
            vip,
            address,
            weight,
            drain,
        } => Request::BackendAdd {
            vip,
            backend: BackendConfig {
                address,
                weight,
                drain,
                health: None,
            },
        },
        BackendCmd::Remove { vip, address, now } => Request::BackendRemove { vip, address, now },
        BackendCmd::Drain { vip, address } => set(vip, address, None, Some(true)),
        BackendCmd::Undrain { vip, address } => set(vip, address, None, Some(false)),
        BackendCmd::SetWeight {
            vip,
            address,
            weight,
        } => set(vip, address, Some(weight), None),
        BackendCmd::List { vip, o } => {
            let v = call(socket, Request::BackendList { vip })?;
            if o.output == Output::Json {
                return print_json(&v);
            }
            let list: Vec<BackendView> = serde_json::from_value(v)?;
            let rows = list
                .into_iter()
                .map(|b| {
                    let health = match &b.health {
                        None => "-".to_string(),
                        Some(h) => format!(
                            "{} {:.0}s, {} fail, {:.2}% avail",
                            if h.healthy { "up" } else { "down" },
                            h.since_secs,
                            h.failures,
                            100.0 * h.availability
                        ),
                    };
                    vec![
                        b.vip,
                        b.address,
                        b.id.to_string(),
                        b.weight.to_string(),
                        b.state,
                        health,
                        b.slots.to_string(),
                        b.packets.to_string(),
                        b.new_flows.to_string(),
                        b.next_hop.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "VIP",
                        "BACKEND",
                        "ID",
                        "WEIGHT",
                        "STATE",
                        "HEALTH",
                        "SLOTS",
                        "PACKETS",
                        "NEW-FLOWS",
                        "NEXT-HOP"
                    ],
                    rows
                )
            );
            return Ok(());
        }
    };
    report(&call(socket, req)?);
    Ok(())
}

pub fn apply(socket: &Path, file: &Path, now: bool) -> Result<()> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    report(&call(socket, Request::Apply { config: text, now })?);
    Ok(())
}

pub fn config(socket: &Path, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Export => {
            let v = call(socket, Request::Export)?;
            print!("{}", v.get("config").and_then(Value::as_str).unwrap_or(""));
        }
        ConfigCmd::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let c = Config::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: valid ({} VIPs, {backends} backends, {} interfaces)",
                file.display(),
                c.vips.len(),
                c.interfaces.len()
            );
        }
    }
    Ok(())
}

pub fn status(socket: &Path, o: OutputArg) -> Result<()> {
    let v = call(socket, Request::Status)?;
    if o.output == Output::Json {
        return print_json(&v);
    }
    let s: StatusView = serde_json::from_value(v)?;
    println!(
        "xlb {} up {}s, pins {}{}",
        s.version,
        s.uptime_secs,
        s.pin_dir,
        if s.adopted { " (adopted)" } else { "" }
    );
    println!("forwarder program id {}", s.forward_program_id);
    for i in &s.interfaces {
        let note = if i.mode != i.requested {
            " (FALLBACK from native)"
        } else {
            ""
        };
        println!("  interface {}: {} XDP{note}", i.name, i.mode);
    }
    if s.interfaces.is_empty() {
        println!("  no interfaces attached");
    }
    println!(
        "VIPs {}, backends {} (up {}, health down {}, drained {}, removing {}, next hop unresolved {}); {} health transitions",
        s.vips,
        s.backends,
        s.backends_up,
        s.backends_down,
        s.backends_drained,
        s.backends_removing,
        s.backends_unresolved,
        s.health_transitions
    );
    if !s.below_quorum.is_empty() {
        println!("below quorum: {}", s.below_quorum.join(", "));
    }
    if let Some(c) = &s.capture {
        println!("capture running: {c}");
    }
    println!(
        "conntrack capacity {} flows/CPU; {} applies, {} ring rebuilds",
        s.conntrack_capacity, s.applies, s.ring_rebuilds
    );
    Ok(())
}

fn render_stats(s: &StatsView) -> String {
    let mut out = String::new();
    let vips = s
        .vips
        .iter()
        .map(|v| {
            vec![
                v.vip.clone(),
                v.packets.to_string(),
                v.bytes.to_string(),
                human(v.pps),
                human(v.bps),
                v.new_flows.to_string(),
                v.conntrack_hits.to_string(),
                v.conntrack_misses.to_string(),
                v.failovers.to_string(),
            ]
        })
        .collect();
    out += &table(
        &[
            "VIP",
            "PACKETS",
            "BYTES",
            "PPS",
            "BPS",
            "NEW-FLOWS",
            "CT-HITS",
            "CT-MISSES",
            "FAILOVERS",
        ],
        vips,
    );
    out.push('\n');
    let backends = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.vip.clone(),
                b.address.clone(),
                b.packets.to_string(),
                b.bytes.to_string(),
                human(b.pps),
                human(b.bps),
                b.new_flows.to_string(),
            ]
        })
        .collect();
    out += &table(
        &[
            "VIP",
            "BACKEND",
            "PACKETS",
            "BYTES",
            "PPS",
            "BPS",
            "NEW-FLOWS",
        ],
        backends,
    );
    out.push('\n');
    let reasons = s
        .reasons
        .iter()
        .filter(|r| r.packets > 0)
        .map(|r| vec![r.reason.clone(), r.packets.to_string(), r.bytes.to_string()])
        .collect();
    out += &table(&["PASS/DROP REASON", "PACKETS", "BYTES"], reasons);
    out
}

pub fn stats(socket: &Path, o: OutputArg, watch: Option<u64>) -> Result<()> {
    loop {
        let v = call(socket, Request::Stats)?;
        if o.output == Output::Json {
            print_json(&v)?;
        } else {
            let s: StatsView = serde_json::from_value(v)?;
            if watch.is_some() {
                // Clear the screen between refreshes, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render_stats(&s));
        }
        match watch {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            None => return Ok(()),
        }
    }
}

pub fn flows(socket: &Path, vip: Option<VipRef>, limit: usize, o: OutputArg) -> Result<()> {
    let v = call(socket, Request::Flows { vip, limit })?;
    if o.output == Output::Json {
        return print_json(&v);
    }
    let f: FlowsView = serde_json::from_value(v)?;
    let rows = f
        .flows
        .into_iter()
        .map(|f| {
            vec![
                f.src,
                f.dst,
                f.protocol,
                f.backend,
                format!("{:?}", f.cpus),
                f.idle_ms.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["SOURCE", "VIP", "PROTO", "BACKEND", "CPUS", "IDLE-MS"],
            rows
        )
    );
    if f.truncated {
        println!("(more flows than --limit {limit})");
    }
    Ok(())
}

pub fn explain(socket: &Path, src: SocketAddr, dst: &str, syn: bool, o: OutputArg) -> Result<()> {
    let (sock, proto) = dst
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{dst:?}: expected ADDRESS:PORT/PROTOCOL"))?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        p => return Err(anyhow!("{dst:?}: protocol {p:?} is not tcp or udp")),
    };
    let dst: SocketAddr = sock
        .parse()
        .map_err(|_| anyhow!("{sock:?} is not ADDRESS:PORT"))?;
    let v = call(
        socket,
        Request::Explain {
            src,
            dst,
            protocol,
            syn,
        },
    )?;
    if o.output == Output::Json {
        return print_json(&v);
    }
    let e: ExplainView = serde_json::from_value(v)?;
    println!("{}", e.flow);
    match (&e.vip, e.verdict.as_str()) {
        (None, _) => println!(
            "  not a VIP: passed to the kernel ({})",
            e.reason.unwrap_or_default()
        ),
        (Some(vip), "forward") => {
            println!("  VIP {vip} (hash {})", e.hash.unwrap_or_default());
            let backend = e.backend.unwrap_or_else(|| "?".into());
            let id = e.backend_id.unwrap_or(0);
            match e.how.as_deref() {
                Some("tracked") => println!(
                    "  -> backend {backend} (id {id}): tracked flow (conntrack entry on CPU {:?})",
                    e.tracked_on_cpus
                ),
                Some("failover") => println!(
                    "  -> backend {backend} (id {id}): its tracked backend is down; re-picked at ring slot {} of {}",
                    e.slot.unwrap_or(0),
                    e.ring_size.unwrap_or(0)
                ),
                _ => println!(
                    "  -> backend {backend} (id {id}): ring slot {} of {} (no conntrack entry)",
                    e.slot.unwrap_or(0),
                    e.ring_size.unwrap_or(0)
                ),
            }
        }
        (Some(vip), verdict) => {
            println!("  VIP {vip}: {verdict} ({})", e.reason.unwrap_or_default())
        }
    }
    Ok(())
}
