//! What new operators and hostile inputs broke (issue 15), each against a real daemon in
//! namespaces: unreachable backends, a second daemon on the same pins, interfaces deleted under
//! the forwarder, drastic applies, `detach` under a running daemon, exhausting the admin port,
//! large applies during queries, broken pipes, logs, messages.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    clients::short_tcp,
    echo::Echo,
    lab::{Lab, xlb_bin},
    netns::{Netns, veth},
    topo::{TCP_PORT, VIP},
};

const TCP_VIP: &str = "10.100.0.1:8080/tcp";

/// `n` TCP requests from the client: how many failed.
fn failures(lab: &Lab, n: usize) -> usize {
    short_tcp(&lab.net.client, n, TCP_PORT, None)
        .get("error")
        .copied()
        .unwrap_or(0)
}

/// Echo servers on every backend, on all addresses (health probes go to the backend's own).
fn servers(lab: &Lab) -> Vec<Echo> {
    lab.net
        .backends
        .iter()
        .map(|b| Echo::backend(b, TCP_PORT, tests::topo::UDP_PORT))
        .collect()
}

fn with_health(lab: &Lab, interval_ms: u32, timeout_ms: u32) -> String {
    lab.full_config().replacen(
        &format!("port = {TCP_PORT}\nprotocol = \"tcp\"\n"),
        &format!(
            "port = {TCP_PORT}\nprotocol = \"tcp\"\n\n[vip.health]\ntype = \"tcp\"\ninterval_ms = {interval_ms}\ntimeout_ms = {timeout_ms}\nrise = 2\nfall = 2\n"
        ),
        1,
    )
}

/// A backend whose host stops answering ARP is taken out by its health check, shown
/// unresolved once its next hop is gone, and blocks no other change; a backend that never
/// answered ARP does not stop the daemon from starting with the rest.
#[test]
fn unreachable_backends_leave_the_rings_and_block_nothing() {
    let mut lab = Lab::new(3);
    let _servers = servers(&lab);
    // A fourth backend on backend 1's subnet with no host behind it.
    let ghost = "10.0.2.99";
    let cfg = with_health(&lab, 200, 100).replacen(
        "\n[[vip.backend]]\naddress = \"10.0.2.2\"\n",
        &format!(
            "\n[[vip.backend]]\naddress = \"10.0.2.2\"\n\n[[vip.backend]]\naddress = \"{ghost}\"\n"
        ),
        1,
    );
    lab.start(&cfg);
    lab.wait_backend_state(Some(TCP_VIP), ghost, "unresolved", Duration::from_secs(5));
    let list = lab.json(&["backend", "list", TCP_VIP]);
    let ghost_row = list
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["address"] == ghost)
        .expect("listed");
    assert_eq!(ghost_row["slots"], 0, "out of the ring: {ghost_row}");
    assert_eq!(
        failures(&lab, 30),
        0,
        "the daemon started with what resolves"
    );

    // Backend 2's host goes away: its link goes down, ARP stops answering.
    let b2 = &lab.net.backends[1];
    b2.ns.ip(&["link", "set", "b2", "down"]);
    let t0 = Instant::now();
    lab.wait_backend_state(Some(TCP_VIP), "10.0.3.2", "down", Duration::from_secs(3));
    eprintln!(
        "dead host taken out by its health check in {:?}",
        t0.elapsed()
    );
    // Meanwhile every other change goes through, at once.
    let t = Instant::now();
    lab.ok(&["backend", "set-weight", TCP_VIP, "10.0.4.2", "2"]);
    lab.ok(&["backend", "drain", "10.100.0.1:7000/udp", "10.0.4.2"]);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "changes waited: {:?}",
        t.elapsed()
    );
    // Once its neighbour entry is gone (the refresh asks every 2 s), it is shown unresolved.
    lab.wait_backend_state(
        Some(TCP_VIP),
        "10.0.3.2",
        "unresolved",
        Duration::from_secs(8),
    );
    assert_eq!(
        failures(&lab, 30),
        0,
        "new connections avoid the dead backend: {}\n{}\n{}",
        lab.ok(&["backend", "list"]),
        lab.ok(&["stats"]),
        lab.log()
    );
    let status = lab.json(&["status"]);
    assert!(
        status["backends_unresolved"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );
    // It comes back (its default route went with the link).
    b2.ns.ip(&["link", "set", "b2", "up"]);
    b2.ns
        .ip(&["route", "replace", "default", "via", "10.0.3.1"]);
    lab.wait_backend_state(Some(TCP_VIP), "10.0.3.2", "up", Duration::from_secs(10));
    assert_eq!(failures(&lab, 20), 0);
}

/// A second daemon on the same pin directory (another socket and state file) is refused and
/// touches nothing; after a clean stop no lock file is left behind; logs to a file carry no
/// terminal colours; the status table says how the data plane was taken over.
#[test]
fn one_daemon_per_pin_directory_and_clean_stops() {
    let mut lab = Lab::new(1);
    let _servers = servers(&lab);
    lab.start(&lab.full_config());
    let status = lab.ok(&["status"]);
    assert!(
        status.contains("data plane: maps created by this daemon; forwarder program id"),
        "{status}"
    );
    let other = lab
        .full_config()
        .replace(
            &lab.socket.display().to_string(),
            &lab.dir.join("second.sock").display().to_string(),
        )
        .replace("state.json", "second-state.json");
    let cfg = lab.file("second.toml", &other);
    let out = lab.in_ns(&lab.net.lb.name, &["daemon", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second daemon started");
    assert!(err.contains("another xlb daemon holds"), "{err}");
    assert_eq!(failures(&lab, 10), 0, "the first daemon's VIPs are intact");
    assert_eq!(lab.json(&["status"])["vips"], 2);
    assert!(!lab.log().contains('\x1b'), "colour codes in a log file");

    lab.stop(libc::SIGTERM);
    assert!(
        !lab.socket.with_extension("lock").exists(),
        "the lock file outlives a clean stop"
    );
    // A restarted daemon says it adopted the maps.
    lab.start(&lab.full_config());
    assert!(
        lab.ok(&["status"])
            .contains("maps adopted from the previous daemon")
    );
}

/// The client-facing interface deleted and re-created under a running daemon: reported,
/// counted, and the forwarder attached again without a restart.
#[test]
fn an_interface_re_created_under_the_daemon_gets_the_forwarder_back() {
    let mut lab = Lab::new(1);
    let _servers = servers(&lab);
    lab.start(&lab.full_config());
    assert_eq!(failures(&lab, 5), 0);
    lab.net.lb.ip(&["link", "del", "lc"]);
    let t0 = Instant::now();
    loop {
        let s = lab.json(&["status"]);
        if s["interfaces"][0]["ifindex"] == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "not noticed: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    veth(&lab.net.client, "c0", &lab.net.lb, "lc");
    lab.net
        .client
        .ip(&["addr", "add", "10.0.1.2/24", "dev", "c0"]);
    lab.net
        .client
        .ip(&["route", "add", "default", "via", "10.0.1.1"]);
    lab.net.lb.ip(&["addr", "add", "10.0.1.1/24", "dev", "lc"]);
    let t0 = Instant::now();
    loop {
        let s = lab.json(&["status"]);
        if s["interfaces"][0]["ifindex"] != 0 && failures(&lab, 3) == 0 {
            assert_eq!(s["interfaces_lost"], 1, "{s}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "not re-attached: {s}\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let link = lab.net.lb.ip(&["-d", "link", "show", "lc"]);
    assert!(String::from_utf8_lossy(&link.stdout).contains("prog/xdp"));
    assert!(lab.log().contains("interface gone"), "{}", lab.log());
}

/// Export writes whole files or nothing; an apply that empties everything needs --force and
/// says what it does; oversized and endless input is refused early.
#[test]
fn drastic_and_broken_configuration_input_is_refused() {
    let mut lab = Lab::new(1);
    let _servers = servers(&lab);
    lab.start(&lab.full_config());
    let out = lab.dir.join("export.toml");
    std::fs::write(&out, "kept").expect("write");
    let failed = Command::new(xlb_bin())
        .args(["--socket", "/nonexistent.sock", "config", "export", "-f"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(!failed.status.success());
    assert_eq!(
        std::fs::read_to_string(&out).expect("read"),
        "kept",
        "export failed midway"
    );
    lab.ok(&["config", "export", "-f", &out.display().to_string()]);
    assert!(
        std::fs::read_to_string(&out)
            .expect("read")
            .contains("[[vip]]")
    );

    let empty = lab.file("empty.toml", "");
    let err = lab.fails(&["apply", "-f", &empty]);
    assert!(
        err.contains("removes every VIP (2)")
            && err.contains("detaches the forwarder from lc")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(lab.json(&["status"])["vips"], 2, "nothing applied");
    let big = lab.file("big.toml", &"# padding\n".repeat(500_000));
    let err = lab.fails(&["apply", "-f", &big]);
    assert!(err.contains("larger than 4 MiB"), "{err}");
    let t0 = Instant::now();
    let err = lab.fails(&["config", "check", "/dev/zero"]);
    assert!(
        err.contains("larger than 4 MiB") && t0.elapsed() < Duration::from_secs(5),
        "{err}"
    );
    let huge = lab.file(
        "huge.toml",
        &format!("[[vip]]\naddress = \"{}\"\n", "x".repeat(1_000_000)),
    );
    let err = lab.fails(&["config", "check", &huge]);
    assert!(
        err.len() < 2000,
        "the error echoes the whole value: {} bytes",
        err.len()
    );

    // Removing a VIP's last backend is said.
    let out = lab.xlb(&["backend", "remove", TCP_VIP, "10.0.2.2"]);
    assert!(out.status.success());
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(warn.contains("no backend takes new flows"), "{warn}");
    // And with --force, the empty apply does what it says.
    lab.ok(&["apply", "-f", &empty, "--force"]);
    assert_eq!(lab.json(&["status"])["vips"], 0);
}

/// `xlb detach` refuses while a daemon holds the pins, acts only on an existing configuration,
/// and removes everything (lock file included) once the daemon is gone.
#[test]
fn detach_does_not_pull_the_data_plane_from_under_a_running_daemon() {
    let mut lab = Lab::new(1);
    let _servers = servers(&lab);
    lab.start(&lab.full_config());
    let cfg = lab.config_path.display().to_string();
    let err = lab.fails(&["detach", "--config", &cfg]);
    assert!(
        err.contains("a running xlb daemon holds") && err.contains("--force"),
        "{err}"
    );
    assert!(
        lab.pinned() && lab.dir.join("state.json").exists(),
        "nothing removed"
    );
    assert_eq!(failures(&lab, 5), 0);
    let err = lab.fails(&["detach", "--config", "/etc/xlb/no-such.toml"]);
    assert!(
        err.contains("acts only on what a configuration names"),
        "{err}"
    );
    let pin = lab.pin_dir.display().to_string();
    let err = lab.fails(&["detach", "--pin-dir", &pin]);
    assert!(err.contains("a running xlb daemon holds"), "{err}");

    lab.stop(libc::SIGTERM);
    assert_eq!(
        failures(&lab, 3),
        0,
        "forwarding continues without a daemon"
    );
    let out = lab.ok(&["detach", "--config", &cfg]);
    assert!(out.contains("lc"), "{out}");
    assert!(!lab.pinned() && !lab.dir.join("state.json").exists());
    assert!(!lab.socket.with_extension("lock").exists());
}

/// A thousand idle connections to the admin port do not take the daemon's descriptors: the
/// control socket and the health checks keep working, and scrapes are served again after.
#[test]
fn the_admin_port_cannot_exhaust_the_daemon() {
    let mut lab = Lab::new(2);
    let _servers = servers(&lab);
    lab.start(&with_health(&lab, 500, 400));
    let pid = lab.daemon_pid().expect("pid");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = fds();
    let held = lab
        .net
        .lb
        .spawn(|| {
            (0..1000)
                .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", 9478)).ok())
                .collect::<Vec<_>>()
        })
        .join()
        .expect("connections");
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    let t0 = Instant::now();
    assert!(lab.ok(&["status"]).contains("VIPs 2"));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the control socket waited"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lab.json(&["status"])["health_transitions"],
        0,
        "probes failed"
    );
    eprintln!(
        "{} admin connections held: daemon descriptors {before} -> {during}",
        held.len()
    );
    assert!(
        during < before + 64,
        "descriptors grew {before} -> {during}"
    );
    drop(held);
    // The idle ones time out (5 s) or were closed at once; scrapes work again.
    let t0 = Instant::now();
    loop {
        let r = lab.admin_get("/metrics");
        if r.starts_with("HTTP/1.1 200") {
            assert!(r.contains("xlb_admin_connections_refused_total"), "{r}");
            let refused: u64 = r
                .lines()
                .find_map(|l| l.strip_prefix("xlb_admin_connections_refused_total "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(refused > 500, "refused {refused}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// 300 scrapes of a 1.4 MB answer that are never read: the daemon holds at most its connection
/// limit's worth of answers, drops the rest when they time out, and keeps serving.
#[test]
fn unread_metrics_answers_do_not_grow_the_daemon() {
    let mut lab = Lab::new(4);
    let mut cfg = lab.full_config();
    for i in 0..900 {
        cfg += &format!(
            "\n[[vip]]\naddress = \"10.101.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 1021\n",
            i / 200,
            i % 200 + 1
        );
        for b in &lab.net.backends {
            cfg += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
        }
    }
    lab.start(&cfg);
    let pid = lab.daemon_pid().expect("pid");
    let t0 = Instant::now();
    let size = lab.admin_get("/metrics").len();
    let scrape = t0.elapsed();
    assert!(
        size > 1 << 20,
        "an answer of {size} bytes is too small to matter"
    );
    let before = rss(pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = lab.net.lb.spawn(move || {
        use std::io::Write as _;
        let held: Vec<_> = (0..300)
            .filter_map(|_| {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", 9478)).ok()?;
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .ok()?;
                Some(c)
            })
            .collect();
        let n = held.len();
        // Hold them, unread, until the test has looked.
        let _ = rx.recv();
        n
    });
    let mut peak = before;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(12) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.ok(&["status"]).contains("VIPs 902"), "the CLI waits");
    let _ = tx.send(());
    let held = holder.join().expect("holder");
    eprintln!(
        "{held} unread scrapes of {size} bytes (one takes {scrape:?}): daemon RSS {} MB -> peak {} MB",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < before + (64 << 20),
        "RSS grew from {} MB to {} MB",
        before >> 20,
        peak >> 20
    );
    let t0 = Instant::now();
    while !lab.admin_get("/metrics").starts_with("HTTP/1.1 200") {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "scrapes stay refused"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A large apply (24 VIPs with rings of a million slots) builds and fills its rings off the
/// daemon's owner task: queries are answered meanwhile.
#[test]
fn a_large_apply_does_not_hold_up_queries() {
    let mut lab = Lab::new(2);
    lab.start(&lab.full_config());
    let size = lb_common::maglev::prime_at_most(lb_common::RING_SIZE_MAX);
    let mut cfg = lab.full_config();
    for i in 0..24 {
        cfg += &format!(
            "\n[[vip]]\naddress = \"10.100.1.{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = {size}\n\n[[vip.backend]]\naddress = \"10.0.2.2\"\n\n[[vip.backend]]\naddress = \"10.0.3.2\"\n",
            i + 1
        );
    }
    let path = lab.file("large.toml", &cfg);
    let socket = lab.socket.clone();
    let apply = std::thread::spawn(move || {
        let t0 = Instant::now();
        let out = Command::new(xlb_bin())
            .arg("--socket")
            .arg(&socket)
            .args(["apply", "-f", &path])
            .output()
            .expect("apply");
        (out, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !apply.is_finished() {
        let t0 = Instant::now();
        lab.ok(&["status"]);
        slowest = slowest.max(t0.elapsed());
        asked += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (out, took) = apply.join().expect("apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "apply of 24 rings of {size} slots: {took:?}; {asked} queries meanwhile, slowest {slowest:?}"
    );
    assert!(asked >= 3, "the apply was too quick to tell ({took:?})");
    // Held up by the apply, a query would wait seconds (the apply takes ~12 s in a debug
    // build); alone the slowest is ~240 ms, so 1 s leaves room for the tests running beside it.
    assert!(
        slowest < Duration::from_secs(1),
        "a query waited {slowest:?} behind the apply"
    );
    assert_eq!(lab.json(&["status"])["vips"], 26);
    // And removing them frees their rings in the kernel.
    lab.ok(&["apply", "-f", &lab.file("small.toml", &lab.full_config())]);
    let rings = lab.pin_dir.join("RINGS");
    let m = aya::maps::MapData::from_pin(&rings).expect("RINGS");
    let a: aya::maps::ArrayOfMaps<aya::maps::MapData, aya::maps::MapData> =
        aya::maps::ArrayOfMaps::try_from(aya::maps::Map::ArrayOfMaps(m)).expect("array of maps");
    let present = (0..32).filter(|i| a.get(i, 0).is_ok()).count();
    assert_eq!(present, 2, "only the two remaining VIPs keep a ring");
}

/// Commands end quietly when their reader goes away; bad CLI input is named; a daemon that
/// closes without answering is reported as such.
#[test]
fn the_cli_ends_quietly_and_names_bad_input() {
    let mut lab = Lab::new(1);
    let _servers = servers(&lab);
    lab.start(&lab.full_config());
    assert_eq!(failures(&lab, 20), 0);
    let mut child = Command::new(xlb_bin())
        .arg("--socket")
        .arg(&lab.socket)
        .args(["backend", "list", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {err}"
    );
    let err = lab.fails(&["flows", "10.9.9.9:80/tcp"]);
    assert!(err.contains("no VIP 10.9.9.9:80/tcp"), "{err}");
    let err = lab.fails(&["explain", "[2001:db8::1]:4000", "10.100.0.1:8080/tcp"]);
    assert!(err.contains("different address families"), "{err}");
    let err = lab.fails(&["vip", "add", "10.100.0.9:80/TCP"]);
    assert!(err.contains("lowercase"), "{err}");

    // A daemon that dies mid-request.
    let dir = lab.dir.join("mute");
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("mute.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let mute = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
    });
    let out = Command::new(xlb_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .expect("run");
    mute.join().expect("mute");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("closed the connection without answering"),
        "{err}"
    );
}

/// Daemon start-up problems are explained: bpffs hidden by `ip netns exec`, a corrupt state
/// file; `--socket` / `XLB_SOCKET` are honoured by the daemon.
#[test]
fn start_up_problems_are_explained() {
    let mut lab = Lab::new(1);
    let cfg = lab.file("xlb.toml", &lab.full_config());
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.net.lb.name])
        .arg(xlb_bin())
        .args(["daemon", "--config", &cfg])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bpffs is not mounted") && err.contains("nsenter"),
        "{err}"
    );

    std::fs::write(lab.dir.join("state.json"), "{ not json").expect("write");
    let log = lab
        .try_start(&lab.full_config())
        .expect_err("a corrupt state file");
    assert!(log.contains("Move it aside"), "{log}");
    std::fs::remove_file(lab.dir.join("state.json")).expect("remove");

    // XLB_SOCKET chooses the daemon's socket too.
    let other = lab.dir.join("env.sock");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.net.lb.name))
        .arg("--")
        .arg(xlb_bin())
        .args(["daemon", "--config", &cfg])
        .env("XLB_SOCKET", &other)
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let t0 = Instant::now();
    while !other.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no socket at {}",
            other.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(xlb_bin())
        .env("XLB_SOCKET", &other)
        .arg("status")
        .output()
        .expect("status");
    // SAFETY: signalling the daemon this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Backends in different namespaces that all call their interface eth0 get decap pins of
/// their own under one pin directory.
#[test]
fn decap_pins_of_namespaces_with_the_same_interface_name_do_not_collide() {
    let a = Netns::new("da");
    let b = Netns::new("db");
    let peer = Netns::new("dp");
    veth(&a, "eth0", &peer, "pa");
    veth(&b, "eth0", &peer, "pb");
    a.ip(&["addr", "add", "10.77.1.2/24", "dev", "eth0"]);
    b.ip(&["addr", "add", "10.77.2.2/24", "dev", "eth0"]);
    let pins = format!("/sys/fs/bpf/xlbt-{}-decap-ns", std::process::id());
    let run = |ns: &Netns, args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(xlb_bin())
            .args(args)
            .output()
            .expect("xlb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(pins.clone());
    let out_a = run(&a, &["decap", "attach", "eth0", "--pin-dir", &pins]);
    let out_b = run(&b, &["decap", "attach", "eth0", "--pin-dir", &pins]);
    assert!(
        out_a.contains("decap attached") && out_b.contains("decap attached"),
        "{out_a}{out_b}"
    );
    let sa = run(
        &a,
        &["decap", "status", "eth0", "--pin-dir", &pins, "-o", "json"],
    );
    let sb = run(
        &b,
        &["decap", "status", "eth0", "--pin-dir", &pins, "-o", "json"],
    );
    assert!(
        sa.contains("10.77.1.2") && !sa.contains("10.77.2.2"),
        "{sa}"
    );
    assert!(
        sb.contains("10.77.2.2") && !sb.contains("10.77.1.2"),
        "{sb}"
    );
    run(&a, &["decap", "detach", "eth0", "--pin-dir", &pins]);
    let sb = run(
        &b,
        &["decap", "status", "eth0", "--pin-dir", &pins, "-o", "json"],
    );
    assert!(
        sb.contains("10.77.2.2"),
        "detaching one left the other: {sb}"
    );
    run(&b, &["decap", "detach", "eth0", "--pin-dir", &pins]);
    let _ = VIP;
}
