//! Per-backend echo servers that can be killed and restarted: TCP on all addresses, UDP on each
//! given address (a UDP reply from a wildcard socket would leave from the interface address, not
//! the VIP the client talks to), every answer prefixed with the backend's name
//! (`backend-2|ping`). Killing one closes its
//! listener, its UDP socket and every accepted connection, as a crashed server would.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Echo {
    /// An HTTP server on every address of `ns` (TCP `port`): `200 OK` with body `ok` to any
    /// request, then close.
    pub fn http(ns: &Netns, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = ns.spawn(move || http_loop(port, &s));
        std::thread::sleep(Duration::from_millis(50));
        Echo {
            stop,
            threads: vec![t],
            conns: Arc::default(),
        }
    }
}

fn http_loop(port: u16, stop: &AtomicBool) {
    let l = TcpListener::bind(("::", port)).expect("bind http");
    l.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 1024];
                // The request's head arrives in one segment from the prober.
                if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// UDP on `addr` answering only every `every`-th datagram (1: all): a flapping health target.
pub fn udp_responder(ns: &Netns, name: &str, addr: IpAddr, port: u16, every: u64) -> Echo {
    let stop = Arc::new(AtomicBool::new(false));
    let (n, s) = (name.to_string(), stop.clone());
    let t = ns.spawn(move || udp_loop(&n, addr, port, every, &s));
    std::thread::sleep(Duration::from_millis(50));
    Echo {
        stop,
        threads: vec![t],
        conns: Arc::default(),
    }
}

impl Echo {
    pub fn start(
        ns: &Netns,
        name: &str,
        tcp_port: u16,
        udp_port: u16,
        udp_addrs: &[IpAddr],
    ) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (n, s, c) = (name.to_string(), stop.clone(), conns.clone());
        let tcp = ns.spawn(move || tcp_loop(&n, tcp_port, &s, &c));
        let mut threads = vec![tcp];
        for &a in udp_addrs {
            let (n, s) = (name.to_string(), stop.clone());
            threads.push(ns.spawn(move || udp_loop(&n, a, udp_port, 1, &s)));
        }
        // Bound once the threads run.
        std::thread::sleep(Duration::from_millis(50));
        Echo {
            stop,
            threads,
            conns,
        }
    }

    /// The servers of one backend host: TCP on all addresses, UDP on the IPv4 VIP and on the
    /// host's own address (where health probes go).
    pub fn backend(b: &crate::topo::BackendHost, tcp_port: u16, udp_port: u16) -> Echo {
        Echo::start(
            &b.ns,
            &b.name,
            tcp_port,
            udp_port,
            &[crate::topo::VIP.into(), b.addr.into()],
        )
    }

    /// Stop serving: listener and sockets closed, established connections reset.
    pub fn kill(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(conns) = self.conns.lock() {
            for c in conns.iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.halt();
    }
}

fn tcp_loop(name: &str, port: u16, stop: &Arc<AtomicBool>, conns: &Arc<Mutex<Vec<TcpStream>>>) {
    // Dual-stack: IPv4 arrives v4-mapped on the IPv6 wildcard.
    let l = TcpListener::bind(("::", port)).expect("bind tcp echo");
    l.set_nonblocking(true).expect("nonblocking");
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false).expect("blocking");
                c.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                if let (Ok(mut list), Ok(clone)) = (conns.lock(), c.try_clone()) {
                    list.push(clone);
                }
                let (name, stop) = (name.to_string(), stop.clone());
                workers.push(std::thread::spawn(move || serve(c, &name, &stop)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    drop(l);
    for w in workers {
        let _ = w.join();
    }
}

fn serve(mut c: TcpStream, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut out = format!("{name}|").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if c.write_all(&out).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    let _ = c.shutdown(Shutdown::Both);
}

fn udp_loop(name: &str, addr: IpAddr, port: u16, every: u64, stop: &AtomicBool) {
    let s = UdpSocket::bind((addr, port)).expect("bind udp echo");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let seen = AtomicU64::new(0);
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            if !seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(every) {
                continue;
            }
            let mut out = format!("{name}|").into_bytes();
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, peer);
        }
    }
}
