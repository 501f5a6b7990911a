//! `xlb bench`: the figures in docs/benchmarks.md. Per-packet cost of the forwarder, throughput
//! through namespaces against a trivial-redirect baseline, Maglev build times, ring swap time
//! and conntrack memory per flow. Prints a table, or one JSON object with `--json`.

pub mod perpacket;
pub mod sandbox;
mod testrun;
pub mod throughput;

use std::{collections::BTreeMap, fmt::Write as _, time::Instant};

use anyhow::Result;
use lb_common::{
    Addr, FAMILY_V4,
    maglev::{self, MaglevBackend},
    map_names,
};
use serde::Serialize;

use crate::dataplane::{Dataplane, LoadOptions};

pub struct Options {
    pub throughput: bool,
    /// Batches and runs per batch of the per-packet measurement.
    pub batches: usize,
    pub per_batch: usize,
    /// Seconds per throughput run.
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub per_packet: BTreeMap<&'static str, perpacket::Figure>,
    /// `xlb_pass` on the same frames: the timer and dispatch cost inside every figure above.
    pub per_packet_floor: perpacket::Figure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<throughput::Throughput>,
    pub maglev_build_ms: BTreeMap<String, f64>,
    /// Build plus publish of a 65537-slot ring for 1000 backends, in process.
    pub ring_swap_ms_1000_backends: f64,
    /// Kernel memory of the IPv4 conntrack map per tracked-flow slot (all CPUs' values
    /// included).
    pub conntrack_bytes_per_flow: f64,
    /// The same for the IPv6 conntrack map (40-byte keys).
    pub conntrack_v6_bytes_per_flow: f64,
    /// Size of `xlb_forward` as the kernel holds it.
    pub program: ProgramSize,
    pub cpus: usize,
    pub kernel: String,
}

/// What the kernel reports of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Debug, Serialize)]
pub struct ProgramSize {
    pub xlated_insns: u32,
    pub jited_bytes: u32,
    /// Instructions the verifier walked to accept it (its complexity limit is 1M).
    pub verified_insns: u32,
}

impl ProgramSize {
    pub fn of(dp: &mut Dataplane, name: &'static str) -> Result<Self> {
        let info = dp.program(name)?.info()?;
        Ok(ProgramSize {
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count().unwrap_or(0),
        })
    }
}

pub fn pin_cpu(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn members(n: u32) -> Vec<MaglevBackend> {
    (1..=n)
        .map(|id| MaglevBackend {
            family: FAMILY_V4,
            addr: Addr::v4(u32::from_ne_bytes([10, 3, (id >> 8) as u8, id as u8])),
            weight: 1,
            id,
        })
        .collect()
}

fn median_ms(mut f: impl FnMut() -> Result<()>, runs: usize) -> Result<f64> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn bytes_per_flow(dp: &Dataplane, name: &'static str) -> Result<f64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = dp.map_by_name(name)?;
    let aya::maps::Map::LruHashMap(data) = map else {
        anyhow::bail!("conntrack is not an LRU hash");
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |k: &str| -> Option<f64> {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let mem = field("memlock:").unwrap_or(0.0);
    let entries = field("max_entries:").unwrap_or(1.0);
    Ok(mem / entries)
}

pub fn run(o: &Options) -> Result<Report> {
    // On its own thread: it pins itself to CPU 0, which must not constrain the generator.
    let (b, n) = (o.batches, o.per_batch);
    let all = std::thread::spawn(move || perpacket::run(b, n))
        .join()
        .map_err(|_| anyhow::anyhow!("per-packet benchmark panicked"))??;
    let mut per_packet = all;
    let floor = per_packet
        .remove("floor_xlb_pass")
        .ok_or_else(|| anyhow::anyhow!("no floor measured"))?;

    let mut maglev_build_ms = BTreeMap::new();
    for n in [10u32, 100, 1000, 4096] {
        let m = members(n);
        let ms = median_ms(
            || maglev::build(&m, 65537, 1).map(|_| ()).map_err(Into::into),
            7,
        )?;
        maglev_build_ms.insert(n.to_string(), ms);
    }

    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let m = members(1000);
    let ring_swap_ms_1000_backends = median_ms(
        || {
            let t = maglev::build(&m, 65537, 1)?;
            dp.set_ring(0, &t)?;
            Ok(())
        },
        7,
    )?;
    let conntrack_bytes_per_flow = bytes_per_flow(&dp, map_names::CONNTRACK_V4)?;
    let conntrack_v6_bytes_per_flow = bytes_per_flow(&dp, map_names::CONNTRACK)?;
    let program = ProgramSize::of(&mut dp, lb_common::prog_names::FORWARD)?;
    drop(dp);

    let throughput = if o.throughput {
        Some(throughput::run(o.seconds)?)
    } else {
        None
    };
    Ok(Report {
        per_packet,
        per_packet_floor: floor,
        throughput,
        maglev_build_ms,
        ring_swap_ms_1000_backends,
        conntrack_bytes_per_flow,
        conntrack_v6_bytes_per_flow,
        program,
        cpus: crate::loadgen::ncpus(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "xlb bench: kernel {}, {} CPUs\n\nper packet (BPF_PROG_TEST_RUN, input restored every run; floor = xlb_pass on the same frame)",
        r.kernel, r.cpus
    );
    let _ = writeln!(
        s,
        "  {:<24} {:>9} {:>11} {:>13}",
        "path", "min ns", "median ns", "net of floor"
    );
    let f = r.per_packet_floor;
    let _ = writeln!(
        s,
        "  {:<24} {:>9.1} {:>11.1} {:>13}",
        "(floor: xlb_pass)", f.min_ns, f.median_ns, "-"
    );
    for (k, v) in &r.per_packet {
        let _ = writeln!(
            s,
            "  {k:<24} {:>9.1} {:>11.1} {:>13.1}",
            v.min_ns,
            v.median_ns,
            v.min_ns - f.min_ns
        );
    }
    let _ = writeln!(
        s,
        "  (new_flow_insert_only: xlb_insert, the forwarder's conntrack insert alone; the rest of new_flow is the forwarder's own work)"
    );
    let p = &r.program;
    let _ = writeln!(
        s,
        "  xlb_forward: {} instructions, {} bytes JITed, {} instructions verified",
        p.xlated_insns, p.jited_bytes, p.verified_insns
    );
    if let Some(t) = r.throughput {
        let _ = writeln!(
            s,
            "\nthroughput, 64-byte UDP, loadgen -> forwarder -> sink on veth\n  xlb {:.3} Mpps, trivial redirect {:.3} Mpps: {:.0}% of the baseline",
            t.xlb_mpps,
            t.baseline_mpps,
            100.0 * t.xlb_mpps / t.baseline_mpps.max(1e-9)
        );
    }
    let _ = writeln!(s, "\nMaglev build, M = 65537 (median of 7)");
    let mut builds: Vec<_> = r.maglev_build_ms.iter().collect();
    builds.sort_by_key(|(k, _)| k.parse::<u32>().unwrap_or(0));
    for (n, ms) in builds {
        let _ = writeln!(s, "  {n:>5} backends  {ms:>7.2} ms");
    }
    let _ = writeln!(
        s,
        "\nring build + swap, 1000 backends: {:.2} ms",
        r.ring_swap_ms_1000_backends
    );
    let (b, b6) = (r.conntrack_bytes_per_flow, r.conntrack_v6_bytes_per_flow);
    let _ = writeln!(
        s,
        "conntrack memory per flow (kernel memlock / max_entries): one shared LRU entry = 48 (element header) + 16 (IPv4 key; IPv6: 40) + 16 (value) + the bucket's share (16 x buckets / entries), whatever the CPU count\n  {} CPUs: {b:.0} bytes per IPv4 flow, {b6:.0} per IPv6 flow (measured)\n  64 CPUs: {b:.0} bytes, 128 CPUs: {b:.0} bytes (computed: nothing per flow depends on the CPUs)\n  (the per-CPU table it replaced: 112 + 16 x CPUs = {} / {} / {} bytes at {} / 64 / 128 CPUs, computed)",
        r.cpus,
        112 + 16 * r.cpus,
        112 + 16 * 64,
        112 + 16 * 128,
        r.cpus
    );
    s
}
