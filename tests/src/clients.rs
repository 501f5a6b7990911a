//! Client traffic for the end-to-end scenarios: long-lived TCP connections and UDP flows that
//! ping-pong with the echo servers (`tests::echo`) and tally, per backend, round trips, failures
//! (an error, a timeout, or an answer from another backend: a moved flow) and the slowest round
//! trip; and bursts of short connections.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{netns::Netns, topo::VIP};

/// Per backend name: round trips, failures, slowest round trip.
pub type Tally = HashMap<String, (u64, u64, Duration)>;

/// Pin the calling thread to `cpu`. On veth the CPU that runs XDP for a packet is the sender's,
/// so a pinned client keeps each flow on one CPU as RSS does on a NIC (conntrack is per CPU).
pub fn pin(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn name_of(answer: &[u8]) -> String {
    let s = String::from_utf8_lossy(answer);
    s.split('|').next().unwrap_or("").to_string()
}

pub struct LongLived {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Tally>,
}

impl LongLived {
    /// `n` TCP connections (or UDP flows) from `client` to the VIP's `port`, each pinging every
    /// `period` until `finish`.
    pub fn start(client: &Netns, n: usize, port: u16, udp: bool, period: Duration) -> LongLived {
        LongLived::spawn(client, n, port, udp, period, false)
    }

    /// Like `start`, but the client thread moves to the other CPU every round: consecutive
    /// packets of one flow meet the forwarder on different CPUs (as after an RSS change, or on
    /// veth and virtual NICs).
    pub fn hopping(client: &Netns, n: usize, port: u16, udp: bool, period: Duration) -> LongLived {
        LongLived::spawn(client, n, port, udp, period, true)
    }

    fn spawn(
        client: &Netns,
        n: usize,
        port: u16,
        udp: bool,
        period: Duration,
        hop: bool,
    ) -> LongLived {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = client.spawn(move || {
            pin(0);
            if udp {
                udp_flows(n, port, period, &s, hop)
            } else {
                tcp_flows(n, port, period, &s, hop)
            }
        });
        LongLived { stop, handle }
    }

    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("client thread")
    }
}

fn record(t: &mut Tally, who: &str, ok: bool, took: Duration) {
    let e = t.entry(who.to_string()).or_insert((0, 0, Duration::ZERO));
    e.0 += 1;
    e.2 = e.2.max(took);
    if !ok {
        e.1 += 1;
    }
}

/// Possible CPUs of this machine.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn tcp_flows(n: usize, port: u16, period: Duration, stop: &AtomicBool, hop: bool) -> Tally {
    let mut conns: Vec<(TcpStream, String, bool)> = (0..n)
        .map(|_| {
            let mut c = TcpStream::connect((VIP, port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            c.write_all(b"ping").expect("first ping");
            let mut buf = [0u8; 64];
            let k = c.read(&mut buf).expect("first pong");
            (c, name_of(&buf[..k]), true)
        })
        .collect();
    let mut tally = Tally::new();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        if hop {
            round += 1;
            pin(round % cpus());
        }
        for (c, who, alive) in conns.iter_mut() {
            if !*alive {
                continue;
            }
            let t = Instant::now();
            let mut buf = [0u8; 64];
            let ok = c.write_all(b"ping").is_ok()
                && c.read(&mut buf)
                    .is_ok_and(|k| k > 0 && name_of(&buf[..k]) == *who);
            record(&mut tally, who, ok, t.elapsed());
            *alive = ok;
        }
        std::thread::sleep(period);
    }
    // Established connections complete: a clean close.
    for (c, _, _) in conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    tally
}

fn udp_flows(n: usize, port: u16, period: Duration, stop: &AtomicBool, hop: bool) -> Tally {
    let socks: Vec<(UdpSocket, String)> = (0..n)
        .map(|_| {
            let u = UdpSocket::bind((Ipv4Addr::new(10, 0, 1, 2), 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            u.connect((VIP, port)).expect("connect");
            // Setup, not measurement: the first datagram of a flow may race ARP.
            let mut buf = [0u8; 64];
            let k = (0..5)
                .find_map(|_| {
                    u.send(b"ping").ok()?;
                    u.recv(&mut buf).ok()
                })
                .expect("first answer");
            (u, name_of(&buf[..k]))
        })
        .collect();
    let mut tally = Tally::new();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        if hop {
            round += 1;
            pin(round % cpus());
        }
        for (u, who) in &socks {
            let t = Instant::now();
            let mut buf = [0u8; 64];
            let ok = u.send(b"ping").is_ok()
                && u.recv(&mut buf).is_ok_and(|k| name_of(&buf[..k]) == *who);
            record(&mut tally, who, ok, t.elapsed());
        }
        std::thread::sleep(period);
    }
    tally
}

/// `n` short TCP connections made by `connect`; the answering backends ("error" for failures).
fn burst<F>(client: &Netns, n: usize, connect: F) -> HashMap<String, usize>
where
    F: Fn() -> std::io::Result<TcpStream> + Send + 'static,
{
    client
        .spawn(move || {
            // Same CPU as the long-lived flows: one RSS queue for the client.
            pin(0);
            let mut seen = HashMap::new();
            for _ in 0..n {
                let who = (|| -> std::io::Result<String> {
                    let mut c = connect()?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    c.write_all(b"hi")?;
                    let mut buf = [0u8; 64];
                    let k = c.read(&mut buf)?;
                    Ok(name_of(&buf[..k]))
                })()
                .unwrap_or_else(|_| "error".into());
                *seen.entry(who).or_insert(0) += 1;
            }
            seen
        })
        .join()
        .expect("client thread")
}

/// `n` short TCP connections to `dst`.
pub fn short_tcp_to(client: &Netns, n: usize, dst: std::net::SocketAddr) -> HashMap<String, usize> {
    burst(client, n, move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(2))
    })
}

/// `n` short TCP connections to the VIP's `port` from fresh source ports, optionally from a
/// given local address.
pub fn short_tcp(
    client: &Netns,
    n: usize,
    port: u16,
    from: Option<Ipv4Addr>,
) -> HashMap<String, usize> {
    burst(client, n, move || connect_from(from, port))
}

/// Connect to the VIP from `from` (any address when `None`) without an extra crate: bind a
/// socket through libc, then hand it to std.
pub fn connect_from(from: Option<Ipv4Addr>, port: u16) -> std::io::Result<TcpStream> {
    let Some(src) = from else {
        return TcpStream::connect_timeout(&(VIP, port).into(), Duration::from_secs(2));
    };
    use std::os::fd::FromRawFd as _;
    // SAFETY: a fresh socket we own; the sockaddr structures are fully initialised; the fd is
    // handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sa = |ip: Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sa(src, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(VIP, port);
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Short TCP connections in a loop, one thread per CPU, until `finish`: answers per backend name,
/// "error" for a connection that failed (refused, reset, timed out).
pub struct ShortLoop {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<HashMap<String, usize>>>,
}

impl ShortLoop {
    pub fn start(client: &Netns, port: u16) -> ShortLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..cpus())
            .map(|cpu| {
                let s = stop.clone();
                client.spawn(move || {
                    pin(cpu);
                    let mut seen = HashMap::new();
                    while !s.load(Ordering::Relaxed) {
                        let who = (|| -> std::io::Result<String> {
                            let mut c = TcpStream::connect_timeout(
                                &(VIP, port).into(),
                                Duration::from_secs(2),
                            )?;
                            c.set_read_timeout(Some(Duration::from_secs(2)))?;
                            c.write_all(b"hi")?;
                            let mut buf = [0u8; 64];
                            let k = c.read(&mut buf)?;
                            if k == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                            Ok(name_of(&buf[..k]))
                        })()
                        .unwrap_or_else(|_| "error".into());
                        *seen.entry(who).or_insert(0) += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        ShortLoop { stop, handles }
    }

    pub fn finish(self) -> HashMap<String, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = HashMap::new();
        for h in self.handles {
            for (k, v) in h.join().expect("client thread") {
                *all.entry(k).or_insert(0) += v;
            }
        }
        all
    }
}
