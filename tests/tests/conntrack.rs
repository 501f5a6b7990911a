//! Conntrack with real clients whose packets reach the forwarder on both CPUs: one backend per
//! flow whichever CPU carries its packets, through drains, weight changes, backends going down
//! and up, and five-tuples reused after a ring change; a spoofed-SYN flood that does not evict
//! established flows; idle timeouts.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use tests::{
    clients::{LongLived, ShortLoop, Tally, cpus, pin},
    echo::Echo,
    lab::Lab,
    topo::{CLIENT, VIP},
};

const TCP: u16 = 9000;
const UDP: u16 = 9001;

fn servers(lab: &Lab) -> Vec<Option<Echo>> {
    lab.net
        .backends
        .iter()
        .map(|b| Some(Echo::backend(b, TCP, UDP)))
        .collect()
}

/// The TCP and UDP VIPs over every backend, with a TCP health check on the TCP VIP.
fn config(lab: &Lab, extra_forwarding: &str) -> String {
    let mut c = lab.base_config().replace(
        "[forwarding]\n",
        &format!("[forwarding]\n{extra_forwarding}\n"),
    );
    c += &format!(
        "\n[[vip]]\naddress = \"{VIP}\"\nport = {TCP}\nprotocol = \"tcp\"\n\n[vip.health]\ntype = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n"
    );
    for b in &lab.net.backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    c += &format!("\n[[vip]]\naddress = \"{VIP}\"\nport = {UDP}\nprotocol = \"udp\"\n");
    for b in &lab.net.backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
    }
    c
}

fn name_of(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .split('|')
        .next()
        .unwrap_or("")
        .to_string()
}

/// A TCP connection to the VIP from the client address and source port `sport`, made by a
/// thread on `cpu` (so the SYN meets the forwarder there).
fn connect_from(cpu: usize, sport: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    pin(cpu);
    // SAFETY: a fresh socket we own, handed to TcpStream; the sockaddrs are fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            std::ptr::from_ref(&one).cast(),
            4,
        );
        let sa = |ip: Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(CLIENT, sport);
        if libc::bind(fd, std::ptr::from_ref(&local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(VIP, TCP);
        if libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(stream)
    }
}

/// One ping from a thread on `cpu`: the answering backend.
fn ping_from(c: &mut TcpStream, cpu: usize) -> std::io::Result<String> {
    pin(cpu);
    c.write_all(b"ping")?;
    let mut buf = [0u8; 64];
    let k = c.read(&mut buf)?;
    if k == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(name_of(&buf[..k]))
}

/// Close with a reset: no TIME_WAIT on either side, so the five-tuple can be used again at once.
fn reset(c: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a fully initialised linger.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&l).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// The reproduction, for 32 five-tuples: a connection opened on CPU 1 lands on some
/// backend; that backend is drained; the same five-tuple connects again with its SYN on CPU 0
/// (re-picked through the ring) and sends from CPU 1. Every packet must follow the new pick.
#[test]
fn a_reused_five_tuple_has_one_backend_on_every_cpu_after_a_ring_change() {
    assert!(cpus() >= 2, "needs two CPUs");
    let mut lab = Lab::new(2);
    let _srv = servers(&lab);
    lab.start(&config(&lab, ""));
    let ports: Vec<u16> = (0..32).map(|i| 41000 + i).collect();
    let first: HashMap<u16, String> = lab
        .net
        .client
        .spawn(move || {
            ports
                .iter()
                .map(|&p| {
                    let mut c = connect_from(1, p).expect("connect");
                    let who = ping_from(&mut c, 1).expect("first answer");
                    reset(c);
                    (p, who)
                })
                .collect()
        })
        .join()
        .expect("client");
    let drained = "backend-1";
    assert!(first.values().any(|w| w == drained), "{first:?}");
    lab.ok(&["backend", "drain", &format!("{VIP}:{TCP}/tcp"), "10.0.2.2"]);
    let again: Vec<(u16, String, Result<String, String>)> = lab
        .net
        .client
        .spawn(move || {
            first
                .into_iter()
                .map(|(p, was)| {
                    let got = (|| {
                        let mut c = connect_from(0, p)?;
                        let a = ping_from(&mut c, 1)?;
                        let b = ping_from(&mut c, 0)?;
                        let c2 = ping_from(&mut c, 1)?;
                        reset(c);
                        if a == b && b == c2 {
                            Ok(a)
                        } else {
                            Err(std::io::Error::other(format!("split: {a} {b} {c2}")))
                        }
                    })();
                    (p, was, got.map_err(|e| e.to_string()))
                })
                .collect()
        })
        .join()
        .expect("client");
    let broken: Vec<_> = again
        .iter()
        .filter(|(_, _, g)| g.as_ref().map_or(true, |w| w == drained))
        .collect();
    let moved = again.iter().filter(|(_, was, _)| was == drained).count();
    eprintln!(
        "reused five-tuples: {} of {} broken or on the drained backend ({moved} had been on it)",
        broken.len(),
        again.len()
    );
    assert!(
        broken.is_empty(),
        "connections broken or split across CPUs: {broken:?}\n{}",
        lab.log()
    );
}

/// Sustained load from clients whose packets hop between CPUs (long-lived connections) and
/// short connections on every CPU, through a drain, a weight change, a backend crash and
/// return, and an undrain: no connection on a healthy backend breaks or moves.
#[test]
fn sustained_load_over_both_cpus_breaks_nothing_through_ring_changes() {
    assert!(cpus() >= 2, "needs two CPUs");
    let mut lab = Lab::new(3);
    let mut srv = servers(&lab);
    lab.start(&config(&lab, ""));
    let vip = format!("{VIP}:{TCP}/tcp");
    let a: Vec<String> = lab
        .net
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    let long = LongLived::hopping(&lab.net.client, 24, TCP, false, Duration::from_millis(10));
    let mut short = vec![ShortLoop::start(&lab.net.client, TCP)];
    let step = Duration::from_millis(600);
    std::thread::sleep(step);
    lab.ok(&["backend", "drain", &vip, &a[0]]);
    std::thread::sleep(step);
    lab.ok(&["backend", "set-weight", &vip, &a[1], "3"]);
    std::thread::sleep(step);
    // Backend 3 crashes: new connections to it fail until health takes it out; that window is
    // not what this test measures, so the short connections pause across it.
    let before_crash = short.pop().expect("loop").finish();
    srv[2].take().expect("server").kill();
    lab.wait_backend_state(Some(&vip), &a[2], "down", Duration::from_secs(3));
    short.push(ShortLoop::start(&lab.net.client, TCP));
    std::thread::sleep(step);
    srv[2] = Some(Echo::backend(&lab.net.backends[2], TCP, UDP));
    lab.wait_backend_state(Some(&vip), &a[2], "up", Duration::from_secs(3));
    std::thread::sleep(step);
    lab.ok(&["backend", "undrain", &vip, &a[0]]);
    std::thread::sleep(step);
    let after = short.pop().expect("loop").finish();
    let t: Tally = long.finish();
    let count = |m: &HashMap<String, usize>| m.values().sum::<usize>();
    let errors =
        before_crash.get("error").copied().unwrap_or(0) + after.get("error").copied().unwrap_or(0);
    let healthy_long: Vec<_> = t
        .iter()
        .filter(|(n, _)| *n != "backend-3")
        .map(|(n, (trips, failed, _))| (n.clone(), *trips, *failed))
        .collect();
    let long_failed: u64 = healthy_long.iter().map(|x| x.2).sum();
    eprintln!(
        "sustained load: {} short connections, {errors} failed; long-lived on healthy backends {healthy_long:?}",
        count(&before_crash) + count(&after)
    );
    assert!(count(&before_crash) + count(&after) > 300, "load ran");
    assert_eq!(
        errors, 0,
        "short connections reset or failed: {before_crash:?} {after:?}"
    );
    assert_eq!(
        long_failed,
        0,
        "long-lived connections on healthy backends broke or moved: {t:?}\n{}",
        lab.log()
    );
    assert!(healthy_long.iter().all(|x| x.1 > 0));
}

/// A spoofed-SYN flood from thousands of sources while long-lived connections sit idle in a
/// small table, and a drain during it: above the new-flow limit SYNs are not tracked, so the
/// flood evicts nothing (without the limit, the same flood pushed ~114,000 entries out of the
/// 2,048-entry table), and every connection keeps its backend.
#[test]
fn a_syn_flood_does_not_evict_established_flows() {
    let mut lab = Lab::flooding(3);
    let _srv = servers(&lab);
    let cfg = config(&lab, "new_flow_limit = 200")
        .replace("conntrack_entries = 65536", "conntrack_entries = 2048");
    lab.start(&cfg);
    // Idle through the whole flood: a round trip at the start and one after it.
    let long = LongLived::hopping(&lab.net.client, 24, TCP, false, Duration::from_millis(4500));
    std::thread::sleep(Duration::from_millis(700));
    let mac = lab.net.lb.mac("lc").map(|b| format!("{b:02x}")).join(":");
    let flood = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.net.client.name))
        .arg("--")
        .arg(tests::lab::xlb_bin())
        .args([
            "loadgen",
            "--iface",
            "c0",
            "--dst",
            &format!("{VIP}:{TCP}"),
            "--dst-mac",
            &mac,
            "--src",
            "10.200.0.1",
            "--kind",
            "syn",
            "--flows",
            "60000",
            "--rate",
            "40000",
            "--duration",
            "3",
            "--threads",
            "1",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen");
    std::thread::sleep(Duration::from_millis(1000));
    lab.ok(&["backend", "drain", &format!("{VIP}:{TCP}/tcp"), "10.0.2.2"]);
    let out = flood.wait_with_output().expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    std::thread::sleep(Duration::from_millis(1500));
    let t = long.finish();
    let stats = lab.json(&["stats"]);
    let vip = &stats["vips"][0];
    let status = lab.json(&["status"]);
    eprintln!(
        "flood: {} spoofed SYNs ({:.0} pps), {} deferred, {} new flows tracked, table {} of {}, {} evicted; long-lived {t:?}",
        sent["packets"],
        sent["pps"].as_f64().unwrap_or(0.0),
        vip["deferred"],
        vip["new_flows"],
        status["conntrack_entries"],
        status["conntrack_capacity"],
        status["conntrack_evictions"]
    );
    assert!(
        sent["packets"].as_u64().unwrap_or(0) > 20_000,
        "the flood ran: {sent}"
    );
    assert!(
        vip["deferred"].as_u64().unwrap_or(0) > 10_000,
        "SYNs above the limit were not tracked: {vip}"
    );
    assert_eq!(
        status["conntrack_evictions"], 0,
        "the flood pushed entries out of the table: {status}"
    );
    let failed: u64 = t.values().map(|x| x.1).sum();
    let trips: u64 = t.values().map(|x| x.0).sum();
    assert_eq!(
        trips, 48,
        "one round trip before the flood and one after, each: {t:?}"
    );
    assert!(
        t.contains_key("backend-1"),
        "a connection on the drained backend: {t:?}"
    );
    assert_eq!(
        failed,
        0,
        "established connections broke under the flood: {t:?}\n{}",
        lab.log()
    );
}

/// A UDP flow idle past its VIP's timeout is a new flow: it leaves a drained backend only then.
#[test]
fn an_idle_udp_flow_expires_and_is_then_a_new_flow() {
    let mut lab = Lab::new(2);
    let _srv = servers(&lab);
    let cfg = config(&lab, "udp_idle_timeout_secs = 2");
    lab.start(&cfg);
    let client = lab
        .net
        .client
        .spawn(|| {
            pin(0);
            let u = std::net::UdpSocket::bind((CLIENT, 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            u.connect((VIP, UDP)).expect("connect");
            u
        })
        .join()
        .expect("socket");
    let ask = |lab: &Lab| -> String {
        let u = client.try_clone().expect("clone");
        lab.net
            .client
            .spawn(move || {
                pin(0);
                let mut buf = [0u8; 64];
                for _ in 0..5 {
                    if u.send(b"ping").is_ok()
                        && let Ok(k) = u.recv(&mut buf)
                    {
                        return name_of(&buf[..k]);
                    }
                }
                "error".into()
            })
            .join()
            .expect("client")
    };
    let first = ask(&lab);
    let addr = |name: &str| {
        let i: usize = name.trim_start_matches("backend-").parse().expect("name");
        lab.net.backends[i - 1].addr.to_string()
    };
    lab.ok(&[
        "backend",
        "drain",
        &format!("{VIP}:{UDP}/udp"),
        &addr(&first),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ask(&lab),
        first,
        "tracked within its timeout: stays on the drained backend"
    );
    let flows = lab.json(&["flows", &format!("{VIP}:{UDP}/udp")]);
    assert_eq!(flows["flows"][0]["idle_timeout_secs"], 2, "{flows}");
    // Idle past 2 s (the clock ticks once a second, 2 s ahead): a new flow, away from the drain.
    std::thread::sleep(Duration::from_millis(4500));
    let flows = lab.json(&["flows", &format!("{VIP}:{UDP}/udp")]);
    assert_eq!(flows["flows"][0]["expired"], true, "{flows}");
    let then = ask(&lab);
    assert_ne!(then, first, "an expired flow follows the ring");
    let stats = lab.json(&["stats"]);
    let udp = stats["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["vip"] == format!("{VIP}:{UDP}/udp"))
        .cloned()
        .expect("udp vip");
    assert_eq!(udp["expired"], 1, "{udp}");
}
