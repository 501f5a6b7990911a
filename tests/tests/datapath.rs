//! Data-plane fixtures through BPF_PROG_TEST_RUN (Katran's approach): each case is an input frame
//! built with etherparse, the expected XDP action, the exact expected output bytes and counter
//! deltas. Maps are programmed through the real `dataplane` module; the expected backend comes from
//! the reference model; the expected bytes from `tests::expect`, an independent encoder.

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, PacketBuilder,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};
use lb_common::{
    decision::{PKT_FRAGMENT, PKT_ICMP_ERROR, Packet, Pick},
    stats::Reason,
};
use tests::{
    expect,
    fixture::{Fixture, pin_to_cpu, pin_to_cpu0},
    frames::{CLIENT_MAC, LB_MAC, Spec, l3_offset},
    lb::*,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn setup() -> Fixture {
    pin_to_cpu0();
    topology(4096)
}

fn reason_count(f: &Fixture, r: Reason) -> u64 {
    f.dp.reason_stats().expect("reason stats")[&r].packets
}

/// Run `frame` and require exactly one increment of `reason`.
fn run_counted(f: &mut Fixture, frame: &[u8], r: Reason) -> xlb::dataplane::TestOutput {
    let before = reason_count(f, r);
    let out = f.run(frame);
    assert_eq!(
        reason_count(f, r),
        before + 1,
        "counter {} did not move by one",
        r.name()
    );
    out
}

/// Forward `pkt` (described by the model input `model_pkt`) and compare with the model's backend
/// and the independently encoded frame. Returns the backend id.
fn expect_forward(f: &mut Fixture, frame: &[u8], vlans: u8, model_pkt: &Packet) -> u32 {
    let d = f
        .model
        .route(model_pkt)
        .expect("model forwards this packet");
    let out = f.run(frame);
    assert_eq!(out.action, XDP_TX, "action");
    let b = f.model.backends[&d.backend_id];
    let want = expect::forwarded(
        frame,
        l3_offset(vlans),
        &model_pkt.key,
        &b,
        d.vip.fwd_mode,
        &f.cfg,
    );
    assert_eq!(
        out.frame, want,
        "output bytes differ from the expected encapsulation"
    );
    d.backend_id
}

fn forward(f: &mut Fixture, s: &Spec) -> u32 {
    expect_forward(f, &s.build(), s.vlans, &packet_of(s))
}

#[test]
fn every_forwarding_mode_and_family_emits_exact_bytes() {
    let mut f = setup();
    let cases = [
        (
            "tcp4 syn, IPIP",
            Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).syn(),
        ),
        (
            "tcp4 ack, untracked, IPIP",
            Spec::new("192.0.2.1", 40001, "10.0.0.10", 80, 6),
        ),
        (
            "udp4, GUE",
            Spec::new("192.0.2.1", 5353, "10.0.0.10", 53, 17),
        ),
        (
            "udp4 zero-length payload, GUE",
            Spec::new("192.0.2.9", 5353, "10.0.0.10", 53, 17).payload(0),
        ),
        (
            "tcp6 syn, IPv6-in-IPv6",
            Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6).syn(),
        ),
        (
            "tcp6 to IPv4 backends, GUE",
            Spec::new("2001:db8::1", 40000, "fd00::20", 443, 6).syn(),
        ),
        (
            "tcp4 to IPv6 backends, 4in6",
            Spec::new("192.0.2.1", 40000, "10.0.0.40", 80, 6).syn(),
        ),
        (
            "tcp4 any port, L2 DSR",
            Spec::new("192.0.2.7", 1234, "10.0.0.20", 8443, 6).syn(),
        ),
        (
            "udp4 wildcard VIP",
            Spec::new("192.0.2.1", 1000, "10.0.0.30", 9999, 17),
        ),
        (
            "udp6 wildcard VIP",
            Spec::new("2001:db8::5", 1000, "fd00::30", 9999, 17),
        ),
        (
            "one VLAN tag",
            Spec::new("192.0.2.2", 40000, "10.0.0.10", 80, 6)
                .syn()
                .vlans(1),
        ),
        (
            "802.1ad + 802.1Q",
            Spec::new("192.0.2.3", 40000, "10.0.0.10", 80, 6)
                .syn()
                .vlans(2),
        ),
        (
            "double tag, IPv6, GUE",
            Spec::new("2001:db8::3", 40000, "fd00::20", 443, 6).vlans(2),
        ),
        (
            "IPv4 options are skipped",
            Spec::new("192.0.2.4", 40000, "10.0.0.10", 80, 6)
                .syn()
                .options(&[1, 1, 1, 1, 0x94, 4, 0, 0]),
        ),
        (
            "40 bytes of options",
            Spec::new("192.0.2.4", 40001, "10.0.0.10", 80, 6).options(&[1; 40]),
        ),
        (
            "no DF",
            Spec::new("192.0.2.5", 40000, "10.0.0.10", 80, 6).df(false),
        ),
    ];
    for (name, spec) in cases {
        let before = f.dp.vip_stats(vip_of(&f, &spec)).expect("stats").packets;
        let id = forward(&mut f, &spec);
        assert_eq!(
            f.dp.vip_stats(vip_of(&f, &spec)).expect("stats").packets,
            before + 1,
            "{name}: VIP counter"
        );
        assert!(id != 0, "{name}");
    }
}

fn vip_of(f: &Fixture, s: &Spec) -> u32 {
    f.model
        .explain(&packet_of(s))
        .expect("a VIP packet")
        .vip
        .vip_id
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() {
    let mut f = setup();
    let cases = [
        (
            "other address",
            Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6).build(),
            Reason::PassNotVip,
        ),
        (
            "VIP address, other port",
            Spec::new("192.0.2.1", 40000, "10.0.0.10", 81, 6).build(),
            Reason::PassNotVip,
        ),
        (
            "VIP port, other protocol",
            Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 17).build(),
            Reason::PassNotVip,
        ),
        (
            "IPv6 other address",
            Spec::new("2001:db8::1", 1, "fd00::99", 80, 6).build(),
            Reason::PassNotVip,
        ),
        (
            "VLAN, other address",
            Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6)
                .vlans(2)
                .build(),
            Reason::PassNotVip,
        ),
    ];
    for (name, frame, reason) in cases {
        let out = run_counted(&mut f, &frame, reason);
        assert_eq!(out.action, XDP_PASS, "{name}");
        assert_eq!(out.frame, frame, "{name}: a passed frame must be untouched");
    }
    // ARP and an unknown ethertype.
    for ethertype in [0x0806u16, 0x88b5] {
        let mut frame = vec![0u8; 60];
        frame[..6].copy_from_slice(&LB_MAC);
        frame[6..12].copy_from_slice(&CLIENT_MAC);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        let out = run_counted(&mut f, &frame, Reason::PassNotIp);
        assert_eq!((out.action, &out.frame), (XDP_PASS, &frame));
    }
    // ICMP echo to a VIP is not ours to answer.
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 0, 2, 1], [10, 0, 0, 10], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, &[0; 8])
        .expect("echo");
    assert_eq!(
        run_counted(&mut f, &echo, Reason::PassIcmp).action,
        XDP_PASS
    );
}

#[test]
fn malformed_frames_are_counted_drops_at_every_truncation() {
    let mut f = setup();
    let frames = [
        Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).build(),
        Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6).build(),
        Spec::new("192.0.2.1", 40000, "10.0.0.10", 53, 17)
            .vlans(2)
            .build(),
        Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6)
            .options(&[1; 12])
            .build(),
    ];
    for full in &frames {
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header (EINVAL).
        for len in 14..full.len() {
            let out = run_counted(&mut f, &full[..len], Reason::DropMalformed);
            assert_eq!(out.action, XDP_DROP, "truncated to {len} of {}", full.len());
        }
    }
    let good = Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).build();
    let mutate = |at: usize, v: u8| {
        let mut m = good.clone();
        m[at] = v;
        m
    };
    let bad = [
        ("IHL 4", mutate(14, 0x44)),
        ("IHL 0", mutate(14, 0x40)),
        ("version 6 in an IPv4 ethertype", mutate(14, 0x65)),
        ("total length below the header", mutate(17, 10)),
        ("total length beyond the frame", mutate(16, 0x05)),
        ("IHL beyond the frame", mutate(14, 0x4f)),
        // The frame holds a whole TCP header, but the datagram ends 10 bytes into it: the
        // rest is padding or garbage, never a flow (tot_len 30 = 20 of IP + 10).
        ("TCP header beyond the total length", {
            let mut m = mutate(17, 30);
            m[16] = 0;
            m
        }),
        ("UDP header beyond the total length", {
            let mut m = Spec::new("192.0.2.1", 40000, "10.0.0.10", 53, 17).build();
            m[16..18].copy_from_slice(&24u16.to_be_bytes());
            m
        }),
    ];
    for (name, frame) in bad {
        let out = run_counted(&mut f, &frame, Reason::DropMalformed);
        assert_eq!(out.action, XDP_DROP, "{name}");
    }
    let v6 = Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6).build();
    let mut long = v6.clone();
    long[18..20].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(
        run_counted(&mut f, &long, Reason::DropMalformed).action,
        XDP_DROP,
        "v6 payload length"
    );
    let mut short = v6.clone();
    short[18..20].copy_from_slice(&12u16.to_be_bytes());
    assert_eq!(
        run_counted(&mut f, &short, Reason::DropMalformed).action,
        XDP_DROP,
        "v6 payload shorter than the TCP header"
    );
}

#[test]
fn empty_ring_is_a_counted_drop() {
    let mut f = setup();
    let frame = Spec::new("192.0.2.1", 40000, "10.0.0.50", 80, 6)
        .syn()
        .build();
    assert_eq!(
        run_counted(&mut f, &frame, Reason::DropNoBackend).action,
        XDP_DROP
    );
}

/// IPv4 fragment frames of one datagram: first (with ports) and a later one (without).
fn v4_fragments(src: [u8; 4], dst: [u8; 4], id: u16) -> [Vec<u8>; 2] {
    let mk = |offset_units: u16, more: bool, with_ports: bool| {
        let mut ip =
            etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, dst).expect("hdr");
        ip.identification = id;
        ip.more_fragments = more;
        ip.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).expect("offset");
        let payload: Vec<u8> = if with_ports {
            [vec![0x13, 0x88, 0x27, 0x0f, 0, 40, 0, 0], vec![7; 24]].concat()
        } else {
            vec![7; 16]
        };
        ip.set_payload_len(payload.len()).expect("len");
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = Vec::new();
        etherparse::Ethernet2Header {
            source: CLIENT_MAC,
            destination: LB_MAC,
            ether_type: etherparse::EtherType::IPV4,
        }
        .write(&mut out)
        .expect("eth");
        ip.write(&mut out).expect("ip");
        out.extend_from_slice(&payload);
        out
    };
    [mk(0, true, true), mk(4, false, false)]
}

fn fragment_packet(src: &str, dst: &str) -> Packet {
    let s = Spec::new(src, 0, dst, 0, 17);
    Packet {
        key: key_of(&s),
        kind: PKT_FRAGMENT,
        syn: false,
    }
}

#[test]
fn all_fragments_of_a_datagram_reach_one_backend() {
    let mut f = setup();
    // Many datagrams: each one's fragments agree, and datagrams spread by address pair.
    let mut seen = std::collections::HashSet::new();
    for i in 0..64u8 {
        let src = [192, 0, 2, i];
        let model = fragment_packet(&format!("192.0.2.{i}"), "10.0.0.30");
        let [first, later] = v4_fragments(src, [10, 0, 0, 30], 7 + i as u16);
        let before = reason_count(&f, Reason::FwdFragment);
        let a = expect_forward(&mut f, &first, 0, &model);
        let b = expect_forward(&mut f, &later, 0, &model);
        assert_eq!(a, b, "fragments of datagram {i} split across backends");
        assert_eq!(reason_count(&f, Reason::FwdFragment), before + 2);
        seen.insert(a);
    }
    assert_eq!(
        seen.len(),
        2,
        "fragments of different datagrams use both backends"
    );
    // No wildcard VIP for the address: fragments go to the kernel, counted.
    let [first, later] = v4_fragments([192, 0, 2, 1], [10, 0, 0, 10], 9);
    for frame in [first, later] {
        let out = run_counted(&mut f, &frame, Reason::PassFragment);
        assert_eq!((out.action, &out.frame), (XDP_PASS, &frame));
    }
}

/// An IPv6 UDP datagram to `dst` split behind a fragment header, optionally behind hop-by-hop and
/// destination-options headers.
fn v6_fragment(dst: [u8; 16], offset_units: u16, more: bool, ext: bool) -> Vec<u8> {
    let mut l4: Vec<u8> = if offset_units == 0 {
        vec![0x13, 0x88, 0x27, 0x0f, 0, 40, 0, 0]
    } else {
        vec![]
    };
    l4.extend_from_slice(&[9; 16]);
    let mut exts = Vec::new();
    let first_next = if ext {
        exts.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop -> dest-opts, PadN
        exts.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // dest-opts -> fragment
        0
    } else {
        44
    };
    let off = (offset_units << 3) | more as u16;
    exts.extend_from_slice(&[17, 0]);
    exts.extend_from_slice(&off.to_be_bytes());
    exts.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    let ip = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: (exts.len() + l4.len()) as u16,
        next_header: first_next.into(),
        hop_limit: 64,
        source: "2001:db8::77"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
        destination: dst,
    };
    let mut out = Vec::new();
    etherparse::Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut out)
    .expect("eth");
    ip.write(&mut out).expect("ip");
    out.extend_from_slice(&exts);
    out.extend_from_slice(&l4);
    out
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    let mut f = setup();
    let vip: std::net::Ipv6Addr = "fd00::30".parse().expect("v6");
    let model = fragment_packet("2001:db8::77", "fd00::30");
    let ids: Vec<u32> = [
        (0, true, false),
        (3, false, false),
        (0, true, true),
        (3, false, true),
    ]
    .iter()
    .map(|&(o, m, e)| expect_forward(&mut f, &v6_fragment(vip.octets(), o, m, e), 0, &model))
    .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "IPv6 fragments split: {ids:?}"
    );

    // Hop-by-hop + destination options before UDP, no fragment: forwarded on the full 5-tuple.
    let mut frame = v6_fragment(vip.octets(), 0, false, true);
    // Turn the fragment header into a second destination-options header (atomic, not a fragment).
    let frag_at = 14 + 40 + 16;
    frame[frag_at - 8] = 60;
    frame[frag_at..frag_at + 8].copy_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    let s = Spec::new("2001:db8::77", 5000, "fd00::30", 9999, 17);
    expect_forward(&mut f, &frame, 0, &packet_of(&s));
}

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let mut f = setup();
    // The client's flow first, so the model knows its backend.
    let client = Spec::new("192.0.2.33", 41000, "10.0.0.10", 80, 6).syn();
    let owner = forward(&mut f, &client);
    // A router on the return path reports "fragmentation needed" for the backend's reply
    // (VIP:80 -> client), addressed to the VIP.
    let reply = Spec::new("10.0.0.10", 80, "192.0.2.33", 41000, 6).build();
    let quoted = &reply[14..14 + 28];
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([198, 51, 100, 1], [10, 0, 0, 10], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut icmp, quoted)
        .expect("icmp");
    let pkt = Packet {
        kind: PKT_ICMP_ERROR,
        ..packet_of(&Spec::new("192.0.2.33", 41000, "10.0.0.10", 80, 6))
    };
    let before = reason_count(&f, Reason::FwdIcmp);
    assert_eq!(
        expect_forward(&mut f, &icmp, 0, &pkt),
        owner,
        "ICMP error went elsewhere than its flow"
    );
    assert_eq!(reason_count(&f, Reason::FwdIcmp), before + 1);

    // IPv6: packet too big about the reply of an IPv6 VIP flow.
    let client6 = Spec::new("2001:db8::33", 41000, "fd00::10", 80, 6).syn();
    let owner6 = forward(&mut f, &client6);
    let reply6 = Spec::new("fd00::10", 80, "2001:db8::33", 41000, 6).build();
    let mut icmp6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(
            "2001:db8:ffff::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets(),
            "fd00::10"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets(),
            64,
        )
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
        .write(&mut icmp6, &reply6[14..14 + 48])
        .expect("icmp6");
    let pkt6 = Packet {
        kind: PKT_ICMP_ERROR,
        ..packet_of(&Spec::new("2001:db8::33", 41000, "fd00::10", 80, 6))
    };
    assert_eq!(expect_forward(&mut f, &icmp6, 0, &pkt6), owner6);

    // Destination unreachable (v6) for a flow that is not a VIP's: passed.
    let other = Spec::new("fd00::99", 80, "2001:db8::33", 41000, 6).build();
    let mut icmp6b = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(
            [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99],
            64,
        )
        .icmpv6(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Port,
        ))
        .write(&mut icmp6b, &other[14..14 + 48])
        .expect("icmp6");
    assert_eq!(
        run_counted(&mut f, &icmp6b, Reason::PassIcmp).action,
        XDP_PASS
    );
}

/// The forwarder's ICMP fragmentation-needed answer to `frame` (untagged IPv4), encoded
/// independently: quoting 68 bytes of the datagram, from `vip` to `client`.
fn fragmentation_needed(frame: &[u8], vip: [u8; 4], client: [u8; 4], mtu: u16) -> Vec<u8> {
    let mut want = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv4(vip, client, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ))
        .write(&mut want, &frame[14..14 + 68])
        .expect("icmp");
    // etherparse sets DF and a fresh id on the reply header; ours has neither: compare after
    // normalising those two fields and the header checksum they affect.
    let mut ip = etherparse::Ipv4Header::from_slice(&want[14..])
        .expect("reply ip")
        .0;
    ip.dont_fragment = false;
    ip.identification = 0;
    ip.header_checksum = ip.calc_header_checksum();
    want.splice(14..34, ip.to_bytes());
    want
}

#[test]
fn too_big_after_encapsulation_answers_or_drops() {
    let mut f = setup();
    // 20 bytes of IPIP overhead: a 1481-byte datagram no longer fits a 1500 MTU.
    let big = Spec::new("192.0.2.40", 42000, "10.0.0.10", 80, 6).payload(1441);
    let frame = big.build();
    let out = run_counted(&mut f, &frame, Reason::TxTooBig);
    assert_eq!(out.action, XDP_TX);
    let want = fragmentation_needed(&frame, [10, 0, 0, 10], [192, 0, 2, 40], 1480);
    assert_eq!(out.frame, want, "ICMP fragmentation-needed reply");
    let icmp = Icmpv4Header::from_slice(&out.frame[34..]).expect("icmp").0;
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type.calc_checksum(&out.frame[42..]),
        "ICMP checksum"
    );

    // The same size without DF cannot be answered: counted drop.
    let frame = big.clone().df(false).build();
    assert_eq!(
        run_counted(&mut f, &frame, Reason::DropTooBig).action,
        XDP_DROP
    );

    // A datagram that fits exactly is forwarded.
    forward(
        &mut f,
        &Spec::new("192.0.2.40", 42001, "10.0.0.10", 80, 6).payload(1440),
    );

    // IPv6 (40 bytes of overhead): packet too big, always.
    let big6 = Spec::new("2001:db8::40", 42000, "fd00::10", 80, 6).payload(1401);
    let frame = big6.build();
    let out = run_counted(&mut f, &frame, Reason::TxTooBig);
    assert_eq!(out.action, XDP_TX);
    let vip: std::net::Ipv6Addr = "fd00::10".parse().expect("v6");
    let client: std::net::Ipv6Addr = "2001:db8::40".parse().expect("v6");
    let mut want = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv6(vip.octets(), client.octets(), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1460 })
        .write(&mut want, &frame[14..14 + 128])
        .expect("icmp6");
    assert_eq!(out.frame, want, "ICMPv6 packet-too-big reply");
    let h = Icmpv6Header::from_slice(&out.frame[54..]).expect("icmp6").0;
    assert_eq!(
        h.checksum,
        h.icmp_type
            .calc_checksum(vip.octets(), client.octets(), &out.frame[62..])
            .expect("csum"),
        "ICMPv6 checksum"
    );
    forward(
        &mut f,
        &Spec::new("2001:db8::40", 42001, "fd00::10", 80, 6).payload(1400),
    );
}

#[test]
fn conntrack_keeps_flows_through_ring_changes_and_fails_over_dead_backends() {
    let mut f = setup();
    let vip = VIP_UDP4_GUE;
    let flows: Vec<Spec> = (0..300)
        .map(|p| Spec::new("192.0.2.50", 20000 + p, "10.0.0.10", 53, 17))
        .collect();
    let first: Vec<u32> = flows.iter().map(|s| forward(&mut f, s)).collect();

    // Adding backend 4 changes ring slots, yet every tracked flow stays where it is.
    f.set_members(vip, &[(1, 1), (2, 1), (3, 1), (4, 1)]);
    let moved_in_ring = flows
        .iter()
        .zip(&first)
        .filter(|(s, b)| {
            let mut m = f.model.clone();
            m.conntrack.clear();
            m.route(&packet_of(s)).expect("route").backend_id != **b
        })
        .count();
    assert!(
        moved_in_ring > 30,
        "the ring change must move some untracked flows ({moved_in_ring})"
    );
    for (s, b) in flows.iter().zip(&first) {
        assert_eq!(
            forward(&mut f, s),
            *b,
            "tracked flow moved when a backend was added"
        );
    }

    // Drain backend 1 (weight 0): its tracked flows continue, new flows never get it.
    f.set_members(vip, &[(1, 0), (2, 1), (3, 1), (4, 1)]);
    for (s, b) in flows.iter().zip(&first) {
        assert_eq!(forward(&mut f, s), *b, "drain moved an established flow");
    }
    for p in 0..300 {
        let fresh = Spec::new("192.0.2.51", 30000 + p, "10.0.0.10", 53, 17);
        assert_ne!(
            forward(&mut f, &fresh),
            1,
            "a drained backend received a new flow"
        );
    }

    // Backend 2 goes down: its tracked flows are re-picked at once and stay on the new pick.
    f.set_members(vip, &[(1, 0), (3, 1), (4, 1)]);
    f.set_down(2, true);
    let fo_before = f.dp.vip_stats(vip).expect("stats").failovers;
    let mut failed_over = 0;
    for (s, b) in flows.iter().zip(&first) {
        let now = forward(&mut f, s);
        if *b == 2 {
            failed_over += 1;
            assert!(now != 2, "flow still sent to a down backend");
            assert_eq!(
                f.model.explain(&packet_of(s)).expect("route").pick,
                Pick::Tracked,
                "entry rewritten"
            );
            assert_eq!(forward(&mut f, s), now, "failed-over flow moved again");
        } else {
            assert_eq!(now, *b, "a flow on a healthy backend moved");
        }
    }
    assert!(failed_over > 0);
    assert_eq!(
        f.dp.vip_stats(vip).expect("stats").failovers - fo_before,
        failed_over
    );
}

#[test]
fn a_reused_backend_id_never_carries_another_vips_flows() {
    let mut f = setup();
    let vip = VIP_UDP4_GUE;
    let tagged = |ip: &str, vip_id: u32| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        lb_common::Backend {
            addr: lb_common::Addr::from(ip),
            dst_mac: [0x02, 0xbe, 0, 0, 0, 0x20],
            family: lb_common::FAMILY_V4,
            vip: lb_common::Backend::vip_tag(vip_id),
            ..Default::default()
        }
    };
    f.set_backend(20, tagged("10.1.0.20", vip));
    f.set_backend(21, tagged("10.1.0.21", vip));
    f.set_members(vip, &[(20, 1), (21, 1)]);
    let flows: Vec<Spec> = (0..64)
        .map(|p| Spec::new("192.0.2.70", 21000 + p, "10.0.0.10", 53, 17))
        .collect();
    let first: Vec<u32> = flows.iter().map(|s| forward(&mut f, s)).collect();
    assert!(first.contains(&20) && first.contains(&21));

    // Id 20 leaves this VIP and, much later, is handed to another VIP's new member, while
    // this VIP's flows are still tracked on it.
    f.set_backend(22, tagged("10.1.0.22", vip));
    f.set_members(vip, &[(21, 1), (22, 1)]);
    f.set_backend(20, tagged("10.9.9.9", VIP_TCP4));
    let stats = f.dp.vip_stats(vip).expect("stats");
    let mut repicked = 0;
    for (s, b) in flows.iter().zip(&first) {
        let now = forward(&mut f, s);
        if *b == 20 {
            repicked += 1;
            assert_ne!(now, 20, "a flow followed its id to another VIP's backend");
            assert_eq!(forward(&mut f, s), now, "the re-picked flow stays");
        } else {
            assert_eq!(now, *b, "a flow on a live backend moved");
        }
    }
    let after = f.dp.vip_stats(vip).expect("stats");
    assert_eq!(
        after.failovers, stats.failovers,
        "not a failover: a new flow"
    );
    assert_eq!(after.new_flows - stats.new_flows, repicked);

    // An entry written before the tag existed (0) is not checked: an upgrade moves nothing.
    f.set_backend(
        21,
        lb_common::Backend {
            vip: 0,
            ..tagged("10.1.0.21", vip)
        },
    );
    for (s, _) in flows.iter().zip(&first).filter(|(_, b)| **b == 21) {
        assert_eq!(forward(&mut f, s), 21);
    }
}

#[test]
fn the_vip_address_filter_is_consulted_and_keeps_the_pass_reasons() {
    let mut f = setup();
    let syn = Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6)
        .syn()
        .build();
    // Fragments and plain packets to a non-VIP address: the reasons of the full lookup.
    for frame in v4_fragments([192, 0, 2, 1], [10, 0, 0, 99], 7) {
        assert_eq!(
            run_counted(&mut f, &frame, Reason::PassFragment).action,
            XDP_PASS
        );
    }
    let other = Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6).build();
    assert_eq!(
        run_counted(&mut f, &other, Reason::PassNotVip).action,
        XDP_PASS
    );
    // An address that shares the VIP's filter bit (10.1.0.11 against 10.0.0.10) is looked up
    // and passed all the same.
    let vip_bit = lb_common::Addr::from(std::net::IpAddr::from([10, 0, 0, 10])).filter_bit();
    let twin = lb_common::Addr::from(std::net::IpAddr::from([10, 1, 0, 11]));
    assert_eq!(twin.filter_bit(), vip_bit);
    let collide = Spec::new("192.0.2.1", 40000, "10.1.0.11", 80, 6).build();
    assert_eq!(
        run_counted(&mut f, &collide, Reason::PassNotVip).action,
        XDP_PASS
    );
    // The filter is what the forwarder consults: emptied, even the VIP passes...
    let zeros = vec![0u32; lb_common::VIP_FILTER_WORDS as usize];
    f.dp.set_vip_filter(&zeros, &[]).expect("filter");
    assert_eq!(
        run_counted(&mut f, &syn, Reason::PassNotVip).action,
        XDP_PASS
    );
    // ...unless the daemon's flag is off, and then every packet is looked up.
    let mut cfg = f.cfg;
    cfg.flags &= !lb_common::CFG_F_VIP_FILTER;
    f.dp.set_config(&cfg).expect("config");
    assert_eq!(f.run(&syn).action, XDP_TX);
}

#[test]
fn syn_takes_the_ring_even_when_a_stale_entry_exists() {
    let mut f = setup();
    let s = Spec::new("192.0.2.60", 50000, "10.0.0.10", 80, 6).syn();
    let b = forward(&mut f, &s);
    // Re-point the flow's entry at another backend behind the model's back is not possible, so
    // make the ring disagree instead: remove the tracked backend from the ring (not down).
    ring_without(&mut f, b);
    let ack = s.ack();
    assert_eq!(
        forward(&mut f, &ack),
        b,
        "established flow keeps its (drained) backend"
    );
    let again = forward(&mut f, &s);
    assert_ne!(
        again, b,
        "a new SYN on the same 5-tuple must follow the ring"
    );
    assert_eq!(
        forward(&mut f, &ack),
        again,
        "and the entry now names the new backend"
    );
}

#[test]
fn flows_are_stamped_with_the_daemons_clock() {
    let mut f = setup();
    let s = Spec::new("192.0.2.71", 50002, "10.0.0.10", 80, 6).syn();
    let key = key_of(&s);
    let stamp = |f: &Fixture| {
        f.dp.flow(&key)
            .expect("flow")
            .expect("tracked")
            .last_seen_ns
    };
    f.set_clock(7_000_000_000);
    forward(&mut f, &s);
    assert_eq!(stamp(&f), 7_000_000_000, "a new flow takes the clock");
    f.set_clock(9_000_000_000);
    forward(&mut f, &s.ack());
    assert_eq!(stamp(&f), 9_000_000_000, "a tracked packet refreshes it");
}

/// `xlb_insert`, the bench's reference for new flows, writes the entry the forwarder would for
/// the same frame (same map, key and stamp), with backend 1 and nothing else.
#[test]
fn the_bench_insert_reference_tracks_as_the_forwarder_does() {
    let mut f = setup();
    f.set_clock(5_000_000_000);
    let s = Spec::new("192.0.2.72", 50005, "10.0.0.10", 80, 6).syn();
    let key = key_of(&s);
    let out =
        f.dp.test_run(lb_common::prog_names::INSERT, &s.build())
            .expect("test_run");
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(
        f.dp.flow(&key).expect("flow"),
        Some(lb_common::FlowState::new(1, 5_000_000_000))
    );
    f.flush();
    let backend = forward(&mut f, &s);
    let tracked = f.dp.flow(&key).expect("flow").expect("tracked");
    assert_eq!(
        (tracked.backend_id, tracked.last_seen_ns),
        (backend, 5_000_000_000)
    );
}

/// IPv4 and IPv6 flows have a table each, sized by `conntrack_entries` and
/// `conntrack_entries_v6` (which defaults to the first).
#[test]
fn each_address_family_has_its_own_conntrack_capacity() {
    use xlb::dataplane::{Dataplane, LoadOptions};
    let load = |v6| {
        Dataplane::load(&LoadOptions {
            conntrack_entries: 2048,
            conntrack_entries_v6: v6,
            ..LoadOptions::default()
        })
        .expect("load")
    };
    let dp = load(Some(256));
    assert_eq!(dp.conntrack_capacity().expect("v4"), 2048);
    assert_eq!(dp.conntrack_capacity_v6().expect("v6"), 256);
    let dp = load(None);
    assert_eq!(dp.conntrack_capacity_v6().expect("v6"), 2048);
}

#[test]
fn an_entry_idle_past_its_timeout_is_a_new_flow() {
    let mut f = setup();
    // UDP (30 s) and TCP (3 h) VIPs, a flow each, stamped at 1000 s.
    let udp = Spec::new("192.0.2.80", 50003, "10.0.0.10", 53, 17);
    let tcp = Spec::new("192.0.2.80", 50004, "10.0.0.10", 80, 6).syn();
    f.set_clock(1_000_000_000_000);
    let (bu, bt) = (forward(&mut f, &udp), forward(&mut f, &tcp));
    // Both rings lose the tracked backends (drained, not down): only the entries keep them.
    let others_u: Vec<(u32, u32)> = [1, 2, 3]
        .iter()
        .filter(|&&i| i != bu)
        .map(|&i| (i, 1))
        .collect();
    f.set_members(VIP_UDP4_GUE, &others_u);
    ring_without(&mut f, bt);
    let stats = |f: &Fixture| f.dp.vip_stats(VIP_UDP4_GUE).expect("stats").expired;
    let before = stats(&f);
    f.set_clock(1_000_000_000_000 + 29_000_000_000);
    assert_eq!(forward(&mut f, &udp), bu, "idle 29 s of 30: still tracked");
    f.set_clock(1_000_000_000_000 + 60_000_000_000);
    let now_u = forward(&mut f, &udp);
    assert_ne!(now_u, bu, "idle 31 s of 30: a new flow, through the ring");
    assert_eq!(stats(&f), before + 1, "counted as expired");
    assert_eq!(
        forward(&mut f, &udp),
        now_u,
        "and tracked again on its new backend"
    );
    assert_eq!(forward(&mut f, &tcp.ack()), bt, "TCP's 3 h have not passed");
    f.set_clock(1_000_000_000_000 + 4 * 3600 * 1_000_000_000);
    assert_ne!(
        forward(&mut f, &tcp.ack()),
        bt,
        "after 4 idle hours TCP is a new flow too"
    );
}

#[test]
fn above_the_new_flow_limit_syns_are_forwarded_untracked() {
    let mut f = setup();
    f.set_clock(5_000_000_000_000);
    f.set_new_flow_limit(3);
    let syns: Vec<Spec> = (0..6)
        .map(|p| Spec::new("192.0.2.90", 51000 + p, "10.0.0.10", 80, 6).syn())
        .collect();
    let deferred = |f: &Fixture| f.dp.vip_stats(VIP_TCP4).expect("stats").deferred;
    let before = deferred(&f);
    for s in &syns {
        forward(&mut f, s);
    }
    assert_eq!(deferred(&f), before + 3, "three above the limit");
    let tracked = syns
        .iter()
        .filter(|s| f.dp.flow(&key_of(s)).expect("flow").is_some())
        .count();
    assert_eq!(tracked, 3, "only the first three wrote entries");
    // A deferred flow's first non-SYN packet is tracked: a real client is one that answers.
    let b = forward(&mut f, &syns[5].ack());
    assert_eq!(
        f.dp.flow(&key_of(&syns[5]))
            .expect("flow")
            .map(|s| s.backend_id),
        Some(b)
    );
    // A reset of an untracked flow (backscatter of a spoofed flood) follows the ring and
    // writes nothing, limit or not.
    let rst = Spec::new("192.0.2.91", 51500, "10.0.0.10", 80, 6).rst();
    forward(&mut f, &rst);
    assert!(f.dp.flow(&key_of(&rst)).expect("flow").is_none());
    // The next window admits again.
    f.set_clock(5_000_000_000_000 + (1 << 30));
    let fresh = Spec::new("192.0.2.90", 52000, "10.0.0.10", 80, 6).syn();
    forward(&mut f, &fresh);
    assert!(f.dp.flow(&key_of(&fresh)).expect("flow").is_some());
}

#[test]
fn counters_count_packets_bytes_and_flows() {
    let mut f = setup();
    let s = Spec::new("192.0.2.70", 50000, "10.0.0.10", 80, 6).syn();
    let frame = s.build();
    let vip0 = f.dp.vip_stats(VIP_TCP4).expect("stats");
    let b = forward(&mut f, &s);
    let b0 = f.dp.backend_stats(b).expect("stats");
    let ack = s.ack();
    for _ in 0..5 {
        forward(&mut f, &ack);
    }
    let vip1 = f.dp.vip_stats(VIP_TCP4).expect("stats");
    let b1 = f.dp.backend_stats(b).expect("stats");
    assert_eq!(vip1.packets - vip0.packets, 6);
    assert_eq!(vip1.bytes - vip0.bytes, 6 * frame.len() as u64);
    assert_eq!(vip1.new_flows - vip0.new_flows, 1);
    assert_eq!(vip1.conntrack_hits - vip0.conntrack_hits, 5);
    assert_eq!(vip1.conntrack_misses - vip0.conntrack_misses, 1);
    assert_eq!(b1.packets - b0.packets, 5);
    assert_eq!(b1.new_flows, b0.new_flows);
}

#[test]
fn a_tcp_flow_tracked_on_another_cpu_keeps_its_backend() {
    assert!(aya::util::nr_cpus().expect("cpus") >= 2, "needs two CPUs");
    let mut f = setup();
    let s = Spec::new("192.0.2.61", 50001, "10.0.0.10", 80, 6).syn();
    pin_to_cpu(1);
    let b = forward(&mut f, &s);
    pin_to_cpu(0);
    // The ring no longer names the tracked backend (drained), so the ring would move the flow.
    ring_without(&mut f, b);
    assert_eq!(
        forward(&mut f, &s.ack()),
        b,
        "a packet on CPU 0 uses the entry written on CPU 1"
    );
    let n =
        f.dp.flows()
            .expect("flows")
            .into_iter()
            .filter(|(k, _)| *k == key_of(&s))
            .count();
    assert_eq!(n, 1, "one entry for the flow, whatever the CPU");
}

/// The bug of a per-CPU table: a SYN on CPU 1 lands on X; X leaves the ring; the five-tuple's
/// new SYN on CPU 0 is re-picked to Y; its ACK on CPU 1 must go to Y, not to CPU 1's old X.
#[test]
fn a_syn_re_pick_on_one_cpu_is_what_every_cpu_uses() {
    assert!(aya::util::nr_cpus().expect("cpus") >= 2, "needs two CPUs");
    let mut f = setup();
    for p in 0..16 {
        let s = Spec::new("192.0.2.62", 53000 + p, "10.0.0.10", 80, 6).syn();
        pin_to_cpu(1);
        let x = forward(&mut f, &s);
        ring_without(&mut f, x);
        pin_to_cpu(0);
        let y = forward(&mut f, &s);
        assert_ne!(y, x, "the SYN follows the ring");
        pin_to_cpu(1);
        assert_eq!(
            forward(&mut f, &s.ack()),
            y,
            "flow {p}: the ACK on CPU 1 follows the re-pick"
        );
        pin_to_cpu(0);
        assert_eq!(forward(&mut f, &s.ack()), y);
        f.set_members(VIP_TCP4, &[(1, 1), (2, 1), (3, 1)]);
    }
}

/// Rebuild VIP_TCP4's ring from backends 1-3 without `b` (drained, not down).
fn ring_without(f: &mut Fixture, b: u32) {
    let others: Vec<(u32, u32)> = [1, 2, 3]
        .iter()
        .filter(|&&i| i != b)
        .map(|&i| (i, 1))
        .collect();
    f.set_members(VIP_TCP4, &others);
}

/// An echo request from the client to `dst`, built by etherparse.
fn echo_request(v6: bool, dst: &str, code: u8) -> Vec<u8> {
    use etherparse::IcmpEchoHeader;
    let echo = IcmpEchoHeader { id: 0x1234, seq: 7 };
    let payload = b"xlb ping payload, 32 bytes long!";
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    if v6 {
        let dst: std::net::Ipv6Addr = dst.parse().expect("v6");
        b.ipv6(
            "2001:db8::33"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets(),
            dst.octets(),
            61,
        )
        .icmpv6(Icmpv6Type::EchoRequest(echo))
        .write(&mut out, payload)
        .expect("echo6");
    } else {
        let dst: std::net::Ipv4Addr = dst.parse().expect("v4");
        b.ipv4([192, 0, 2, 33], dst.octets(), 61)
            .icmpv4(Icmpv4Type::Unknown {
                type_u8: 8,
                code_u8: code,
                bytes5to8: [0x12, 0x34, 0, 7],
            })
            .write(&mut out, payload)
            .expect("echo");
    }
    out
}

/// The reply a host would send to `req`, encoded independently: headers re-serialised with
/// etherparse, checksums computed in full.
fn echo_reply_of(req: &[u8]) -> Vec<u8> {
    use etherparse::{Ethernet2Header, NetHeaders, PacketHeaders, TransportHeader};
    let h = PacketHeaders::from_ethernet_slice(req).expect("parses");
    let payload = h.payload.slice().to_vec();
    let eth = h.link.expect("eth").ethernet2().expect("ethernet2");
    let mut out = Vec::new();
    Ethernet2Header {
        source: eth.destination,
        destination: eth.source,
        ether_type: eth.ether_type,
    }
    .write(&mut out)
    .expect("eth");
    match (h.net.expect("ip"), h.transport.expect("icmp")) {
        (NetHeaders::Ipv4(mut ip, _), TransportHeader::Icmpv4(icmp)) => {
            (ip.source, ip.destination) = (ip.destination, ip.source);
            ip.time_to_live = 64;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("ip");
            let echo = match icmp.icmp_type {
                Icmpv4Type::EchoRequest(e) => e,
                other => panic!("echo request expected: {other:?}"),
            };
            Icmpv4Header::with_checksum(Icmpv4Type::EchoReply(echo), &payload)
                .write(&mut out)
                .expect("icmp");
        }
        (NetHeaders::Ipv6(mut ip, _), TransportHeader::Icmpv6(icmp)) => {
            (ip.source, ip.destination) = (ip.destination, ip.source);
            ip.hop_limit = 64;
            ip.write(&mut out).expect("ip6");
            let Icmpv6Type::EchoRequest(echo) = icmp.icmp_type else {
                panic!("echo request expected");
            };
            Icmpv6Header::with_checksum(
                Icmpv6Type::EchoReply(echo),
                ip.source,
                ip.destination,
                &payload,
            )
            .expect("checksum")
            .write(&mut out)
            .expect("icmp6");
        }
        other => panic!("not an echo request: {other:?}"),
    }
    out.extend_from_slice(&payload);
    out
}

#[test]
fn echo_requests_to_a_vip_that_answers_ping_get_exact_replies() {
    use lb_common::{
        Addr, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, VIP_F_PING, VipKey, VipMeta,
    };
    let mut f = setup();
    let v4 = echo_request(false, "10.0.0.10", 0);
    let v6 = echo_request(true, "fd00::10", 0);
    // Off by default: the kernel sees them, as before.
    assert_eq!(run_counted(&mut f, &v4, Reason::PassIcmp).action, XDP_PASS);
    assert_eq!(run_counted(&mut f, &v6, Reason::PassIcmp).action, XDP_PASS);
    for (addr, proto, family) in [
        ("10.0.0.10", PROTO_ICMP, FAMILY_V4),
        ("fd00::10", PROTO_ICMPV6, FAMILY_V6),
    ] {
        let ip: std::net::IpAddr = addr.parse().expect("ip");
        let key = VipKey {
            addr: Addr::from(ip),
            port_be: 0,
            proto,
            family,
        };
        let meta = VipMeta {
            flags: VIP_F_PING,
            ..VipMeta::default()
        };
        f.dp.set_vip(&key, &meta).expect("echo entry");
    }
    for req in [&v4, &v6] {
        let out = run_counted(&mut f, req, Reason::TxEcho);
        assert_eq!(out.action, XDP_TX);
        assert_eq!(out.frame, echo_reply_of(req), "reply bytes");
    }
    // Not echo's code 0, another address, an echo reply: passed, untouched.
    for (frame, why) in [
        (echo_request(false, "10.0.0.10", 1), Reason::PassIcmp),
        (echo_request(false, "10.0.0.99", 0), Reason::PassIcmp),
        (echo_reply_of(&v4), Reason::PassIcmp),
    ] {
        let out = run_counted(&mut f, &frame, why);
        assert_eq!(out.action, XDP_PASS);
    }
}

/// Established packets reach their VIP through their backend's tag and `VIP_BY_ID`, with one
/// hash lookup (conntrack): with the VIP map's entry gone and the slot kept, a tracked flow's
/// ACK is still forwarded byte for byte while its SYN is no VIP packet; with the slot gone and
/// the map entry back, the lookup by address answers the same bytes.
#[test]
fn established_packets_find_their_vip_through_the_backends_tag() {
    use aya::maps::{Array, HashMap};
    use lb_common::{VipKey, VipMeta, VipSlot, map_names};
    pin_to_cpu0();
    let mut f = tagged_topology(4096);
    let s = Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6);
    let b = forward(&mut f, &s.clone().syn());
    assert_eq!(b / 100, VIP_TCP4, "a backend id of the VIP");
    let ack = s.build();
    let want = expect_forward(&mut f, &ack, 0, &packet_of(&s));
    assert_eq!(want, b);
    let bytes = f.run(&ack).frame;

    let key = VipKey {
        addr: lb_common::Addr::from("10.0.0.10".parse::<std::net::IpAddr>().expect("ip")),
        port_be: 80u16.to_be(),
        proto: 6,
        family: lb_common::FAMILY_V4,
    };
    let meta = f.model.vips[&key];
    {
        let mut vips: HashMap<_, VipKey, VipMeta> =
            HashMap::try_from(f.dp.map_mut_by_name(map_names::VIPS).expect("map")).expect("vips");
        vips.remove(&key).expect("remove");
    }
    let out = f.run(&ack);
    assert_eq!(
        (out.action, &out.frame),
        (XDP_TX, &bytes),
        "ACK without the VIP map"
    );
    let syn = run_counted(&mut f, &s.clone().syn().build(), Reason::PassNotVip);
    assert_eq!(syn.action, XDP_PASS);

    {
        let mut vips: HashMap<_, VipKey, VipMeta> =
            HashMap::try_from(f.dp.map_mut_by_name(map_names::VIPS).expect("map")).expect("vips");
        vips.insert(key, meta, 0).expect("insert");
        let mut slots: Array<_, VipSlot> =
            Array::try_from(f.dp.map_mut_by_name(map_names::VIP_BY_ID).expect("map"))
                .expect("slots");
        slots.set(VIP_TCP4, VipSlot::default(), 0).expect("clear");
    }
    let out = f.run(&ack);
    assert_eq!(
        (out.action, &out.frame),
        (XDP_TX, &bytes),
        "ACK without the slot"
    );
}

/// Jumbo frames are larger than a page, so XDP hands them over in several buffers (`xdp.frags`;
/// BPF_PROG_TEST_RUN builds the same from one long input). The headers lie in the first buffer,
/// the datagram's length covers them all: every mode and family is forwarded byte for byte at a
/// 9100-byte MTU, a datagram too big for its encapsulation is answered, and byte counters count
/// the whole frame.
#[test]
fn jumbo_frames_in_several_buffers_are_forwarded_and_answered() {
    let mut f = setup();
    f.cfg.mtu = 9100;
    f.dp.set_config(&f.cfg).expect("config");
    let cases = [
        Spec::new("192.0.2.60", 43000, "10.0.0.10", 80, 6)
            .syn()
            .payload(8960), // IPIP
        Spec::new("192.0.2.60", 43001, "10.0.0.10", 53, 17).payload(8972), // GUE
        Spec::new("2001:db8::60", 43000, "fd00::10", 80, 6)
            .syn()
            .payload(8940), // IPv6-in-IPv6
        Spec::new("192.0.2.60", 43000, "10.0.0.20", 8080, 6)
            .syn()
            .payload(8960), // L2 DSR
        Spec::new("192.0.2.60", 43000, "10.0.0.10", 80, 6)
            .syn()
            .payload(8952)
            .vlans(2),
    ];
    for s in &cases {
        let frame = s.build();
        assert!(frame.len() > 9000, "{} bytes", frame.len());
        let vip = f.model.route(&packet_of(s)).expect("model").vip.vip_id;
        let before = f.dp.vip_stats(vip).expect("stats").bytes;
        forward(&mut f, s);
        assert_eq!(
            f.dp.vip_stats(vip).expect("stats").bytes - before,
            frame.len() as u64,
            "{s:?}: bytes of every buffer"
        );
    }

    // 9000 bytes of datagram plus 20 of IPIP do not fit 9000: fragmentation needed, quoting the
    // start of the datagram from the first buffer; the other buffers are released.
    f.cfg.mtu = 9000;
    f.dp.set_config(&f.cfg).expect("config");
    let big = Spec::new("192.0.2.61", 43002, "10.0.0.10", 80, 6).payload(8960);
    let frame = big.build();
    let out = run_counted(&mut f, &frame, Reason::TxTooBig);
    assert_eq!(out.action, XDP_TX);
    let want = fragmentation_needed(&frame, [10, 0, 0, 10], [192, 0, 2, 61], 8980);
    assert_eq!(out.frame, want, "ICMP fragmentation-needed reply");

    // A datagram claiming more than every buffer holds is still malformed.
    let mut cut = frame.clone();
    cut.truncate(frame.len() - 1);
    assert_eq!(
        run_counted(&mut f, &cut, Reason::DropMalformed).action,
        XDP_DROP
    );
}
