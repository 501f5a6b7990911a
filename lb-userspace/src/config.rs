//! The declarative configuration (`/etc/xlb/xlb.toml`): schema, parsing and whole-file
//! validation. Nothing is applied from a file that has any error; every error names its place.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use lb_common::{
    FWD_GUE, FWD_IPIP, FWD_L2, HASH_FIVE_TUPLE, HASH_SRC_DST_IP, HASH_SRC_IP, HASH_SRC_IP_DST_PORT,
    MAX_BACKENDS, MAX_VIPS, PROTO_TCP, PROTO_UDP, RING_SIZE_DEFAULT, RING_SIZE_MAX, maglev,
};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/xlb/xlb.toml";
/// Default seed of the flow hash and of Maglev permutations. Every LB behind one ECMP group
/// must use the same value, so it is fixed rather than random.
pub const DEFAULT_HASH_SEED: u32 = 0x786c_6221; // "xlb!"
/// Largest weight: keeps Maglev's weighted rounds (`claimed * max_weight`) far from overflow.
pub const MAX_WEIGHT: u32 = 65535;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<Vip>,
}

/// Settings that need a daemon restart to change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control socket (mode 0600, or 0660 with `socket_group`).
    pub socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Where the running desired state is persisted for restarts.
    pub state_file: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Conntrack capacity (flows per CPU) when the maps are created.
    pub conntrack_entries: u32,
    /// Default Maglev ring size (prime).
    pub ring_size: u32,
    /// A removed backend keeps serving its tracked flows until none has been active for this
    /// long...
    pub drain_idle_secs: u32,
    /// ...or at most this long.
    pub drain_timeout_secs: u32,
    /// How often next-hop MAC addresses are re-resolved.
    pub nexthop_refresh_secs: u32,
    /// Prometheus endpoint (`GET /metrics`); empty disables it.
    pub metrics_listen: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: "/run/xlb/xlb.sock".into(),
            socket_group: None,
            state_file: "/var/lib/xlb/state.json".into(),
            pin_dir: "/sys/fs/bpf/xlb".into(),
            conntrack_entries: lb_common::CONNTRACK_DEFAULT_ENTRIES,
            ring_size: RING_SIZE_DEFAULT,
            drain_idle_secs: 30,
            drain_timeout_secs: 300,
            nexthop_refresh_secs: 5,
            metrics_listen: "127.0.0.1:9478".into(),
        }
    }
}

/// Data-plane settings that may change at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forwarding {
    /// Largest packet (L3) that may leave after encapsulation; larger DF packets get ICMP
    /// fragmentation-needed / packet-too-big.
    pub mtu: u16,
    pub gue_port: u16,
    /// Outer source address for IPv4 encapsulation (required when any backend is IPv4 and
    /// its VIP encapsulates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap_source_v4: Option<Ipv4Addr>,
    /// Low bits of the outer IPv4 source taken from the flow hash (spreads backends' RSS).
    pub encap_source_v4_hash_bits: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap_source_v6: Option<Ipv6Addr>,
    pub encap_source_v6_hash_bits: u8,
    /// Seed of the flow hash and the Maglev tables: identical on every LB of an ECMP group.
    pub hash_seed: u32,
    /// Tell non-VIP traffic apart with a bitmap of VIP addresses before the VIP hash lookup:
    /// about 35 ns less per non-VIP packet, a few ns more per VIP packet.
    pub vip_address_filter: bool,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            mtu: lb_common::MTU_DEFAULT,
            gue_port: lb_common::GUE_PORT_DEFAULT,
            encap_source_v4: None,
            encap_source_v4_hash_bits: 0,
            encap_source_v6: None,
            encap_source_v6_hash_bits: 0,
            hash_seed: DEFAULT_HASH_SEED,
            vip_address_filter: true,
        }
    }
}

pub use crate::dataplane::AttachMode;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default = "native")]
    pub mode: AttachMode,
}

fn native() -> AttachMode {
    AttachMode::Native
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number, if it is one a VIP can have.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashMode {
    /// Source and destination address and port, protocol (default).
    #[default]
    FiveTuple,
    /// Session affinity: all flows of a client on one backend.
    SrcIp,
    SrcDstIp,
    SrcIpDstPort,
}

impl HashMode {
    pub fn code(self) -> u8 {
        match self {
            HashMode::FiveTuple => HASH_FIVE_TUPLE,
            HashMode::SrcIp => HASH_SRC_IP,
            HashMode::SrcDstIp => HASH_SRC_DST_IP,
            HashMode::SrcIpDstPort => HASH_SRC_IP_DST_PORT,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FwdMode {
    /// IP-in-IP with the backend's family (IPIP, IPv6-in-IPv6, 4in6, 6in4).
    #[default]
    Ipip,
    /// GUE (UDP) encapsulation.
    Gue,
    /// L2 direct server return: backends on the same segment, only the MAC is rewritten.
    L2,
}

impl FwdMode {
    pub fn code(self) -> u8 {
        match self {
            FwdMode::Ipip => FWD_IPIP,
            FwdMode::Gue => FWD_GUE,
            FwdMode::L2 => FWD_L2,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub address: IpAddr,
    /// 0: every port of the address (wildcard VIP).
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub hash: HashMode,
    #[serde(default)]
    pub forwarding: FwdMode,
    /// Track flows (per-flow failover, stickiness across backend changes).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub conntrack: bool,
    /// Overrides `daemon.ring_size` for this VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u32>,
    /// Health check of this VIP's backends (a backend's own `health` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Fewest healthy backends the VIP runs on; below it `on_quorum_loss` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_quorum_loss: QuorumLoss,
    /// Backends (addresses of this VIP's) that take the traffic below quorum with
    /// `on_quorum_loss = "fallback"`, whatever their health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<IpAddr>,
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

/// What a VIP does when fewer than `quorum` backends are healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuorumLoss {
    /// Keep the last ring that met the quorum (fail open): better a possibly-dead backend
    /// than none when the health checks themselves may be what broke.
    #[default]
    KeepLast,
    /// Use the `fallback` backends.
    Fallback,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// No probing: the backend is always considered healthy (static backends).
    #[default]
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP GET answers with an expected status (and optionally body).
    Http,
    /// The same over TLS. The certificate is not verified (backends are addressed by IP and
    /// often self-signed); the handshake itself must succeed.
    Https,
    /// A UDP datagram is answered (optionally with an expected substring).
    Udp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartState {
    /// New backends take traffic until `fall` probes fail.
    #[default]
    Up,
    /// New backends take traffic only after `rise` probes succeed.
    Down,
}

fn d_interval() -> u32 {
    2000
}
fn d_timeout() -> u32 {
    1000
}
fn d_rise() -> u32 {
    2
}
fn d_fall() -> u32 {
    3
}

/// keepalived-style health check: `fall` consecutive failures take a backend down, `rise`
/// consecutive successes bring it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// Port probed on the backend's own address (default: the VIP's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "d_interval")]
    pub interval_ms: u32,
    #[serde(default = "d_timeout")]
    pub timeout_ms: u32,
    #[serde(default = "d_rise")]
    pub rise: u32,
    #[serde(default = "d_fall")]
    pub fall: u32,
    #[serde(default)]
    pub start: StartState,
    /// HTTP: request path (default "/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: Host header, and TLS server name for https (default: the backend address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: accepted status codes, `200` or `200-399` (default 200-399).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// HTTP: the body must contain this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// UDP: datagram sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// UDP: the answer must contain this (default: any answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

impl HealthCheck {
    /// The accepted HTTP status range.
    pub fn status_range(&self) -> Result<(u16, u16), String> {
        let s = self.status.as_deref().unwrap_or("200-399");
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("status {s:?}: expected a code or a range like 200-399"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if lo > hi {
            return Err(format!("status {s:?}: empty range"));
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
        match self.kind {
            ProbeKind::Http | ProbeKind::Https => {
                if let Err(e) = self.status_range() {
                    errs.push(format!("{at}: {e}"));
                }
                if self
                    .path
                    .as_deref()
                    .is_some_and(|p| !p.starts_with('/') || p.contains(char::is_whitespace))
                {
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Share of new flows relative to the VIP's other backends; 0 takes no new flows.
    #[serde(default = "one")]
    pub weight: u32,
    /// Administratively drained: no new flows, tracked flows continue.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drain: bool,
    /// Overrides the VIP's health check for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// A VIP's identity: address, port, protocol. Printed and parsed as `10.0.0.1:80/tcp`,
/// `[2001:db8::1]:443/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VipRef {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for VipRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{proto}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{proto}", self.port),
        }
    }
}

impl FromStr for VipRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (sock, proto) = s.rsplit_once('/').ok_or_else(|| {
            format!("{s:?}: expected ADDRESS:PORT/PROTOCOL, e.g. 10.0.0.1:80/tcp")
        })?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            p => return Err(format!("{s:?}: protocol {p:?} is not tcp or udp")),
        };
        let sa: std::net::SocketAddr = sock
            .parse()
            .map_err(|_| format!("{s:?}: {sock:?} is not ADDRESS:PORT ([v6]:PORT for IPv6)"))?;
        Ok(VipRef {
            address: sa.ip(),
            port: sa.port(),
            protocol,
        })
    }
}

impl Vip {
    pub fn id(&self) -> VipRef {
        VipRef {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    pub fn new(id: VipRef) -> Vip {
        Vip {
            address: id.address,
            port: id.port,
            protocol: id.protocol,
            hash: HashMode::default(),
            forwarding: FwdMode::default(),
            conntrack: true,
            ring_size: None,
            health: None,
            quorum: None,
            on_quorum_loss: QuorumLoss::KeepLast,
            fallback: Vec::new(),
            backends: Vec::new(),
        }
    }

    /// The health check in effect for one of this VIP's backends.
    pub fn check_for<'a>(&'a self, b: &'a BackendConfig) -> Option<&'a HealthCheck> {
        b.health
            .as_ref()
            .or(self.health.as_ref())
            .filter(|h| h.kind != ProbeKind::None)
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
        if d.conntrack_entries == 0 || d.conntrack_entries > 1 << 26 {
            errs.push(format!(
                "daemon.conntrack_entries: {} is outside 1..={}",
                d.conntrack_entries,
                1u32 << 26
            ));
        }
        if d.socket.as_os_str().is_empty() || d.state_file.as_os_str().is_empty() {
            errs.push("daemon: socket and state_file must not be empty".into());
        }
        if !d.pin_dir.starts_with("/sys/fs/bpf") {
            errs.push(format!(
                "daemon.pin_dir: {} is not under /sys/fs/bpf (pins need bpffs)",
                d.pin_dir.display()
            ));
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
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[forwarding]
encap_source_v4 = "10.0.0.1"

[[interface]]
name = "eth0"

[[vip]]
address = "10.100.0.1"
port = 80
protocol = "tcp"
hash = "src-ip"

[[vip.backend]]
address = "10.0.1.1"
weight = 2

[[vip.backend]]
address = "10.0.1.2"
drain = true
"#;

    #[test]
    fn parses_and_round_trips() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.vips[0].hash, HashMode::SrcIp);
        assert_eq!(c.vips[0].backends[1].weight, 1);
        assert!(c.vips[0].backends[1].drain);
        assert_eq!(c.interfaces[0].mode, AttachMode::Native);
        let again = Config::parse(&c.to_toml()).expect("export parses");
        assert_eq!(again, c);
    }

    #[test]
    fn reports_every_error_with_its_place() {
        let bad = GOOD.replace("weight = 2", "weight = 70000").replace(
            "[[vip.backend]]\naddress = \"10.0.1.2\"",
            "[[vip.backend]]\naddress = \"10.0.1.1\"",
        ) + "\n[daemon]\nring_size = 65536\n";
        let e = Config::parse(&bad).expect_err("invalid");
        let text = e.to_string();
        assert_eq!(e.0.len(), 3, "{text}");
        assert!(
            text.contains("daemon.ring_size: 65536 must be a prime"),
            "{text}"
        );
        assert!(
            text.contains("vip[0] 10.100.0.1:80/tcp backend[0] 10.0.1.1: weight 70000"),
            "{text}"
        );
        assert!(text.contains("backend[1] 10.0.1.1: listed twice"), "{text}");
    }

    #[test]
    fn syntax_and_unknown_keys_point_at_the_line() {
        let e = Config::parse(
            "[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nwieght = 3\n",
        )
        .expect_err("unknown key");
        let text = e.to_string();
        assert!(text.contains("line 5") && text.contains("wieght"), "{text}");
        let e = Config::parse("[[vip]]\naddress = 10.0.0.1\n").expect_err("syntax");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn health_checks_parse_inherit_and_validate() {
        let text = GOOD.replace(
            "hash = \"src-ip\"\n",
            "hash = \"src-ip\"\n\n[vip.health]\ntype = \"http\"\npath = \"/healthz\"\nstatus = \"200-299\"\n",
        );
        let c = Config::parse(&text).expect("valid");
        let v = &c.vips[0];
        let h = v.check_for(&v.backends[0]).expect("inherited");
        assert_eq!(
            (h.kind, h.interval_ms, h.rise, h.fall),
            (ProbeKind::Http, 2000, 2, 3)
        );
        assert_eq!(h.status_range(), Ok((200, 299)));
        assert_eq!(Config::parse(&c.to_toml()).expect("round trip"), c);

        let bad = text.replace(
            "status = \"200-299\"",
            "status = \"299-200\"\ntimeout_ms = 5000",
        ) + "\n[[vip]]\naddress = \"10.100.0.2\"\nport = 0\nprotocol = \"udp\"\n[vip.health]\ntype = \"udp\"\n";
        let e = Config::parse(&bad).expect_err("invalid").to_string();
        assert!(e.contains("status \"299-200\": empty range"), "{e}");
        assert!(
            e.contains("timeout_ms 5000 must be at least 10 and at most interval_ms"),
            "{e}"
        );
        assert!(
            e.contains(
                "vip[1] 10.100.0.2:0/udp health: a wildcard VIP's health check needs a port"
            ),
            "{e}"
        );
        assert!(e.contains("a udp health check needs a payload"), "{e}");

        let bad = GOOD.replace(
            "hash = \"src-ip\"\n",
            "hash = \"src-ip\"\nquorum = 3\non_quorum_loss = \"fallback\"\nfallback = [\"10.9.9.9\"]\n",
        );
        let e = Config::parse(&bad).expect_err("invalid").to_string();
        assert!(
            e.contains("quorum must be between 1 and the number of backends (2)"),
            "{e}"
        );
        assert!(
            e.contains("fallback 10.9.9.9 is not one of this VIP's backends"),
            "{e}"
        );
    }

    #[test]
    fn encapsulation_needs_a_source() {
        let e = Config::parse(&GOOD.replace("encap_source_v4 = \"10.0.0.1\"", ""))
            .expect_err("no source");
        assert!(
            e.to_string().contains("needs forwarding.encap_source_v4"),
            "{e}"
        );
    }

    #[test]
    fn vip_refs_parse_and_print() {
        for s in ["10.0.0.1:80/tcp", "[2001:db8::1]:443/udp", "10.0.0.1:0/tcp"] {
            let r: VipRef = s.parse().expect(s);
            assert_eq!(r.to_string(), s);
        }
        for s in [
            "10.0.0.1:80",
            "10.0.0.1/tcp",
            "10.0.0.1:80/sctp",
            "host:80/tcp",
        ] {
            assert!(s.parse::<VipRef>().is_err(), "{s}");
        }
    }
}

#[cfg(test)]
mod shipped {
    #[test]
    fn the_example_config_is_valid() {
        let c = super::Config::parse(include_str!("../../dist/xlb.toml")).expect("dist/xlb.toml");
        assert_eq!(c.vips.len(), 2);
    }
}
