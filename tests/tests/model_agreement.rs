//! The XDP program and the reference model agree on every packet: thousands of random flows over
//! every VIP of the fixture topology, before and after backend removal, drain and failure, idle
//! expiry and the new-flow limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::{prelude::*, strategy::ValueTree as _, test_runner::TestRunner};
use tests::{
    fixture::{Fixture, pin_to_cpu0},
    frames::Spec,
    lb::*,
};

/// (VIP address, port or None for wildcard, protocol) of the topology's VIPs.
const TARGETS: [(&str, Option<u16>, u8); 8] = [
    ("10.0.0.10", Some(80), 6),
    ("10.0.0.10", Some(53), 17),
    ("fd00::10", Some(80), 6),
    ("fd00::20", Some(443), 6),
    ("10.0.0.20", None, 6),
    ("10.0.0.30", None, 17),
    ("fd00::30", None, 17),
    ("10.0.0.40", Some(80), 6),
];

fn flow_strategy() -> impl Strategy<Value = Spec> {
    (
        0..TARGETS.len(),
        any::<u32>(),
        any::<u128>(),
        1024u16..,
        any::<u16>(),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(t, v4, v6, sport, port, syn, vlans)| {
            let (vip, vport, proto) = TARGETS[t];
            let vip: IpAddr = vip.parse().expect("vip");
            let src = if vip.is_ipv6() {
                IpAddr::V6(Ipv6Addr::from(v6))
            } else {
                IpAddr::V4(Ipv4Addr::from(v4))
            };
            let mut s = Spec::new(
                "0.0.0.0",
                sport,
                "0.0.0.0",
                vport.unwrap_or(port.max(1)),
                proto,
            );
            s.src = src;
            s.dst = vip;
            s.syn = syn && proto == 6;
            s.vlans = vlans;
            s
        })
}

fn random_flows(runner: &mut TestRunner, n: usize) -> Vec<Spec> {
    (0..n)
        .map(|_| flow_strategy().new_tree(runner).expect("flow").current())
        .collect()
}

/// The backend the kernel sent `out` to: outer destination address, or destination MAC for L2.
fn kernel_backend(f: &Fixture, out: &[u8], vlans: u8) -> u32 {
    let l3 = 14 + 4 * vlans as usize;
    let outer = if out[l3] >> 4 == 6 {
        IpAddr::from(<[u8; 16]>::try_from(&out[l3 + 24..l3 + 40]).expect("v6 dst"))
    } else {
        IpAddr::from(<[u8; 4]>::try_from(&out[l3 + 16..l3 + 20]).expect("v4 dst"))
    };
    let mac: [u8; 6] = out[0..6].try_into().expect("mac");
    let hits: Vec<u32> = f
        .model
        .backends
        .iter()
        .filter(|(_, b)| b.addr.to_ip(b.family) == outer || b.dst_mac == mac)
        .map(|(&id, _)| id)
        .collect();
    // L2 frames keep the client's inner addresses; only the MAC identifies the backend then.
    if hits.len() == 1 {
        return hits[0];
    }
    f.model
        .backends
        .iter()
        .find(|(_, b)| b.dst_mac == mac)
        .map(|(&id, _)| id)
        .expect("known backend MAC")
}

/// Run every flow through both and require agreement; returns how many packets were compared.
fn agree(f: &mut Fixture, flows: &[Spec], phase: &str) -> usize {
    for s in flows {
        let want = f.model.route(&packet_of(s));
        let out = f.run(&s.build());
        match want {
            Ok(d) => {
                assert_eq!(out.action, 3, "{phase}: kernel did not forward {s:?}");
                assert_eq!(
                    kernel_backend(f, &out.frame, s.vlans),
                    d.backend_id,
                    "{phase}: {s:?}"
                );
            }
            // A VIP unpublished on purpose: the same pass or drop in both.
            Err(r) => assert_eq!(
                out.action,
                if r.name().starts_with("pass") { 2 } else { 1 },
                "{phase}: {s:?}: {}",
                r.name()
            ),
        }
    }
    flows.len()
}

#[test]
fn kernel_and_model_agree_on_random_flows_through_backend_changes() {
    pin_to_cpu0();
    let mut f = topology(1 << 16);
    let mut runner = TestRunner::deterministic();
    let flows = random_flows(&mut runner, 2000);
    let mut total = 0;

    total += agree(&mut f, &flows, "initial");
    // Replay: tracked flows (and SYNs re-picking) must still agree.
    total += agree(&mut f, &flows, "replay");

    // Remove backend 2 from every ring (marked down as the daemon does on removal).
    f.set_members(VIP_TCP4, &[(1, 1), (3, 1)]);
    f.set_members(VIP_UDP4_GUE, &[(1, 1), (3, 1)]);
    f.set_members(VIP_TCP6_GUE4, &[(1, 1)]);
    f.set_members(VIP_L2_ANY, &[(1, 1), (3, 1), (4, 1)]);
    f.set_members(VIP_UDP4_ANY, &[(1, 1)]);
    f.set_down(2, true);
    total += agree(&mut f, &flows, "backend 2 removed");

    // Drain backend 12 (weight 0): tracked flows stay, the ring forgets it.
    f.set_members(VIP_TCP6, &[(11, 1), (12, 0), (13, 1)]);
    f.set_members(VIP_UDP6_ANY, &[(11, 1), (12, 0)]);
    f.set_members(VIP_TCP4_OVER6, &[(11, 1), (12, 0)]);
    total += agree(&mut f, &flows, "backend 12 drained");

    // Backend 11 fails while still in the rings' view of the model: down flag only.
    f.set_members(VIP_TCP6, &[(12, 0), (13, 1)]);
    f.set_members(VIP_UDP6_ANY, &[(12, 1)]);
    f.set_members(VIP_TCP4_OVER6, &[(12, 1)]);
    f.set_down(11, true);
    total += agree(&mut f, &flows, "backend 11 down");

    // Fresh flows after all the changes.
    let fresh = random_flows(&mut runner, 2000);
    total += agree(&mut f, &fresh, "fresh flows");

    // Idle timeouts: 40 s later every UDP entry has expired (30 s), no TCP one (3 h); after a
    // ring change, expired flows are re-picked in both.
    f.set_clock(1_000_000_000_000);
    total += agree(&mut f, &fresh, "stamped");
    f.set_members(VIP_UDP4_GUE, &[(1, 1), (3, 1), (4, 1)]);
    f.set_members(VIP_UDP4_ANY, &[(1, 1), (4, 1)]);
    f.set_clock(1_000_000_000_000 + 40_000_000_000);
    total += agree(&mut f, &fresh, "UDP expired");

    // The new-flow limit: flow starts above it go untracked, in the same order in both.
    f.set_new_flow_limit(100);
    let flood = random_flows(&mut runner, 2000);
    total += agree(&mut f, &flood, "above the new-flow limit");
    // A ring change tells tracked flows (they stay) from deferred ones (they follow the ring).
    f.set_members(VIP_TCP4, &[(1, 1), (3, 1), (4, 1)]);
    f.set_members(VIP_L2_ANY, &[(1, 1), (3, 1)]);
    f.set_members(VIP_UDP4_GUE, &[(3, 1), (4, 1)]);
    let before = f.dp.vip_stats(VIP_TCP4).expect("stats").deferred;
    total += agree(&mut f, &flood, "replay above the limit, ring changed");
    assert!(before > 0, "the limit deferred flow starts");
    println!("kernel and model agreed on {total} packets");
    assert!(total >= 10_000);
}

/// The backends as the daemon writes them (an id per VIP and backend, tagged with the VIP):
/// established packets take the one-lookup path through `VIP_BY_ID`. The kernel and the model
/// agree through failover, drain, expiry, a VIP removed and its id reused for another address,
/// and a port VIP added over a wildcard that tracked flows are on.
#[test]
fn kernel_and_model_agree_when_backends_carry_their_vip() {
    pin_to_cpu0();
    let mut f = tagged_topology(1 << 16);
    let id = tagged_id;
    let mut runner = TestRunner::deterministic();
    let flows = random_flows(&mut runner, 2000);
    let mut total = agree(&mut f, &flows, "initial");
    total += agree(&mut f, &flows, "replay");

    // Backend 2 of 10.0.0.10:80 dies: its flows fail over, the others stay.
    f.set_members(VIP_TCP4, &[(id(VIP_TCP4, 1), 1), (id(VIP_TCP4, 3), 1)]);
    f.set_down(id(VIP_TCP4, 2), true);
    // Backend 12 of [fd00::10]:80 drains: tracked flows stay.
    f.set_members(
        VIP_TCP6,
        &[
            (id(VIP_TCP6, 11), 1),
            (id(VIP_TCP6, 12), 0),
            (id(VIP_TCP6, 13), 1),
        ],
    );
    total += agree(&mut f, &flows, "failover and drain");

    // UDP entries expire (30 s), TCP ones do not.
    f.set_clock(1_000_000_000_000);
    total += agree(&mut f, &flows, "stamped");
    f.set_members(VIP_UDP4_ANY, &[(id(VIP_UDP4_ANY, 2), 1)]);
    f.set_clock(1_000_000_000_000 + 40_000_000_000);
    total += agree(&mut f, &flows, "UDP expired");

    // 10.0.0.40:80 goes away and its id (with its backends' ids and tags) is handed to a new
    // VIP on another address: the old flows must not follow the id.
    let old = lb_common::VipKey {
        addr: lb_common::Addr::from("10.0.0.40".parse::<IpAddr>().expect("ip")),
        port_be: 80u16.to_be(),
        proto: 6,
        family: lb_common::FAMILY_V4,
    };
    f.remove_vip(&old);
    total += agree(&mut f, &flows, "VIP removed");
    f.add_vip(
        VIP_TCP4_OVER6,
        "10.0.0.60",
        80,
        6,
        lb_common::HASH_FIVE_TUPLE,
        lb_common::FWD_IPIP,
        0,
        SMALL_RING,
        &[(id(VIP_TCP4_OVER6, 11), 1), (id(VIP_TCP4_OVER6, 12), 1)],
    );
    total += agree(&mut f, &flows, "VIP id reused");

    // A port VIP over the UDP wildcard 10.0.0.30: flows tracked on the wildcard keep their
    // backend; new flows to that port take the new VIP.
    let port = flows
        .iter()
        .find(|s| s.dst.to_string() == "10.0.0.30")
        .map(|s| s.dport)
        .expect("a flow to the wildcard");
    f.add_backend_of(id(10, 4), "10.1.0.4", 10);
    f.add_vip(
        10,
        "10.0.0.30",
        port,
        17,
        lb_common::HASH_FIVE_TUPLE,
        lb_common::FWD_IPIP,
        0,
        SMALL_RING,
        &[(id(10, 4), 1)],
    );
    total += agree(&mut f, &flows, "port VIP over a wildcard");
    let fresh = random_flows(&mut runner, 2000);
    total += agree(&mut f, &fresh, "fresh flows");
    println!("kernel and model agreed on {total} packets");
    assert!(total >= 10_000);
}
