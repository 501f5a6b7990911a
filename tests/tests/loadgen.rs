//! The generator: the real `xlb_loadgen` program stamps valid, distinct flows, and `xlb loadgen`
//! delivers exactly the packets it counts through a veth to a counting sink.

use std::time::Duration;

use aya::{maps::Array, programs::XdpMode};
use lb_common::{loadgen::LoadgenConfig, map_names, prog_names};
use tests::{
    lab::xlb_bin,
    netns::{Netns, veth},
};
use xlb::{
    dataplane::{Dataplane, LoadOptions},
    loadgen::{Kind, Options, template},
};

fn opts(kind: Kind, src: &str, dst: &str) -> Options {
    Options {
        iface: "g0".into(),
        ifindex: 1,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: src.parse().expect("src"),
        dst: dst.parse().expect("dst"),
        dport: 7000,
        sport: 40000,
        flows: 3,
        size: 128,
        kind,
        rate: None,
        duration: Some(Duration::from_secs(1)),
        count: None,
        threads: 1,
        method: xlb::loadgen::Method::Auto,
    }
}

#[test]
fn the_generator_program_stamps_valid_distinct_flows() {
    for (kind, src, dst) in [
        (Kind::Udp, "10.0.1.2", "10.100.0.1"),
        (Kind::Syn, "2001:db8::2", "2001:db8:100::1"),
    ] {
        let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
        let o = opts(kind, src, dst);
        let (frame, cfg) = template(&o).expect("template");
        let mut a: Array<_, LoadgenConfig> =
            Array::try_from(dp.map_mut_by_name(map_names::LOADGEN).expect("map")).expect("array");
        a.set(0, cfg, 0).expect("set");
        // A recycled frame whose headers a receiver rewrote (encapsulation writes in front of
        // and over the headers, never the payload) must come out whole again.
        let mut garbage = frame.clone();
        garbage[..cfg.copy_len as usize].fill(0xa5);
        let mut ports = Vec::new();
        for i in 0..4 {
            let input = if i % 2 == 0 { &garbage } else { &frame };
            let out = dp.test_run(prog_names::LOADGEN, input).expect("run");
            assert_eq!(out.action, 3, "XDP_TX");
            // The userspace transmit path (AF_PACKET) stamps by the same rules, byte for byte.
            let mut expect = input.clone();
            cfg.stamp(&mut expect, i % 3).expect("stamp");
            assert_eq!(
                out.frame, expect,
                "{kind:?} run {i}: XDP and userspace stamps"
            );
            let p = etherparse::SlicedPacket::from_ethernet(&out.frame).expect("parses");
            let port = match (&p.net, &p.transport) {
                (
                    Some(etherparse::NetSlice::Ipv4(ip)),
                    Some(etherparse::TransportSlice::Udp(u)),
                ) => {
                    let h = ip.header().to_header();
                    assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
                    let sum = u
                        .to_header()
                        .calc_checksum_ipv4(&h, u.payload())
                        .expect("sum");
                    assert_eq!(sum, u.checksum(), "UDP checksum");
                    u.source_port()
                }
                (
                    Some(etherparse::NetSlice::Ipv6(ip)),
                    Some(etherparse::TransportSlice::Tcp(t)),
                ) => {
                    let h = ip.header().to_header();
                    let sum = t.calc_checksum_ipv6(h.source, h.destination).expect("sum");
                    assert_eq!(sum, t.checksum(), "TCP checksum");
                    assert!(t.syn() && !t.ack());
                    t.source_port()
                }
                other => panic!("unexpected {other:?}"),
            };
            ports.push(port);
        }
        // Per-CPU sequence: consecutive runs walk the 3 flows.
        assert_eq!(ports, vec![40000, 40001, 40002, 40000], "{kind:?}");
    }
}

#[test]
fn xlb_loadgen_delivers_what_it_counts() {
    let gen_ns = Netns::new("gen");
    let sink_ns = Netns::new("sink");
    // No IPv6 autoconfiguration chatter: the sink must count the generator's frames only.
    for k in ["all", "default"] {
        gen_ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
    veth(&gen_ns, "g0", &sink_ns, "s0");
    gen_ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "g0"]);
    let mut sink = Dataplane::load(&LoadOptions {
        conntrack_entries: 64,
        ..LoadOptions::default()
    })
    .expect("load sink");
    {
        let _in = sink_ns.enter();
        sink.program(prog_names::SINK)
            .expect("sink")
            .attach("s0", XdpMode::Driver)
            .expect("attach sink");
    }
    let mac = sink_ns.mac("s0");
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", gen_ns.name))
        .arg("--")
        .arg(xlb_bin())
        .args([
            "loadgen",
            "--iface",
            "g0",
            "--dst",
            "10.77.0.2:9",
            "--dst-mac",
            &mac,
            "--count",
            "20000",
            "--rate",
            "200000",
            "--flows",
            "64",
            "--threads",
            "1",
            "-o",
            "json",
        ])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["packets"], 20000);
    // The veth delivers asynchronously; give the sink a moment.
    let mut got = 0;
    for _ in 0..50 {
        got = sink.sink_stats().expect("sink stats").packets;
        if got >= 20000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, 20000, "every generated frame reached the sink");
    assert!(
        summary["pps"].as_f64().expect("pps") < 260_000.0,
        "rate limit holds: {summary}"
    );
}
