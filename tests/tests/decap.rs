//! The backend-side decap program, and two-arm output: fixtures through BPF_PROG_TEST_RUN.

use lb_common::{
    Addr,
    stats::{DECAP_DROP, DECAP_OK, DECAP_PASS},
};
use tests::{
    expect,
    fixture::{Fixture, pin_to_cpu0},
    frames::Spec,
    lb::*,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn decap(f: &mut Fixture, frame: &[u8]) -> xlb::dataplane::TestOutput {
    f.dp.test_run(lb_common::prog_names::DECAP, frame)
        .expect("test_run decap")
}

/// Every encapsulation the forwarder emits comes back out of the decap program as the original
/// frame: same L2 (MACs as the LB wrote them), original IP datagram, right ethertype.
#[test]
fn decap_restores_what_the_forwarder_encapsulated() {
    pin_to_cpu0();
    let mut f = topology(4096);
    for (_, ip) in V4_BACKENDS.iter().chain(V6_BACKENDS.iter()) {
        let a: std::net::IpAddr = ip.parse().expect("ip");
        f.dp.set_decap_addr(&Addr::from(a), 0).expect("decap addr");
    }
    let cases = [
        Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).syn(), // IPIP
        Spec::new("192.0.2.1", 5353, "10.0.0.10", 53, 17),       // GUE over v4
        Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6).syn(), // IPv6-in-IPv6
        Spec::new("2001:db8::1", 40000, "fd00::20", 443, 6).syn(), // v6 in GUE over v4
        Spec::new("192.0.2.1", 40000, "10.0.0.40", 80, 6).syn(), // 4in6
        Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6)
            .syn()
            .vlans(1), // VLAN kept
        // Jumbo frames, in several buffers on both sides.
        Spec::new("192.0.2.1", 40002, "10.0.0.10", 80, 6)
            .syn()
            .payload(8900),
        Spec::new("2001:db8::1", 40002, "fd00::20", 443, 6)
            .syn()
            .payload(8800),
    ];
    f.cfg.mtu = 9100;
    f.dp.set_config(&f.cfg).expect("config");
    for s in cases {
        let input = s.build();
        let fwd = f.run(&input);
        assert_eq!(fwd.action, 3, "{s:?}");
        let before = f.dp.decap_stats(DECAP_OK).expect("stats").packets;
        let out = decap(&mut f, &fwd.frame);
        assert_eq!(out.action, XDP_PASS, "{s:?}");
        assert_eq!(
            f.dp.decap_stats(DECAP_OK).expect("stats").packets,
            before + 1
        );
        let l3 = 14 + 4 * s.vlans as usize;
        assert_eq!(
            &out.frame[..12],
            &fwd.frame[..12],
            "MACs as the LB sent them"
        );
        assert_eq!(
            &out.frame[12..l3],
            &input[12..l3],
            "VLAN tags and inner ethertype"
        );
        assert_eq!(
            &out.frame[l3..],
            expect::datagram(&input, l3),
            "inner datagram"
        );
    }

    // Not ours: plain traffic, tunnels to another host, GUE to another port pass untouched.
    let plain = Spec::new("192.0.2.1", 40000, "10.1.0.1", 80, 6).build();
    let mut elsewhere = f
        .run(
            &Spec::new("192.0.2.1", 40001, "10.0.0.10", 80, 6)
                .syn()
                .build(),
        )
        .frame;
    elsewhere[30..34].copy_from_slice(&[10, 9, 9, 9]); // outer destination: not a decap address
    let gue = f
        .run(&Spec::new("192.0.2.2", 5353, "10.0.0.10", 53, 17).build())
        .frame;
    let mut other_port = gue.clone();
    other_port[36..38].copy_from_slice(&7000u16.to_be_bytes());
    for frame in [plain, elsewhere, other_port] {
        let before = f.dp.decap_stats(DECAP_PASS).expect("stats").packets;
        let out = decap(&mut f, &frame);
        assert_eq!((out.action, &out.frame), (XDP_PASS, &frame));
        assert_eq!(
            f.dp.decap_stats(DECAP_PASS).expect("stats").packets,
            before + 1
        );
    }
    // Ours but broken: GUE payload that is not IP.
    let mut junk = gue;
    junk[42] = 0x15;
    let before = f.dp.decap_stats(DECAP_DROP).expect("stats").packets;
    assert_eq!(decap(&mut f, &junk).action, XDP_DROP);
    assert_eq!(
        f.dp.decap_stats(DECAP_DROP).expect("stats").packets,
        before + 1
    );
}

/// A backend behind a two-arm egress port is reached with XDP_REDIRECT through the devmap, with
/// the egress MAC as source; a missing devmap slot is a counted drop.
#[test]
fn two_arm_backends_are_redirected_through_the_devmap() {
    pin_to_cpu0();
    let mut f = topology(4096);
    let mut b = f.model.backends[&1];
    b.tx_port = 1;
    b.src_mac = [0x02, 0xee, 0, 0, 0, 1];
    f.set_backend(1, b);
    f.dp.set_tx_port(1, 1).expect("devmap slot 1 -> lo");
    for (id, _) in V4_BACKENDS.iter().skip(1) {
        let mut o = f.model.backends[id];
        o.tx_port = 2; // slot 2 is never filled
        f.set_backend(*id, o);
    }
    let mut redirected = 0;
    let mut dropped = 0;
    for p in 0..64 {
        let s = Spec::new("192.0.2.9", 30000 + p, "10.0.0.10", 53, 17);
        let d = f.model.route(&packet_of(&s)).expect("route");
        let out = f.run(&s.build());
        if d.backend_id == 1 {
            assert_eq!(out.action, XDP_REDIRECT);
            let want = expect::forwarded(&s.build(), 14, &key_of(&s), &b, d.vip.fwd_mode, &f.cfg);
            assert_eq!(out.frame, want);
            redirected += 1;
        } else {
            assert_eq!(out.action, XDP_DROP, "empty devmap slot");
            dropped += 1;
        }
    }
    assert!(redirected > 0 && dropped > 0);
    assert_eq!(
        f.dp.reason_stats().expect("stats")[&lb_common::stats::Reason::DropRedirect].packets,
        dropped
    );
}
