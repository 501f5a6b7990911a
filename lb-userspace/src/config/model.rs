//! The configuration model (`/etc/xlb/xlb.toml`): what an operator declares. Plain data with
//! serde; the enums the CLI takes are clap `ValueEnum`s, so their help text is written once.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use lb_common::{
    Addr, FWD_GUE, FWD_IPIP, FWD_L2, HASH_FIVE_TUPLE, HASH_SRC_DST_IP, HASH_SRC_IP,
    HASH_SRC_IP_DST_PORT, PROTO_TCP, PROTO_UDP, RING_SIZE_DEFAULT, VipKey, family_of,
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
    /// Route announcements: present, the daemon writes a route per VIP address it can serve
    /// into a kernel table that a routing daemon (BIRD) exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    /// Flow sync between the nodes of a fleet: present, divergent flows (tracked on another
    /// backend than the ring now picks) are shipped to `peers` and theirs received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
}

/// `[sync]`: the peers a node ships its divergent flows to and receives theirs from. Changes
/// only with a restart, like `[daemon]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Address and UDP port this node receives on (`10.0.0.11:4790`).
    pub listen: String,
    /// The other nodes' `listen` addresses.
    pub peers: Vec<String>,
    /// A file holding the fleet's shared key (at least 32 bytes; only root should read it).
    pub key_file: PathBuf,
    /// Every this many seconds the divergent flows are shipped again (and peers' liveness is
    /// judged on 3 of these).
    #[serde(default = "SyncConfig::default_refresh")]
    pub refresh_secs: u32,
    /// At start, announcing waits for every peer's flows this long at most.
    #[serde(default = "SyncConfig::default_resync")]
    pub resync_timeout_ms: u32,
}

impl SyncConfig {
    fn default_refresh() -> u32 {
        5
    }
    fn default_resync() -> u32 {
        2000
    }
}

/// How VIP addresses are announced: as `/32` and `/128` routes on `interface` in kernel table
/// `table`, marked with route protocol `protocol`, which a routing daemon learns and exports
/// (BIRD: `protocol kernel { kernel table 100; learn; }`). Withdrawing is deleting the route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Announce {
    pub table: u32,
    /// Route protocol number of xlb's routes (`ip route ... proto N`): how xlb and the routing
    /// daemon tell them from everyone else's.
    pub protocol: u8,
    /// The interface the routes point at.
    pub interface: String,
    /// A VIP address is announced only after every VIP on it has served (backends in its ring,
    /// quorum met) for this long.
    pub min_up_secs: u32,
    /// After the daemon starts: program the maps, then wait this long before announcing
    /// anything new (routes a previous daemon left are kept).
    pub hold_secs: u32,
}

/// xlb's route protocol number: free in iproute2's `rt_protos` and among routing daemons'.
pub const ANNOUNCE_PROTOCOL_DEFAULT: u8 = 201;

impl Default for Announce {
    fn default() -> Self {
        Announce {
            table: 100,
            protocol: ANNOUNCE_PROTOCOL_DEFAULT,
            interface: "lo".into(),
            min_up_secs: 5,
            hold_secs: 5,
        }
    }
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
    /// Conntrack capacity in IPv4 flows, shared by every CPU, when the maps are created (an
    /// adopted map keeps its size until a cold start).
    pub conntrack_entries: u32,
    /// The same for IPv6 flows, which have a table of their own (default: `conntrack_entries`).
    /// An LB that sees little IPv6 saves 120 bytes per entry it does not need.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_entries_v6: Option<u32>,
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
            conntrack_entries_v6: None,
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
    /// Seconds a TCP flow may be idle before its next packet is a new flow (0: never; the
    /// table's LRU still makes room).
    pub tcp_idle_timeout_secs: u32,
    /// The same for UDP.
    pub udp_idle_timeout_secs: u32,
    /// Flow starts (SYNs, first UDP datagrams) tracked per second over all CPUs; above it they
    /// follow the ring untracked and TCP is tracked from its first non-SYN packet, so a
    /// spoofed-SYN flood cannot evict established flows. Default: `conntrack_entries / 60` (flow
    /// starts cannot churn the table in under a minute); 0: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_flow_limit: Option<u32>,
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
            tcp_idle_timeout_secs: lb_common::TCP_IDLE_TIMEOUT_DEFAULT,
            udp_idle_timeout_secs: lb_common::UDP_IDLE_TIMEOUT_DEFAULT,
            new_flow_limit: None,
        }
    }
}

/// How the operator asked for a program to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists: the fast one. Falls back to generic, loudly, when
    /// the driver lacks it.
    Native,
    /// After the stack builds an skb: works everywhere, much slower.
    Generic,
}

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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HashMode {
    /// Addresses, ports and protocol: each connection on its own.
    #[default]
    FiveTuple,
    /// Source address only: all of a client's connections on one backend (affinity).
    SrcIp,
    /// Source and destination address and protocol, no ports.
    SrcDstIp,
    /// Source address and destination port (affinity per service on a port-0 VIP).
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FwdMode {
    /// IP-in-IP (IPv6-in-IPv6, 4in6, 6in4 by the backend's family).
    #[default]
    Ipip,
    /// GUE (IP in UDP): crosses families, spreads over the backends' RSS queues.
    Gue,
    /// L2 direct server return: only the destination MAC is rewritten (same segment).
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
    /// Answer ICMP/ICMPv6 echo requests to this VIP's address in the forwarder (one VIP of an
    /// address saying so is enough: echo has no port).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ping: bool,
    /// Overrides `daemon.ring_size` for this VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u32>,
    /// Overrides the protocol's idle timeout (`forwarding.tcp_idle_timeout_secs` or
    /// `udp_idle_timeout_secs`) for this VIP's flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u32>,
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
    /// Stop announcing the VIP's address (`[announce]`): the routers send its traffic to the
    /// nodes that still meet the quorum. The ring keeps the healthy backends for what arrives.
    Withdraw,
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
    /// Which way the probe goes (TCP, HTTP and HTTPS checks).
    #[serde(default, skip_serializing_if = "is_default")]
    pub via: ProbeVia,
}

/// The way a health probe reaches the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVia {
    /// To the backend's own address (and `port`): the service answers.
    #[default]
    Direct,
    /// The way clients' packets go: to the VIP and its port, encapsulated for this backend
    /// exactly as the forwarder would, answered by the service bound on the VIP with the reply
    /// sent straight back (DSR). Fails where real traffic would: decap missing, the VIP not on
    /// the backend's loopback, rp_filter or a firewall on the way.
    Vip,
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
        // Lowercase only, as the configuration file spells it.
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            p => {
                return Err(format!(
                    "{s:?}: protocol {p:?} is not tcp or udp (lowercase, as in the configuration)"
                ));
            }
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

/// The conntrack key of a flow from `src` to `dst`.
pub fn flow_key(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    protocol: Protocol,
) -> lb_common::FlowKey {
    lb_common::FlowKey {
        src: Addr::from(src.ip()),
        dst: Addr::from(dst.ip()),
        src_port_be: src.port().to_be(),
        dst_port_be: dst.port().to_be(),
        proto: protocol.number(),
        family: family_of(&dst.ip()),
        _pad: [0; 2],
    }
}

impl VipRef {
    /// This VIP's key in the `VIPS` map.
    pub fn key(&self) -> VipKey {
        VipKey {
            addr: Addr::from(self.address),
            port_be: self.port.to_be(),
            proto: self.protocol.number(),
            family: family_of(&self.address),
        }
    }
}

impl Config {
    /// Seconds a flow of `vip` may be idle before it is a new flow.
    pub fn idle_timeout(&self, vip: &Vip) -> u32 {
        vip.idle_timeout_secs.unwrap_or(match vip.protocol {
            Protocol::Tcp => self.forwarding.tcp_idle_timeout_secs,
            Protocol::Udp => self.forwarding.udp_idle_timeout_secs,
        })
    }

    /// Flow starts tracked per second over all CPUs (0: no limit).
    pub fn new_flow_limit(&self) -> u32 {
        self.forwarding
            .new_flow_limit
            .unwrap_or(self.daemon.conntrack_entries / 60)
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
            ping: false,
            ring_size: None,
            idle_timeout_secs: None,
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
