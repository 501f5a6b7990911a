//! A loaded forwarder whose maps are written through the real `dataplane` module, mirrored into the
//! reference model so tests can ask the model what the kernel should have done.

use std::net::IpAddr;

use lb_common::{
    Addr, Backend, FlowKey, LbConfig, VipKey, VipMeta, family_of,
    maglev::{self, MaglevBackend},
    model::Model,
};
use xlb::dataplane::{Dataplane, LoadOptions, TestOutput};

pub const SEED: u32 = 0x5eed_1234;
pub const MTU: u16 = 1500;
pub const GUE_PORT: u16 = 6080;
pub const ENCAP_SRC_V4: [u8; 4] = [172, 16, 0, 0];
pub const ENCAP_SRC_V6: &str = "fd99::";

pub struct Fixture {
    pub dp: Dataplane,
    pub model: Model,
    pub cfg: LbConfig,
    /// Backends of each VIP with weights, to rebuild rings.
    members: std::collections::HashMap<u32, Vec<(u32, u32)>>,
}

pub fn backend_mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, (id >> 8) as u8, id as u8]
}

impl Fixture {
    pub fn new(conntrack_entries: u32) -> Fixture {
        let dp = Dataplane::load(&LoadOptions {
            conntrack_entries,
            ..Default::default()
        })
        .expect("load XDP object");
        let v6: IpAddr = ENCAP_SRC_V6.parse().expect("v6");
        let cfg = LbConfig {
            encap_src_v6: Addr::from(v6),
            encap_src_v4: u32::from_ne_bytes(ENCAP_SRC_V4),
            // The low 8 bits of the outer source come from the flow.
            encap_src_v4_mask: u32::from_ne_bytes([0, 0, 0, 0xff]),
            encap_src_v6_mask: u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            hash_seed: SEED,
            mtu: MTU,
            gue_port_be: GUE_PORT.to_be(),
            // As the daemon runs it: non-VIP addresses are told apart by the address filter.
            flags: lb_common::CFG_F_VIP_FILTER,
            nr_cpus: aya::util::nr_cpus().expect("possible CPUs") as u16,
            new_flow_limit: 0,
            _pad: 0,
        };
        let mut f = Fixture {
            dp,
            model: Model {
                seed: SEED,
                ..Model::default()
            },
            cfg,
            members: Default::default(),
        };
        f.dp.set_config(&cfg).expect("config");
        f
    }

    pub fn add_backend(&mut self, id: u32, ip: &str) {
        let ip: IpAddr = ip.parse().expect("backend address");
        let b = Backend {
            addr: Addr::from(ip),
            dst_mac: backend_mac(id),
            src_mac: [0; 6],
            tx_port: 0,
            family: family_of(&ip),
            state: 0,
            vip: 0,
        };
        self.set_backend(id, b);
    }

    /// A backend id that serves only VIP `vip_id` (tagged, as the daemon writes them).
    pub fn add_backend_of(&mut self, id: u32, ip: &str, vip_id: u32) {
        let ip: IpAddr = ip.parse().expect("backend address");
        let b = Backend {
            addr: Addr::from(ip),
            dst_mac: backend_mac(id),
            family: family_of(&ip),
            vip: Backend::vip_tag(vip_id),
            ..Backend::default()
        };
        self.set_backend(id, b);
    }

    /// Unpublish a VIP on both sides (its ring stays, as between the daemon's two writes).
    pub fn remove_vip(&mut self, key: &VipKey) {
        self.dp.remove_vip(key).expect("remove vip");
        self.model.vips.remove(key);
    }

    pub fn set_backend(&mut self, id: u32, b: Backend) {
        self.dp.set_backend(id, &b).expect("backend");
        self.model.backends.insert(id, b);
    }

    pub fn set_down(&mut self, id: u32, down: bool) {
        let mut b = self.model.backends[&id];
        b.state = if down { lb_common::BACKEND_F_DOWN } else { 0 };
        self.set_backend(id, b);
    }

    /// Publish a VIP and its ring of `members` (backend id, weight).
    #[allow(clippy::too_many_arguments)]
    pub fn add_vip(
        &mut self,
        vip_id: u32,
        ip: &str,
        port: u16,
        proto: u8,
        hash_mode: u8,
        fwd_mode: u8,
        flags: u16,
        ring_size: u32,
        members: &[(u32, u32)],
    ) -> VipKey {
        let ip: IpAddr = ip.parse().expect("vip address");
        let key = VipKey {
            addr: Addr::from(ip),
            port_be: port.to_be(),
            proto,
            family: family_of(&ip),
        };
        let meta = VipMeta {
            vip_id,
            ring_size,
            hash_mode,
            fwd_mode,
            flags,
            idle_timeout_s: if proto == lb_common::PROTO_TCP {
                lb_common::TCP_IDLE_TIMEOUT_DEFAULT
            } else {
                lb_common::UDP_IDLE_TIMEOUT_DEFAULT
            },
        };
        if port == 0 && self.cfg.flags & lb_common::CFG_F_WILDCARD_VIPS == 0 {
            self.cfg.flags |= lb_common::CFG_F_WILDCARD_VIPS;
            self.dp.set_config(&self.cfg).expect("config");
        }
        self.members.insert(vip_id, members.to_vec());
        self.publish_ring(vip_id, ring_size);
        self.model.vips.insert(key, meta);
        let words = xlb::state::diff::filter_words(self.model.vips.keys().map(|k| &k.addr));
        self.dp.set_vip_filter(&words, &[]).expect("vip filter");
        self.dp.set_vip(&key, &meta).expect("vip");
        key
    }

    /// Change a VIP's members (weights; 0 = drain) and swap in the rebuilt ring.
    pub fn set_members(&mut self, vip_id: u32, members: &[(u32, u32)]) {
        self.members.insert(vip_id, members.to_vec());
        let ring_size = self.model.rings[&vip_id].len() as u32;
        self.publish_ring(vip_id, ring_size);
    }

    fn publish_ring(&mut self, vip_id: u32, ring_size: u32) {
        let mb: Vec<MaglevBackend> = self.members[&vip_id]
            .iter()
            .map(|&(id, weight)| {
                let b = &self.model.backends[&id];
                MaglevBackend {
                    family: b.family,
                    addr: b.addr,
                    weight,
                    id,
                }
            })
            .collect();
        let table = maglev::build(&mb, ring_size, SEED).expect("maglev table");
        self.dp.set_ring(vip_id, &table).expect("ring");
        self.model.rings.insert(vip_id, table);
    }

    pub fn run(&mut self, frame: &[u8]) -> TestOutput {
        self.dp
            .test_run(lb_common::prog_names::FORWARD, frame)
            .expect("test_run")
    }

    /// Forget all conntrack state on both sides.
    pub fn flush(&mut self) {
        self.dp.flush_conntrack().expect("flush");
        self.model.conntrack.clear();
    }

    pub fn tracked(&self, key: &FlowKey) -> Option<u32> {
        self.model.tracked_backend(key)
    }

    /// Set the daemon's clock (`CLOCK`) on both sides.
    pub fn set_clock(&mut self, ns: u64) {
        self.dp.set_clock(ns).expect("clock");
        self.model.now = ns;
    }

    /// Set the new-flow limit (per CPU) on both sides.
    pub fn set_new_flow_limit(&mut self, limit: u32) {
        self.cfg.new_flow_limit = limit;
        self.dp.set_config(&self.cfg).expect("config");
        self.model.new_flow_limit = limit;
    }
}

/// BPF_PROG_TEST_RUN runs on the calling thread's CPU and conntrack is per CPU: pin the thread so a
/// sequence of runs sees one CPU's table, like the model.
pub fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Run this thread (and so its BPF_PROG_TEST_RUNs) on `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain sched_setaffinity on the calling thread with a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
