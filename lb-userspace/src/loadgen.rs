//! `xlb loadgen`: a packet generator on XDP live frames. `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` runs `xlb_loadgen` on kernel-owned frames and transmits each one
//! it returns `XDP_TX` for out of the given interface; the program stamps a template and varies
//! the flow per frame. One thread per CPU, each with its own program instance and counter.
//!
//! Where the kernel refuses live frames (a security policy can), the same frames, stamped by the
//! same rules in userspace, go out through an AF_PACKET socket with `sendmmsg`: slower, but the
//! generator still works and says which path it took.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions},
};
use etherparse::PacketBuilder;
use lb_common::{
    loadgen::{LoadgenConfig, TEMPLATE_MAX},
    map_names, prog_names,
};
use serde::Serialize;

use crate::dataplane::{Dataplane, LoadOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    /// TCP SYNs: every frame opens a flow (conntrack inserts on the LB).
    Syn,
    /// TCP ACKs: packets of established flows.
    Ack,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub iface: String,
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    pub sport: u16,
    pub flows: u32,
    /// Frame length without FCS.
    pub size: usize,
    pub kind: Kind,
    /// Total packets per second over all threads; `None`: flat out.
    pub rate: Option<u64>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub threads: usize,
    pub method: Method,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub packets: u64,
    pub seconds: f64,
    pub pps: f64,
    /// L2 bit rate of the frames (without preamble and FCS).
    pub bits_per_second: f64,
    pub frame_size: usize,
    pub threads: usize,
    pub flows: u32,
    /// How the frames left: `live-frames` or `af-packet`.
    pub method: Method,
}

/// The template frame of flow 0 and the generator's map value.
pub fn template(o: &Options) -> Result<(Vec<u8>, LoadgenConfig)> {
    let eth = PacketBuilder::ethernet2(o.src_mac, o.dst_mac);
    let (ip, l3_hdr) = match (o.src, o.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (eth.ipv4(s.octets(), d.octets(), 64), 20usize),
        (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), 64), 40usize),
        _ => bail!(
            "source {} and destination {} differ in family",
            o.src,
            o.dst
        ),
    };
    let l4_hdr = if o.kind == Kind::Udp { 8 } else { 20 };
    let headers = 14 + l3_hdr + l4_hdr;
    let size = o.size.max(60).max(headers);
    let payload = vec![0u8; size - headers];
    let mut frame = Vec::with_capacity(size);
    match o.kind {
        Kind::Udp => ip.udp(o.sport, o.dport).write(&mut frame, &payload)?,
        Kind::Syn => ip
            .tcp(o.sport, o.dport, 1, 64240)
            .syn()
            .write(&mut frame, &payload)?,
        Kind::Ack => ip
            .tcp(o.sport, o.dport, 1, 64240)
            .ack(1)
            .write(&mut frame, &payload)?,
    }
    let l4 = 14 + l3_hdr;
    let mut cfg = LoadgenConfig {
        copy_len: (headers.div_ceil(8) * 8).min(TEMPLATE_MAX).min(size) as u32,
        flows: o.flows.max(1),
        sport_off: l4 as u16,
        saddr_lo_off: if l3_hdr == 20 {
            14 + 12 + 2
        } else {
            14 + 8 + 14
        },
        ip_csum_off: if l3_hdr == 20 { 14 + 10 } else { 0 },
        l4_csum_off: (l4 + if o.kind == Kind::Udp { 6 } else { 16 }) as u16,
        sport_base: o.sport,
        sport_span: (o.flows.max(1)).min(65535 - o.sport as u32) as u16,
        ..LoadgenConfig::default()
    };
    let n = cfg.copy_len as usize;
    cfg.template[..n].copy_from_slice(&frame[..n]);
    Ok((frame, cfg))
}

/// `struct xdp_md` for the test run: frames arrive on `ifindex`, so `XDP_TX` leaves there.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

fn pin_cpu(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Online CPUs of the machine (not of this thread's affinity mask).
pub fn ncpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 { 1 } else { n as usize }
}

/// How frames leave the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Live frames where the kernel allows them, AF_PACKET otherwise.
    Auto,
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`: the XDP program stamps kernel-owned frames (fastest).
    LiveFrames,
    /// An AF_PACKET socket with `sendmmsg`, frames stamped in userspace by the same rules.
    AfPacket,
}

/// Frames per `sendmmsg` on the AF_PACKET path.
const PACKET_BATCH: usize = 64;

/// One generator thread's transmit path.
enum Sender {
    Live {
        // Boxed: a loaded data plane is far larger than the AF_PACKET variant.
        dp: Box<Dataplane>,
        md: [u8; 24],
    },
    Packet {
        fd: std::os::fd::OwnedFd,
        frames: Vec<Vec<u8>>,
        seq: u64,
    },
}

/// Whether a live-frame run failed because the kernel refuses the mode (a kernel without it, or
/// a security policy), not because of the frame or the interface.
fn live_frames_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| [libc::EPERM, libc::EOPNOTSUPP, libc::ENOTSUP].contains(&n))
    })
}

impl Sender {
    fn live(o: &Options, frame: &[u8], cfg: LoadgenConfig) -> Result<Sender> {
        let mut dp = Dataplane::load(&LoadOptions {
            conntrack_entries: 64,
            programs: &[prog_names::LOADGEN],
            ..LoadOptions::default()
        })?;
        let map = dp.map_mut_by_name(map_names::LOADGEN)?;
        let mut a: Array<_, LoadgenConfig> = Array::try_from(map)?;
        a.set(0, cfg, 0)?;
        Ok(Sender::Live {
            dp: Box::new(dp),
            md: xdp_md(frame.len(), o.ifindex),
        })
    }

    fn packet(o: &Options, frame: &[u8]) -> Result<Sender> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket creation; the fd is owned below. Protocol 0: send only, this
        // socket receives nothing.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; bind reads it for its declared size.
        let rc = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = o.ifindex as i32;
            libc::bind(
                raw,
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding AF_PACKET to {}", o.iface));
        }
        // Straight to the driver, as live frames go: a qdisc would only queue and drop.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(Sender::Packet {
            fd,
            frames: vec![frame.to_vec(); PACKET_BATCH],
            seq: 0,
        })
    }

    /// Send `n` frames; returns how many left.
    fn send(&mut self, n: u32, frame: &[u8], cfg: &LoadgenConfig) -> Result<u64> {
        match self {
            Sender::Live { dp, md } => {
                let prog = dp.program(prog_names::LOADGEN)?;
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(frame);
                opts.ctx_in = Some(&md[..]);
                opts.repeat = n;
                opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
                prog.test_run(opts).map_err(|e| match e {
                    // Keep the errno: `live_frames_refused` decides on it.
                    aya::programs::ProgramError::SyscallError(s) => {
                        anyhow::Error::new(s.io_error).context("live-frame test run")
                    }
                    other => anyhow::Error::new(other).context("live-frame test run"),
                })?;
                Ok(n as u64)
            }
            Sender::Packet { fd, frames, seq } => {
                use std::os::fd::AsRawFd as _;
                let flows = cfg.flows.max(1) as u64;
                let mut left = n as usize;
                let mut sent = 0u64;
                while left > 0 {
                    let k = left.min(PACKET_BATCH);
                    for (i, f) in frames.iter_mut().take(k).enumerate() {
                        cfg.stamp(f, ((*seq + i as u64) % flows) as u32)
                            .context("frame shorter than its template")?;
                    }
                    let mut iov: Vec<libc::iovec> = frames[..k]
                        .iter_mut()
                        .map(|f| libc::iovec {
                            iov_base: f.as_mut_ptr().cast(),
                            iov_len: f.len(),
                        })
                        .collect();
                    // SAFETY: zeroed mmsghdr is valid; each points at one iovec above.
                    let mut msgs: Vec<libc::mmsghdr> = iov
                        .iter_mut()
                        .map(|v| {
                            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                            m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                            m.msg_hdr.msg_iovlen = 1;
                            m
                        })
                        .collect();
                    // SAFETY: `msgs` and the buffers it points at outlive the call.
                    let r =
                        unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), k as u32, 0) };
                    if r < 0 {
                        let e = std::io::Error::last_os_error();
                        match e.raw_os_error() {
                            // The device queue is full: let it drain.
                            Some(libc::ENOBUFS | libc::EAGAIN) => {
                                std::thread::sleep(Duration::from_micros(50));
                                continue;
                            }
                            _ => return Err(e).context("sendmmsg on AF_PACKET"),
                        }
                    }
                    let r = r as usize;
                    *seq += r as u64;
                    sent += r as u64;
                    left -= r;
                }
                Ok(sent)
            }
        }
    }
}

/// Generate until the duration or count is reached (or `stop` is set); `progress` is called
/// about once a second with (packets so far, elapsed).
pub fn run(
    o: &Options,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(u64, Duration),
) -> Result<Summary> {
    if o.duration.is_none() && o.count.is_none() {
        bail!("give --duration or --count");
    }
    let (frame, cfg) = template(o)?;
    let sent = Arc::new(AtomicU64::new(0));
    // The method every thread ended up using (live frames until one falls back).
    let fell_back = Arc::new(AtomicBool::new(o.method == Method::AfPacket));
    let threads = o.threads.max(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (frame, stop, sent, o) = (frame.clone(), stop.clone(), sent.clone(), o.clone());
        let fell_back = fell_back.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            pin_cpu(t % ncpus());
            let mut sender = match o.method {
                Method::AfPacket => Sender::packet(&o, &frame)?,
                _ => Sender::live(&o, &frame, cfg)?,
            };
            let per_thread_rate = o.rate.map(|r| (r / threads as u64).max(1));
            // Rate-limited: a slice every 10 ms; flat out: large slices (AF_PACKET sends in
            // batches of its own within a slice).
            let slice = match per_thread_rate {
                Some(r) => (r / 100).clamp(1, 1 << 16) as u32,
                None => 1 << 16,
            };
            let tick = per_thread_rate.map(|r| Duration::from_secs_f64(slice as f64 / r as f64));
            let mut next = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let mut n = slice;
                if let Some(c) = o.count {
                    let done = sent.load(Ordering::Relaxed);
                    if done >= c {
                        return Ok(());
                    }
                    n = n.min((c - done) as u32);
                }
                let done = match sender.send(n, &frame, &cfg) {
                    Ok(k) => k,
                    // Refused before anything was sent: the same frames, by AF_PACKET.
                    Err(e)
                        if o.method == Method::Auto
                            && matches!(sender, Sender::Live { .. })
                            && live_frames_refused(&e) =>
                    {
                        if !fell_back.swap(true, Ordering::Relaxed) {
                            eprintln!(
                                "xlb loadgen: the kernel refused XDP live frames ({e:#}); sending through AF_PACKET"
                            );
                        }
                        sender = Sender::packet(&o, &frame)?;
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("sending on {}", o.iface))),
                };
                sent.fetch_add(done, Ordering::Relaxed);
                if let Some(t) = tick {
                    next += t;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_millis(100) {
                        // Far behind (we cannot keep up): do not burst to catch up.
                        next = now;
                    }
                }
            }
        }));
    }
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = start.elapsed();
        let n = sent.load(Ordering::Relaxed);
        let finished = o.duration.is_some_and(|d| elapsed >= d) || o.count.is_some_and(|c| n >= c);
        if finished || handles.iter().all(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            progress(n, elapsed);
        }
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let packets = sent.load(Ordering::Relaxed);
    let pps = packets as f64 / seconds;
    Ok(Summary {
        packets,
        seconds,
        pps,
        bits_per_second: pps * frame.len() as f64 * 8.0,
        frame_size: frame.len(),
        threads,
        flows: cfg.flows,
        method: if fell_back.load(Ordering::Relaxed) {
            Method::AfPacket
        } else {
            Method::LiveFrames
        },
    })
}

/// MAC address of an interface in the current network namespace.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    // SAFETY: a datagram socket used only for one ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: ifreq is plain data; the name is copied in bounded; the ioctl fills ifr_hwaddr.
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in iface.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        libc::close(fd);
        if rc != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            let mut mac = [0u8; 6];
            for (i, m) in mac.iter_mut().enumerate() {
                *m = ifr.ifr_ifru.ifru_hwaddr.sa_data[i] as u8;
            }
            Ok(mac)
        }
    };
    r.with_context(|| format!("MAC address of {iface}"))
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).with_context(|| format!("{s:?} is not a MAC address"))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kind: Kind, src: &str, dst: &str) -> Options {
        Options {
            iface: "x".into(),
            ifindex: 1,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            dport: 7000,
            sport: 1024,
            flows: 100,
            size: 64,
            kind,
            rate: None,
            duration: Some(Duration::from_secs(1)),
            count: None,
            threads: 1,
            method: Method::Auto,
        }
    }

    fn stamp(frame: &[u8], cfg: &LoadgenConfig, flow: u32) -> Vec<u8> {
        let mut f = frame.to_vec();
        cfg.stamp(&mut f, flow).expect("frame holds the template");
        f
    }

    #[test]
    fn stamped_frames_carry_valid_checksums_and_distinct_flows() {
        for (kind, src, dst) in [
            (Kind::Udp, "10.0.1.2", "10.100.0.1"),
            (Kind::Syn, "10.0.1.2", "10.100.0.1"),
            (Kind::Ack, "2001:db8::2", "2001:db8:100::1"),
            (Kind::Udp, "2001:db8::2", "2001:db8:100::1"),
        ] {
            let o = opts(kind, src, dst);
            let (frame, cfg) = template(&o).expect("template");
            let mut seen = std::collections::HashSet::new();
            for flow in [0, 1, 57, 99] {
                let f = stamp(&frame, &cfg, flow);
                let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
                let (ip_ok, l4_ok, key) = match (&p.net, &p.transport) {
                    (
                        Some(etherparse::NetSlice::Ipv4(ip)),
                        Some(etherparse::TransportSlice::Udp(u)),
                    ) => {
                        let h = ip.header().to_header();
                        let ok = h.calc_header_checksum() == h.header_checksum;
                        let l4 = u
                            .to_header()
                            .calc_checksum_ipv4(&h, u.payload())
                            .expect("sum")
                            == u.checksum();
                        (ok, l4, (h.source, u.source_port()))
                    }
                    (
                        Some(etherparse::NetSlice::Ipv4(ip)),
                        Some(etherparse::TransportSlice::Tcp(t)),
                    ) => {
                        let h = ip.header().to_header();
                        let ok = h.calc_header_checksum() == h.header_checksum;
                        let l4 = t
                            .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                            .expect("sum")
                            == t.checksum();
                        (ok, l4, (h.source, t.source_port()))
                    }
                    (
                        Some(etherparse::NetSlice::Ipv6(ip)),
                        Some(etherparse::TransportSlice::Tcp(t)),
                    ) => {
                        let h = ip.header().to_header();
                        let l4 = t.calc_checksum_ipv6(h.source, h.destination).expect("sum")
                            == t.checksum();
                        (true, l4, ([0; 4], t.source_port()))
                    }
                    (
                        Some(etherparse::NetSlice::Ipv6(ip)),
                        Some(etherparse::TransportSlice::Udp(u)),
                    ) => {
                        let h = ip.header().to_header();
                        let l4 = u
                            .to_header()
                            .calc_checksum_ipv6(&h, u.payload())
                            .expect("sum")
                            == u.checksum();
                        (true, l4, ([0; 4], u.source_port()))
                    }
                    other => panic!("unexpected {other:?}"),
                };
                assert!(ip_ok && l4_ok, "{kind:?} {src} flow {flow}: checksums");
                assert!(seen.insert(key), "{kind:?} flow {flow} repeats a key");
            }
        }
    }
}
