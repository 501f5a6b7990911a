//! Whole-file validation: every problem is reported with its place, and nothing is applied
//! from a configuration that has any.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use lb_common::{MAX_BACKENDS, MAX_VIPS, RING_SIZE_MAX, maglev};

use super::model::*;

/// An HTTP health check's `status` that is not a code or a range of codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("status {status:?}: {problem}")]
pub struct StatusRangeError {
    pub status: String,
    pub problem: &'static str,
}

impl HealthCheck {
    /// The accepted HTTP status range.
    pub fn status_range(&self) -> Result<(u16, u16), StatusRangeError> {
        let s = self.status.as_deref().unwrap_or("200-399");
        let err = |problem| StatusRangeError {
            status: s.to_string(),
            problem,
        };
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| err("expected a code or a range like 200-399"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if lo > hi {
            return Err(err("empty range"));
        }
        Ok((lo, hi))
    }

    fn validate(&self, at: &str, vip_port: u16, errs: &mut Vec<String>) {
        if self.kind == ProbeKind::None {
            return;
        }
        if !(50..=3_600_000).contains(&self.interval_ms) {
            errs.push(format!(
                "{at}: interval_ms {} is outside 50..=3600000",
                self.interval_ms
            ));
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.interval_ms {
            errs.push(format!(
                "{at}: timeout_ms {} must be at least 10 and at most interval_ms",
                self.timeout_ms
            ));
        }
        if !(1..=100).contains(&self.rise) || !(1..=100).contains(&self.fall) {
            errs.push(format!("{at}: rise and fall must be within 1..=100"));
        }
        if self.port.unwrap_or(vip_port) == 0 {
            errs.push(format!("{at}: a wildcard VIP's health check needs a port"));
        }
        if self.via == ProbeVia::Vip
            && !matches!(
                self.kind,
                ProbeKind::Tcp | ProbeKind::Http | ProbeKind::Https
            )
        {
            errs.push(format!(
                "{at}: via = \"vip\" probes over TCP: type tcp, http or https"
            ));
        }
        match self.kind {
            ProbeKind::Http | ProbeKind::Https => {
                if let Err(e) = self.status_range() {
                    errs.push(format!("{at}: {e}"));
                }
                if self.host.as_deref().is_some_and(|h| {
                    h.is_empty()
                        || h.len() > 255
                        || !h.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
                }) {
                    errs.push(format!(
                        "{at}: host must be a host name or address (printable, no spaces, no control characters such as CR/LF, at most 255 bytes)"
                    ));
                }
                if self.path.as_deref().is_some_and(|p| {
                    !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control())
                }) {
                    errs.push(format!(
                        "{at}: path must start with / and contain no spaces"
                    ));
                }
            }
            ProbeKind::Udp if self.payload.as_deref().unwrap_or("").is_empty() => {
                errs.push(format!("{at}: a udp health check needs a payload"));
            }
            _ => {}
        }
    }
}

impl Config {
    /// Parse and validate a whole file; every problem is reported, none is applied.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }

    pub fn vip(&self, id: &VipRef) -> Option<&Vip> {
        self.vips.iter().find(|v| v.id() == *id)
    }

    pub fn vip_mut(&mut self, id: &VipRef) -> Option<&mut Vip> {
        self.vips.iter_mut().find(|v| v.id() == *id)
    }

    pub fn ring_size(&self, vip: &Vip) -> u32 {
        vip.ring_size.unwrap_or(self.daemon.ring_size)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let d = &self.daemon;
        check_ring("daemon.ring_size", d.ring_size, &mut errs);
        let sizes = [
            ("conntrack_entries", Some(d.conntrack_entries)),
            ("conntrack_entries_v6", d.conntrack_entries_v6),
        ];
        for (name, n) in sizes {
            if let Some(n) = n
                && (n == 0 || n > 1 << 26)
            {
                errs.push(format!("daemon.{name}: {n} is outside 1..={}", 1u32 << 26));
            }
        }
        if d.socket.as_os_str().is_empty() || d.state_file.as_os_str().is_empty() {
            errs.push("daemon: socket and state_file must not be empty".into());
        }
        if let Err(e) = check_pin_dir(&d.pin_dir) {
            errs.push(format!("daemon.pin_dir: {}: {e}", d.pin_dir.display()));
        }
        if let Some(a) = &self.announce {
            a.validate(&mut errs);
        }
        if let Some(s) = &self.sync {
            s.validate(&mut errs);
        }
        if !d.metrics_listen.is_empty() && d.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            errs.push(format!(
                "daemon.metrics_listen: {:?} is not ADDRESS:PORT (empty disables it)",
                d.metrics_listen
            ));
        }
        if d.nexthop_refresh_secs == 0 {
            errs.push("daemon.nexthop_refresh_secs: must be at least 1".into());
        }
        let f = &self.forwarding;
        if f.mtu < 1280 {
            errs.push(format!("forwarding.mtu: {} is below 1280", f.mtu));
        }
        if f.gue_port == 0 {
            errs.push("forwarding.gue_port: must not be 0".into());
        }
        if f.encap_source_v4_hash_bits > 16 || f.encap_source_v6_hash_bits > 32 {
            errs.push(
                "forwarding: encap_source_v4_hash_bits must be <= 16 and encap_source_v6_hash_bits <= 32"
                    .into(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains('/') {
                errs.push(format!(
                    "interface[{i}]: {:?} is not an interface name",
                    iface.name
                ));
            }
            if !names.insert(&iface.name) {
                errs.push(format!("interface[{i}]: {} is listed twice", iface.name));
            }
        }
        if self.vips.len() > MAX_VIPS as usize {
            errs.push(format!(
                "{} VIPs configured, the data plane holds at most {MAX_VIPS}",
                self.vips.len()
            ));
        }
        let total: usize = self.vips.iter().map(|v| v.backends.len()).sum();
        if total >= MAX_BACKENDS as usize {
            errs.push(format!(
                "{total} backends configured over all VIPs, the data plane holds at most {}",
                MAX_BACKENDS - 1
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, v) in self.vips.iter().enumerate() {
            let at = format!("vip[{i}] {}", v.id());
            if !seen.insert(v.id()) {
                errs.push(format!("{at}: defined twice"));
            }
            if v.address.is_unspecified() || v.address.is_multicast() {
                errs.push(format!("{at}: address {} cannot be a VIP", v.address));
            }
            if let Some(m) = v.ring_size {
                check_ring(&format!("{at}: ring_size"), m, &mut errs);
            }
            let m = self.ring_size(v);
            let weighted = v
                .backends
                .iter()
                .filter(|b| b.weight > 0 && !b.drain)
                .count();
            if weighted as u64 * 10 > m as u64 {
                errs.push(format!(
                    "{at}: {weighted} backends need a ring of at least 10x as many slots (ring_size {m})"
                ));
            }
            if let Some(h) = &v.health {
                h.validate(&format!("{at} health"), v.port, &mut errs);
            }
            if v.quorum
                .is_some_and(|q| q == 0 || q as usize > v.backends.len())
            {
                errs.push(format!(
                    "{at}: quorum must be between 1 and the number of backends ({})",
                    v.backends.len()
                ));
            }
            for f in &v.fallback {
                if !v.backends.iter().any(|b| b.address == *f) {
                    errs.push(format!(
                        "{at}: fallback {f} is not one of this VIP's backends"
                    ));
                }
            }
            if v.on_quorum_loss == QuorumLoss::Withdraw && self.announce.is_none() {
                errs.push(format!(
                    "{at}: on_quorum_loss = \"withdraw\" needs an [announce] section (nothing is announced to withdraw)"
                ));
            }
            if v.on_quorum_loss == QuorumLoss::Withdraw && v.quorum.is_none() {
                errs.push(format!(
                    "{at}: on_quorum_loss = \"withdraw\" needs a quorum"
                ));
            }
            if v.on_quorum_loss == QuorumLoss::Fallback && v.fallback.is_empty() {
                errs.push(format!(
                    "{at}: on_quorum_loss = \"fallback\" needs fallback backends"
                ));
            }
            let mut addrs = BTreeSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                let at = format!("{at} backend[{j}] {}", b.address);
                if let Some(h) = &b.health {
                    h.validate(&format!("{at} health"), v.port, &mut errs);
                }
                if !addrs.insert(b.address) {
                    errs.push(format!("{at}: listed twice in this VIP"));
                }
                if b.address.is_unspecified() || b.address.is_multicast() {
                    errs.push(format!("{at}: not a usable backend address"));
                }
                if b.weight > MAX_WEIGHT {
                    errs.push(format!("{at}: weight {} exceeds {MAX_WEIGHT}", b.weight));
                }
                if v.forwarding != FwdMode::L2 {
                    match b.address {
                        IpAddr::V4(_) if f.encap_source_v4.is_none() => errs.push(format!(
                            "{at}: IPv4 backend of an encapsulating VIP needs forwarding.encap_source_v4"
                        )),
                        IpAddr::V6(_) if f.encap_source_v6.is_none() => errs.push(format!(
                            "{at}: IPv6 backend of an encapsulating VIP needs forwarding.encap_source_v6"
                        )),
                        _ => {}
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }
}

impl SyncConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        let listen = self.listen.parse::<std::net::SocketAddr>();
        match &listen {
            Err(_) => errs.push(format!(
                "sync.listen: {:?} is not an address and port (10.0.0.11:4790)",
                self.listen
            )),
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => errs.push(format!(
                "sync.listen: {:?} must name this node's address and a port (peers match datagrams by source)",
                self.listen
            )),
            Ok(_) => {}
        }
        if self.peers.is_empty() {
            errs.push("sync.peers: at least one peer".into());
        }
        for p in &self.peers {
            match p.parse::<std::net::SocketAddr>() {
                Err(_) => errs.push(format!("sync.peers: {p:?} is not an address and port")),
                Ok(a) if listen.as_ref().is_ok_and(|l| *l == a) => errs.push(format!(
                    "sync.peers: {p:?} is this node's own listen address"
                )),
                Ok(_) => {}
            }
        }
        if self.key_file.as_os_str().is_empty() {
            errs.push("sync.key_file: a path is required".into());
        }
        if !(1..=300).contains(&self.refresh_secs) {
            errs.push(format!(
                "sync.refresh_secs: {} is not within 1-300",
                self.refresh_secs
            ));
        }
        if !(100..=60_000).contains(&self.resync_timeout_ms) {
            errs.push(format!(
                "sync.resync_timeout_ms: {} is not within 100-60000",
                self.resync_timeout_ms
            ));
        }
    }
}

impl Announce {
    fn validate(&self, errs: &mut Vec<String>) {
        // 0 is no table; 253-255 are the kernel's default, main and local tables.
        if self.table == 0 || (253..=255).contains(&self.table) {
            errs.push(format!(
                "announce.table: {} is a table the kernel routes by (main, local, default) or none; use a dedicated one such as 100",
                self.table
            ));
        }
        // 0-4 are the kernel's own (unspec, redirect, kernel, boot, static); 12 is BIRD's,
        // which BIRD never learns back.
        if self.protocol <= 4 || self.protocol == 12 {
            errs.push(format!(
                "announce.protocol: {} is reserved (0-4 are the kernel's, 12 is BIRD's own); the default is {}",
                self.protocol,
                super::ANNOUNCE_PROTOCOL_DEFAULT
            ));
        }
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            errs.push(format!(
                "announce.interface: {:?} is not an interface name",
                self.interface
            ));
        }
        for (k, v) in [
            ("min_up_secs", self.min_up_secs),
            ("hold_secs", self.hold_secs),
        ] {
            if v > 3600 {
                errs.push(format!("announce.{k}: {v} is over 3600"));
            }
        }
    }
}

/// What bpffs accepts for a pin directory, and what is safe to remove on `xlb detach`.
pub fn check_pin_dir(dir: &std::path::Path) -> Result<(), &'static str> {
    use std::path::Component;
    let mut parts = dir.components();
    if parts.next() != Some(Component::RootDir) {
        return Err("must be an absolute path");
    }
    let mut depth = 0;
    for c in parts {
        match c {
            Component::Normal(name) => {
                depth += 1;
                let name = name.to_string_lossy();
                if depth > 3 && name.contains('.') {
                    return Err("bpffs refuses names with a dot");
                }
                let want = ["sys", "fs", "bpf"];
                if depth <= 3 && name != want[depth - 1] {
                    return Err("is not under /sys/fs/bpf (pins need bpffs)");
                }
            }
            _ => return Err("must not contain . or .. components"),
        }
    }
    if depth <= 3 {
        return Err("must be a directory below /sys/fs/bpf, not bpffs itself");
    }
    Ok(())
}

fn check_ring(at: &str, m: u32, errs: &mut Vec<String>) {
    if !(3..=RING_SIZE_MAX).contains(&m) || !maglev::is_prime(m) {
        errs.push(format!(
            "{at}: {m} must be a prime between 3 and {RING_SIZE_MAX} (e.g. 65537)"
        ));
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} error", self.0.len())?;
        if self.0.len() != 1 {
            write!(f, "s")?;
        }
        write!(f, "):")?;
        for e in &self.0 {
            write!(f, "\n  - {}", shorten(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A message cut to a readable length: a parser quoting a 100 MB line must not echo it.
fn shorten(e: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 400;
    if e.len() <= MAX {
        return e.into();
    }
    let mut end = MAX;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &e[..end], e.len() - end).into()
}
