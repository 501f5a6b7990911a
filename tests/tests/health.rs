//! Health probes end to end: a backend's server dies while clients hold long-lived flows to
//! every backend; the daemon marks it down within interval x fall (+ one interval), new flows
//! avoid it, and no flow on a healthy backend breaks or stalls. The server returns, the backend
//! comes back after `rise` successes and takes new flows, and no existing flow moves. TCP and
//! UDP; and a flapping backend causes no ring churn.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tests::{clients::LongLived, echo::Echo, lab::Lab, topo::VIP};

const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 3;
const TCP_PORT: u16 = 9000;
const UDP_PORT: u16 = 9001;

fn config(lab: &Lab, port: u16, proto: &str, check: &str) -> String {
    let mut c = lab.base_config();
    c += &format!(
        "\n[[vip]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n\n[vip.health]\n{check}\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = {RISE}\nfall = {FALL}\n"
    );
    for b in &lab.net.backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    c
}

fn wait_state(lab: &Lab, addr: &str, state: &str, limit: Duration) -> Duration {
    lab.wait_backend_state(None, addr, state, limit)
}

fn echo(b: &tests::topo::BackendHost) -> Echo {
    Echo::backend(b, TCP_PORT, UDP_PORT)
}

fn servers(lab: &Lab) -> Vec<Option<Echo>> {
    lab.net.backends.iter().map(|b| Some(echo(b))).collect()
}

/// 24 long-lived TCP connections through the VIP, ping-pong every 50 ms until told to stop,
/// given `settle_ms` to spread over the backends.
fn tcp_flows(lab: &Lab, settle_ms: u64) -> LongLived {
    let clients = LongLived::start(
        &lab.net.client,
        24,
        TCP_PORT,
        false,
        Duration::from_millis(50),
    );
    std::thread::sleep(Duration::from_millis(settle_ms));
    clients
}

/// New TCP connections through the VIP; the answering backends.
fn new_tcp(lab: &Lab, n: usize) -> HashMap<String, usize> {
    tests::clients::short_tcp(&lab.net.client, n, TCP_PORT, None)
}

#[test]
fn tcp_backend_failure_is_detected_and_only_its_flows_are_affected() {
    let mut lab = Lab::new(3);
    let mut srv = servers(&lab);
    lab.start(&config(&lab, TCP_PORT, "tcp", "type = \"tcp\""));
    let dead = lab.net.backends[1].addr.to_string();
    let list = lab.json(&["backend", "list"]);
    assert!(list[0]["health"]["healthy"] == true, "{list}");

    let clients = tcp_flows(&lab, 500);

    // Kill backend-2's server.
    let t_kill = Instant::now();
    srv[1].take().expect("server").kill();
    let bound = Duration::from_millis(INTERVAL_MS * FALL + INTERVAL_MS);
    let detect = wait_state(&lab, &dead, "down", bound + Duration::from_millis(400));
    let detect = detect.max(t_kill.elapsed().min(detect));
    eprintln!(
        "TCP: down detected {} ms after the kill (bound {} ms)",
        detect.as_millis(),
        bound.as_millis()
    );
    let seen = new_tcp(&lab, 30);
    assert!(
        !seen.contains_key("backend-2") && !seen.contains_key("error"),
        "{seen:?}"
    );

    // Bring it back: up after `rise` successes, and it takes new flows again.
    let b = &lab.net.backends[1];
    srv[1] = Some(echo(b));
    let back = wait_state(
        &lab,
        &dead,
        "up",
        Duration::from_millis(INTERVAL_MS * (RISE + 1)) + Duration::from_millis(400),
    );
    eprintln!("TCP: back up {} ms after the restart", back.as_millis());
    let seen = new_tcp(&lab, 60);
    assert!(seen.get("backend-2").is_some_and(|&n| n > 0), "{seen:?}");
    std::thread::sleep(Duration::from_millis(300));

    let tally = clients.finish();
    for healthy in ["backend-1", "backend-3"] {
        let (trips, errors, slowest) = tally.get(healthy).copied().expect("flows on each backend");
        eprintln!(
            "{healthy}: {trips} round trips, {errors} broken, slowest {} ms",
            slowest.as_millis()
        );
        assert_eq!(
            errors, 0,
            "a connection to healthy {healthy} broke or moved"
        );
        assert!(
            slowest < Duration::from_millis(500),
            "a flow to {healthy} stalled: {slowest:?}"
        );
    }
    let status = lab.json(&["status"]);
    assert_eq!(status["health_transitions"], 2, "{status}");

    // The Prometheus endpoint (localhost of the LB namespace) tells the same story.
    let metrics = scrape(&lab);
    let dead_labels = format!("vip=\"10.100.0.1:{TCP_PORT}/tcp\",backend=\"{dead}\"");
    for want in [
        format!("xlb_backend_up{{{dead_labels}}} 1"),
        format!("xlb_backend_failures_total{{{dead_labels}}} 1"),
        "xlb_health_transitions_total 2".to_string(),
        "# HELP xlb_vip_packets Packets forwarded for the VIP.".to_string(),
    ] {
        assert!(metrics.contains(&want), "missing {want:?} in:\n{metrics}");
    }
    let packets: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "xlb_vip_packets_total{{vip=\"10.100.0.1:{TCP_PORT}/tcp\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("vip packets");
    assert!(packets > 1000, "{packets}");
    assert!(metrics.contains("xlb_backend_mttr_seconds{"), "{metrics}");
    let row = lab.json(&["backend", "list"])[1].clone();
    assert_eq!(row["health"]["failures"], 1, "{row}");
    assert!(row["health"]["mttr_secs"].as_f64().is_some(), "{row}");
}

#[test]
fn udp_backend_failure_is_detected_and_other_flows_lose_nothing() {
    let mut lab = Lab::new(3);
    let mut srv = servers(&lab);
    lab.start(&config(
        &lab,
        UDP_PORT,
        "udp",
        "type = \"udp\"\npayload = \"health\"\nexpect = \"health\"",
    ));
    let dead = lab.net.backends[1].addr.to_string();

    let clients = LongLived::start(
        &lab.net.client,
        24,
        UDP_PORT,
        true,
        Duration::from_millis(20),
    );
    std::thread::sleep(Duration::from_millis(400));

    srv[1].take().expect("server").kill();
    let bound = Duration::from_millis(INTERVAL_MS * FALL + INTERVAL_MS);
    let detect = wait_state(&lab, &dead, "down", bound + Duration::from_millis(400));
    eprintln!(
        "UDP: down detected {} ms after the kill (bound {} ms)",
        detect.as_millis(),
        bound.as_millis()
    );
    let b = &lab.net.backends[1];
    srv[1] = Some(echo(b));
    wait_state(
        &lab,
        &dead,
        "up",
        Duration::from_millis(INTERVAL_MS * (RISE + 1)) + Duration::from_millis(400),
    );
    std::thread::sleep(Duration::from_millis(300));
    let tally = clients.finish();
    for healthy in ["backend-1", "backend-3"] {
        let (trips, lost, slowest) = tally.get(healthy).copied().expect("flows on each backend");
        eprintln!(
            "{healthy}: {trips} round trips, {lost} lost, slowest {} ms",
            slowest.as_millis()
        );
        assert_eq!(
            lost, 0,
            "datagrams of a flow to healthy {healthy} were lost or moved"
        );
    }
}

#[test]
fn a_flapping_backend_does_not_churn_the_ring() {
    let mut lab = Lab::new(2);
    // Backend 1 answers every other probe: never `fall` = 2 failures in a row.
    let b = &lab.net.backends[0];
    let _flap = tests::echo::udp_responder(&b.ns, &b.name, b.addr.into(), UDP_PORT, 2);
    let b = &lab.net.backends[1];
    let _steady = tests::echo::udp_responder(&b.ns, &b.name, b.addr.into(), UDP_PORT, 1);
    let cfg = config(
        &lab,
        UDP_PORT,
        "udp",
        "type = \"udp\"\npayload = \"health\"",
    )
    .replace(
        &format!("rise = {RISE}\nfall = {FALL}"),
        "rise = 2\nfall = 2",
    )
    .replace(&format!("interval_ms = {INTERVAL_MS}"), "interval_ms = 100")
    .replace("timeout_ms = 150", "timeout_ms = 60");
    lab.start(&cfg);
    let before = lab.json(&["status"]);
    std::thread::sleep(Duration::from_secs(2));
    let after = lab.json(&["status"]);
    assert_eq!(after["health_transitions"], 0, "{after}");
    assert_eq!(
        after["ring_rebuilds"], before["ring_rebuilds"],
        "no ring churn"
    );
    assert_eq!(lab.json(&["backend", "list"])[0]["state"], "up");
}

/// Ring slots per backend address, from `backend list`.
fn slots(lab: &Lab) -> HashMap<String, u64> {
    lab.json(&["backend", "list"])
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["address"].as_str().expect("address").to_string(),
                r["slots"].as_u64().expect("slots"),
            )
        })
        .collect()
}

#[test]
fn below_quorum_the_vip_uses_its_fallback_or_keeps_its_last_ring() {
    let mut lab = Lab::new(3);
    let mut srv = servers(&lab);
    let (b2, b3) = (
        lab.net.backends[1].addr.to_string(),
        lab.net.backends[2].addr.to_string(),
    );
    let base = config(&lab, TCP_PORT, "tcp", "type = \"tcp\"");
    let quorum = |policy: &str| {
        base.replacen(
            "\n[vip.health]",
            &format!(
                "quorum = 3\non_quorum_loss = \"{policy}\"\nfallback = [\"{b3}\"]\n\n[vip.health]"
            ),
            1,
        )
    };
    lab.start(&quorum("fallback"));
    let before = slots(&lab);
    assert!(before.values().all(|&s| s > 20000), "{before:?}");

    // Fallback: two healthy of a quorum of three -> only the fallback backend takes flows.
    srv[1].take().expect("server").kill();
    wait_state(&lab, &b2, "down", Duration::from_secs(2));
    let now = slots(&lab);
    assert_eq!(now[&b3], 65537, "{now:?}");
    let status = lab.json(&["status"]);
    assert_eq!(status["below_quorum"][0], "10.100.0.1:9000/tcp", "{status}");
    let seen = new_tcp(&lab, 20);
    assert_eq!(seen.get("backend-3"), Some(&20), "{seen:?}");

    let b = &lab.net.backends[1];
    srv[1] = Some(echo(b));
    wait_state(&lab, &b2, "up", Duration::from_secs(2));
    assert_eq!(
        slots(&lab),
        before,
        "quorum restored: the same table as before"
    );
    assert!(
        lab.json(&["status"])["below_quorum"]
            .as_array()
            .expect("list")
            .is_empty()
    );

    // Keep-last: the last ring that met the quorum stays (fail open).
    lab.ok(&["apply", "-f", &lab.file("keep.toml", &quorum("keep-last"))]);
    srv[1].take().expect("server").kill();
    wait_state(&lab, &b2, "down", Duration::from_secs(2));
    assert_eq!(slots(&lab), before, "ring kept below quorum");
    assert_eq!(lab.json(&["status"])["quorum_losses"], 2);
}

/// `GET /metrics` from inside the LB namespace.
fn scrape(lab: &Lab) -> String {
    let out = lab.admin_get("/metrics");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

/// A minimal HTTP server on every address of `b`'s namespace (port `port`): `200 ok`.
fn http_ok(b: &tests::topo::BackendHost, port: u16) -> Echo {
    Echo::http(&b.ns, port)
}

/// Health checks through the data path (`via = "vip"`): each probe goes to the VIP and its port,
/// encapsulated for its backend exactly as the forwarder would, and the answer comes straight
/// back from the VIP. Backend 2 loses the VIP from its loopback, so clients' packets die there:
/// its direct probe (its own address) still passes, the VIP probe fails and takes it out, for
/// TCP and HTTP; new flows avoid it and the long-lived flows on the others go on.
#[test]
fn probes_through_the_data_path_find_a_backend_that_drops_clients() {
    let mut lab = Lab::new(3);
    lab.route_vips_out_of_the_forwarder();
    let _srv = servers(&lab);
    let _http: Vec<Echo> = lab.net.backends.iter().map(|b| http_ok(b, 9080)).collect();
    let vip_tcp = "type = \"tcp\"\nvia = \"vip\"";
    lab.start(&config(&lab, TCP_PORT, "tcp", vip_tcp));
    let addrs = lab.backend_addrs();
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * (FALL + 2)));
    for a in &addrs {
        wait_state(&lab, a, "up", Duration::from_secs(2));
    }
    let clients = tcp_flows(&lab, 300);

    // Backend 2 no longer has the VIP: what reaches it through the data path is not for it.
    let b2 = &lab.net.backends[1];
    b2.ns
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
    let t = wait_state(&lab, &addrs[1], "down", Duration::from_secs(3));
    eprintln!(
        "via vip, tcp: backend 2 down {} ms after the VIP left it",
        t.as_millis()
    );
    let row = &lab.json(&["backend", "list"])[1];
    assert!(
        row["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("tcp")),
        "{row}"
    );

    // A direct probe of the same backend passes: its service still answers on its address.
    let path = lab.file(
        "direct.toml",
        &config(&lab, TCP_PORT, "tcp", "type = \"tcp\""),
    );
    lab.ok(&["apply", "-f", &path]);
    let t = wait_state(&lab, &addrs[1], "up", Duration::from_secs(3));
    eprintln!("direct, tcp: backend 2 up again {} ms later", t.as_millis());

    // HTTP through the data path: down again; the other two stay up.
    let check = "type = \"http\"\nport = 9080\nvia = \"vip\"";
    let path = lab.file("http.toml", &config(&lab, TCP_PORT, "tcp", check));
    lab.ok(&["apply", "-f", &path]);
    let t = wait_state(&lab, &addrs[1], "down", Duration::from_secs(3));
    eprintln!(
        "via vip, http: backend 2 down {} ms after the apply",
        t.as_millis()
    );
    for a in [&addrs[0], &addrs[2]] {
        wait_state(&lab, a, "up", Duration::from_secs(1));
    }
    let seen = new_tcp(&lab, 30);
    assert!(
        !seen.contains_key("backend-2") && !seen.contains_key("error"),
        "{seen:?}"
    );
    let tally = clients.finish();
    for healthy in ["backend-1", "backend-3"] {
        let (trips, errors, _) = tally.get(healthy).copied().expect("flows on each backend");
        eprintln!("{healthy}: {trips} round trips, {errors} broken");
        assert_eq!(
            errors, 0,
            "a connection to healthy {healthy} broke or moved"
        );
    }
}
