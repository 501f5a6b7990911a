//! Capture and replay. Fixtures: the forwarder's capture records (verdict, outcome, VIP, backend,
//! flow, frame bytes) through BPF_PROG_TEST_RUN, with every filter and the sampling. Namespaces:
//! `xlb capture` writing pcapng of real traffic through the daemon, its lease, and `xlb replay`
//! answering "what would happen" without touching live state.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_common::{
    Addr, CFG_F_CAPTURE, FAMILY_V4,
    capture::{
        CAPTURE_ALL_OUTCOMES, CAPTURE_F_OUTPUT, CAPTURE_FORWARD, CAPTURE_NO_VIP, CaptureConfig,
        CaptureHeader,
    },
    stats::Reason,
};
use tests::{
    fixture::{Fixture, pin_to_cpu0},
    frames::Spec,
    lab::Lab,
    lb::*,
    topo::{CLIENT, TCP_PORT, VIP},
};
use xlb::capture::{pcap::read_frames, record::Record};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn open_filter() -> CaptureConfig {
    CaptureConfig {
        session: 77,
        vip_id: CAPTURE_NO_VIP,
        outcomes: CAPTURE_ALL_OUTCOMES,
        ..Default::default()
    }
}

fn capture(f: &mut Fixture, c: Option<CaptureConfig>) {
    if let Some(c) = c {
        f.dp.set_capture(&c).expect("capture filter");
    }
    let mut cfg = f.cfg;
    if c.is_some() {
        cfg.flags |= CFG_F_CAPTURE;
    }
    f.dp.set_config(&cfg).expect("config");
}

fn drain(f: &mut Fixture) -> Vec<Record> {
    let mut ring = f.dp.capture_ring().expect("ring");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(Record::decode(&item).expect("a whole record"));
    }
    out
}

fn v4(ip: &str) -> Addr {
    Addr::from(ip.parse::<IpAddr>().expect("ip"))
}

#[test]
fn capture_records_what_the_forwarder_did_and_nothing_when_off() {
    pin_to_cpu0();
    let mut f = topology(4096);
    let syn = Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6)
        .syn()
        .build();
    let other = Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6).build();
    let empty = Spec::new("192.0.2.1", 40000, "10.0.0.50", 80, 6)
        .syn()
        .build();
    let truncated = syn[..30].to_vec();
    let big = Spec::new("192.0.2.2", 40001, "10.0.0.10", 80, 6)
        .payload(1200)
        .build();

    // Off: the filter is even set, but without the flag nothing is recorded or counted.
    f.dp.set_capture(&open_filter()).expect("filter");
    for fr in [&syn, &other, &empty, &truncated] {
        f.run(fr);
    }
    assert!(drain(&mut f).is_empty(), "capture off records nothing");
    assert_eq!(f.dp.capture_counters().expect("counters").matched, 0);

    capture(&mut f, Some(open_filter()));
    let inputs = [&syn, &other, &empty, &truncated, &big];
    let outs: Vec<_> = inputs.iter().map(|fr| f.run(fr)).collect();
    let recs = drain(&mut f);
    assert_eq!(recs.len(), 5, "one record per packet");
    let want_backend = f
        .model
        .explain(&packet_of(
            &Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).syn(),
        ))
        .expect("forwarded")
        .backend_id;
    let cases: [(&str, u32, u32, u32, u32); 5] = [
        (
            "forwarded SYN",
            XDP_TX,
            CAPTURE_FORWARD,
            VIP_TCP4,
            want_backend,
        ),
        (
            "not a VIP",
            XDP_PASS,
            Reason::PassNotVip as u32,
            CAPTURE_NO_VIP,
            0,
        ),
        (
            "empty ring",
            XDP_DROP,
            Reason::DropNoBackend as u32,
            VIP_EMPTY,
            0,
        ),
        (
            "truncated",
            XDP_DROP,
            Reason::DropMalformed as u32,
            CAPTURE_NO_VIP,
            0,
        ),
        ("large frame", XDP_TX, CAPTURE_FORWARD, VIP_TCP4, 0),
    ];
    for (i, ((name, action, outcome, vip, backend), (r, out))) in
        cases.iter().zip(recs.iter().zip(&outs)).enumerate()
    {
        let h: &CaptureHeader = &r.hdr;
        assert_eq!(h.session, 77, "{name}");
        assert_eq!(h.action, *action, "{name}: action");
        assert_eq!(
            h.action, out.action,
            "{name}: the record agrees with the run"
        );
        assert_eq!(h.outcome, *outcome, "{name}: outcome");
        assert_eq!(h.vip_id, *vip, "{name}: vip");
        if *backend != 0 {
            assert_eq!(h.backend_id, *backend, "{name}: backend id");
            assert_eq!(
                h.backend, f.model.backends[backend].addr,
                "{name}: backend address"
            );
            assert_eq!(h.backend_family, FAMILY_V4);
        }
        assert_eq!(h.flags, 0, "{name}: received frames by default");
        assert_eq!(
            h.len as usize,
            inputs[i].len(),
            "{name}: length as received"
        );
        assert_eq!(r.data, *inputs[i], "{name}: the frame as it arrived");
        assert_eq!(h.action, out.action);
    }
    assert_eq!(recs[0].hdr.parsed, 1);
    assert_eq!(
        recs[0].hdr.key,
        key_of(&Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6))
    );
    assert_eq!(recs[3].hdr.parsed, 0, "a truncated frame has no flow");
    assert!(
        recs[4].data.len() > 1200,
        "the largest record class holds a full frame"
    );
    assert_eq!(f.dp.capture_counters().expect("counters").matched, 5);
    assert_eq!(f.dp.capture_counters().expect("counters").lost, 0);

    // Frames as sent: encapsulated for forwards, untouched otherwise.
    capture(
        &mut f,
        Some(CaptureConfig {
            flags: CAPTURE_F_OUTPUT,
            ..open_filter()
        }),
    );
    let outs: Vec<_> = inputs.iter().map(|fr| f.run(fr)).collect();
    let recs = drain(&mut f);
    assert_eq!(recs.len(), 5);
    for (r, out) in recs.iter().zip(&outs) {
        assert_eq!(r.hdr.flags, CAPTURE_F_OUTPUT);
        assert_eq!(r.hdr.len as usize, out.frame.len(), "length as sent");
        assert_eq!(r.data, out.frame, "the frame as the program left it");
    }
    assert_ne!(recs[0].data, syn, "the forwarded SYN was encapsulated");
}

#[test]
fn capture_filters_by_vip_backend_outcome_snaplen_and_samples() {
    pin_to_cpu0();
    let mut f = topology(4096);
    let flows: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            Spec::new("192.0.2.1", 20000 + i, "10.0.0.10", 80, 6)
                .syn()
                .build()
        })
        .collect();
    let udp = Spec::new("192.0.2.1", 5353, "10.0.0.10", 53, 17).build();
    let other = Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6).build();
    let empty = Spec::new("192.0.2.1", 40000, "10.0.0.50", 80, 6)
        .syn()
        .build();
    let run_all = |f: &mut Fixture| {
        for fr in flows.iter().chain([&udp, &other, &empty]) {
            f.run(fr);
        }
    };

    // By VIP: only the TCP VIP's 64 SYNs.
    capture(
        &mut f,
        Some(CaptureConfig {
            vip_id: VIP_TCP4,
            ..open_filter()
        }),
    );
    run_all(&mut f);
    let recs = drain(&mut f);
    assert_eq!(recs.len(), 64);
    assert!(recs.iter().all(|r| r.hdr.vip_id == VIP_TCP4));
    // Received frames, each its own: copies kept for filtered-out packets never leak into
    // later records (run twice so filtered packets sit between matching ones).
    run_all(&mut f);
    let again = drain(&mut f);
    for (r, fr) in recs.iter().chain(&again).zip(flows.iter().chain(&flows)) {
        assert_eq!(&r.data, fr);
    }

    // By backend: only what went to 10.1.0.2, and all of it.
    capture(
        &mut f,
        Some(CaptureConfig {
            backend: v4("10.1.0.2"),
            backend_family: FAMILY_V4,
            ..open_filter()
        }),
    );
    run_all(&mut f);
    let recs = drain(&mut f);
    let to_b2 = flows
        .iter()
        .chain([&udp])
        .filter(|fr| {
            let o = f.run(fr);
            drain(&mut f);
            o.frame[30..34] == [10, 1, 0, 2]
        })
        .count();
    assert!(
        to_b2 > 0 && to_b2 < 65,
        "the ring spreads the flows: {to_b2}"
    );
    assert_eq!(recs.len(), to_b2);
    assert!(
        recs.iter()
            .all(|r| r.hdr.backend == v4("10.1.0.2") && r.hdr.backend_id == 2)
    );

    // By outcome: drops only.
    capture(
        &mut f,
        Some(CaptureConfig {
            outcomes: 1 << Reason::DropNoBackend as u32 | 1 << Reason::PassNotVip as u32,
            ..open_filter()
        }),
    );
    run_all(&mut f);
    let got: Vec<u32> = drain(&mut f).iter().map(|r| r.hdr.outcome).collect();
    assert_eq!(
        got,
        [Reason::PassNotVip as u32, Reason::DropNoBackend as u32]
    );

    // Snaplen: the header keeps the length, the record keeps 64 bytes.
    capture(
        &mut f,
        Some(CaptureConfig {
            snaplen: 64,
            vip_id: VIP_TCP4,
            ..open_filter()
        }),
    );
    run_all(&mut f);
    let recs = drain(&mut f);
    assert!(
        recs.iter()
            .all(|r| r.data.len() == 64 && r.hdr.len > 64 && r.hdr.caplen == 64)
    );

    // Sampling 1 in 4 over 64 x 10 packets: about 160, decided in the kernel.
    capture(
        &mut f,
        Some(CaptureConfig {
            sample: 4,
            vip_id: VIP_TCP4,
            ..open_filter()
        }),
    );
    let before = f.dp.capture_counters().expect("counters").matched;
    for _ in 0..10 {
        run_all(&mut f);
    }
    let n = drain(&mut f).len() as u64;
    assert!((100..=230).contains(&n), "1 in 4 of 640 sampled: {n}");
    assert_eq!(
        f.dp.capture_counters().expect("counters").matched - before,
        n
    );

    // A reader that falls behind: the ring (4 MiB) fills, and every record that does not fit is
    // counted as lost, none silently.
    let big = Spec::new("192.0.2.9", 4000, "10.0.0.10", 80, 6)
        .payload(1400)
        .build();
    capture(&mut f, Some(open_filter()));
    let base = f.dp.capture_counters().expect("counters");
    for _ in 0..4000 {
        f.run(&big);
    }
    let c = f.dp.capture_counters().expect("counters");
    let written = drain(&mut f).len() as u64;
    assert_eq!(c.matched - base.matched, 4000);
    assert!(c.lost - base.lost > 0, "4000 x 1.5 KB cannot fit in 4 MiB");
    assert_eq!(
        written + (c.lost - base.lost),
        4000,
        "every record written or counted lost"
    );

    // Off again: nothing more.
    capture(&mut f, None);
    run_all(&mut f);
    assert!(drain(&mut f).is_empty());
}

const TCP_VIP: &str = "10.100.0.1:8080/tcp";

/// The outer IPv4 destination and protocol of an encapsulated frame.
fn outer_v4(frame: &[u8]) -> (IpAddr, u8) {
    assert_eq!(frame[12..14], [0x08, 0x00], "IPv4 outer header");
    let dst: [u8; 4] = frame[30..34].try_into().expect("4 bytes");
    (IpAddr::from(dst), frame[23])
}

fn word<'a>(comment: &'a str, key: &str) -> Option<&'a str> {
    comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Run `xlb capture ARGS PATH` while the client makes connections; returns its stderr.
fn run_capture_under_traffic(lab: &Lab, args: &[&str], path: &std::path::Path) -> String {
    let path = path.display().to_string();
    let mut all = vec!["--duration", "30"];
    all.extend_from_slice(args);
    all.push(&path);
    lab.capture_while(&all, || {
        lab.net
            .client
            .spawn(|| tests::topo::tcp_request(b"hello").expect("request"))
            .join()
            .expect("client");
    })
    .1
}

#[test]
fn capture_cli_writes_pcapng_of_real_traffic_and_honours_its_bounds() {
    let mut lab = Lab::new(2);
    let _servers = lab.net.start_servers();
    lab.start(&lab.full_config());
    let pcap = lab.dir.join("vip.pcapng");

    // A bounded capture of one VIP while connections flow; it ends by count. Frames as
    // received (the default), each with its verdict and backend.
    let received = run_capture_under_traffic(&lab, &["--vip", TCP_VIP, "-c", "30", "-w"], &pcap);
    assert!(
        received.contains("30 packets captured") && received.contains("ended by count"),
        "{received}"
    );
    let frames = read_frames(&pcap).expect("a readable pcapng");
    assert_eq!(frames.len(), 30);
    let backends: HashSet<IpAddr> = lab
        .net
        .backends
        .iter()
        .map(|b| IpAddr::V4(b.addr))
        .collect();
    let mut captured_backends = Vec::new();
    for f in &frames {
        let c = f
            .comment
            .as_deref()
            .expect("every packet carries the verdict");
        assert_eq!(word(c, "action"), Some("redirect"), "two-arm: {c}");
        assert_eq!(word(c, "outcome"), Some("forward"), "{c}");
        assert_eq!(word(c, "vip"), Some(TCP_VIP), "{c}");
        let b: IpAddr = word(c, "backend")
            .expect("backend")
            .parse()
            .expect("address");
        assert!(backends.contains(&b), "{b} is a backend");
        captured_backends.push(b.to_string());
        assert_eq!(f.data[12..14], [0x08, 0x00]);
        assert_eq!(f.data[23], 6, "the client's own TCP packet");
        assert_eq!(f.data[30..34], VIP.octets());
        assert_eq!(f.data[36..38], TCP_PORT.to_be_bytes());
        assert_eq!(f.orig_len as usize, f.data.len());
    }

    // libpcap reads it too, with the right clock (nanosecond stamps declared per interface).
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-tt", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 30, "{text}");
    for l in &lines {
        let t: f64 = l
            .split_whitespace()
            .next()
            .expect("time")
            .parse()
            .expect("seconds");
        assert!((now - t).abs() < 120.0, "stamp {t} vs now {now}: {l}");
        assert!(l.contains("> 10.100.0.1.8080"), "{l}");
    }

    // Replaying what was captured gives the same answers, packet for packet.
    let r = lab.json(&["replay", &pcap.display().to_string()]);
    let replayed: Vec<String> = r["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| p["backend"].as_str().expect("forwarded").to_string())
        .collect();
    assert_eq!(replayed, captured_backends);

    // pcapng on stdout, for `| tcpdump -nr -`.
    let (stdout, _) = lab.capture_while(
        &["--vip", TCP_VIP, "-c", "4", "--duration", "20", "-w", "-"],
        || {
            lab.net
                .client
                .spawn(|| tests::topo::tcp_request(b"hello").expect("request"))
                .join()
                .expect("client");
        },
    );
    let piped = lab.dir.join("piped.pcapng");
    std::fs::write(&piped, &stdout).expect("write");
    assert_eq!(read_frames(&piped).expect("pcapng on stdout").len(), 4);

    // Frames as sent: IPIP to the backend named in the comment.
    let sent = lab.dir.join("sent.pcapng");
    run_capture_under_traffic(
        &lab,
        &["--vip", TCP_VIP, "--frames", "sent", "-c", "10", "-w"],
        &sent,
    );
    for f in read_frames(&sent).expect("pcapng") {
        let c = f.comment.as_deref().expect("comment");
        let (dst, proto) = outer_v4(&f.data);
        assert_eq!(proto, 4, "IPIP");
        assert_eq!(word(c, "backend"), Some(dst.to_string().as_str()), "{c}");
        assert_eq!(f.data[50..54], VIP.octets(), "inner destination is the VIP");
    }

    // The first capture has ended, so a second may start: one outcome only, as JSON lines. A
    // SYN to the LB's own address is not for a VIP. (Not `passes`: ARP and neighbour discovery
    // on the link are passes too.)
    let (out, _) = lab.capture_while(
        &[
            "--outcome",
            "pass_not_vip",
            "-c",
            "3",
            "--duration",
            "20",
            "-o",
            "json",
        ],
        || {
            lab.net
                .client
                .spawn(|| {
                    let _ = TcpStream::connect_timeout(
                        &"10.0.1.1:9".parse().expect("addr"),
                        Duration::from_millis(200),
                    );
                    // VIP traffic meanwhile must not show up.
                    let _ = tests::topo::tcp_request(b"x");
                })
                .join()
                .expect("client");
        },
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("text")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["outcome"], "pass_not_vip", "{l}");
        assert_eq!(l["action"], "pass");
        assert!(
            l["flow"]
                .as_str()
                .expect("flow")
                .contains("> 10.0.1.1:9 tcp"),
            "{l}"
        );
    }

    // Bad filters are refused with a reason, and nothing is left running.
    let e = lab.fails(&["capture", "--vip", "10.9.9.9:1/tcp", "-c", "1"]);
    assert!(e.contains("no VIP 10.9.9.9:1/tcp"), "{e}");
    let e = lab.fails(&["capture", "--outcome", "drop_everything", "-c", "1"]);
    assert!(e.contains("unknown outcome"), "{e}");
    let out = lab.ok(&["capture", "--vip", TCP_VIP, "-c", "1", "--duration", "0.3"]);
    assert!(out.is_empty(), "no VIP traffic, nothing printed: {out}");
}

fn pinned_flags(lab: &Lab) -> u16 {
    let a = lab.pinned_array::<lb_common::LbConfig>("CONFIG");
    a.get(&0, 0).expect("config").flags
}

#[test]
fn a_capture_whose_client_vanished_expires_and_capture_goes_off() {
    let mut lab = Lab::new(1);
    lab.start(&lab.full_config());
    let client = xlb::api::Client::new(&lab.socket);
    let start = || client.capture_start(xlb::api::CaptureFilter::default());
    let first = start().expect("capture starts");
    assert_ne!(
        pinned_flags(&lab) & CFG_F_CAPTURE,
        0,
        "capture on in the forwarder"
    );
    let status = lab.json(&["status"]);
    assert!(
        status["capture"]
            .as_str()
            .is_some_and(|c| c.contains("frames as received")),
        "status shows the capture: {status}"
    );
    let e = start().expect_err("one capture at a time").to_string();
    assert!(e.contains("already running"), "{e}");
    // Nobody renews: the lease (5 s) runs out and the daemon turns capture off.
    let t0 = Instant::now();
    while pinned_flags(&lab) & CFG_F_CAPTURE != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "lease never expired\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed();
    assert!(lab.json(&["status"])["capture"].is_null());
    assert!(took > Duration::from_secs(3), "expired too early: {took:?}");
    let e = client
        .capture_renew(first.session)
        .expect_err("gone")
        .to_string();
    assert!(e.contains("expired or was stopped"), "{e}");
    // And a new capture may start.
    let second = start().expect("capture starts again");
    client.capture_stop(second.session).expect("stops");
    assert_eq!(pinned_flags(&lab) & CFG_F_CAPTURE, 0);
}

#[test]
fn replay_says_what_the_forwarder_would_do_without_touching_live_state() {
    let mut lab = Lab::new(3);
    let _servers = lab.net.start_servers();
    lab.start(&lab.full_config());

    // A live connection, held open: its backend is in the live conntrack.
    let conn = lab
        .net
        .client
        .spawn(|| {
            let mut c = TcpStream::connect((VIP, TCP_PORT)).expect("connect");
            c.write_all(b"held").expect("write");
            c
        })
        .join()
        .expect("client");
    let live_port = conn.local_addr().expect("local").port();
    let flows = lab.json(&["flows"]);
    let live_backend = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["src"] == format!("{CLIENT}:{live_port}"))
        .unwrap_or_else(|| panic!("the held connection is tracked: {flows}"))["backend"]
        .as_str()
        .expect("backend")
        .to_string();
    // Drain its backend: the flow stays there, new flows go elsewhere.
    lab.ok(&["backend", "drain", TCP_VIP, &live_backend]);

    let client = CLIENT.to_string();
    let vip = VIP.to_string();
    let new_port = 45678;
    let explain = lab.json(&["explain", &format!("{client}:{new_port}"), TCP_VIP, "--syn"]);
    let specs = [
        Spec::new(&client, live_port, &vip, TCP_PORT, 6),
        Spec::new(&client, live_port, &vip, TCP_PORT, 6).syn(),
        Spec::new(&client, new_port, &vip, TCP_PORT, 6).syn(),
        Spec::new(&client, new_port, &vip, TCP_PORT, 6),
        Spec::new(&client, 40000, "10.0.1.1", 22, 6),
    ];
    let mut frames: Vec<Vec<u8>> = specs.iter().map(Spec::build).collect();
    frames.push(frames[0][..40].to_vec());
    let input = lab.dir.join("in.pcapng");
    {
        let mut w = xlb::capture::pcap::NgWriter::new(
            std::fs::File::create(&input).expect("file"),
            65535,
            "test",
        )
        .expect("writer");
        for (i, f) in frames.iter().enumerate() {
            w.write(
                Duration::from_secs(i as u64),
                f.len() as u32,
                f,
                String::new(),
            )
            .expect("write");
        }
        w.flush().expect("flush");
    }

    let flows_before = lab.json(&["flows"])["flows"]
        .as_array()
        .expect("flows")
        .len();
    let packets = |lab: &Lab| -> Vec<(String, u64)> {
        lab.json(&["stats"])["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .map(|v| {
                (
                    v["vip"].to_string(),
                    v["packets"].as_u64().expect("packets"),
                )
            })
            .collect()
    };
    let stats_before = packets(&lab);
    let output = lab.dir.join("out.pcapng");
    let r = lab.json(&[
        "replay",
        &input.display().to_string(),
        "-w",
        &output.display().to_string(),
    ]);
    assert_eq!(
        r["same_program"], true,
        "the attached forwarder is this build: {r}"
    );
    let p = r["packets"].as_array().expect("packets");
    assert_eq!(p.len(), 6);
    // 1: the live flow's next packet stays on its (drained) backend, from the live entry.
    assert_eq!(p[0]["action"], "redirect", "two-arm");
    assert_eq!(p[0]["backend"], live_backend.as_str(), "{}", p[0]);
    assert_eq!(p[0]["pick"], "tracked");
    assert_eq!(p[0]["live_entry"], true);
    // 2: a SYN on that tuple opens a new connection: the ring, never the drained backend.
    assert_eq!(p[1]["pick"], "new");
    assert_eq!(p[1]["live_entry"], false, "a SYN does not use the entry");
    assert_ne!(p[1]["backend"], live_backend.as_str());
    // 3 and 4: a new flow goes where `xlb explain` says, then stays there (replay's own state).
    assert_eq!(p[2]["backend"], explain["backend"], "{} vs {explain}", p[2]);
    assert_eq!(p[2]["pick"], "new");
    assert_eq!(p[2]["live_entry"], false);
    assert_eq!(p[3]["backend"], explain["backend"]);
    assert_eq!(p[3]["pick"], "tracked");
    // 5 and 6: not a VIP, and a truncated frame.
    assert_eq!(
        (&p[4]["action"], &p[4]["outcome"]),
        (&"pass".into(), &"pass_not_vip".into())
    );
    assert_eq!(
        (&p[5]["action"], &p[5]["outcome"]),
        (&"drop".into(), &"drop_malformed".into())
    );

    let table = lab.ok(&["replay", &input.display().to_string()]);
    let first = table.lines().next().expect("a line per packet");
    assert!(
        first.starts_with("#1") && first.contains("[tracked] (live conntrack)"),
        "{table}"
    );
    assert!(
        table.contains("pass_not_vip") && table.contains("drop_malformed"),
        "{table}"
    );

    // The output file holds the frames as they would leave, with the verdict.
    let out = read_frames(&output).expect("output pcapng");
    assert_eq!(out.len(), 6);
    let (dst, proto) = outer_v4(&out[0].data);
    assert_eq!((dst.to_string(), proto), (live_backend.clone(), 4));
    assert_eq!(
        out[0].data[34..],
        frames[0][14..],
        "the original packet inside"
    );
    assert_eq!(out[4].data, frames[4], "a passed frame is untouched");
    assert!(
        out[2]
            .comment
            .as_deref()
            .expect("comment")
            .contains("pick=new")
    );

    // Live state is as it was: no flow added, no counter moved.
    assert_eq!(
        lab.json(&["flows"])["flows"]
            .as_array()
            .expect("flows")
            .len(),
        flows_before
    );
    assert_eq!(packets(&lab), stats_before);

    // The live connection still completes on its backend.
    let answer = lab
        .net
        .client
        .spawn(move || {
            let mut c = conn;
            c.shutdown(std::net::Shutdown::Write).expect("half-close");
            let mut s = String::new();
            c.read_to_string(&mut s).expect("answer");
            s
        })
        .join()
        .expect("client");
    assert!(answer.ends_with(" 4"), "{answer}");

    // Every backend entry the daemon wrote names its own VIP (the data path checks tracked ids
    // against it).
    let vip_ids: std::collections::HashMap<String, u64> = lab
        .json(&["vip", "list"])
        .as_array()
        .expect("vips")
        .iter()
        .map(|v| {
            (
                v["vip"].as_str().expect("vip").to_string(),
                v["id"].as_u64().expect("id"),
            )
        })
        .collect();
    let backends = lab.pinned_array::<lb_common::Backend>("BACKENDS");
    let rows = lab.json(&["backend", "list"]);
    for r in rows.as_array().expect("rows") {
        let id = r["id"].as_u64().expect("id") as u32;
        let b = backends.get(&id, 0).expect("entry");
        let vip_id = vip_ids[r["vip"].as_str().expect("vip")] as u32;
        assert_eq!(b.vip, lb_common::Backend::vip_tag(vip_id), "{r}");
    }
    assert_eq!(
        rows.as_array().expect("rows").len(),
        6,
        "3 backends x 2 VIPs"
    );

    // A file that is not a capture is refused clearly.
    let junk = lab.file("junk.pcap", "not a capture");
    let e = lab.fails(&["replay", &junk]);
    assert!(e.contains("junk.pcap"), "{e}");
}
