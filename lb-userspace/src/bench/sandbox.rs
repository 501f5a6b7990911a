//! Throw-away network namespaces for the throughput benchmark, removed on drop (also when the
//! benchmark fails half-way).

use std::{fs::File, os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, Result, bail};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Result<Ns> {
        let name = format!("xlbb-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No IPv6 autoconfiguration traffic on the measured links.
        for k in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{k}.disable_ipv6=1"))?;
        }
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    pub fn sysctl(&self, kv: &str) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw", kv])
            .output()?;
        if !out.status.success() {
            bail!("sysctl {kv} in {}", self.name);
        }
        Ok(())
    }

    /// Move the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<Entered> {
        enter(&self.name)
    }
}

/// Move the calling thread into namespace `name` until the guard drops.
pub fn enter(name: &str) -> Result<Entered> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on this thread with a valid namespace fd.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(Entered { home })
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct Entered {
    home: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A veth pair between two namespaces, both ends up.
pub fn veth(a: &Ns, a_dev: &str, b: &Ns, b_dev: &str) -> Result<()> {
    ip(&[
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])
}
