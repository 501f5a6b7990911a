//! `xlb decap attach|detach|status IFACE`: the backend-side program that strips xlb's
//! encapsulation (IPIP, IPv6-in-IPv6, GUE) addressed to this host, for hosts without tunnel
//! modules. The link and maps are pinned per interface, so the program stays attached after the
//! command exits and a second `attach` updates addresses and program in place.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use lb_common::{Addr, prog_names, stats};

use crate::dataplane::{AttachMode, Dataplane, LoadOptions, pin};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb-decap";

/// Decap loads carry the forwarder's maps too; keep its conntrack tiny.
const DECAP_CONNTRACK: u32 = 64;

/// The pin directory of one interface: keyed by the network namespace too, since backends in
/// containers or namespaces all call their interface eth0 (bpffs is shared by all of them).
/// Pins of earlier builds (keyed by the name alone) are still found.
fn dir_of(pin_dir: &Path, iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    // bpffs refuses dots in names (VLAN interfaces are called eth0.100).
    let keyed = pin_dir.join(format!("net{ns}-{}", iface.replace('.', "_")));
    let legacy = pin_dir.join(iface);
    if !keyed.exists() && legacy.exists() {
        legacy
    } else {
        keyed
    }
}

fn load(pin_dir: &Path, iface: &str) -> Result<Dataplane> {
    pin::require_bpffs(pin_dir)?;
    Ok(Dataplane::load(&LoadOptions {
        conntrack_entries: DECAP_CONNTRACK,
        pin_dir: Some(dir_of(pin_dir, iface)),
        // The forwarder is not needed here, and its verification is most of a load's time.
        programs: &[lb_common::prog_names::DECAP],
        ..LoadOptions::default()
    })?)
}

/// The interface's own addresses (what backends usually receive tunnels on).
pub fn iface_addrs(iface: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error()).context("getifaddrs");
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if name == iface && !ifa.ifa_addr.is_null() {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        // Tunnels are never addressed to link-local addresses.
                        if ip.segments()[0] & 0xffc0 != 0xfe80 {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// Attach (or update) decap on `iface`, accepting tunnels addressed to `addrs` (default: the
/// interface's addresses). Returns the addresses in effect.
pub fn attach(
    pin_dir: &Path,
    iface: &str,
    addrs: &[IpAddr],
    gue_port: u16,
    mode: AttachMode,
) -> Result<(Vec<IpAddr>, crate::dataplane::Attached)> {
    let addrs = if addrs.is_empty() {
        let found = iface_addrs(iface)?;
        if found.is_empty() {
            bail!("{iface} has no addresses; give the tunnel endpoint with --address");
        }
        found
    } else {
        addrs.to_vec()
    };
    let mut dp = load(pin_dir, iface)?;
    let want: Vec<Addr> = addrs.iter().map(|a| Addr::from(*a)).collect();
    for (a, _) in dp.decap_addrs()? {
        if !want.contains(&a) {
            dp.remove_decap_addr(&a)?;
        }
    }
    for a in &want {
        dp.set_decap_addr(a, gue_port)?;
    }
    let link = pin::link_path(&dir_of(pin_dir, iface), iface);
    let attached = dp.attach(prog_names::DECAP, iface, mode, Some(&link))?;
    Ok((addrs, attached))
}

/// Detach decap from `iface` and remove its pins. Errors if nothing was attached by xlb.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<()> {
    let dir = dir_of(pin_dir, iface);
    if !dir.exists() {
        bail!(
            "no xlb decap pinned for {iface} under {}",
            pin_dir.display()
        );
    }
    pin::remove_all(&dir)?;
    // Leave the parent for other interfaces; remove it when it is empty.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Counters of the decap program on `iface`: (decapsulated, passed untouched, dropped).
pub fn status(pin_dir: &Path, iface: &str) -> Result<(Vec<IpAddr>, [stats::Counter; 3])> {
    let dir = dir_of(pin_dir, iface);
    if !dir.exists() {
        bail!(
            "no xlb decap pinned for {iface} under {}",
            pin_dir.display()
        );
    }
    let dp = load(pin_dir, iface)?;
    let addrs = dp
        .decap_addrs()?
        .into_iter()
        .map(|(a, _)| {
            let v4 = a.0[1..] == [0, 0, 0];
            a.to_ip(if v4 {
                lb_common::FAMILY_V4
            } else {
                lb_common::FAMILY_V6
            })
        })
        .collect();
    Ok((
        addrs,
        [
            dp.decap_stats(stats::DECAP_OK)?,
            dp.decap_stats(stats::DECAP_PASS)?,
            dp.decap_stats(stats::DECAP_DROP)?,
        ],
    ))
}
