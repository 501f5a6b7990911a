//! Network namespaces and veth pairs that remove themselves on drop, also during a panic.
//!
//! Names carry the creating process id, so a namespace leaked by a killed run is recognised and
//! swept by the next run (`sweep_stale`) instead of colliding with it.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

const PREFIX: &str = "xlbt";
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether a `xlbt-<pid>-...` name belongs to a process that no longer exists.
fn stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
    // SAFETY: kill with signal 0 only probes whether the process exists.
    pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0)
}

/// Remove namespaces, pins and lab directories left behind by test processes that no longer
/// exist (killed runs cannot clean up after themselves).
pub fn sweep_stale() {
    for dir in ["/sys/fs/bpf", "/tmp"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if stale(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if stale(name) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace named `xlbt-<pid>-<n>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Netns {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`, asserting success.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Run a program inside the namespace, asserting success.
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Switch the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Entered {
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on this thread with a valid namespace fd.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        Entered { home }
    }

    /// Run `f` on a new thread inside the namespace (sockets created there live there).
    pub fn spawn<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let target = File::open(&path).expect("open netns");
            // SAFETY: setns on this new thread with a valid namespace fd.
            let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let _g = self.enter();
        let c = std::ffi::CString::new(dev).expect("device name");
        // SAFETY: valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["-br", "link", "show", dev]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text.split_whitespace().nth(2).expect("mac column");
        parse_mac(mac)
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("hex MAC");
    }
    m
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth ends that live in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns the thread to its original namespace.
pub struct Entered {
    home: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: setns back to the namespace this thread started in.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Connect two namespaces with a veth pair: `a_dev` in `a`, `b_dev` in `b`, both up, with TX
/// checksum offload off (redirected TCP would otherwise arrive with bad checksums).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    ip(&[
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ]);
    for (ns, dev) in [(a, a_dev), (b, b_dev)] {
        ns.ip(&["link", "set", dev, "up"]);
        let _ = ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }
}
