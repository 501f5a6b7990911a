//! The namespace topology driven the way an operator drives xlb: `xlb daemon` runs in the LB
//! namespace, backends get `xlb decap attach`, and everything is changed through the `xlb` CLI.
//! Dropping the lab kills the daemon it started (by pid), removes its pins, files and namespaces.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::topo::{BACKEND_LINK_MTU, Net, TCP_PORT, UDP_PORT, VIP};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The tests of one binary run in parallel, and every namespace shares each CPU's receive
/// backlog (`net.core.netdev_max_backlog`): a flood in one lab overflows it and drops other
/// labs' packets, and a lost UDP datagram reads as a broken flow there. So a lab that floods
/// runs alone in its binary; every other lab shares (one lab at a time per test: a second
/// shared lab waits behind a waiting flood).
static AIRTIME: RwLock<()> = RwLock::new(());

/// A lab's hold on `AIRTIME`, released after its namespaces are gone.
enum Airtime {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl Airtime {
    // A test that panicked holding the lock poisons it; the next lab still runs.
    fn shared() -> Airtime {
        Airtime::Shared(AIRTIME.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn alone() -> Airtime {
        Airtime::Alone(AIRTIME.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The `xlb` binary built beside this test executable (`cargo xtask test` builds it first).
pub fn xlb_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("xlb");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p lb-userspace`, or `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// A command that runs in network namespace `ns`. Not `ip netns exec`: that remounts /sys,
/// hiding bpffs, where xlb pins its maps and links.
/// `xlb --socket SOCKET ARGS`: the CLI against one daemon (the socket is a path; no namespace
/// needed).
pub fn xlb_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(xlb_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run xlb")
}

/// `BIN daemon --config CONFIG` in namespace `ns`, its log appended to `log`.
pub fn spawn_daemon(ns: &str, bin: &Path, config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("daemon log");
    nsenter(ns)
        .arg(bin)
        .args(["daemon", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn daemon")
}

pub fn nsenter(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--");
    c
}

/// The stdout of a command that must have succeeded; on failure, panic with what it was, its
/// stderr and the daemon's log.
pub fn ran(
    out: &std::process::Output,
    what: impl FnOnce() -> String,
    log: impl FnOnce() -> String,
) -> String {
    assert!(
        out.status.success(),
        "{} failed: {}\ndaemon log:\n{}",
        what(),
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Lab {
    pub net: Net,
    /// Config, state, socket and daemon log.
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub decap_pins: PathBuf,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    daemon: Option<Child>,
    /// Last: dropped after the namespaces.
    _airtime: Airtime,
}

impl Lab {
    /// Namespaces with `n` backends, each running `xlb decap attach` on its link.
    pub fn new(n: usize) -> Lab {
        Lab::with(n, Airtime::shared())
    }

    /// Like `new`, for a test that floods: it waits for the binary's other labs to finish and
    /// keeps theirs waiting until it is dropped (see `AIRTIME`).
    pub fn flooding(n: usize) -> Lab {
        Lab::with(n, Airtime::alone())
    }

    fn with(n: usize, airtime: Airtime) -> Lab {
        let net = Net::new(n);
        let tag = format!(
            "xlbt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PathBuf::from("/tmp").join(&tag);
        std::fs::create_dir_all(&dir).expect("lab dir");
        let lab = Lab {
            net,
            socket: dir.join("xlb.sock"),
            config_path: dir.join("xlb.toml"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            decap_pins: PathBuf::from("/sys/fs/bpf").join(format!("{tag}-decap")),
            dir,
            daemon: None,
            _airtime: airtime,
        };
        for b in &lab.net.backends {
            let out = lab.in_ns(
                &b.ns.name,
                &[
                    "decap",
                    "attach",
                    &format!("b{}", b.id),
                    "--pin-dir",
                    &lab.decap_pins.display().to_string(),
                ],
            );
            assert!(
                out.status.success(),
                "decap attach: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab
    }

    /// Run `xlb ARGS` inside namespace `ns`.
    pub fn in_ns(&self, ns: &str, args: &[&str]) -> Output {
        nsenter(ns)
            .arg(xlb_bin())
            .args(args)
            .output()
            .expect("run xlb")
    }

    /// The `[daemon]` and `[forwarding]` tables of this lab, attached to the client-facing link.
    pub fn base_config(&self) -> String {
        format!(
            r#"[daemon]
socket = "{}"
state_file = "{}"
pin_dir = "{}"
conntrack_entries = 65536
drain_idle_secs = 2
drain_timeout_secs = 20
nexthop_refresh_secs = 2
metrics_listen = "127.0.0.1:9478"

[forwarding]
mtu = {BACKEND_LINK_MTU}
encap_source_v4 = "10.0.1.1"
encap_source_v6 = "fd00:1::1"

[[interface]]
name = "lc"
"#,
            self.socket.display(),
            self.dir.join("state.json").display(),
            self.pin_dir.display(),
        )
    }

    /// The base config plus the TCP and UDP VIPs on every backend (weights all 1).
    pub fn full_config(&self) -> String {
        let mut c = self.base_config();
        for (port, proto) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp")] {
            c +=
                &format!("\n[[vip]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n");
            for b in &self.net.backends {
                c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr);
            }
        }
        c
    }

    /// Write `config` and start the daemon in the LB namespace; returns once it serves the CLI.
    pub fn start(&mut self, config: &str) {
        if let Err(log) = self.try_start(config) {
            panic!("{log}");
        }
    }

    /// Like `start`, with the daemon in another namespace (topologies built by a test).
    pub fn start_in(&mut self, ns: &str, config: &str) {
        if let Err(log) = self.try_start_in(ns, config) {
            panic!("{log}");
        }
    }

    /// Like `start`; a daemon that exits instead of serving gives its log as the error.
    pub fn try_start(&mut self, config: &str) -> Result<(), String> {
        let ns = self.net.lb.name.clone();
        self.try_start_in(&ns, config)
    }

    fn try_start_in(&mut self, ns: &str, config: &str) -> Result<(), String> {
        self.try_start_bin(&xlb_bin(), ns, config)
    }

    /// Like `start`, with another `xlb` binary (an earlier build, for hand-over tests).
    pub fn start_with(&mut self, bin: &Path, config: &str) {
        let ns = self.net.lb.name.clone();
        if let Err(log) = self.try_start_bin(bin, &ns, config) {
            panic!("{log}");
        }
    }

    fn try_start_bin(&mut self, bin: &Path, ns: &str, config: &str) -> Result<(), String> {
        assert!(self.daemon.is_none(), "daemon already running");
        std::fs::write(&self.config_path, config).expect("write config");
        let log = self.dir.join("daemon.log");
        self.daemon = Some(spawn_daemon(ns, bin, &self.config_path, &log));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.xlb(&["status"]).status.success() {
                return Ok(());
            }
            if let Some(c) = self.daemon.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.daemon = None;
                return Err(format!("daemon exited with {status}:\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` to the daemon this lab started and wait for it to exit.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut c = self.daemon.take().expect("daemon running");
        // nsenter execs the daemon, so the child's pid is the daemon's.
        // SAFETY: signalling a child process this lab spawned and has not reaped.
        unsafe { libc::kill(c.id() as i32, signal) };
        c.wait().expect("wait daemon")
    }

    /// Pid of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("daemon.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `xlb --socket <lab socket> ARGS`.
    pub fn xlb(&self, args: &[&str]) -> Output {
        xlb_at(&self.socket, args)
    }

    /// Run `xlb capture ARGS` against this lab's daemon, calling `traffic` until it ends (it
    /// must end within 20 s); returns its stdout (bytes: it may be pcapng) and stderr, after
    /// asserting success.
    pub fn capture_while(&self, args: &[&str], mut traffic: impl FnMut()) -> (Vec<u8>, String) {
        let mut child = Command::new(xlb_bin())
            .arg("--socket")
            .arg(&self.socket)
            .arg("capture")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("xlb capture");
        let t0 = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("xlb capture {} did not end\n{}", args.join(" "), self.log());
            }
            traffic();
        }
        let out = child.wait_with_output().expect("capture output");
        let (stdout, stderr) = (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "xlb capture {} failed: {stderr}\n{}",
            args.join(" "),
            self.log()
        );
        (stdout, stderr)
    }

    /// A pinned array map of the daemon (`name` under `pin_dir`), to read what it wrote.
    pub fn pinned_array<V: aya::Pod>(&self, name: &str) -> aya::maps::Array<aya::maps::MapData, V> {
        let path = self.pin_dir.join(name);
        let data = aya::maps::MapData::from_pin(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("an array map")
    }

    /// Like `xlb`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ran(
            &self.xlb(args),
            || format!("xlb {}", args.join(" ")),
            || self.log(),
        )
    }

    /// Like `xlb`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.xlb(args);
        assert!(
            !out.status.success(),
            "xlb {} unexpectedly succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// Poll `backend list` until backend `addr` (of `vip`, or of any VIP) is in `state`;
    /// returns how long that took. Panics with the daemon log after `limit`.
    pub fn wait_backend_state(
        &self,
        vip: Option<&str>,
        addr: &str,
        state: &str,
        limit: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let mut args = vec!["backend", "list"];
            args.extend(vip);
            let list = self.json(&args);
            let row = list
                .as_array()
                .expect("array")
                .iter()
                .find(|r| r["address"] == addr)
                .cloned()
                .expect("backend listed");
            // The state is recorded before the change it causes reaches the maps.
            if row["state"] == state && self.json(&["status"])["changes_pending"] == 0 {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "{addr} not {state} after {limit:?}: {row}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Routes to the VIPs in the LB namespace out of the forwarder's interface (`lc`, the
    /// client as next hop): what an edge host's default route gives `via = "vip"` health
    /// probes, whose packets `xlb_probe` takes on that interface's egress.
    pub fn route_vips_out_of_the_forwarder(&self) {
        let (v4, v6) = (format!("{VIP}/32"), format!("{}/128", crate::topo::VIP6));
        self.net
            .lb
            .ip(&["route", "add", &v4, "via", "10.0.1.2", "dev", "lc"]);
        self.net
            .lb
            .ip(&["-6", "route", "add", &v6, "via", "fd00:1::2", "dev", "lc"]);
    }

    /// The backends' IPv4 addresses, as `xlb backend list` shows them.
    pub fn backend_addrs(&self) -> Vec<String> {
        self.net
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    /// `GET path` on the daemon's admin endpoint from inside the LB namespace: the whole
    /// HTTP response.
    pub fn admin_get(&self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.net
            .lb
            .spawn(move || {
                use std::io::{Read as _, Write as _};
                let mut c =
                    std::net::TcpStream::connect(("127.0.0.1", 9478)).expect("admin endpoint");
                c.write_all(req.as_bytes()).expect("request");
                let mut out = String::new();
                c.read_to_string(&mut out).expect("response");
                out
            })
            .join()
            .expect("admin request")
    }

    /// Write `text` to a file in the lab directory and return its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }

    pub fn pinned(&self) -> bool {
        Path::new(&self.pin_dir).exists()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: killing the daemon this lab spawned, by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        let _ = xlb::dataplane::pin::remove_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.decap_pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
