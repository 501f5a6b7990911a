//! A two-arm load-balancing topology on network namespaces, used by the end-to-end tests and the
//! demo:
//!
//! ```text
//! client ns  c0 10.0.1.2 ── lc 10.0.1.1  LB ns (xlb_forward on lc, ip_forward=1)
//!                                        lbN 10.0.(N+2).1 ── bN 10.0.(N+2).2  backend N ns
//!                                                            (xlb_decap on bN, VIP on lo)
//! ```
//! The client reaches the VIP through the LB; the forwarder IPIP-encapsulates new flows to a
//! backend and redirects them out of lbN; backends decapsulate and answer the client directly
//! from the VIP (DSR), routed back through the LB's kernel.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::programs::XdpMode;
use lb_common::{
    Addr, Backend, FAMILY_V4, FWD_IPIP, HASH_FIVE_TUPLE, LbConfig, VipKey, VipMeta,
    maglev::{self, MaglevBackend},
    prog_names,
};
use xlb::dataplane::{Dataplane, LoadOptions};

use crate::netns::{Netns, veth};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// The IPv6 VIP (dual-stack topology).
pub const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 7000;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// MTU of the LB -> backend links: room for the 20-byte IPIP header on full-size client packets.
pub const BACKEND_LINK_MTU: u16 = 1600;
const RING_SIZE: u32 = 65537;

pub struct BackendHost {
    pub id: u32,
    pub name: String,
    pub addr: Ipv4Addr,
    pub addr6: std::net::Ipv6Addr,
    pub ns: Netns,
    /// The in-process decap program, when this process attached it.
    _decap: Option<Dataplane>,
}

/// The namespaces and links, with no XDP program anywhere yet.
pub struct Net {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<BackendHost>,
}

/// Link MTUs of a topology: client <-> LB, and LB <-> backends (room for the encapsulation).
#[derive(Clone, Copy, Debug)]
pub struct Mtus {
    pub client: u16,
    pub backend: u16,
}

impl Default for Mtus {
    fn default() -> Self {
        Mtus {
            client: 1500,
            backend: BACKEND_LINK_MTU,
        }
    }
}

impl Net {
    pub fn new(n_backends: usize) -> Net {
        Net::with_mtus(n_backends, Mtus::default())
    }

    pub fn with_mtus(n_backends: usize, mtus: Mtus) -> Net {
        let client = Netns::new("client");
        let lb = Netns::new("lb");
        veth(&client, "c0", &lb, "lc");
        let mtu = mtus.client.to_string();
        client.ip(&["link", "set", "c0", "mtu", &mtu]);
        lb.ip(&["link", "set", "lc", "mtu", &mtu]);
        client.ip(&["addr", "add", "10.0.1.2/24", "dev", "c0"]);
        client.ip(&["route", "add", "default", "via", "10.0.1.1"]);
        lb.ip(&["addr", "add", "10.0.1.1/24", "dev", "lc"]);
        lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Dual stack; `nodad` so addresses are usable at once.
        client.ip(&["addr", "add", "fd00:1::2/64", "dev", "c0", "nodad"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:1::1"]);
        lb.ip(&["addr", "add", "fd00:1::1/64", "dev", "lc", "nodad"]);
        lb.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mut backends = Vec::new();
        for i in 0..n_backends {
            let id = i as u32 + 1;
            let ns = Netns::new(&format!("b{id}"));
            let (lb_dev, b_dev) = (format!("lb{id}"), format!("b{id}"));
            veth(&lb, &lb_dev, &ns, &b_dev);
            let net = i + 2;
            let addr = Ipv4Addr::new(10, 0, net as u8, 2);
            lb.ip(&["addr", "add", &format!("10.0.{net}.1/24"), "dev", &lb_dev]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &b_dev]);
            ns.ip(&["route", "add", "default", "via", &format!("10.0.{net}.1")]);
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            let addr6: std::net::Ipv6Addr = format!("fd00:{net}::2").parse().expect("v6");
            lb.ip(&[
                "addr",
                "add",
                &format!("fd00:{net}::1/64"),
                "dev",
                &lb_dev,
                "nodad",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                &b_dev,
                "nodad",
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{net}::1"),
            ]);
            ns.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo"]);
            let mtu = mtus.backend.to_string();
            lb.ip(&["link", "set", &lb_dev, "mtu", &mtu]);
            ns.ip(&["link", "set", &b_dev, "mtu", &mtu]);
            backends.push(BackendHost {
                id,
                name: format!("backend-{id}"),
                addr,
                addr6,
                ns,
                _decap: None,
            });
        }
        Net {
            client,
            lb,
            backends,
        }
    }

    /// Start a TCP and a UDP server on the VIP in every backend; each answers with its name.
    pub fn start_servers(&self) -> Servers {
        Net::start_servers_on(&self.backends)
    }

    pub fn start_servers_on(backends: &[BackendHost]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for b in backends {
            let (name, s) = (b.name.clone(), stop.clone());
            threads.push(b.ns.spawn(move || tcp_server(&name, &s)));
            let (name, s) = (b.name.clone(), stop.clone());
            threads.push(b.ns.spawn(move || udp_server(&name, &s)));
        }
        // Listeners are bound once the threads run; give them a moment.
        std::thread::sleep(Duration::from_millis(100));
        Servers { stop, threads }
    }
}

pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub dp: Dataplane,
    pub backends: Vec<BackendHost>,
    weights: Vec<u32>,
}

fn v4(a: Ipv4Addr) -> Addr {
    Addr::v4(u32::from_ne_bytes(a.octets()))
}

impl Topology {
    pub fn new(n_backends: usize) -> Topology {
        Topology::with_mtus(n_backends, Mtus::default())
    }

    pub fn with_mtus(n_backends: usize, mtus: Mtus) -> Topology {
        let Net {
            client,
            lb,
            mut backends,
        } = Net::with_mtus(n_backends, mtus);
        let mut dp = Dataplane::load(&LoadOptions::default()).expect("load forwarder");
        dp.set_config(&LbConfig {
            encap_src_v4: u32::from_ne_bytes([10, 0, 1, 1]),
            hash_seed: 0x00c0_ffee,
            mtu: mtus.backend,
            gue_port_be: lb_common::GUE_PORT_DEFAULT.to_be(),
            ..LbConfig::default()
        })
        .expect("config");

        for b in &mut backends {
            let (id, addr) = (b.id, b.addr);
            let (lb_dev, b_dev) = (format!("lb{id}"), format!("b{id}"));
            let mut decap = Dataplane::load(&LoadOptions {
                conntrack_entries: 1024,
                ..Default::default()
            })
            .expect("load decap");
            decap.set_decap_addr(&v4(addr), 0).expect("decap address");
            {
                let _in = b.ns.enter();
                decap
                    .program(prog_names::DECAP)
                    .expect("decap")
                    .attach(&b_dev, XdpMode::Driver)
                    .expect("attach decap");
            }
            let slot = id;
            let ifindex = lb.ifindex(&lb_dev);
            {
                // The kernel resolves devmap ifindexes in the caller's namespace.
                let _in = lb.enter();
                dp.set_tx_port(slot, ifindex).expect("devmap");
            }
            dp.set_backend(
                id,
                &Backend {
                    addr: v4(addr),
                    dst_mac: b.ns.mac(&b_dev),
                    src_mac: lb.mac(&lb_dev),
                    tx_port: slot,
                    family: FAMILY_V4,
                    state: 0,
                    vip: 0,
                },
            )
            .expect("backend");
            b._decap = Some(decap);
        }
        let mut t = Topology {
            client,
            lb,
            dp,
            backends,
            weights: vec![1; n_backends],
        };
        t.publish();
        for (vip_id, port, proto) in [(0u32, TCP_PORT, 6u8), (1, UDP_PORT, 17)] {
            let key = VipKey {
                addr: v4(VIP),
                port_be: port.to_be(),
                proto,
                family: FAMILY_V4,
            };
            let meta = VipMeta {
                vip_id,
                ring_size: RING_SIZE,
                hash_mode: HASH_FIVE_TUPLE,
                fwd_mode: FWD_IPIP,
                flags: 0,
                idle_timeout_s: 0,
            };
            t.dp.set_vip(&key, &meta).expect("vip");
        }
        {
            let _in = t.lb.enter();
            t.dp.program(prog_names::FORWARD)
                .expect("forward")
                .attach("lc", XdpMode::Driver)
                .expect("attach forwarder");
        }
        t
    }

    /// Rebuild and swap both VIPs' rings from the current weights.
    fn publish(&mut self) {
        let members: Vec<MaglevBackend> = self
            .backends
            .iter()
            .zip(&self.weights)
            .map(|(b, &weight)| MaglevBackend {
                family: FAMILY_V4,
                addr: v4(b.addr),
                weight,
                id: b.id,
            })
            .collect();
        let table = maglev::build(&members, RING_SIZE, 0x00c0_ffee).expect("maglev");
        for vip_id in [0, 1] {
            self.dp.set_ring(vip_id, &table).expect("ring");
        }
    }

    /// Set a backend's weight (0 drains it) and swap the rings.
    pub fn set_weight(&mut self, id: u32, weight: u32) {
        self.weights[(id - 1) as usize] = weight;
        self.publish();
    }

    pub fn start_servers(&self) -> Servers {
        Net::start_servers_on(&self.backends)
    }
}

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_server(name: &str, stop: &AtomicBool) {
    let l = TcpListener::bind((VIP, TCP_PORT)).expect("bind tcp on VIP");
    l.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut c, _)) => {
                c.set_nonblocking(false).expect("blocking");
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                // Read the whole request (the client half-closes), answer "<name> <bytes>".
                let mut req = Vec::new();
                if c.read_to_end(&mut req).is_ok() {
                    let _ = c.write_all(format!("{name} {}", req.len()).as_bytes());
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn udp_server(name: &str, stop: &AtomicBool) {
    let s = UdpSocket::bind((VIP, UDP_PORT)).expect("bind udp on VIP");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(name.as_bytes(), peer);
        }
    }
}

/// From the client namespace: one TCP connection to the VIP; returns the answering backend, after
/// checking that it received every byte of `payload`.
pub fn tcp_request(payload: &[u8]) -> Result<String, std::io::Error> {
    let mut c =
        TcpStream::connect_timeout(&SocketAddr::from((VIP, TCP_PORT)), Duration::from_secs(3))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    c.write_all(payload)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    let (name, got) = out
        .split_once(' ')
        .ok_or_else(|| std::io::Error::other(format!("bad answer {out:?}")))?;
    if got != payload.len().to_string() {
        return Err(std::io::Error::other(format!(
            "{name} received {got} of {} bytes",
            payload.len()
        )));
    }
    Ok(name.to_string())
}

/// From the client namespace: one datagram from a fresh source port; returns the answering backend.
pub fn udp_request(payload: &[u8]) -> Result<String, std::io::Error> {
    let s = UdpSocket::bind((CLIENT, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(payload, (VIP, UDP_PORT))?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
