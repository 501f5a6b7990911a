//! The standard fixture topology of the data-plane tests: one VIP per mode and family.

use lb_common::{
    FAMILY_V4, FAMILY_V6, FWD_GUE, FWD_IPIP, FWD_L2, FlowKey, HASH_FIVE_TUPLE, HASH_SRC_IP,
    RING_SIZE_DEFAULT,
    decision::{PKT_NORMAL, PKT_RESET, Packet},
};

use crate::{fixture::Fixture, frames::Spec};

/// Small prime ring for most VIPs (fast to publish); VIP 1 uses the production size.
pub const SMALL_RING: u32 = 1021;

pub const V4_BACKENDS: [(u32, &str); 4] = [
    (1, "10.1.0.1"),
    (2, "10.1.0.2"),
    (3, "10.1.0.3"),
    (4, "10.1.0.4"),
];
pub const V6_BACKENDS: [(u32, &str); 3] = [(11, "fd01::1"), (12, "fd01::2"), (13, "fd01::3")];

/// VIP ids of the topology.
pub const VIP_TCP4: u32 = 1; // 10.0.0.10:80/tcp  IPIP  -> 1,2,3  (ring 65537)
pub const VIP_UDP4_GUE: u32 = 2; // 10.0.0.10:53/udp  GUE   -> 1,2,3
pub const VIP_TCP6: u32 = 3; // [fd00::10]:80/tcp IP6IP6 -> 11,12,13
pub const VIP_TCP6_GUE4: u32 = 4; // [fd00::20]:443/tcp GUE over IPv4 -> 1,2
pub const VIP_L2_ANY: u32 = 5; // 10.0.0.20:*/tcp L2 DSR, source-IP hash -> 1,2,3,4
pub const VIP_UDP4_ANY: u32 = 6; // 10.0.0.30:*/udp IPIP -> 1,2
pub const VIP_UDP6_ANY: u32 = 7; // [fd00::30]:*/udp IP6IP6 -> 11,12
pub const VIP_TCP4_OVER6: u32 = 8; // 10.0.0.40:80/tcp 4in6 -> 11,12
pub const VIP_EMPTY: u32 = 9; // 10.0.0.50:80/tcp, no backends

pub fn topology(conntrack_entries: u32) -> Fixture {
    build(conntrack_entries, false)
}

/// The same VIPs with backends as the daemon makes them: every (VIP, backend) its own id,
/// `vip_id * 100 + n` for backend `n` above, tagged with its VIP. Established packets then find
/// their VIP through the backend's tag (`VIP_BY_ID`), not the VIP map.
pub fn tagged_topology(conntrack_entries: u32) -> Fixture {
    build(conntrack_entries, true)
}

/// Id of backend `n` of the topology's lists in VIP `vip_id` of `tagged_topology`.
pub const fn tagged_id(vip_id: u32, n: u32) -> u32 {
    vip_id * 100 + n
}

fn build(conntrack_entries: u32, tagged: bool) -> Fixture {
    let mut f = Fixture::new(conntrack_entries);
    let all = || V4_BACKENDS.iter().chain(V6_BACKENDS.iter());
    if !tagged {
        for (id, ip) in all() {
            f.add_backend(*id, ip);
        }
    }
    // Members of VIP `vip`; in the tagged topology they are created for it.
    let w = |f: &mut Fixture, vip: u32, ids: &[u32]| {
        ids.iter()
            .map(|&n| {
                if !tagged {
                    return (n, 1);
                }
                let ip = all()
                    .find(|(i, _)| *i == n)
                    .map(|(_, ip)| *ip)
                    .expect("listed");
                f.add_backend_of(tagged_id(vip, n), ip, vip);
                (tagged_id(vip, n), 1)
            })
            .collect::<Vec<_>>()
    };
    let m = w(&mut f, VIP_TCP4, &[1, 2, 3]);
    f.add_vip(
        VIP_TCP4,
        "10.0.0.10",
        80,
        6,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        RING_SIZE_DEFAULT,
        &m,
    );
    let m = w(&mut f, VIP_UDP4_GUE, &[1, 2, 3]);
    f.add_vip(
        VIP_UDP4_GUE,
        "10.0.0.10",
        53,
        17,
        HASH_FIVE_TUPLE,
        FWD_GUE,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_TCP6, &[11, 12, 13]);
    f.add_vip(
        VIP_TCP6,
        "fd00::10",
        80,
        6,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_TCP6_GUE4, &[1, 2]);
    f.add_vip(
        VIP_TCP6_GUE4,
        "fd00::20",
        443,
        6,
        HASH_FIVE_TUPLE,
        FWD_GUE,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_L2_ANY, &[1, 2, 3, 4]);
    f.add_vip(
        VIP_L2_ANY,
        "10.0.0.20",
        0,
        6,
        HASH_SRC_IP,
        FWD_L2,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_UDP4_ANY, &[1, 2]);
    f.add_vip(
        VIP_UDP4_ANY,
        "10.0.0.30",
        0,
        17,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_UDP6_ANY, &[11, 12]);
    f.add_vip(
        VIP_UDP6_ANY,
        "fd00::30",
        0,
        17,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        SMALL_RING,
        &m,
    );
    let m = w(&mut f, VIP_TCP4_OVER6, &[11, 12]);
    f.add_vip(
        VIP_TCP4_OVER6,
        "10.0.0.40",
        80,
        6,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        SMALL_RING,
        &m,
    );
    f.add_vip(
        VIP_EMPTY,
        "10.0.0.50",
        80,
        6,
        HASH_FIVE_TUPLE,
        FWD_IPIP,
        0,
        SMALL_RING,
        &[],
    );
    f
}

/// The flow key of a frame spec, computed from the spec (not by the parser under test).
pub fn key_of(s: &Spec) -> FlowKey {
    FlowKey {
        src: s.src.into(),
        dst: s.dst.into(),
        src_port_be: s.sport.to_be(),
        dst_port_be: s.dport.to_be(),
        proto: s.proto,
        family: if s.src.is_ipv6() {
            FAMILY_V6
        } else {
            FAMILY_V4
        },
        _pad: [0; 2],
    }
}

pub fn packet_of(s: &Spec) -> Packet {
    Packet {
        key: key_of(s),
        kind: if s.rst && s.proto == 6 {
            PKT_RESET
        } else {
            PKT_NORMAL
        },
        syn: s.syn && s.proto == 6,
    }
}
