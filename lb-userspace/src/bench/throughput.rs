//! Throughput on namespaces: `xlb loadgen` -> veth -> forwarder -> veth -> counting sink, in
//! Mpps delivered to the sink, beside the same path with `xlb_redirect` (redirect everything,
//! touch nothing) in the forwarder's place, in the same run.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use lb_common::{
    Addr, Backend, FAMILY_V4, FWD_IPIP, HASH_FIVE_TUPLE, LbConfig, VipKey, VipMeta,
    maglev::{self, MaglevBackend},
    prog_names,
};
use serde::Serialize;

use super::sandbox::{Ns, veth};
use crate::{
    dataplane::{Dataplane, LoadOptions},
    loadgen::{self, Kind},
};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Throughput {
    pub xlb_mpps: f64,
    pub baseline_mpps: f64,
}

const VIP: [u8; 4] = [10, 99, 0, 1];
const BACKEND: [u8; 4] = [10, 99, 2, 2];

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}");
    Ok(i)
}

/// Run the generator flat out from `generator` for `secs`; returns packets the sink counted per second.
fn measure(generator: &Ns, sink: &Dataplane, dst_mac: [u8; 6], secs: f64) -> Result<f64> {
    let gen_name = generator.name.clone();
    let before = sink.sink_stats()?.packets;
    let t0 = Instant::now();
    let handle = std::thread::spawn(move || -> Result<()> {
        // Threads the generator spawns inherit this thread's namespace.
        let _in = super::sandbox::enter(&gen_name)?;
        let o = loadgen::Options {
            iface: "g0".into(),
            ifindex: ifindex("g0")?,
            src_mac: loadgen::iface_mac("g0")?,
            dst_mac,
            src: IpAddr::from([10, 99, 1, 2]),
            dst: IpAddr::from(VIP),
            dport: 7000,
            sport: 1024,
            flows: 1024,
            size: 64,
            kind: Kind::Udp,
            rate: None,
            duration: Some(Duration::from_secs_f64(secs)),
            count: None,
            threads: loadgen::ncpus(),
            method: loadgen::Method::Auto,
        };
        loadgen::run(&o, Arc::new(AtomicBool::new(false)), |_, _| {})?;
        Ok(())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    // Let the queues drain before reading the sink.
    std::thread::sleep(Duration::from_millis(100));
    let got = sink.sink_stats()?.packets - before;
    Ok(got as f64 / t0.elapsed().as_secs_f64())
}

pub fn run(secs: f64) -> Result<Throughput> {
    let generator = Ns::new("gen")?;
    let lb = Ns::new("lb")?;
    let sink_ns = Ns::new("sink")?;
    veth(&generator, "g0", &lb, "l0")?;
    veth(&lb, "l1", &sink_ns, "s0")?;
    generator.ip(&["addr", "add", "10.99.1.2/24", "dev", "g0"])?;

    let mut sink = Dataplane::load(&LoadOptions {
        conntrack_entries: 64,
        ..LoadOptions::default()
    })?;
    let s0_mac = {
        let _in = sink_ns.enter()?;
        sink.program(prog_names::SINK)?
            .attach("s0", XdpMode::Driver)
            .context("attach sink")?;
        loadgen::iface_mac("s0")?
    };

    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let (l0_mac, l1_mac, l1) = {
        let _in = lb.enter()?;
        (
            loadgen::iface_mac("l0")?,
            loadgen::iface_mac("l1")?,
            ifindex("l1")?,
        )
    };
    {
        let _in = lb.enter()?;
        dp.set_tx_port(1, l1)?;
    }
    dp.set_config(&LbConfig {
        encap_src_v4: u32::from_ne_bytes([10, 99, 2, 1]),
        hash_seed: 1,
        mtu: 1500,
        gue_port_be: lb_common::GUE_PORT_DEFAULT.to_be(),
        ..LbConfig::default()
    })?;
    let backend = Addr::v4(u32::from_ne_bytes(BACKEND));
    dp.set_backend(
        1,
        &Backend {
            addr: backend,
            dst_mac: s0_mac,
            src_mac: l1_mac,
            tx_port: 1,
            family: FAMILY_V4,
            state: 0,
            vip: 0,
        },
    )?;
    let ring = maglev::build(
        &[MaglevBackend {
            family: FAMILY_V4,
            addr: backend,
            weight: 1,
            id: 1,
        }],
        65537,
        1,
    )?;
    dp.set_ring(0, &ring)?;
    dp.set_vip(
        &VipKey {
            addr: Addr::v4(u32::from_ne_bytes(VIP)),
            port_be: 7000u16.to_be(),
            proto: lb_common::PROTO_UDP,
            family: FAMILY_V4,
        },
        &VipMeta {
            vip_id: 0,
            ring_size: 65537,
            hash_mode: HASH_FIVE_TUPLE,
            fwd_mode: FWD_IPIP,
            flags: 0,
            idle_timeout_s: lb_common::UDP_IDLE_TIMEOUT_DEFAULT,
        },
    )?;
    // The encapsulated frames are 20 bytes longer than the generator's.
    lb.ip(&["link", "set", "l1", "mtu", "1600"])?;
    sink_ns.ip(&["link", "set", "s0", "mtu", "1600"])?;

    let attach = |dp: &mut Dataplane, prog: &'static str| -> Result<()> {
        let _in = lb.enter()?;
        dp.attach(prog, "l0", crate::dataplane::AttachMode::Native, None)?;
        Ok(())
    };
    attach(&mut dp, prog_names::FORWARD)?;
    let xlb = measure(&generator, &sink, l0_mac, secs)?;
    {
        let _in = lb.enter()?;
        dp.detach("l0", None)?;
    }
    attach(&mut dp, prog_names::REDIRECT)?;
    let baseline = measure(&generator, &sink, l0_mac, secs)?;
    {
        let _in = lb.enter()?;
        dp.detach("l0", None)?;
    }
    Ok(Throughput {
        xlb_mpps: xlb / 1e6,
        baseline_mpps: baseline / 1e6,
    })
}
