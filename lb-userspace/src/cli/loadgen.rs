//! `xlb loadgen`: generate packets towards a VIP from this host.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use clap::ValueEnum;

use super::output::{OutputArg, human};

#[derive(Clone, Copy, ValueEnum)]
pub enum GenKind {
    /// UDP datagrams.
    Udp,
    /// TCP SYNs: every packet opens a flow.
    Syn,
    /// TCP ACKs: packets of established flows.
    Ack,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// Live frames, or AF_PACKET where the kernel refuses them.
    Auto,
    /// XDP live frames only.
    LiveFrames,
    /// An AF_PACKET socket.
    AfPacket,
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Interface the frames leave from.
    #[arg(long)]
    pub iface: String,
    /// Destination as ADDRESS:PORT (the VIP).
    #[arg(long)]
    pub dst: SocketAddr,
    /// Destination MAC (the LB's or the next hop's); default: resolved from the route to --dst.
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// Source address of flow 0 (default: the interface's first address of the VIP's family).
    #[arg(long)]
    pub src: Option<IpAddr>,
    /// Source port of flow 0; flows take consecutive ports, then the next source addresses.
    #[arg(long, default_value_t = 1024)]
    pub sport: u16,
    /// Distinct flows.
    #[arg(long, default_value_t = 1024)]
    pub flows: u32,
    /// Frame size in bytes without FCS (minimum 60).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What each frame is.
    #[arg(long, value_enum, default_value_t = GenKind::Udp)]
    pub kind: GenKind,
    /// Packets per second over all threads (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds to run.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Packets to send.
    #[arg(long)]
    pub count: Option<u64>,
    /// Generator threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How frames leave: XDP live frames (fastest), AF_PACKET, or live frames falling back to
    /// AF_PACKET where the kernel refuses them.
    #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
    pub method: MethodArg,
    #[command(flatten)]
    pub o: OutputArg,
}

pub fn run(a: LoadgenArgs) -> Result<()> {
    use std::io::Write as _;

    use crate::loadgen::{self, Kind};
    let c = std::ffi::CString::new(a.iface.clone())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        anyhow::bail!("no interface {:?} in this network namespace", a.iface);
    }
    let src = match a.src {
        Some(s) => s,
        None => crate::decap::iface_addrs(&a.iface)?
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
    let json = a.o.json();
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
                human(pps),
                human(pps * size as f64 * 8.0)
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
            human(s.pps),
            human(s.bits_per_second),
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
        let r = crate::nexthop::Resolver::new()?;
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
