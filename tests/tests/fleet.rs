//! Fleet, part 1: several xlb nodes behind an ECMP router, VIPs announced and withdrawn through
//! real BIRD 2 (BGP + BFD) on every node and on the router. Each scenario runs real TCP and UDP
//! flows from many client addresses and counts the flows that break.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tests::{
    echo::Echo,
    fleet::{self, Fleet, Flows, ONE_AT_A_TIME, Settings},
    topo::TCP_PORT,
};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fleet of `n` nodes and servers on 3 backends, all nodes started with `s`, their routes in
/// the router's FIB.
fn started(n: usize, s: &Settings) -> (Fleet, Vec<Echo>) {
    let all: Vec<usize> = (1..=n).collect();
    started_some(n, &all, s)
}

/// Like `started`, with only the nodes in `which` started.
fn started_some(n: usize, which: &[usize], s: &Settings) -> (Fleet, Vec<Echo>) {
    let mut f = Fleet::new(n, 3);
    let servers = f.servers();
    for &i in which {
        let c = f.config(i, s);
        f.start_node(i, &c);
    }
    let up = fronts(&f, which);
    let took = f.wait_next_hops(&up, Duration::from_secs(20));
    eprintln!(
        "{} nodes announced within {took:?} of the last start",
        which.len()
    );
    (f, servers)
}

#[test]
fn routing_spreads_flows_over_every_node() {
    let _one = serial();
    let (f, _srv) = started(3, &Settings::default());
    let flows = Flows::start(&f.client, 24, 12, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(1));
    let sources = flows.sources.lock().expect("lock").clone();
    let mut per_node: BTreeMap<usize, usize> = BTreeMap::new();
    for (tcp, src) in &sources {
        let hop = f.node_of_flow(*tcp, *src).expect("a route");
        *per_node
            .entry(f.index_of(hop).expect("a node"))
            .or_default() += 1;
    }
    let results = flows.finish();
    eprintln!("flows per node (router FIB): {per_node:?}");
    assert_eq!(per_node.len(), 3, "every node carries flows: {per_node:?}");
    // Every node forwarded VIP packets itself.
    for n in &f.nodes {
        let stats = n.json(&["stats"]);
        let packets: u64 = stats["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .map(|v| v["packets"].as_u64().unwrap_or(0))
            .sum();
        assert!(packets > 0, "node {} forwarded nothing", n.index);
        let st = n.json(&["status"]);
        assert_eq!(st["announce"]["addresses"][0]["announced"], true, "{st}");
    }
    let broken = fleet::broken(&results);
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Flows whose router next hop is node `i` now.
fn riding(f: &Fleet, flows: &Flows, i: usize) -> usize {
    let front = f.node(i).front;
    flows
        .sources
        .lock()
        .expect("lock")
        .iter()
        .filter(|(tcp, src)| f.node_of_flow(*tcp, *src) == Some(front))
        .count()
}

fn fronts(f: &Fleet, which: &[usize]) -> Vec<Ipv4Addr> {
    which.iter().map(|&i| f.node(i).front).collect()
}

/// Run `flows` a little longer, finish them and assert none broke; returns how many ran.
fn none_broke(flows: Flows, scenario: &str) -> usize {
    std::thread::sleep(Duration::from_secs(2));
    let results = flows.finish();
    let broken = fleet::broken(&results);
    let lost: u64 = results.iter().map(|r| r.lost).sum();
    let slowest = results.iter().map(|r| r.slowest).max().unwrap_or_default();
    eprintln!(
        "{scenario}: {} flows, {} broken, {lost} UDP datagrams lost, slowest round trip {slowest:?}",
        results.len(),
        broken.len()
    );
    assert!(broken.is_empty(), "{scenario}: {broken:#?}");
    results.len()
}

#[test]
fn a_dead_node_is_dropped_by_bfd_and_no_flow_breaks() {
    let _one = serial();
    let (mut f, _srv) = started(3, &Settings::default());
    let flows = Flows::start(&f.client, 32, 16, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    let on3 = riding(&f, &flows, 3);
    assert!(on3 > 0, "no flow rides node 3");
    // The host hangs: BIRD stops answering (no BGP notification, no TCP close, as when a
    // host freezes or loses power), its daemon is killed and its forwarder gone. Its link stays
    // up (a bridge between it and the router), so only BFD can tell.
    f.node_mut(3).hang();
    let took = f.wait_next_hops(&fronts(&f, &[1, 2]), Duration::from_secs(3));
    eprintln!(
        "BFD detection: node 3 out of the router's FIB {took:?} after it hung ({on3} flows rode it)"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    none_broke(flows, "node killed");
}

#[test]
fn a_node_whose_link_goes_down_is_dropped_and_no_flow_breaks() {
    let _one = serial();
    let (f, _srv) = started(3, &Settings::default());
    let flows = Flows::start(&f.client, 32, 16, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    let on2 = riding(&f, &flows, 2);
    assert!(on2 > 0, "no flow rides node 2");
    f.node(2).ns.ip(&["link", "set", "eth0", "down"]);
    let took = f.wait_next_hops(&fronts(&f, &[1, 3]), Duration::from_secs(3));
    eprintln!("link down: node 2 out of the router's FIB after {took:?} ({on2} flows rode it)");
    assert!(took < Duration::from_secs(1), "{took:?}");
    none_broke(flows, "node link down");
}

#[test]
fn a_node_that_loses_its_quorum_withdraws_and_flows_move() {
    let _one = serial();
    let s = Settings::default();
    let (f, _srv) = started(3, &s);
    let flows = Flows::start(&f.client, 32, 16, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    let on1 = riding(&f, &flows, 1);
    assert!(on1 > 0, "no flow rides node 1");
    // Node 1 loses its backend segment; the others still reach every backend.
    f.node(1).ns.ip(&["link", "set", "eth1", "down"]);
    let took = f.wait_next_hops(&fronts(&f, &[2, 3]), Duration::from_secs(5));
    // Health: `fall` failed probes, one interval apart, the first up to an interval away.
    let bound = Duration::from_millis(u64::from(s.health_interval_ms) * 3);
    eprintln!(
        "quorum loss: node 1 withdrew {took:?} after losing its backends (health bound {bound:?}); {on1} flows moved"
    );
    assert!(took < bound + Duration::from_millis(500), "{took:?}");
    let st = f.node(1).json(&["status"]);
    let why = st["announce"]["addresses"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        why.contains("below its quorum") || why.contains("no backend takes new flows"),
        "{why}"
    );
    assert_eq!(st["announce"]["addresses"][0]["announced"], false);
    none_broke(flows, "quorum loss on one node");
}

#[test]
fn drain_node_then_stop_loses_no_request() {
    let _one = serial();
    let (mut f, _srv) = started(3, &Settings::default());
    let flows = Flows::start(&f.client, 24, 12, Duration::from_millis(50));
    let short = tests::clients::ShortLoop::start(&f.client, TCP_PORT);
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let out = f.node(3).xlb(&["drain-node"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let withdraw = f.wait_next_hops(&fronts(&f, &[1, 2]), Duration::from_secs(3));
    let waited = f
        .node(3)
        .ok(&["drain-node", "--wait", "--below", "1", "--timeout", "30"]);
    eprintln!(
        "drain-node: out of the router's FIB {withdraw:?} after the command; {} ({:?} in all)",
        waited.trim(),
        t0.elapsed()
    );
    assert!(withdraw < Duration::from_millis(500), "{withdraw:?}");
    let st = f.node(3).json(&["status"]);
    assert_eq!(st["announce"]["node_drained"], true);
    // Maintenance: stop it cleanly. Its routes go with it; BIRD closes its session.
    f.node_mut(3).signal_daemon(libc::SIGTERM);
    if let Some(b) = f.node_mut(3).bird.as_mut() {
        b.stop();
    }
    assert!(
        !f.node(3).table_routes().contains("10.100.0.1"),
        "{}",
        f.node(3).table_routes()
    );
    std::thread::sleep(Duration::from_secs(1));
    let answers = short.finish();
    let failed = answers.get("error").copied().unwrap_or(0);
    let total: usize = answers.values().sum();
    eprintln!("drain-node then stop: {total} short connections, {failed} failed");
    assert_eq!(failed, 0, "{answers:?}");
    none_broke(flows, "drain-node then stop");

    // Drained is kept across a restart until undrained.
    let c = f.config(3, &Settings::default());
    f.node_mut(3).start_daemon(&c);
    f.node_mut(3).start_bird();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.next_hops(), fronts(&f, &[1, 2]).into_iter().collect());
    assert!(f.node(3).ok(&["status"]).contains("NODE DRAINED"));
    f.node(3).ok(&["undrain-node"]);
    f.wait_next_hops(&fronts(&f, &[1, 2, 3]), Duration::from_secs(10));
}

#[test]
fn a_starting_node_announces_only_after_its_hold_and_only_what_serves() {
    let _one = serial();
    let (mut f, _srv) = started_some(3, &[1, 2], &Settings::default());
    // Every node also has a VIP whose only backend never answers ARP: never announced.
    let dark = "\n[[vip]]\naddress = \"10.100.0.2\"\nport = 80\nprotocol = \"tcp\"\n\n[[vip.backend]]\naddress = \"10.0.2.250\"\n";
    let flows = Flows::start(&f.client, 16, 8, Duration::from_millis(50));
    let s = Settings {
        hold_secs: 3,
        ..Settings::default()
    };
    let cfg = f.config(3, &s) + dark;
    let t0 = Instant::now();
    f.node_mut(3).start_daemon(&cfg);
    f.node_mut(3).start_bird();
    let st = f.node(3).ok(&["status"]);
    assert!(st.contains("holding"), "{st}");
    f.wait_next_hops(&fronts(&f, &[1, 2, 3]), Duration::from_secs(15));
    let since_start = t0.elapsed();
    let decided = f
        .node(3)
        .log_interval("VIP address announced")
        .expect("announced in the log");
    eprintln!(
        "start to first announcement: {decided:.2} s in the daemon (hold_secs 3, min_up_secs 1), {since_start:?} to the router's FIB (BGP session set up meanwhile)"
    );
    assert!(decided >= 3.0, "{decided}");
    assert!(since_start >= Duration::from_secs(3), "{since_start:?}");
    let dark_addr = Ipv4Addr::new(10, 100, 0, 2);
    assert!(f.next_hops_of(dark_addr).is_empty());
    let st = f.node(3).json(&["status"]);
    let rows = st["announce"]["addresses"]
        .as_array()
        .expect("rows")
        .clone();
    let row = rows
        .iter()
        .find(|r| r["address"] == "10.100.0.2")
        .expect("the dark VIP's address");
    assert_eq!(row["announced"], false);
    assert!(
        row["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no backend takes new flows")),
        "{row}"
    );
    none_broke(flows, "a node joins");
}

/// Router-side ECMP: which flows move when a node leaves. With the plain multipath route BIRD
/// installs (hash-threshold), flows of the surviving nodes move too; with a resilient next-hop
/// group only the leaving node's flows move. Either way no connection breaks: every node picks
/// the same backend.
#[test]
fn hash_threshold_moves_survivors_flows_and_resilient_groups_do_not() {
    let _one = serial();
    let (mut f, _srv) = started(3, &Settings::default());
    let flows = Flows::start(&f.client, 24, 12, Duration::from_millis(50));
    // 3,000 five-tuples from the client addresses, looked up in the router's FIB.
    let tuples: Vec<std::net::SocketAddrV4> = (0..3000u32)
        .map(|i| {
            std::net::SocketAddrV4::new(
                Ipv4Addr::new(10, 0, 1, 10 + (i % u32::from(fleet::CLIENT_SOURCES)) as u8),
                20000 + (i / u32::from(fleet::CLIENT_SOURCES)) as u16 * 7 + (i % 5) as u16,
            )
        })
        .collect();
    let map = |f: &Fleet| -> Vec<Option<Ipv4Addr>> {
        tuples
            .iter()
            .map(|t| f.node_of(*t, TCP_PORT, "tcp"))
            .collect()
    };
    let moved = |before: &[Option<Ipv4Addr>], after: &[Option<Ipv4Addr>], gone: Ipv4Addr| {
        let survivors = before.iter().filter(|b| **b != Some(gone)).count();
        let collateral = before
            .iter()
            .zip(after)
            .filter(|(b, a)| **b != Some(gone) && b != a)
            .count();
        (survivors, collateral)
    };
    let n3 = f.node(3).front;

    // A resilient group (as a Linux router would program it), preferred over BIRD's route.
    let r = &f.router;
    for i in 1..=3 {
        r.ip(&[
            "nexthop",
            "add",
            "id",
            &(10 + i).to_string(),
            "via",
            &f.node(i).front.to_string(),
            "dev",
            "br0",
        ]);
    }
    r.ip(&[
        "nexthop",
        "add",
        "id",
        "100",
        "group",
        "11/12/13",
        "type",
        "resilient",
        "buckets",
        "512",
    ]);
    r.ip(&[
        "route",
        "add",
        &format!("{}/32", tests::topo::VIP),
        "nhid",
        "100",
        "metric",
        "1",
    ]);
    let before = map(&f);
    r.ip(&[
        "nexthop",
        "replace",
        "id",
        "100",
        "group",
        "11/12",
        "type",
        "resilient",
        "buckets",
        "512",
    ]);
    let after = map(&f);
    let (survivors, resilient_moved) = moved(&before, &after, n3);
    r.ip(&[
        "route",
        "del",
        &format!("{}/32", tests::topo::VIP),
        "nhid",
        "100",
        "metric",
        "1",
    ]);
    r.ip(&["nexthop", "del", "id", "100"]);
    eprintln!(
        "resilient group: node 3 removed, {resilient_moved} of {survivors} flows of the surviving nodes moved"
    );
    assert_eq!(resilient_moved, 0);

    // BIRD's multipath route: node 3 dies, BFD withdraws it.
    let before = map(&f);
    assert!(before.iter().all(Option::is_some));
    f.node_mut(3).hang();
    f.wait_next_hops(&fronts(&f, &[1, 2]), Duration::from_secs(3));
    let after = map(&f);
    let (survivors, threshold_moved) = moved(&before, &after, n3);
    eprintln!(
        "hash-threshold (BIRD multipath): node 3 removed, {threshold_moved} of {survivors} flows of the surviving nodes moved ({:.0}%)",
        100.0 * threshold_moved as f64 / survivors as f64
    );
    assert!(
        threshold_moved > survivors / 10,
        "{threshold_moved} of {survivors}"
    );
    none_broke(flows, "router ECMP modes");
}

/// A killed daemon leaves its route (the data plane still forwards; the routers' BFD covers a
/// dead host) and the next daemon adopts it without a withdraw; a clean stop and `xlb detach`
/// remove it.
#[test]
fn routes_outlive_a_killed_daemon_and_go_with_a_clean_stop_or_detach() {
    let _one = serial();
    let s = Settings::default();
    let (mut f, _srv) = started(2, &s);
    let both = fronts(&f, &[1, 2]);
    let flows = Flows::start(&f.client, 24, 12, Duration::from_millis(50));
    let watch = f.watch_next_hops();
    f.node_mut(2).signal_daemon(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        f.node(2).table_routes().contains("10.100.0.1"),
        "the route stays"
    );
    let cfg = f.config(2, &s);
    f.node_mut(2).start_daemon(&cfg);
    std::thread::sleep(Duration::from_secs(2));
    let seen = watch.finish();
    assert_eq!(
        seen,
        vec![both.iter().copied().collect()],
        "node 2 left the router's FIB across a kill and restart"
    );
    assert!(f.node(2).log().contains("adopting VIP routes"));
    let st = f.node(2).json(&["status"]);
    assert_eq!(st["announce"]["addresses"][0]["announced"], true, "{st}");
    assert_eq!(st["announce"]["withdraws"], 0, "{st}");

    f.node_mut(2).signal_daemon(libc::SIGTERM);
    let took = f.wait_next_hops(&fronts(&f, &[1]), Duration::from_secs(3));
    eprintln!("clean stop: node 2 out of the router's FIB {took:?} after SIGTERM returned");
    assert!(
        f.node(2).table_routes().trim().is_empty()
            || !f.node(2).table_routes().contains("10.100.0.1")
    );

    f.node_mut(2).start_daemon(&cfg);
    f.wait_next_hops(&both, Duration::from_secs(10));
    f.node_mut(2).signal_daemon(libc::SIGKILL);
    let path = f.node(2).config_path.display().to_string();
    let out = f.node(2).on_host(&["detach", "--config", &path]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("withdrew 1 VIP route"), "{text}");
    f.wait_next_hops(&fronts(&f, &[1]), Duration::from_secs(3));
    none_broke(flows, "daemon killed, restarted, stopped, detached");
}

/// The BIRD configurations in `dist/` are what BIRD itself accepts.
#[test]
fn the_shipped_bird_configurations_parse() {
    for f in ["bird-xlb.conf", "bird-router.conf"] {
        let path = format!("{}/../dist/{f}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("bird")
            .args(["-p", "-c", &path])
            .output()
            .expect("bird (apt install bird2)");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
