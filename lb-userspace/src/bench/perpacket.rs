//! Per-packet cost of `xlb_forward` through `BPF_PROG_TEST_RUN`. Every run is one `repeat = 1`
//! call on the original frame, so each iteration sees unmodified input (with repeat > 1 the
//! kernel reruns on the already-encapsulated buffer and measures the pass path). The kernel's own
//! duration is used; `xlb_pass` on the same frame gives the floor of the method (timer and
//! dispatch), reported beside the figures.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Result;
use etherparse::{PacketBuilder, VlanId};
use lb_common::{
    Addr, Backend, FWD_GUE, FWD_IPIP, FWD_L2, HASH_FIVE_TUPLE, LbConfig, VipKey, VipMeta,
    family_of,
    maglev::{self, MaglevBackend},
    prog_names,
};
use serde::Serialize;

use crate::dataplane::{Dataplane, LoadOptions};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figure {
    pub min_ns: f64,
    pub median_ns: f64,
}

const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 1];
const RING: u32 = 65537;
const SEED: u32 = 0x786c_6221;

struct Vip {
    addr: &'static str,
    fwd: u8,
    backends: std::ops::Range<u32>,
}

/// id -> address of the benchmark's backends: 1..=16 IPv4, 17..=32 IPv6, the others IPv4.
fn backend_addr(id: u32) -> IpAddr {
    match id {
        1..=16 => format!("10.1.0.{id}").parse().expect("v4"),
        17..=32 => format!("fd01::{id}").parse().expect("v6"),
        _ => format!("10.2.{}.{}", id / 250, id % 250 + 1)
            .parse()
            .expect("v4"),
    }
}

fn frame(src: &str, sport: u16, dst: &str, syn: bool, vlan: bool) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let payload = [0u8; 64];
    let mut out = Vec::new();
    let (s, d): (IpAddr, IpAddr) = (src.parse()?, dst.parse()?);
    macro_rules! finish {
        ($ip:expr) => {{
            let t = $ip.tcp(sport, 80, 1, 64240);
            if syn {
                t.syn().write(&mut out, &payload)?
            } else {
                t.ack(1).write(&mut out, &payload)?
            }
        }};
    }
    match (s, d, vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), false) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V4(s), IpAddr::V4(d), true) => finish!(
            eth.single_vlan(VlanId::try_new(100)?)
                .ipv4(s.octets(), d.octets(), 64)
        ),
        (IpAddr::V6(s), IpAddr::V6(d), _) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
        _ => anyhow::bail!("mixed families"),
    }
    Ok(out)
}

fn setup(dp: &mut Dataplane) -> Result<()> {
    dp.set_config(&LbConfig {
        encap_src_v4: u32::from_ne_bytes([172, 16, 0, 1]),
        encap_src_v6: Addr::from("fd99::1".parse::<IpAddr>()?),
        hash_seed: SEED,
        mtu: 9000,
        gue_port_be: lb_common::GUE_PORT_DEFAULT.to_be(),
        // As the daemon runs it: the VIP address filter on (written below).
        flags: lb_common::CFG_F_VIP_FILTER,
        ..LbConfig::default()
    })?;
    let vips = [
        Vip {
            addr: "10.0.0.10",
            fwd: FWD_IPIP,
            backends: 1..17,
        },
        Vip {
            addr: "10.0.0.11",
            fwd: FWD_GUE,
            backends: 33..49,
        },
        Vip {
            addr: "10.0.0.12",
            fwd: FWD_L2,
            backends: 49..65,
        },
        Vip {
            addr: "fd00::10",
            fwd: FWD_IPIP,
            backends: 17..33,
        },
        Vip {
            addr: "10.0.0.13",
            fwd: FWD_IPIP,
            backends: 100..1100,
        },
    ];
    for (vip_id, v) in vips.iter().enumerate() {
        let mut members = Vec::new();
        for id in v.backends.clone() {
            let ip = backend_addr(id);
            dp.set_backend(
                id,
                &Backend {
                    addr: Addr::from(ip),
                    dst_mac: [0x02, 0xbe, 0, 0, (id >> 8) as u8, id as u8],
                    src_mac: [0; 6],
                    tx_port: 0,
                    family: family_of(&ip),
                    state: 0,
                    // Each id serves one VIP, as the daemon assigns them.
                    vip: Backend::vip_tag(vip_id as u32),
                },
            )?;
            members.push(MaglevBackend {
                family: family_of(&ip),
                addr: Addr::from(ip),
                weight: 1,
                id,
            });
        }
        dp.set_ring(vip_id as u32, &maglev::build(&members, RING, SEED)?)?;
        let ip: IpAddr = v.addr.parse()?;
        dp.set_vip(
            &VipKey {
                addr: Addr::from(ip),
                port_be: 80u16.to_be(),
                proto: lb_common::PROTO_TCP,
                family: family_of(&ip),
            },
            &VipMeta {
                vip_id: vip_id as u32,
                ring_size: RING,
                hash_mode: HASH_FIVE_TUPLE,
                fwd_mode: v.fwd,
                flags: 0,
                idle_timeout_s: lb_common::TCP_IDLE_TIMEOUT_DEFAULT,
            },
        )?;
    }
    let addrs: Vec<Addr> = vips
        .iter()
        .map(|v| v.addr.parse::<IpAddr>().map(Addr::from))
        .collect::<Result<_, _>>()?;
    dp.set_vip_filter(&crate::state::diff::filter_words(&addrs), &[])?;
    Ok(())
}

/// Min and median of `batches` batch means of `per_batch` single runs each, cycling `frames`.
fn measure(
    dp: &mut Dataplane,
    prog: &'static str,
    frames: &[Vec<u8>],
    batches: usize,
    per_batch: usize,
) -> Result<Figure> {
    let mut runner = super::testrun::Runner::new(dp.program_fd(prog)?);
    let mut means = Vec::with_capacity(batches);
    let mut i = 0;
    for _ in 0..batches {
        let mut total = 0u64;
        for _ in 0..per_batch {
            total += runner.run(&frames[i % frames.len()])?.1 as u64;
            i += 1;
        }
        means.push(total as f64 / per_batch as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(Figure {
        min_ns: means[0],
        median_ns: means[means.len() / 2],
    })
}

/// Every path, plus the method's floor under the key `floor_xlb_pass`.
pub fn run(batches: usize, per_batch: usize) -> Result<BTreeMap<&'static str, Figure>> {
    super::pin_cpu(0);
    let mut dp = Dataplane::load(&LoadOptions {
        conntrack_entries: 1 << 20,
        ..LoadOptions::default()
    })?;
    setup(&mut dp)?;
    let established = |dp: &mut Dataplane, dst: &str, src: &str, vlan: bool| -> Result<Vec<u8>> {
        // The SYN tracks the flow; the ACK then hits conntrack.
        let syn = frame(src, 40000, dst, true, vlan)?;
        let out = dp.test_run(prog_names::FORWARD, &syn)?;
        anyhow::ensure!(out.action == 3, "setup SYN to {dst} was not forwarded");
        frame(src, 40000, dst, false, vlan)
    };
    let n = batches * per_batch;
    let syns = |dst: &str| -> Result<Vec<Vec<u8>>> {
        (0..n)
            .map(|i| {
                frame(
                    &format!("198.18.{}.{}", (i >> 8) & 0xff, i & 0xff),
                    1024 + (i >> 16) as u16,
                    dst,
                    true,
                    false,
                )
            })
            .collect()
    };
    let cases: Vec<(&'static str, &'static str, Vec<Vec<u8>>)> = vec![
        (
            "floor_xlb_pass",
            prog_names::PASS,
            vec![frame("192.0.2.1", 40000, "10.0.0.99", false, false)?],
        ),
        (
            "non_vip_pass",
            prog_names::FORWARD,
            vec![frame("192.0.2.1", 40000, "10.0.0.99", false, false)?],
        ),
        (
            "established",
            prog_names::FORWARD,
            vec![established(&mut dp, "10.0.0.10", "192.0.2.1", false)?],
        ),
        ("new_flow", prog_names::FORWARD, syns("10.0.0.10")?),
        (
            "new_flow_1000_backends",
            prog_names::FORWARD,
            syns("10.0.0.13")?,
        ),
        // The kernel's part of a new flow: the same insert with nothing else around it
        // (other five-tuples than `new_flow`'s: a fresh entry each run, as there).
        (
            "new_flow_insert_only",
            prog_names::INSERT,
            syns("10.0.0.14")?,
        ),
        (
            "ipv6_established",
            prog_names::FORWARD,
            vec![established(&mut dp, "fd00::10", "2001:db8::1", false)?],
        ),
        (
            "gue_established",
            prog_names::FORWARD,
            vec![established(&mut dp, "10.0.0.11", "192.0.2.1", false)?],
        ),
        (
            "l2dsr_established",
            prog_names::FORWARD,
            vec![established(&mut dp, "10.0.0.12", "192.0.2.1", false)?],
        ),
        (
            "vlan_established",
            prog_names::FORWARD,
            vec![established(&mut dp, "10.0.0.10", "192.0.2.7", true)?],
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, prog, frames) in cases {
        out.insert(name, measure(&mut dp, prog, &frames, batches, per_batch)?);
    }
    Ok(out)
}
