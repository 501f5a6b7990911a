//! A fleet of xlb nodes behind an ECMP router, on network namespaces, with real BIRD 2 on every
//! node and on the router (BGP with BFD), used by the fleet tests and the demo:
//!
//! ```text
//! client 10.0.1.2 (+ 10.0.1.10-73) ── rc 10.0.1.1  router (BIRD, ECMP, L4 multipath hash)
//!                                    br0 10.0.0.1 ─┬─ eth0 10.0.0.11  node 1: xlb daemon + BIRD
//!                                                  ├─ eth0 10.0.0.12  node 2 ...
//!                                    brb 10.0.2.1 ─┼─ eth1 10.0.2.11  (each node's second arm)
//!                                                  ├─ eth0 10.0.2.101 backend 1 (decap, VIP on lo)
//!                                                  └─ ...
//! ```
//! Nodes reach the router over a bridge, so a node's death does not drop the router's carrier:
//! BFD has to detect it. Each node runs `xlb daemon` (the same VIPs, backends and hash seed) with
//! `[announce]`, and BIRD exports the routes xlb writes to table 100. Backends answer clients
//! directly (DSR) through the router. Everything (namespaces, BIRD, daemons, pins, files) is
//! removed on drop, also during a panic; processes are ended by the ids this harness started.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    echo::Echo,
    lab::{nsenter, ran, spawn_daemon, xlb_at, xlb_bin},
    netns::{Netns, veth},
    topo::{TCP_PORT, UDP_PORT, VIP},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fleet tests share timing-sensitive BFD sessions and both CPUs: one fleet at a time.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub const ROUTER_FRONT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Client source addresses besides 10.0.1.2: flows from many clients.
pub const CLIENT_SOURCES: u8 = 64;
/// MTU of the node -> backend segment: room for the IPIP header on full-size packets.
pub const BACK_MTU: &str = "1600";

fn kill(child: &mut Child, signal: i32) {
    // SAFETY: signalling a child this harness spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// BIRD 2 in one namespace, in the foreground so the harness owns its process.
pub struct Bird {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("bird config");
        let socket = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        let child = nsenter(&ns.name)
            .arg("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("bird log"))
            .spawn()
            .expect("start bird (apt install bird2; `cargo xtask setup` does)");
        let b = Bird {
            child: Some(child),
            socket,
            log,
        };
        let t0 = Instant::now();
        while !b.socket.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "bird {name} did not start: {}",
                std::fs::read_to_string(&b.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// `birdc show ...`.
    pub fn show(&self, what: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .arg("show")
            .args(what.split_whitespace())
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// End it as a crashed host would (no BGP notification, no BFD down message).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// A clean stop: BIRD closes its sessions.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGTERM);
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(3) {
                    kill(&mut c, libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// BFD and BGP timers of every session: BFD 100 ms x 3, and reconnects within a second or two
/// (BIRD's defaults leave a session dropped by BFD idle for minutes).
const TIMERS: &str = "hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2; bfd on;";
const BFD: &str = "min rx interval 100 ms; min tx interval 100 ms; multiplier 3;";

pub struct Backend {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
}

/// One xlb node: its namespace, daemon and BIRD.
pub struct Node {
    pub index: usize,
    pub ns: Netns,
    /// Its address towards the router (the BGP next hop).
    pub front: Ipv4Addr,
    /// Its address on the backend segment (the tunnel source).
    pub back: Ipv4Addr,
    /// Flow sync's own address (on eth0 beside `front`): cutting sync leaves BGP up.
    pub sync_addr: Ipv4Addr,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub config_path: PathBuf,
    daemon: Option<Child>,
    pub bird: Option<Bird>,
}

impl Node {
    /// `xlb --socket <this node's> ARGS`.
    pub fn xlb(&self, args: &[&str]) -> Output {
        xlb_at(&self.socket, args)
    }

    /// `xlb ARGS` run on this node's host (its network namespace), as tools that touch the
    /// kernel there (`detach`) must be.
    pub fn on_host(&self, args: &[&str]) -> Output {
        nsenter(&self.ns.name)
            .arg(xlb_bin())
            .args(args)
            .output()
            .expect("run xlb")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ran(
            &self.xlb(args),
            || format!("node {}: xlb {}", self.index, args.join(" ")),
            || self.log(),
        )
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Start the daemon with `config`; returns once it serves the CLI.
    pub fn start_daemon(&mut self, config: &str) {
        assert!(self.daemon.is_none(), "daemon already running");
        std::fs::write(&self.config_path, config).expect("config");
        let log = self.dir.join("daemon.log");
        self.daemon = Some(spawn_daemon(
            &self.ns.name,
            &xlb_bin(),
            &self.config_path,
            &log,
        ));
        let t0 = Instant::now();
        while !self.xlb(&["status"]).status.success() {
            if let Some(c) = self.daemon.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.daemon = None;
                panic!(
                    "node {} daemon exited with {st}:\n{}",
                    self.index,
                    self.log()
                );
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// This node's BIRD: routes xlb writes to table 100 exported to the router over BGP.
    pub fn start_bird(&mut self) {
        let conf = format!(
            r#"router id {front};
protocol device {{ }}
protocol kernel xlb_routes {{
    kernel table 100;
    learn;
    ipv4 {{ import all; export none; }};
}}
protocol bfd {{ interface "eth0" {{ {BFD} }}; }}
protocol bgp uplink {{
    local {front} as 65001;
    neighbor {ROUTER_FRONT} as 65000;
    {TIMERS}
    ipv4 {{ import none; export where proto = "xlb_routes"; next hop self; }};
}}
"#,
            front = self.front
        );
        self.bird = Some(Bird::start(&self.ns, &self.dir, "bird", &conf));
    }

    /// Send `signal` to the daemon and wait for it.
    pub fn signal_daemon(&mut self, signal: i32) {
        if let Some(mut c) = self.daemon.take() {
            kill(&mut c, signal);
            let _ = c.wait();
        }
    }

    pub fn daemon_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// The host dies: daemon and BIRD killed, the forwarder detached (a dead host forwards
    /// nothing). Its routes stay in its table, as after a crash.
    pub fn die(&mut self) {
        self.signal_daemon(libc::SIGKILL);
        if let Some(b) = self.bird.as_mut() {
            b.kill();
        }
        let _ = xlb::dataplane::pin::remove_all(&self.pin_dir);
    }

    /// The host hangs: BIRD frozen (SIGSTOP: no BGP notification, no TCP close, no BFD),
    /// the daemon killed and the forwarder detached. Dropping the node ends the frozen BIRD.
    pub fn hang(&mut self) {
        if let Some(c) = self.bird.as_mut().and_then(|b| b.child.as_mut()) {
            kill(c, libc::SIGSTOP);
        }
        self.signal_daemon(libc::SIGKILL);
        let _ = xlb::dataplane::pin::remove_all(&self.pin_dir);
    }

    /// Seconds from the daemon's first log line to the first line containing `what` (both
    /// stamped by the daemon's own clock).
    pub fn log_interval(&self, what: &str) -> Option<f64> {
        let log = self.log();
        let secs = |line: &str| -> Option<f64> {
            // 2026-12-06T20:26:00.163862Z ...
            let t = line.split_whitespace().next()?.split('T').nth(1)?;
            let t = t.trim_end_matches('Z');
            let mut p = t.split(':');
            let h: f64 = p.next()?.parse().ok()?;
            let m: f64 = p.next()?.parse().ok()?;
            let s: f64 = p.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        };
        let start = secs(log.lines().next()?)?;
        let at = secs(log.lines().find(|l| l.contains(what))?)?;
        Some((at - start).rem_euclid(86_400.0))
    }

    /// Routes in this node's announce table (what its BIRD exports).
    pub fn table_routes(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns.name, "route", "show", "table", "100"])
            .output()
            .expect("ip");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// What to print when a fleet test fails: routes, announce state, the daemon's log.
    pub fn diagnose(&self) -> String {
        let status = self.xlb(&["status"]);
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "node {} table 100: {}\n{}{}\nlog:\n{}",
            self.index,
            self.table_routes().trim(),
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal_daemon(libc::SIGKILL);
        self.bird = None;
        let _ = xlb::dataplane::pin::remove_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings the nodes' configurations differ in, per test.
#[derive(Clone, Debug)]
pub struct Settings {
    pub hold_secs: u32,
    pub min_up_secs: u32,
    /// `quorum` of the VIPs, with `on_quorum_loss = "withdraw"`.
    pub quorum: Option<u32>,
    pub health_interval_ms: u32,
    /// Backends in the config (the first n of the fleet's).
    pub backends: usize,
    /// `[sync]` between the nodes.
    pub sync: bool,
    /// `[forwarding] hash_seed`, when not the default.
    pub hash_seed: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold_secs: 1,
            min_up_secs: 1,
            quorum: Some(2),
            health_interval_ms: 200,
            backends: usize::MAX,
            sync: false,
            hash_seed: None,
        }
    }
}

/// The UDP port of flow sync on every node's front address.
pub const SYNC_PORT: u16 = 4790;

pub struct Fleet {
    pub client: Netns,
    pub router: Netns,
    pub nodes: Vec<Node>,
    pub backends: Vec<Backend>,
    pub router_bird: Bird,
    pub dir: PathBuf,
    pub decap_pins: PathBuf,
    tag: String,
}

impl Fleet {
    /// The router (running BIRD), `n_nodes` node namespaces (no daemon yet), `n_backends`
    /// backends with `xlb decap attach` and the VIP on loopback.
    pub fn new(n_nodes: usize, n_backends: usize) -> Fleet {
        let tag = format!(
            "xlbt-{}-f{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PathBuf::from("/tmp").join(&tag);
        std::fs::create_dir_all(&dir).expect("fleet dir");
        let decap_pins = PathBuf::from("/sys/fs/bpf").join(format!("{tag}-decap"));

        let client = Netns::new("fc");
        let router = Netns::new("fr");
        veth(&client, "c0", &router, "rc");
        client.ip(&["addr", "add", "10.0.1.2/24", "dev", "c0"]);
        for i in 0..CLIENT_SOURCES {
            client.ip(&["addr", "add", &format!("10.0.1.{}/24", 10 + i), "dev", "c0"]);
        }
        client.ip(&["route", "add", "default", "via", "10.0.1.1"]);
        router.ip(&["addr", "add", "10.0.1.1/24", "dev", "rc"]);
        for (br, addr) in [("br0", "10.0.0.1/24"), ("brb", "10.0.2.1/24")] {
            router.ip(&["link", "add", br, "type", "bridge"]);
            router.ip(&["link", "set", br, "up"]);
            router.ip(&["addr", "add", addr, "dev", br]);
        }
        for k in [
            "net.ipv4.ip_forward=1",
            // Hash on the five-tuple, from the headers as a router does: policy 1 would reuse
            // the hash the client's socket left on the skb (random per socket, re-drawn on a
            // retransmit timeout), which `ip route get` cannot know. 0x37: addresses, protocol,
            // ports.
            "net.ipv4.fib_multipath_hash_policy=3",
            "net.ipv4.fib_multipath_hash_fields=0x0037",
        ] {
            router.exec(&["sysctl", "-qw", k]);
        }

        let mut backends = Vec::new();
        for j in 1..=n_backends {
            let ns = Netns::new(&format!("fb{j}"));
            let port = format!("k{j}");
            veth(&router, &port, &ns, "eth0");
            router.ip(&["link", "set", &port, "master", "brb", "mtu", BACK_MTU]);
            let addr = Ipv4Addr::new(10, 0, 2, 100 + j as u8);
            ns.ip(&["link", "set", "eth0", "mtu", BACK_MTU]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.ip(&["route", "add", "default", "via", "10.0.2.1"]);
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            let out = nsenter(&ns.name)
                .arg(xlb_bin())
                .args(["decap", "attach", "eth0", "--pin-dir"])
                .arg(&decap_pins)
                .output()
                .expect("decap");
            assert!(
                out.status.success(),
                "decap attach: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            backends.push(Backend {
                name: format!("backend-{j}"),
                addr,
                ns,
            });
        }
        router.ip(&["link", "set", "brb", "mtu", BACK_MTU]);

        let mut nodes = Vec::new();
        for i in 1..=n_nodes {
            nodes.push(Fleet::make_node(&router, &dir, &tag, i));
        }
        let router_bird = Bird::start(&router, &dir, "router", &Fleet::router_conf(n_nodes));
        Fleet {
            client,
            router,
            nodes,
            backends,
            router_bird,
            dir,
            decap_pins,
            tag,
        }
    }

    fn make_node(router: &Netns, dir: &Path, tag: &str, i: usize) -> Node {
        let ns = Netns::new(&format!("fn{i}"));
        let (front_port, back_port) = (format!("l{i}"), format!("m{i}"));
        veth(router, &front_port, &ns, "eth0");
        veth(router, &back_port, &ns, "eth1");
        router.ip(&["link", "set", &front_port, "master", "br0"]);
        router.ip(&["link", "set", &back_port, "master", "brb", "mtu", BACK_MTU]);
        // Frames the forwarder redirects into eth1 are received by its peer only with NAPI on
        // there: an XDP program or GRO.
        router.exec(&["ethtool", "-K", &back_port, "gro", "on"]);
        let front = Ipv4Addr::new(10, 0, 0, 10 + i as u8);
        let back = Ipv4Addr::new(10, 0, 2, 10 + i as u8);
        ns.ip(&["addr", "add", &format!("{front}/24"), "dev", "eth0"]);
        let sync_addr = Ipv4Addr::new(10, 0, 0, 30 + i as u8);
        ns.ip(&["addr", "add", &format!("{sync_addr}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth1", "mtu", BACK_MTU]);
        ns.ip(&["addr", "add", &format!("{back}/24"), "dev", "eth1"]);
        let ndir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&ndir).expect("node dir");
        Node {
            index: i,
            ns,
            front,
            sync_addr,
            back,
            socket: ndir.join("xlb.sock"),
            config_path: ndir.join("xlb.toml"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(format!("{tag}-n{i}")),
            dir: ndir,
            daemon: None,
            bird: None,
        }
    }

    fn router_conf(n_nodes: usize) -> String {
        let mut c = format!(
            r#"router id {ROUTER_FRONT};
protocol device {{ }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;
}}
protocol bfd {{ interface "br0" {{ {BFD} }}; }}
template bgp xlb_node {{
    local {ROUTER_FRONT} as 65000;
    {TIMERS}
    ipv4 {{ import all; export none; }};
}}
"#
        );
        for i in 1..=n_nodes {
            c += &format!(
                "protocol bgp node{i} from xlb_node {{ neighbor 10.0.0.{} as 65001; }}\n",
                10 + i
            );
        }
        c
    }

    /// A node's configuration: both arms attached, `[announce]`, and the TCP and UDP VIPs on
    /// every backend with TCP health checks. `drain_idle_secs` outlasts a failover: a peer's
    /// synced copy of a flow is restamped only while the peer lives, and a UDP flow of
    /// `Flows` can then stay silent for seconds (BFD, then the 300 ms timeouts of the flows
    /// before it in its thread); at 2 s a removed backend was reaped on a survivor before its
    /// moved flows arrived.
    pub fn config(&self, i: usize, s: &Settings) -> String {
        let n = &self.nodes[i - 1];
        let mut c = format!(
            r#"[daemon]
socket = "{socket}"
state_file = "{state}"
pin_dir = "{pins}"
conntrack_entries = 65536
nexthop_refresh_secs = 1
drain_idle_secs = 8
metrics_listen = "127.0.0.1:9478"

[forwarding]
mtu = {BACK_MTU}
encap_source_v4 = "{back}"

[[interface]]
name = "eth0"

[[interface]]
name = "eth1"

[announce]
hold_secs = {hold}
min_up_secs = {min_up}
"#,
            socket = n.socket.display(),
            state = n.dir.join("state.json").display(),
            pins = n.pin_dir.display(),
            back = n.back,
            hold = s.hold_secs,
            min_up = s.min_up_secs,
        );
        if s.sync {
            let peers: Vec<String> = self
                .nodes
                .iter()
                .filter(|p| p.index != i)
                .map(|p| format!("\"{}:{SYNC_PORT}\"", p.sync_addr))
                .collect();
            c += &format!(
                "\n[sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey_file = \"{}\"\nrefresh_secs = 1\nresync_timeout_ms = 1500\n",
                n.sync_addr,
                peers.join(", "),
                self.key_file().display()
            );
        }
        if let Some(seed) = s.hash_seed {
            c = c.replacen(
                "[forwarding]\n",
                &format!("[forwarding]\nhash_seed = {seed}\n"),
                1,
            );
        }
        for (port, proto) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp")] {
            c +=
                &format!("\n[[vip]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n");
            if let Some(q) = s.quorum {
                c += &format!("quorum = {q}\non_quorum_loss = \"withdraw\"\n");
            }
            c += &format!(
                "\n[vip.health]\ntype = \"tcp\"\nport = {TCP_PORT}\ninterval_ms = {iv}\ntimeout_ms = {to}\nrise = 2\nfall = 2\n",
                iv = s.health_interval_ms,
                to = s.health_interval_ms * 3 / 4,
            );
            for b in self.backends.iter().take(s.backends) {
                c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
            }
        }
        c
    }

    /// The fleet's shared sync key (32 random bytes, written once).
    pub fn key_file(&self) -> PathBuf {
        let path = self.dir.join("sync.key");
        if !path.exists() {
            let mut key = [0u8; 32];
            let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
            std::io::Read::read_exact(&mut f, &mut key).expect("random key");
            std::fs::write(&path, key).expect("key file");
        }
        path
    }

    /// Start node `i`'s daemon with `config`, then its BIRD.
    pub fn start_node(&mut self, i: usize, config: &str) {
        let n = &mut self.nodes[i - 1];
        n.start_daemon(config);
        n.start_bird();
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// Echo servers on every backend (TCP on all addresses, UDP on the VIP).
    pub fn servers(&self) -> Vec<Echo> {
        self.backends
            .iter()
            .map(|b| Echo::start(&b.ns, &b.name, TCP_PORT, UDP_PORT, &[VIP.into()]))
            .collect()
    }

    /// The next hops of the router's route to the VIP (its FIB, as the kernel has it).
    pub fn next_hops(&self) -> BTreeSet<Ipv4Addr> {
        self.next_hops_of(VIP)
    }

    /// The next hops of the router's route to `addr`.
    pub fn next_hops_of(&self, addr: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
        let out = self.router.ip(&["route", "show", &format!("{addr}/32")]);
        via(&String::from_utf8_lossy(&out.stdout))
    }

    /// Watch the router's FIB in the background: every distinct next-hop set seen until the
    /// returned watch is finished.
    pub fn watch_next_hops(&self) -> FibWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ns) = (stop.clone(), self.router.name.clone());
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<BTreeSet<Ipv4Addr>> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args(["-n", &ns, "route", "show", &format!("{VIP}/32")])
                    .output()
                    .expect("ip");
                let hops = via(&String::from_utf8_lossy(&out.stdout));
                if seen.last() != Some(&hops) {
                    seen.push(hops);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        FibWatch { stop, handle }
    }

    /// Poll the router's FIB every 2 ms until its next hops are `want`; how long that took.
    pub fn wait_next_hops(&self, want: &[Ipv4Addr], limit: Duration) -> Duration {
        let want: BTreeSet<Ipv4Addr> = want.iter().copied().collect();
        let t0 = Instant::now();
        loop {
            let have = self.next_hops();
            if have == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "router next hops {have:?}, waited {limit:?} for {want:?}\nrouter BIRD:\n{}\n{}",
                self.router_bird.show("protocols"),
                self.nodes
                    .iter()
                    .map(Node::diagnose)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Which node the router's FIB sends a flow to (the kernel's own multipath hash).
    pub fn node_of(&self, src: SocketAddrV4, dport: u16, proto: &str) -> Option<Ipv4Addr> {
        let out = Command::new("ip")
            .args(["-n", &self.router.name, "route", "get", &VIP.to_string()])
            .args(["from", &src.ip().to_string(), "iif", "rc", "ipproto", proto])
            .args([
                "sport",
                &src.port().to_string(),
                "dport",
                &dport.to_string(),
            ])
            .output()
            .expect("ip route get");
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "via")
            .and_then(|w| w[1].parse().ok())
    }

    /// `node_of` for a long-lived flow of `Flows` (TCP or UDP, from `src`).
    pub fn node_of_flow(&self, tcp: bool, src: SocketAddrV4) -> Option<Ipv4Addr> {
        if tcp {
            self.node_of(src, TCP_PORT, "tcp")
        } else {
            self.node_of(src, UDP_PORT, "udp")
        }
    }

    /// The node whose front address is `addr`.
    pub fn index_of(&self, addr: Ipv4Addr) -> Option<usize> {
        self.nodes.iter().find(|n| n.front == addr).map(|n| n.index)
    }
}

/// The gateways `ip route show` prints.
fn via(text: &str) -> BTreeSet<Ipv4Addr> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

pub struct FibWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<BTreeSet<Ipv4Addr>>>,
}

impl FibWatch {
    /// Every distinct next-hop set seen, in order.
    pub fn finish(self) -> Vec<BTreeSet<Ipv4Addr>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("fib watch")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.nodes.clear();
        self.router_bird.kill();
        let _ = std::fs::remove_dir_all(&self.decap_pins);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.tag;
    }
}

/// What happened to one client flow.
#[derive(Clone, Debug)]
pub struct FlowResult {
    pub tcp: bool,
    pub src: SocketAddrV4,
    pub backend: String,
    pub rounds: u64,
    /// Datagrams without an answer (UDP; a lost datagram is not a broken flow).
    pub lost: u64,
    /// Why the flow broke: a reset, a timeout, or an answer from another backend.
    pub broken: Option<String>,
    pub slowest: Duration,
}

/// Long-lived TCP connections and UDP flows from many client addresses, each pinging every
/// `period` until `finish`.
pub struct Flows {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<FlowResult>>>,
    /// Every flow's source, known once it started.
    pub sources: Arc<Mutex<Vec<(bool, SocketAddrV4)>>>,
}

fn answer_name(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .split('|')
        .next()
        .unwrap_or("")
        .to_string()
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 10 + (i % CLIENT_SOURCES as usize) as u8)
}

impl Flows {
    pub fn start(client: &Netns, tcp: usize, udp: usize, period: Duration) -> Flows {
        let stop = Arc::new(AtomicBool::new(false));
        let sources: Arc<Mutex<Vec<(bool, SocketAddrV4)>>> = Arc::default();
        let mut handles = Vec::new();
        if tcp > 0 {
            let (s, src) = (stop.clone(), sources.clone());
            handles.push(client.spawn(move || tcp_flows(tcp, period, &s, &src)));
        }
        if udp > 0 {
            let (s, src) = (stop.clone(), sources.clone());
            handles.push(client.spawn(move || udp_flows(udp, period, &s, &src)));
        }
        let f = Flows {
            stop,
            handles,
            sources,
        };
        let t0 = Instant::now();
        while f.sources.lock().expect("lock").len() < tcp + udp {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "flows did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        f
    }

    pub fn finish(self) -> Vec<FlowResult> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .flat_map(|h| h.join().expect("flow thread"))
            .collect()
    }
}

fn tcp_flows(
    n: usize,
    period: Duration,
    stop: &AtomicBool,
    sources: &Mutex<Vec<(bool, SocketAddrV4)>>,
) -> Vec<FlowResult> {
    let mut flows: Vec<(TcpStream, FlowResult)> = (0..n)
        .map(|i| {
            let src = source(i);
            let mut c = crate::clients::connect_from(Some(src), TCP_PORT)
                .expect("connect through the fleet");
            // A node's loss costs retransmits (BFD 300 ms, then RTOs): generous, but bounded.
            c.set_read_timeout(Some(Duration::from_secs(8)))
                .expect("timeout");
            c.write_all(b"ping").expect("first ping");
            let mut buf = [0u8; 64];
            let k = c.read(&mut buf).expect("first pong");
            let r = started_flow(true, c.local_addr(), &buf[..k], sources);
            (c, r)
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for (c, r) in flows.iter_mut().filter(|(_, r)| r.broken.is_none()) {
            let t = Instant::now();
            let mut buf = [0u8; 64];
            let answer = c
                .write_all(b"ping")
                .and_then(|()| c.read(&mut buf))
                .map(|k| answer_name(&buf[..k]));
            r.slowest = r.slowest.max(t.elapsed());
            r.rounds += 1;
            match answer {
                Ok(who) if who == r.backend => {}
                Ok(who) if who.is_empty() => r.broken = Some("closed".into()),
                Ok(who) => r.broken = Some(format!("answered by {who}")),
                Err(e) => r.broken = Some(e.to_string()),
            }
        }
        std::thread::sleep(period);
    }
    flows
        .into_iter()
        .map(|(c, r)| {
            let _ = c.shutdown(std::net::Shutdown::Both);
            r
        })
        .collect()
}

/// A flow that got its first answer: recorded with its source and its backend.
fn started_flow(
    tcp: bool,
    local: std::io::Result<SocketAddr>,
    answer: &[u8],
    sources: &Mutex<Vec<(bool, SocketAddrV4)>>,
) -> FlowResult {
    let src = match local.expect("local address") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("an IPv4 client"),
    };
    sources.lock().expect("lock").push((tcp, src));
    FlowResult {
        tcp,
        src,
        backend: answer_name(answer),
        rounds: 1,
        lost: 0,
        broken: None,
        slowest: Duration::ZERO,
    }
}

fn udp_flows(
    n: usize,
    period: Duration,
    stop: &AtomicBool,
    sources: &Mutex<Vec<(bool, SocketAddrV4)>>,
) -> Vec<FlowResult> {
    let mut flows: Vec<(UdpSocket, FlowResult)> = (0..n)
        .map(|i| {
            let u = UdpSocket::bind((source(i + 7), 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            u.connect((VIP, UDP_PORT)).expect("connect");
            let mut buf = [0u8; 64];
            let k = (0..10)
                .find_map(|_| {
                    u.send(b"ping").ok()?;
                    u.recv(&mut buf).ok()
                })
                .expect("first answer");
            let r = started_flow(false, u.local_addr(), &buf[..k], sources);
            (u, r)
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for (u, r) in flows.iter_mut() {
            let t = Instant::now();
            let mut buf = [0u8; 64];
            r.rounds += 1;
            match u.send(b"ping").and_then(|_| u.recv(&mut buf)) {
                Ok(k) => {
                    r.slowest = r.slowest.max(t.elapsed());
                    let who = answer_name(&buf[..k]);
                    if who != r.backend && r.broken.is_none() {
                        r.broken = Some(format!("answered by {who}"));
                    }
                }
                Err(_) => r.lost += 1,
            }
        }
        std::thread::sleep(period);
    }
    flows.into_iter().map(|(_, r)| r).collect()
}

/// Flows that broke, as lines for an assertion message.
pub fn broken(results: &[FlowResult]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| {
            r.broken.as_ref().map(|why| {
                format!(
                    "{} {} on {}: {why}",
                    if r.tcp { "tcp" } else { "udp" },
                    r.src,
                    r.backend
                )
            })
        })
        .collect()
}
