//! End-to-end scenarios with the daemon and real sockets (issue 6). Backend failure under load
//! is in `health.rs`, daemon SIGKILL under load in `daemon.rs`. Long-lived clients are pinned to
//! one CPU: on veth the sender's CPU runs XDP, as RSS pins a flow to a queue on a NIC, and
//! conntrack is per CPU.

use std::{net::Ipv4Addr, time::Duration};

use tests::{
    clients::{LongLived, Tally, short_tcp, short_tcp_to},
    echo::Echo,
    lab::Lab,
    topo::{BackendHost, VIP},
};

const TCP: u16 = 9000;
const UDP: u16 = 9001;

fn echo(b: &BackendHost) -> Echo {
    Echo::backend(b, TCP, UDP)
}

/// A lab of `n` backends running echo servers (daemon not started yet), and their addresses.
fn with_servers(n: usize) -> (Lab, Vec<Echo>, Vec<String>) {
    servers_on(Lab::new(n))
}

/// `lab` with echo servers on its backends, and their addresses.
fn servers_on(lab: Lab) -> (Lab, Vec<Echo>, Vec<String>) {
    let srv: Vec<Echo> = lab.net.backends.iter().map(echo).collect();
    let a = addrs(&lab);
    (lab, srv, a)
}

/// A lab of `n` backends with echo servers and the daemon running the scenario config, all
/// weights 1.
fn started(n: usize) -> (Lab, Vec<Echo>, Vec<String>, String) {
    let (mut lab, srv, a) = with_servers(n);
    let cfg = config(
        &lab,
        &a.iter().map(|x| (x.clone(), 1)).collect::<Vec<_>>(),
        "",
    );
    lab.start(&cfg);
    (lab, srv, a, cfg)
}

/// Base config plus a TCP and a UDP VIP over `backends` (address, weight); the UDP VIP hashes
/// on the source address.
fn config(lab: &Lab, backends: &[(String, u32)], extra_daemon: &str) -> String {
    let mut c = lab.base_config();
    if !extra_daemon.is_empty() {
        c = c.replace("[daemon]\n", &format!("[daemon]\n{extra_daemon}\n"));
    }
    for (port, proto, hash) in [(TCP, "tcp", "five-tuple"), (UDP, "udp", "src-ip")] {
        c += &format!(
            "\n[[vip]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\nhash = \"{hash}\"\n"
        );
        for (a, w) in backends {
            c += &format!("\n[[vip.backend]]\naddress = \"{a}\"\nweight = {w}\n");
        }
    }
    c
}

fn addrs(lab: &Lab) -> Vec<String> {
    lab.net
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect()
}

/// No flow to these backends failed, moved or stalled.
fn intact(t: &Tally, names: &[&str]) {
    for n in names {
        let (trips, failed, slowest) = t.get(*n).copied().unwrap_or_default();
        eprintln!(
            "  {n}: {trips} round trips, {failed} failed, slowest {} ms",
            slowest.as_millis()
        );
        assert!(trips > 0, "no flow on {n}: {t:?}");
        assert_eq!(failed, 0, "a flow to {n} broke, moved or timed out: {t:?}");
        assert!(
            slowest < Duration::from_millis(500),
            "a flow to {n} stalled: {slowest:?}"
        );
    }
}

#[test]
fn distribution_follows_weights() {
    let (mut lab, _srv, a) = with_servers(3);
    lab.start(&config(
        &lab,
        &[(a[0].clone(), 1), (a[1].clone(), 2), (a[2].clone(), 3)],
        "",
    ));
    let n = 3000;
    let seen = short_tcp(&lab.net.client, n, TCP, None);
    assert!(!seen.contains_key("error"), "{seen:?}");
    for (name, want) in [
        ("backend-1", 1.0 / 6.0),
        ("backend-2", 2.0 / 6.0),
        ("backend-3", 3.0 / 6.0),
    ] {
        let got = *seen.get(name).unwrap_or(&0) as f64 / n as f64;
        eprintln!(
            "distribution: {name} {:.1}% (weight share {:.1}%)",
            100.0 * got,
            100.0 * want
        );
        assert!(
            (got - want).abs() < 0.04,
            "{name}: {got:.3} vs {want:.3}: {seen:?}"
        );
    }
}

#[test]
fn affinity_per_connection_and_per_client() {
    let (mut lab, _srv, a) = with_servers(3);
    let clients: Vec<Ipv4Addr> = (3..=10).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
    for c in &clients {
        lab.net
            .client
            .ip(&["addr", "add", &format!("{c}/24"), "dev", "c0"]);
    }
    lab.start(&config(
        &lab,
        &a.iter().map(|x| (x.clone(), 1)).collect::<Vec<_>>(),
        "",
    ));

    // Every packet of a connection reaches the same backend (a moved one is a failure).
    let flows = LongLived::start(&lab.net.client, 24, TCP, false, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(1500));
    intact(&flows.finish(), &["backend-1", "backend-2", "backend-3"]);

    // Source-IP hashing (the UDP VIP): all flows of one client on one backend; clients spread.
    let mut homes = std::collections::HashSet::new();
    for c in clients {
        let seen = lab
            .net
            .client
            .spawn(move || {
                let mut seen = std::collections::HashSet::new();
                for _ in 0..20 {
                    let u = std::net::UdpSocket::bind((c, 0)).expect("bind");
                    u.set_read_timeout(Some(Duration::from_secs(1)))
                        .expect("timeout");
                    let mut buf = [0u8; 64];
                    let k = (0..5)
                        .find_map(|_| {
                            u.send_to(b"ping", (VIP, UDP)).ok()?;
                            u.recv(&mut buf).ok()
                        })
                        .expect("answer");
                    seen.insert(
                        String::from_utf8_lossy(&buf[..k])
                            .split('|')
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
                seen
            })
            .join()
            .expect("client");
        assert_eq!(seen.len(), 1, "client {c} spread over {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "8 clients all on one backend: {homes:?}");
}

#[test]
fn backend_added_under_load_breaks_nothing() {
    let (mut lab, _srv, a) = with_servers(4);
    lab.start(&config(
        &lab,
        &a[..3].iter().map(|x| (x.clone(), 1)).collect::<Vec<_>>(),
        "",
    ));
    let tcp = LongLived::start(&lab.net.client, 24, TCP, false, Duration::from_millis(20));
    let udp = LongLived::start(&lab.net.client, 12, UDP, true, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    lab.ok(&["backend", "add", &format!("{VIP}:{TCP}/tcp"), &a[3]]);
    lab.ok(&["backend", "add", &format!("{VIP}:{UDP}/udp"), &a[3]]);
    std::thread::sleep(Duration::from_millis(800));
    let seen = short_tcp(&lab.net.client, 60, TCP, None);
    assert!(
        seen.get("backend-4").is_some_and(|&n| n > 0),
        "the new backend takes new flows: {seen:?}"
    );
    eprintln!("backend added under load:");
    intact(&tcp.finish(), &["backend-1", "backend-2", "backend-3"]);
    let u = udp.finish();
    let names: Vec<&str> = u.keys().map(String::as_str).collect();
    intact(&u, &names);
}

#[test]
fn drain_takes_no_new_flows_and_lets_established_ones_finish() {
    let (lab, _srv, a, _) = started(3);
    let tcp = LongLived::start(&lab.net.client, 24, TCP, false, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(400));
    lab.ok(&["backend", "drain", &format!("{VIP}:{TCP}/tcp"), &a[1]]);
    let seen = short_tcp(&lab.net.client, 60, TCP, None);
    assert!(
        !seen.contains_key("backend-2") && !seen.contains_key("error"),
        "{seen:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("drain:");
    // The drained backend's established connections keep working and close cleanly.
    intact(&tcp.finish(), &["backend-1", "backend-2", "backend-3"]);
}

#[test]
fn conntrack_pressure_evicts_but_established_flows_keep_their_backend() {
    let (mut lab, _srv, a) = servers_on(Lab::flooding(3));
    lab.start(
        &config(
            &lab,
            &a.iter().map(|x| (x.clone(), 1)).collect::<Vec<_>>(),
            "",
        )
        .replace("conntrack_entries = 65536", "conntrack_entries = 2048")
        // Every SYN inserts: this scenario is about LRU pressure, not the new-flow limit.
        .replace("[forwarding]\n", "[forwarding]\nnew_flow_limit = 0\n"),
    );
    let tcp = LongLived::start(&lab.net.client, 16, TCP, false, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    // A flood of 30,000 new flows (SYNs from the generator) through a 2048-entry LRU.
    let lc_mac = lab.net.lb.mac("lc").map(|b| format!("{b:02x}")).join(":");
    let out = lab.in_ns(
        &lab.net.client.name,
        &[
            "loadgen",
            "--iface",
            "c0",
            "--dst",
            &format!("{VIP}:{TCP}"),
            "--dst-mac",
            &lc_mac,
            "--kind",
            "syn",
            "--flows",
            "30000",
            "--count",
            "30000",
            "--rate",
            "25000",
            "--threads",
            "1",
            "--sport",
            "20000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let stats = lab.json(&["stats"]);
    let new_flows = stats["vips"][0]["new_flows"].as_u64().expect("new flows");
    assert!(
        new_flows >= 30000,
        "the flood went through the forwarder: {stats}"
    );
    let tracked = lab.json(&["flows", "--limit", "100000"])["flows"]
        .as_array()
        .expect("flows")
        .len();
    assert!(tracked < 30000, "the LRU evicted: {tracked} flows tracked");
    eprintln!("conntrack pressure: {new_flows} new flows, {tracked} tracked afterwards:");
    intact(&tcp.finish(), &["backend-1", "backend-2", "backend-3"]);
}

#[test]
fn invalid_config_under_load_is_refused_and_changes_nothing() {
    let (lab, _srv, _, good) = started(3);
    let before = lab.ok(&["config", "export"]);
    let tcp = LongLived::start(&lab.net.client, 24, TCP, false, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    for (name, bad) in [
        ("weight", good.replacen("weight = 1", "weight = 99999", 1)),
        ("syntax", good.replacen("[[vip]]", "[[vip]\n", 1)),
        (
            "duplicate",
            good.clone() + &good[good.find("\n[[vip]]").expect("vip")..],
        ),
    ] {
        let path = lab.file(&format!("{name}.toml"), &bad);
        let err = lab.fails(&["apply", "-f", &path]);
        assert!(err.contains("invalid configuration"), "{name}: {err}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.ok(&["config", "export"]), before);
    eprintln!("invalid config under load:");
    intact(&tcp.finish(), &["backend-1", "backend-2", "backend-3"]);
}

/// A second daemon (LB B) started by hand beside the lab's; killed and cleaned up on drop.
struct SecondLb {
    child: std::process::Child,
    socket: std::path::PathBuf,
    pins: std::path::PathBuf,
}

impl SecondLb {
    fn xlb(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(tests::lab::xlb_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("xlb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

impl Drop for SecondLb {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test spawned, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = xlb::dataplane::pin::remove_all(&self.pins);
    }
}

#[test]
fn a_connection_survives_moving_to_a_second_lb_with_the_same_config() {
    use std::io::{Read as _, Write as _};
    let (lab, _srv, _, cfg_a) = started(3);

    // LB B: its own namespace, a second link from the client and one to each backend, where
    // xlb's decap accepts the same tunnel address.
    let lbb = tests::netns::Netns::new("lbb");
    tests::netns::veth(&lab.net.client, "c1", &lbb, "lc");
    // The flow keeps its source (the socket is bound to 10.0.1.2); c1 only carries it to B.
    lab.net
        .client
        .ip(&["addr", "add", "10.0.9.2/24", "dev", "c1"]);
    lbb.ip(&["addr", "add", "10.0.9.1/24", "dev", "lc"]);
    for b in &lab.net.backends {
        let (lb_dev, b_dev) = (format!("lbb{}", b.id), format!("bb{}", b.id));
        tests::netns::veth(&lbb, &lb_dev, &b.ns, &b_dev);
        lbb.ip(&["link", "set", &lb_dev, "mtu", "1600"]);
        b.ns.ip(&["link", "set", &b_dev, "mtu", "1600"]);
        for k in ["all", "default", &b_dev] {
            b.ns.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")]);
        }
        lbb.ip(&["route", "add", &format!("{}/32", b.addr), "dev", &lb_dev]);
        let out = lab.in_ns(
            &b.ns.name,
            &[
                "decap",
                "attach",
                &b_dev,
                "--address",
                &b.addr.to_string(),
                "--pin-dir",
                &lab.decap_pins.display().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir_b = lab.dir.join("lb-b");
    std::fs::create_dir_all(&dir_b).expect("dir");
    let pins_b = std::path::PathBuf::from(format!("{}-b", lab.pin_dir.display()));
    let cfg_b = cfg_a
        .replace(
            &lab.socket.display().to_string(),
            &dir_b.join("xlb.sock").display().to_string(),
        )
        .replace(
            &lab.dir.join("state.json").display().to_string(),
            &dir_b.join("state.json").display().to_string(),
        )
        .replace(
            &format!("\"{}\"", lab.pin_dir.display()),
            &format!("\"{}\"", pins_b.display()),
        );
    let cfg_path = dir_b.join("xlb.toml");
    std::fs::write(&cfg_path, &cfg_b).expect("config b");
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lbb.name))
        .arg("--")
        .arg(tests::lab::xlb_bin())
        .args(["daemon", "--config"])
        .arg(&cfg_path)
        .stderr(std::fs::File::create(dir_b.join("daemon.log")).expect("log"))
        .spawn()
        .expect("daemon b");
    let b = SecondLb {
        child,
        socket: dir_b.join("xlb.sock"),
        pins: pins_b,
    };
    for _ in 0..200 {
        if b.socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.xlb(&["status"])["vips"], 2);

    // A connection through LB A; then the route moves to LB B (as ECMP would after A fails).
    let client = lab.net.client.name.clone();
    let conn = lab.net.client.spawn(move || {
        tests::clients::pin(0);
        let mut c = std::net::TcpStream::connect((VIP, TCP)).expect("connect via A");
        c.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let ping = |c: &mut std::net::TcpStream| -> String {
            c.write_all(b"ping").expect("write");
            let mut buf = [0u8; 64];
            let k = c.read(&mut buf).expect("read");
            String::from_utf8_lossy(&buf[..k])
                .split('|')
                .next()
                .unwrap_or("")
                .to_string()
        };
        let first = ping(&mut c);
        for _ in 0..10 {
            assert_eq!(ping(&mut c), first);
        }
        let status = std::process::Command::new("ip")
            .args([
                "-n",
                &client,
                "route",
                "replace",
                &format!("{VIP}/32"),
                "via",
                "10.0.9.1",
                "dev",
                "c1",
            ])
            .output()
            .expect("ip route");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let mut after = Vec::new();
        for _ in 0..20 {
            after.push(ping(&mut c));
            std::thread::sleep(Duration::from_millis(10));
        }
        (first, after)
    });
    let (first, after) = conn.join().expect("connection survived the move");
    assert!(after.iter().all(|w| *w == first), "{first} then {after:?}");
    let stats = b.xlb(&["stats"]);
    let via_b = stats["vips"][0]["packets"].as_u64().expect("packets");
    let misses = stats["vips"][0]["conntrack_misses"]
        .as_u64()
        .expect("misses");
    eprintln!(
        "LB failover: {} round trips after the move answered by {first}; LB B forwarded {via_b} packets ({misses} untracked, following the ring)",
        after.len()
    );
    assert!(
        via_b >= 20 && misses >= 1,
        "the connection went through LB B: {stats}"
    );
}

#[test]
fn every_forwarding_mode_and_family_carries_real_connections() {
    use tests::topo::VIP6;
    let mut lab = Lab::new(3);
    let mut srv = Vec::new();
    for b in &lab.net.backends {
        for (tcp, udp) in [(9000, 9001), (9002, 9102), (9003, 9103)] {
            srv.push(Echo::start(
                &b.ns,
                &b.name,
                tcp,
                udp,
                &[VIP.into(), b.addr.into()],
            ));
        }
    }
    // Every backend starts down and comes up only by passing a health check through the data
    // path (`via = "vip"`), encapsulated as the forwarder would for its mode and family: the
    // connections below reach all three backends only if those probes worked.
    lab.route_vips_out_of_the_forwarder();
    let mut c = lab.base_config();
    let mut vip = |addr: String, port: u16, fwd: &str, backends: Vec<String>| {
        c += &format!(
            "\n[[vip]]\naddress = \"{addr}\"\nport = {port}\nprotocol = \"tcp\"\nforwarding = \"{fwd}\"\n\n[vip.health]\ntype = \"tcp\"\nvia = \"vip\"\nstart = \"down\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 3\n"
        );
        for b in backends {
            c += &format!("\n[[vip.backend]]\naddress = \"{b}\"\n");
        }
    };
    let v4 = lab.backend_addrs();
    let v6: Vec<String> = lab
        .net
        .backends
        .iter()
        .map(|b| b.addr6.to_string())
        .collect();
    vip(VIP.to_string(), 9000, "ipip", v4.clone());
    vip(VIP.to_string(), 9002, "gue", v4.clone());
    vip(VIP.to_string(), 9003, "l2", v4.clone());
    vip(VIP6.to_string(), 9000, "ipip", v6.clone());
    vip(VIP6.to_string(), 9002, "gue", v4.clone());
    lab.start(&c);
    for (vip, port, backends) in [
        (VIP.to_string(), 9000, &v4),
        (VIP.to_string(), 9002, &v4),
        (VIP.to_string(), 9003, &v4),
        (format!("[{VIP6}]"), 9000, &v6),
        (format!("[{VIP6}]"), 9002, &v4),
    ] {
        let id = format!("{vip}:{port}/tcp");
        for b in backends {
            let t = lab.wait_backend_state(Some(&id), b, "up", Duration::from_secs(5));
            eprintln!(
                "{id} {b}: up through the data path after {} ms",
                t.as_millis()
            );
        }
    }
    // Each of the 15 (VIP, backend) pairs started down and came up by its probes.
    let status = lab.json(&["status"]);
    assert_eq!(status["health_transitions"], 15, "{status}");
    for (name, dst) in [
        ("IPv4 IPIP", std::net::SocketAddr::from((VIP, 9000))),
        ("IPv4 GUE", (VIP, 9002).into()),
        ("IPv4 L2 DSR", (VIP, 9003).into()),
        ("IPv6-in-IPv6", (VIP6, 9000).into()),
        ("IPv6 VIP over GUE to IPv4 backends", (VIP6, 9002).into()),
    ] {
        let seen = short_tcp_to(&lab.net.client, 60, dst);
        eprintln!("{name}: {seen:?}");
        assert!(!seen.contains_key("error"), "{name}: {seen:?}");
        assert_eq!(seen.len(), 3, "{name}: every backend answers: {seen:?}");
    }
}

#[test]
fn one_arm_lb_sends_back_out_of_its_only_interface() {
    use tests::netns::{Netns, veth};
    // One segment (a bridge in its own namespace): client, LB and backends. The forwarder
    // encapsulates and sends each packet back out of the interface it came in on (XDP_TX);
    // the bridge-side end of the LB's link runs xlb_pass, as XDP_TX into a veth needs.
    let sw = Netns::new("sw");
    sw.ip(&["link", "add", "br0", "type", "bridge"]);
    sw.ip(&["link", "set", "br0", "up"]);
    let client = Netns::new("c1arm");
    let lb = Netns::new("lb1arm");
    let mut hosts = Vec::new();
    for (i, port) in [("c", &client), ("l", &lb)] {
        let (in_ns, at_sw) = (format!("{i}0"), format!("s{i}"));
        veth(port, &in_ns, &sw, &at_sw);
        sw.ip(&["link", "set", &at_sw, "master", "br0"]);
    }
    client.ip(&["addr", "add", "10.0.50.2/24", "dev", "c0"]);
    client.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.0.50.1"]);
    lb.ip(&["addr", "add", "10.0.50.1/24", "dev", "l0"]);
    let mut lab = Lab::new(0);
    for k in 1..=3u8 {
        let ns = Netns::new(&format!("b{k}arm"));
        // Distinct names: decap pins are per interface name.
        let dev = format!("e{k}");
        veth(&ns, &dev, &sw, &format!("sb{k}"));
        sw.ip(&["link", "set", &format!("sb{k}"), "master", "br0"]);
        let addr = format!("10.0.50.{}", 10 + k);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &dev]);
        ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        // Room for the IPIP header on the whole segment.
        for (n, d) in [(&ns, dev.clone()), (&sw, format!("sb{k}"))] {
            n.ip(&["link", "set", &d, "mtu", "1600"]);
        }
        let out = lab.in_ns(
            &ns.name,
            &[
                "decap",
                "attach",
                &dev,
                "--pin-dir",
                &lab.decap_pins.display().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let echo = Echo::start(&ns, &format!("backend-{k}"), TCP, UDP, &[VIP.into()]);
        hosts.push((ns, addr, echo));
    }
    for d in ["sl", "sc", "br0"] {
        sw.ip(&["link", "set", d, "mtu", "1600"]);
    }
    lb.ip(&["link", "set", "l0", "mtu", "1600"]);
    // XDP_TX into the LB's veth needs a program on the bridge side.
    let mut pass = xlb::dataplane::Dataplane::load(&xlb::dataplane::LoadOptions {
        conntrack_entries: 64,
        ..Default::default()
    })
    .expect("load");
    {
        let _in = sw.enter();
        pass.attach(
            lb_common::prog_names::PASS,
            "sl",
            xlb::dataplane::AttachMode::Native,
            None,
        )
        .expect("xlb_pass on the bridge side");
    }
    let mut cfg = lab.base_config().replace("name = \"lc\"", "name = \"l0\"");
    cfg += &format!("\n[[vip]]\naddress = \"{VIP}\"\nport = {TCP}\nprotocol = \"tcp\"\n");
    for (_, addr, _) in &hosts {
        cfg += &format!("\n[[vip.backend]]\naddress = \"{addr}\"\n");
    }
    // The lab's LB namespace is unused here: run this daemon in the one-arm LB's namespace.
    lab.start_in(&lb.name, &cfg);
    let list = lab.json(&["backend", "list"]);
    assert!(
        list.to_string().contains("via 10.0.50.11 l0"),
        "next hop out of l0: {list}"
    );
    let seen = short_tcp_to(&client, 60, (VIP, TCP).into());
    eprintln!("one-arm: {seen:?}");
    assert!(!seen.contains_key("error"), "{seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    drop(lab);
    drop(pass);
    drop(hosts);
}
