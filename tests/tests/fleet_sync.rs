//! Fleet, part 2: connections survive losing a node after the backend set changed, because
//! the nodes ship each other their divergent flows (`[sync]`). Three nodes behind a BIRD
//! router with BFD, as in `fleet.rs`; real long-lived TCP and UDP flows.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use tests::{
    echo::Echo,
    fleet::{self, Fleet, FlowResult, Flows, ONE_AT_A_TIME, SYNC_PORT, Settings},
    topo::{TCP_PORT, UDP_PORT, VIP},
};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn vip(tcp: bool) -> String {
    if tcp {
        format!("{VIP}:{TCP_PORT}/tcp")
    } else {
        format!("{VIP}:{UDP_PORT}/udp")
    }
}

fn fronts(f: &Fleet, which: &[usize]) -> Vec<Ipv4Addr> {
    which.iter().map(|&i| f.node(i).front).collect()
}

/// Three nodes started with `s`, servers on every backend, routes in the router's FIB.
fn started(s: &Settings) -> (Fleet, Vec<Echo>) {
    let mut f = Fleet::new(3, 3);
    let servers = f.servers();
    for i in 1..=3 {
        let c = f.config(i, s);
        f.start_node(i, &c);
    }
    f.wait_next_hops(&fronts(&f, &[1, 2, 3]), Duration::from_secs(20));
    (f, servers)
}

/// Sync on, the first `backends` of the fleet's backends configured.
fn synced(backends: usize) -> Settings {
    Settings {
        backends,
        sync: true,
        ..Settings::default()
    }
}

/// `started`, then 64 TCP and 32 UDP long-lived flows running for a second.
fn with_flows(s: &Settings) -> (Fleet, Vec<Echo>, Flows) {
    let (f, servers) = started(s);
    let flows = Flows::start(&f.client, 64, 32, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(1));
    (f, servers, flows)
}

/// Flows riding node `i` (router FIB) whose backend there is not what node `j`'s ring picks
/// for them now: what `xlb explain` (the forwarder's own decision over the live maps) says on
/// each node.
fn divergent_riding(f: &Fleet, flows: &Flows, i: usize, j: usize) -> Vec<(bool, SocketAddrV4)> {
    let front = f.node(i).front;
    let sources = flows.sources.lock().expect("lock").clone();
    sources
        .into_iter()
        .filter(|(tcp, src)| {
            if f.node_of_flow(*tcp, *src) != Some(front) {
                return false;
            }
            let here = f.node(i).json(&["explain", &src.to_string(), &vip(*tcp)]);
            let there = f
                .node(j)
                .json(&["explain", &src.to_string(), &vip(*tcp), "--syn"]);
            here["backend"] != there["backend"]
        })
        .collect()
}

/// Which node each flow rides (router FIB), and each node's status: why too few flows diverged.
fn riding(f: &Fleet, flows: &Flows) -> String {
    let sources = flows.sources.lock().expect("lock").clone();
    let mut on: std::collections::BTreeMap<String, usize> = Default::default();
    for (tcp, src) in sources {
        let n = f
            .node_of_flow(tcp, src)
            .map_or("none".into(), |a| a.to_string());
        *on.entry(n).or_default() += 1;
    }
    format!(
        "flows per node {on:?}\n{}",
        (1..=3)
            .map(|i| f.node(i).diagnose())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Wait until node `i` has shipped at least `at_least` divergent flows and every peer
/// acknowledged them.
fn wait_synced(f: &Fleet, i: usize, at_least: usize, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let st = f.node(i).json(&["status"]);
        let y = &st["sync"];
        let divergent = y["divergent_flows"].as_u64().unwrap_or(0) as usize;
        let acked = y["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .all(|p| p["up"] == true && p["unsynced"] == 0);
        if divergent >= at_least && acked {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "node {i} not synced after {limit:?}: {y}\n{}",
            f.node(i).diagnose()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `xlb backend add` of `addr` (weight 2) to both VIPs on every node; returns once it has ring slots
/// everywhere (its next hop may take a refresh to resolve).
fn add_everywhere(f: &Fleet, addr: &str) {
    for i in 1..=3 {
        for tcp in [true, false] {
            // Weight 2: half of every ring moves, so enough flows diverge to tell.
            f.node(i)
                .ok(&["backend", "add", &vip(tcp), addr, "--weight", "2"]);
        }
    }
    let t0 = Instant::now();
    for i in 1..=3 {
        for tcp in [true, false] {
            loop {
                let list = f.node(i).json(&["backend", "list", &vip(tcp)]);
                let in_ring = list
                    .as_array()
                    .expect("rows")
                    .iter()
                    .any(|r| r["address"] == addr && r["slots"].as_u64().unwrap_or(0) > 0);
                if in_ring && f.node(i).json(&["status"])["changes_pending"] == 0 {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{addr} not in node {i}'s ring: {list}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `n` flows broken, excluding those on `except` (a backend whose server was killed).
fn broken_except(results: &[FlowResult], except: Option<&str>) -> Vec<String> {
    let kept: Vec<FlowResult> = results
        .iter()
        .filter(|r| except.is_none_or(|e| r.backend != e))
        .cloned()
        .collect();
    fleet::broken(&kept)
}

/// Node 3 hangs; wait for the router to drop it, let the flows run on, finish them.
fn node_3_dies(f: &mut Fleet, flows: Flows) -> Vec<FlowResult> {
    node_dies(f, 3, flows)
}

fn node_dies(f: &mut Fleet, i: usize, flows: Flows) -> Vec<FlowResult> {
    f.node_mut(i).hang();
    let rest: Vec<usize> = (1..=3).filter(|&j| j != i).collect();
    f.wait_next_hops(&fronts(f, &rest), Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    flows.finish()
}

/// Scenario 1 with and without sync: a backend is added on every node, then the node carrying
/// flows whose slot moved dies.
fn backend_added_then_node_dies(sync: bool) -> (usize, Vec<String>, Fleet) {
    let s = Settings { sync, ..synced(2) };
    let (mut f, _srv, flows) = with_flows(&s);
    let b3 = f.backends[2].addr.to_string();
    add_everywhere(&f, &b3);
    let moved = divergent_riding(&f, &flows, 3, 1);
    eprintln!(
        "sync {sync}: {} flows ride node 3 on a backend its ring no longer picks",
        moved.len()
    );
    if sync {
        let lag = wait_synced(&f, 3, 1, Duration::from_secs(5));
        for i in 1..=2 {
            wait_synced(&f, i, 0, Duration::from_secs(5));
        }
        let peers = f.node(3).json(&["status"])["sync"]["peers"].clone();
        let lags: Vec<f64> = peers
            .as_array()
            .expect("peers")
            .iter()
            .filter_map(|p| p["lag_ms"].as_f64())
            .collect();
        assert_eq!(lags.len(), 2, "both peers acknowledged a set: {peers}");
        eprintln!("node 3's last sets acknowledged in {lags:?} ms (send to ack)");
        eprintln!("node 3's divergent flows acknowledged by both peers {lag:?} after the last add");
    }
    let results = node_3_dies(&mut f, flows);
    let broken = fleet::broken(&results);
    (moved.len(), broken, f)
}

#[test]
fn without_sync_flows_whose_slot_moved_break_when_their_node_dies() {
    let _one = serial();
    let (moved, broken, _f) = backend_added_then_node_dies(false);
    assert!(moved >= 2, "too few divergent flows to tell ({moved})");
    eprintln!("without sync: {} broken: {broken:#?}", broken.len());
    assert!(!broken.is_empty(), "the scenario must be able to fail");
}

#[test]
fn with_sync_a_backend_add_then_a_dead_node_breaks_nothing() {
    let _one = serial();
    let (moved, broken, f) = backend_added_then_node_dies(true);
    assert!(moved >= 2, "too few divergent flows to tell ({moved})");
    assert!(broken.is_empty(), "{broken:#?}");
    let written: u64 = (1..=2)
        .map(|i| {
            f.node(i).json(&["status"])["sync"]["flows_written"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        written >= moved as u64,
        "survivors wrote {written} synced flows"
    );
    let hits: u64 = (1..=2)
        .map(|i| {
            f.node(i).json(&["stats"])["vips"]
                .as_array()
                .expect("vips")
                .iter()
                .map(|v| v["conntrack_hits"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    eprintln!("with sync: 0 broken; survivors wrote {written} synced flows, {hits} conntrack hits");
    let metrics = f.node(1).ok(&["status"]);
    assert!(metrics.contains("sync on"), "{metrics}");
}

/// Scenario 5: with the router's hash-threshold ECMP, losing the first next hop moves most of
/// the survivors' flows between the other two nodes too; after a backend add those that
/// diverge survive because each survivor shipped its own.
#[test]
fn the_first_next_hop_dies_after_a_backend_add_and_moved_survivor_flows_survive() {
    let _one = serial();
    let s = synced(2);
    let (mut f, _srv, flows) = with_flows(&s);
    let b3 = f.backends[2].addr.to_string();
    add_everywhere(&f, &b3);
    let on2 = divergent_riding(&f, &flows, 2, 3).len();
    let on3 = divergent_riding(&f, &flows, 3, 2).len();
    for i in 1..=3 {
        wait_synced(&f, i, 0, Duration::from_secs(5));
    }
    let results = node_dies(&mut f, 1, flows);
    let broken = fleet::broken(&results);
    eprintln!(
        "first next hop died: {on2} + {on3} divergent flows on the survivors, {} broken",
        broken.len()
    );
    assert!(
        on2 + on3 >= 2,
        "too few divergent survivor flows ({on2} + {on3})"
    );
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Scenario 2 and 3: a backend drained (then another removed) on every node keeps its flows
/// through a node's death; the removed one is not reaped while its flows are active.
#[test]
fn drained_and_removed_backends_keep_their_flows_through_a_dead_node() {
    let _one = serial();
    let s = Settings {
        quorum: None,
        ..synced(usize::MAX)
    };
    let (mut f, _srv, flows) = with_flows(&s);
    let (b1, b2) = (
        f.backends[0].addr.to_string(),
        f.backends[1].addr.to_string(),
    );
    for i in 1..=3 {
        for tcp in [true, false] {
            f.node(i).ok(&["backend", "drain", &vip(tcp), &b1]);
            f.node(i).ok(&["backend", "remove", &vip(tcp), &b2]);
        }
    }
    let moved = divergent_riding(&f, &flows, 3, 1);
    assert!(
        moved.len() >= 2,
        "too few flows on the drained backends ({})",
        moved.len()
    );
    let lag = wait_synced(&f, 3, 1, Duration::from_secs(5));
    eprintln!(
        "drain and remove: {} flows of node 3 diverge; acknowledged in {lag:?}",
        moved.len()
    );
    let results = node_3_dies(&mut f, flows);
    let broken = fleet::broken(&results);
    assert!(broken.is_empty(), "{broken:#?}");
    // The removed backend still has active flows: not reaped on the survivors.
    for i in 1..=2 {
        let list = f.node(i).json(&["backend", "list", &vip(true)]);
        let row = list
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["address"] == b2.as_str())
            .cloned();
        assert!(
            row.is_some(),
            "node {i} reaped {b2} with flows active: {list}"
        );
    }
}

/// Scenario 4: a backend fails, its flows fail over, then a node dies: the flows of healthy
/// backends whose slots the rebuilt ring moved survive.
#[test]
fn a_health_failover_then_a_dead_node_breaks_no_healthy_flow() {
    let _one = serial();
    let s = Settings {
        quorum: None,
        ..synced(usize::MAX)
    };
    let (mut f, mut srv, flows) = with_flows(&s);
    let dead = f.backends[2].name.clone();
    drop(srv.remove(2));
    let b3 = f.backends[2].addr.to_string();
    let t0 = Instant::now();
    for i in 1..=3 {
        loop {
            let list = f.node(i).json(&["backend", "list", &vip(true)]);
            let down = list
                .as_array()
                .expect("rows")
                .iter()
                .any(|r| r["address"] == b3.as_str() && r["state"] == "down");
            if down && f.node(i).json(&["status"])["changes_pending"] == 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{b3} not down on node {i}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_synced(&f, 3, 0, Duration::from_secs(5));
    let results = node_3_dies(&mut f, flows);
    let broken = broken_except(&results, Some(&dead));
    let on_dead = results.iter().filter(|r| r.backend == dead).count();
    eprintln!(
        "health failover then node death: {} flows, {on_dead} were on the failed backend, {} healthy ones broken",
        results.len(),
        broken.len()
    );
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Scenario 6: a node that restarts asks its peers for their flows and announces only after
/// they answered.
#[test]
fn a_rejoining_node_resyncs_before_it_announces() {
    let _one = serial();
    let s = synced(2);
    let (mut f, _srv, flows) = with_flows(&s);
    let b3 = f.backends[2].addr.to_string();
    add_everywhere(&f, &b3);
    wait_synced(&f, 1, 1, Duration::from_secs(5));
    // Node 3 reboots: its data plane and conntrack are gone, its state file (with backend 3,
    // added by the CLI) restores the same config as its peers'.
    f.node_mut(3).die();
    f.wait_next_hops(&fronts(&f, &[1, 2]), Duration::from_secs(3));
    let _ = std::fs::remove_file(f.node(3).dir.join("daemon.log"));
    // A reboot also loses the routes a killed daemon leaves (adopted routes skip the gate).
    let _ = std::process::Command::new("ip")
        .args(["-n", &f.node(3).ns.name, "route", "flush", "table", "100"])
        .output();
    let c = f.config(3, &s);
    f.start_node(3, &c);
    f.wait_next_hops(&fronts(&f, &[1, 2, 3]), Duration::from_secs(15));
    let n3 = f.node(3);
    let resynced = n3
        .log_interval("every peer's flows received")
        .expect("resync logged");
    let announced = n3
        .log_interval("VIP address announced")
        .expect("announce logged");
    eprintln!("rejoin: resync done {resynced:.2} s after start, announced {announced:.2} s");
    assert!(resynced <= announced, "announced before its resync");
    let written = n3.json(&["status"])["sync"]["flows_written"]
        .as_u64()
        .unwrap_or(0);
    assert!(written > 0, "the rejoining node received no flows");
    std::thread::sleep(Duration::from_secs(2));
    let results = flows.finish();
    let broken = fleet::broken(&results);
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Scenario 7: with the sync link cut, status and metrics say the peers are down and how many
/// flows they lack; a node's death then breaks those flows as without sync.
#[test]
fn a_cut_sync_link_is_reported_before_it_costs_flows() {
    let _one = serial();
    let s = synced(2);
    let (mut f, _srv, flows) = with_flows(&s);
    // Cut: blackhole routes between node 3's sync address and its peers' (BGP stays up).
    let n3 = f.node(3).sync_addr.to_string();
    for i in 1..=2 {
        let peer = f.node(i).sync_addr.to_string();
        f.node(3)
            .ns
            .ip(&["route", "add", "blackhole", &format!("{peer}/32")]);
        f.node(i)
            .ns
            .ip(&["route", "add", "blackhole", &format!("{n3}/32")]);
    }
    let b3 = f.backends[2].addr.to_string();
    add_everywhere(&f, &b3);
    let moved = divergent_riding(&f, &flows, 3, 1);
    assert!(
        moved.len() >= 2,
        "too few divergent flows ({}): {}",
        moved.len(),
        riding(&f, &flows)
    );
    // Peers are judged down after three refresh periods (1 s each here).
    let t0 = Instant::now();
    let (status, metrics) = loop {
        let st = f.node(3).json(&["status"]);
        let peers = st["sync"]["peers"].as_array().expect("peers").clone();
        if peers
            .iter()
            .all(|p| p["up"] == false && p["unsynced"].as_u64() >= Some(moved.len() as u64))
        {
            break (f.node(3).ok(&["status"]), scrape(&f, 3));
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "not reported: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("DOWN"), "{status}");
    assert!(metrics.contains("xlb_sync_peer_up{peer="), "{metrics}");
    assert!(
        metrics.contains("xlb_sync_unsynced_flows{peer="),
        "{metrics}"
    );
    eprintln!("cut sync link reported:\n{status}");
    let results = node_3_dies(&mut f, flows);
    let broken = fleet::broken(&results);
    eprintln!(
        "cut sync link: {} broken of {} divergent",
        broken.len(),
        moved.len()
    );
    assert!(
        !broken.is_empty(),
        "the flows the status said were unsynced broke"
    );
}

/// `/metrics` of node `i` (its admin endpoint on the node's loopback).
fn scrape(f: &Fleet, i: usize) -> String {
    use std::io::{Read as _, Write as _};
    f.node(i)
        .ns
        .spawn(|| {
            let mut c = std::net::TcpStream::connect("127.0.0.1:9478").expect("admin endpoint");
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            out
        })
        .join()
        .expect("scrape")
}

/// Scenario 8: a node with another hash seed is reported by its peers and its flows refused.
#[test]
fn config_drift_is_reported_and_the_drifted_peers_flows_refused() {
    let _one = serial();
    let s = synced(2);
    let mut f = Fleet::new(3, 3);
    let _srv = f.servers();
    for i in 1..=3 {
        let mut si = s.clone();
        if i == 3 {
            si.hash_seed = Some(12345);
        }
        let c = f.config(i, &si);
        f.start_node(i, &c);
    }
    f.wait_next_hops(&fronts(&f, &[1, 2, 3]), Duration::from_secs(20));
    let flows = Flows::start(&f.client, 64, 32, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(1));
    let b3 = f.backends[2].addr.to_string();
    add_everywhere(&f, &b3);
    let t0 = Instant::now();
    loop {
        let st = f.node(1).json(&["status"]);
        let y = &st["sync"];
        let peer3 = y["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["address"] == format!("{}:{SYNC_PORT}", f.node(3).sync_addr))
            .cloned()
            .expect("peer 3");
        let refused = y["refused"]["config_mismatch"].as_u64().unwrap_or(0);
        if refused > 0
            && !peer3["config_mismatch"]
                .as_array()
                .expect("list")
                .is_empty()
        {
            assert_eq!(peer3["flows_written"], 0, "{peer3}");
            let text = f.node(1).ok(&["status"]);
            assert!(text.contains("CONFIG DIFFERS"), "{text}");
            eprintln!("drift reported: {peer3}, {refused} records refused");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "drift not reported: {y}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Drift breaks flows that move between nodes; only the report is asserted here.
    let _ = flows.finish();
}

/// Scenario 9: datagrams from outside the fleet, with another key, stale or replayed are
/// refused and counted; none writes a flow.
#[test]
fn forged_stale_and_replayed_datagrams_are_refused() {
    use xlb::sync::wire::{FlowRecord, Key, Kind, Message};
    let _one = serial();
    let (mut f, _srv) = started(&synced(usize::MAX));
    let target = format!("{}:{SYNC_PORT}", f.node(1).sync_addr);
    let before = f.node(1).json(&["status"])["sync"]["flows_written"]
        .as_u64()
        .unwrap_or(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let key = Key::new(&std::fs::read(f.key_file()).expect("key")).expect("key");
    let wrong = Key::new(&[7u8; 32]).expect("key");
    let v: xlb::config::VipRef = vip(true).parse().expect("vip");
    let b1: std::net::IpAddr = f.backends[0].addr.into();
    let msg = |seq: u64, ms: u64| {
        let mut m = Message::new(Kind::Flows, (now_ms << 16) | 1, seq, 0, ms);
        m.digests.insert(v, 1);
        m.records.push(FlowRecord {
            vip: v,
            src: "10.0.1.10".parse().expect("ip"),
            src_port: 5555,
            backend: b1,
        });
        m
    };
    // From the client namespace: not a peer.
    let target_c = target.clone();
    let garbage = msg(1, now_ms).encode(&key);
    f.client
        .spawn(move || {
            let u = std::net::UdpSocket::bind("10.0.1.2:0").expect("bind");
            for _ in 0..5 {
                u.send_to(&garbage, &target_c).expect("send");
            }
        })
        .join()
        .expect("client");
    // From node 2's sync address (its daemon stopped to free the port): another key, a stale
    // clock, then one valid datagram twice.
    f.node_mut(2).die();
    let from = format!("{}:{SYNC_PORT}", f.node(2).sync_addr);
    let datagrams = vec![
        msg(1, now_ms).encode(&wrong),
        msg(2, now_ms - 120_000).encode(&key),
        msg(3, now_ms).encode(&key),
        msg(3, now_ms).encode(&key),
    ];
    f.node(2)
        .ns
        .spawn(move || {
            let u = std::net::UdpSocket::bind(&from).expect("bind the peer's address");
            for d in &datagrams {
                u.send_to(d, &target).expect("send");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .expect("peer");
    std::thread::sleep(Duration::from_millis(300));
    let y = f.node(1).json(&["status"])["sync"].clone();
    eprintln!("refused: {}", y["refused"]);
    assert_eq!(y["refused"]["unknown_peer"], 5, "{y}");
    assert_eq!(y["refused"]["bad_tag"], 1, "{y}");
    assert_eq!(y["refused"]["stale"], 1, "{y}");
    assert_eq!(y["refused"]["replayed"], 1, "{y}");
    // The one accepted datagram names a digest no VIP has: its record is refused too.
    assert_eq!(y["refused"]["config_mismatch"], 1, "{y}");
    assert_eq!(y["flows_written"].as_u64().unwrap_or(0), before, "{y}");
}
