//! `cargo xtask demo`: xlb as an operator runs it, on network namespaces, told as a story. A
//! client, an LB running `xlb daemon`, three backends with `xlb decap attach` and real TCP/UDP
//! servers; traffic, a weight change, a backend failing and returning, and the counters; then
//! a fleet of two nodes behind a router running BIRD, one of which dies under traffic.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use tests::{
    echo::Echo,
    fleet::{self, Fleet, Flows, Settings},
    lab::Lab,
    topo::{BackendHost, CLIENT, TCP_PORT, UDP_PORT, VIP},
};

const CONNECTIONS: usize = 300;

fn table(title: &str, seen: &BTreeMap<String, usize>) {
    let total: usize = seen.values().sum();
    println!("  {title}");
    for (name, n) in seen {
        let pct = 100.0 * *n as f64 / total.max(1) as f64;
        println!(
            "    {name:<10} {n:>5}  {pct:>5.1}%  {}",
            "#".repeat((pct / 2.0) as usize)
        );
    }
}

/// One request through the VIP; the answering backend's name.
fn request(tcp: bool) -> std::io::Result<String> {
    let mut buf = [0u8; 128];
    let n = if tcp {
        let mut c = TcpStream::connect_timeout(&(VIP, TCP_PORT).into(), Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"hello")?;
        c.read(&mut buf)?
    } else {
        let s = UdpSocket::bind((CLIENT, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.connect((VIP, UDP_PORT))?;
        s.send(b"hello")?;
        s.recv(&mut buf)?
    };
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(answer.split('|').next().unwrap_or("").to_string())
}

fn traffic(lab: &Lab, tcp: bool) -> BTreeMap<String, usize> {
    traffic_of(lab, tcp, CONNECTIONS)
}

/// `n` TCP connections.
fn traffic_n(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    traffic_of(lab, true, n)
}

fn traffic_of(lab: &Lab, tcp: bool, n: usize) -> BTreeMap<String, usize> {
    lab.net
        .client
        .spawn(move || {
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                let who = request(tcp).unwrap_or_else(|e| format!("error: {e}"));
                *seen.entry(who).or_insert(0) += 1;
            }
            seen
        })
        .join()
        .expect("client thread")
}

fn echo(b: &BackendHost) -> Echo {
    Echo::backend(b, TCP_PORT, UDP_PORT)
}

/// Show an `xlb` command and its output, as an operator would type it.
fn show(lab: &Lab, args: &[&str]) {
    println!("\n  $ xlb {}", args.join(" "));
    for line in lab.ok(args).lines() {
        println!("    {line}");
    }
}

fn wait_state(lab: &Lab, addr: &str, state: &str) -> Duration {
    let vip = format!("{VIP}:{TCP_PORT}/tcp");
    lab.wait_backend_state(Some(&vip), addr, state, Duration::from_secs(10))
}

fn main() {
    let started = Instant::now();
    println!("xlb demo: a client, a load balancer and 3 backends in network namespaces");
    let mut lab = Lab::new(3);
    let mut servers: Vec<Option<Echo>> = lab.net.backends.iter().map(|b| Some(echo(b))).collect();
    let mut config = lab.base_config();
    config += &format!(
        "\n[[vip]]\naddress = \"{VIP}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n\n[vip.health]\ntype = \"tcp\"\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 3\n"
    );
    for b in &lab.net.backends {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    config += &format!(
        "\n[[vip]]\naddress = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\nhash = \"src-ip\"\n"
    );
    for b in &lab.net.backends {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    lab.start(&config);
    println!(
        "  client {CLIENT} reaches VIP {VIP} through the LB namespace, where `xlb daemon` runs"
    );
    for b in &lab.net.backends {
        println!(
            "  {} at {}: `xlb decap attach`, VIP on loopback, TCP and UDP echo servers",
            b.name, b.addr
        );
    }
    show(&lab, &["status"]);
    show(&lab, &["vip", "list"]);

    println!(
        "\n1. {CONNECTIONS} TCP connections (five-tuple hash) and {CONNECTIONS} UDP datagrams (src-ip hash: one client, one backend):"
    );
    table("TCP connections per backend", &traffic(&lab, true));
    table("UDP datagrams per backend", &traffic(&lab, false));

    let tcp_vip = format!("{VIP}:{TCP_PORT}/tcp");
    let (b1, b2) = (
        lab.net.backends[0].addr.to_string(),
        lab.net.backends[1].addr.to_string(),
    );
    println!("\n2. backend-1's weight raised to 3 (3:1:1): its share of new flows follows");
    lab.ok(&["backend", "set-weight", &tcp_vip, &b1, "3"]);
    table("TCP connections per backend", &traffic(&lab, true));
    lab.ok(&["backend", "set-weight", &tcp_vip, &b1, "1"]);

    println!("\n3. backend-2's server crashes; the TCP health check (300 ms, fall 3) notices");
    servers[1].take().expect("server").kill();
    let t = wait_state(&lab, &b2, "down");
    println!(
        "  backend-2 marked down {} ms after the crash: out of the ring, tracked flows re-picked",
        t.as_millis()
    );
    table("TCP connections per backend", &traffic(&lab, true));

    println!("\n4. backend-2's server restarts; after 2 good probes it takes new flows again");
    servers[1] = Some(echo(&lab.net.backends[1]));
    let t = wait_state(&lab, &b2, "up");
    println!(
        "  backend-2 up again {} ms after the restart",
        t.as_millis()
    );
    table("TCP connections per backend", &traffic(&lab, true));

    show(&lab, &["backend", "list", &tcp_vip]);
    show(&lab, &["stats"]);

    println!(
        "\n5. `xlb capture`: packets of the TCP VIP as the forwarder received them, with its verdict"
    );
    let pcap = lab.dir.join("vip.pcapng").display().to_string();
    let capture = [
        "--vip",
        &tcp_vip,
        "-c",
        "8",
        "--duration",
        "20",
        "-w",
        &pcap,
    ];
    println!("\n  $ xlb capture {}", capture.join(" "));
    let (_, summary) = lab.capture_while(&capture, || {
        let _ = traffic_n(&lab, 1);
    });
    print!("    {summary}");
    println!(
        "\n6. `xlb replay` runs those packets through the live tables without touching live state;\n   then again after the backend of its first new connection is drained: tracked packets stay,\n   that connection would now open elsewhere"
    );
    show(&lab, &["replay", &pcap]);
    // Drain the backend the capture's first new connection opened on, so the replay differs.
    let first = lab.json(&["replay", &pcap]);
    let opened = first["packets"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["pick"] == "new"))
        .and_then(|x| x["backend"].as_str())
        .map_or(b1.clone(), str::to_string);
    println!("\n  draining {opened}, where the capture's first new connection opened");
    lab.ok(&["backend", "drain", &tcp_vip, &opened]);
    show(&lab, &["replay", &pcap]);
    lab.ok(&["backend", "undrain", &tcp_vip, &opened]);
    show(
        &lab,
        &[
            "explain",
            &format!("{CLIENT}:40000"),
            &format!("{VIP}:{TCP_PORT}/tcp"),
            "--syn",
        ],
    );

    drop(servers);
    drop(lab);
    fleet_act();
    println!(
        "\nCleaned up: daemons and BIRD stopped, pins, namespaces and files removed. Done in {:.1}s.",
        started.elapsed().as_secs_f64()
    );
}

/// Two nodes announce the VIP through BIRD; the router spreads flows over both by ECMP; one
/// node hangs, BFD takes it out of the route and its flows go on through the other.
fn fleet_act() {
    println!(
        "\n7. A fleet: two xlb nodes behind a router; each node's BIRD exports the VIP routes xlb\n   writes ([announce]) over BGP with BFD; the router installs one ECMP route; the nodes\n   sync the flows a backend change moves ([sync])"
    );
    let mut f = Fleet::new(2, 3);
    let _servers = f.servers();
    let s = Settings {
        backends: 2,
        sync: true,
        ..Settings::default()
    };
    for i in 1..=2 {
        let c = f.config(i, &s);
        f.start_node(i, &c);
    }
    let both = [f.node(1).front, f.node(2).front];
    let took = f.wait_next_hops(&both, Duration::from_secs(20));
    println!(
        "  router's route to {VIP}: next hops {:?}, {:.1} s after the daemons started",
        f.next_hops(),
        took.as_secs_f64()
    );
    let flows = Flows::start(&f.client, 32, 16, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(1));
    println!("  48 long-lived TCP and UDP flows from 64 client addresses on backends 1 and 2");
    let b3 = f.backends[2].addr.to_string();
    for i in 1..=2 {
        for vip in [
            format!("{VIP}:{TCP_PORT}/tcp"),
            format!("{VIP}:{UDP_PORT}/udp"),
        ] {
            f.node(i).ok(&["backend", "add", &vip, &b3]);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "  backend 3 added on both nodes: flows whose ring slot moved to it stay on their backend\n  (conntrack) and are shipped to the other node. Node 2 `xlb status`:"
    );
    for l in String::from_utf8_lossy(&f.node(2).xlb(&["status"]).stdout).lines() {
        if l.contains("announce") || l.contains("sync") || l.contains("peer") {
            println!("    {l}");
        }
    }
    println!("  node 2 now hangs");
    f.node_mut(2).hang();
    let t = f.wait_next_hops(&both[..1], Duration::from_secs(5));
    println!(
        "  BFD took node 2 out of the router's route {} ms later",
        t.as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    let results = flows.finish();
    let broken = fleet::broken(&results);
    let trips: u64 = results.iter().map(|r| r.rounds).sum();
    println!(
        "  {} flows, {trips} round trips, {} broken: node 1 knew node 2's moved flows, and picks the\n  same backends for the others (same Maglev rings)",
        results.len(),
        broken.len()
    );
    for b in broken {
        println!("    broken: {b}");
    }
}
