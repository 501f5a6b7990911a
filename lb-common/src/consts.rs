//! Capacities, map names, flag values and protocol numbers shared by both sides.

/// VIP ids are indices into the per-VIP arrays (ring-of-rings, stats): `0..MAX_VIPS`.
pub const MAX_VIPS: u32 = 1024;
/// Backend ids index the backend array. Id 0 is reserved: a zeroed conntrack value means "none".
pub const MAX_BACKENDS: u32 = 16384;
/// Default conntrack capacity: flows, shared by every CPU; the loader may resize it before load.
pub const CONNTRACK_DEFAULT_ENTRIES: u32 = 1 << 18;
/// Default Maglev ring size: a prime, so every skip value walks the whole ring.
pub const RING_SIZE_DEFAULT: u32 = 65537;
/// Largest ring size the daemon accepts (prime-sized rings are checked by the builder).
pub const RING_SIZE_MAX: u32 = 1 << 20;
/// Two-arm egress ports (devmap slots). Slot 0 is unused: `tx_port == 0` means XDP_TX.
pub const MAX_TX_PORTS: u32 = 64;

/// Flag of the ring template and of every ring: inner arrays of one outer map may then differ in
/// size (the kernel compares flags, and sizes only without this flag).
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Version of the meaning of the maps' bytes. Bump it whenever a key or value changes meaning
/// (even at the same size): a daemon refuses to adopt pinned maps stamped with another version.
/// 2: one shared conntrack entry per flow (was per CPU), idle timeouts in `VipMeta`, the
/// new-flow limit in `LbConfig`, expired and deferred counters in `VipStats`.
/// 3: `REASON_STATS` with room for 32 reasons (echo answers added), echo entries in `VIPS`.
pub const LAYOUT_VERSION: u32 = 3;

/// Map names in the object, in one place so userspace can assert they all exist.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const RINGS: &str = "RINGS";
    pub const BACKENDS: &str = "BACKENDS";
    /// Conntrack of IPv6 flows (`FlowKey`); an adopted map of an earlier build also holds its
    /// IPv4 flows, which the daemon copies into `CONNTRACK_V4`.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Conntrack of IPv4 flows (`FlowKey4`).
    pub const CONNTRACK_V4: &str = "CONNTRACK_V4";
    pub const CONFIG: &str = "CONFIG";
    pub const TX_PORTS: &str = "TX_PORTS";
    /// The same ports as interface indexes, for `xlb_probe` (TC cannot use a devmap).
    pub const TX_IFINDEX: &str = "TX_IFINDEX";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// Published VIPs by id, for established packets (`VipSlot`).
    pub const VIP_BY_ID: &str = "VIP_BY_ID";
    /// Bitmap of hashed VIP addresses: most non-VIP traffic is told apart with one array load.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// The daemon's clock for conntrack stamps.
    pub const CLOCK: &str = "CLOCK";
    /// Per-CPU window of the new-flow rate (flood protection).
    pub const NEW_FLOW_RATE: &str = "NEW_FLOW_RATE";
    /// Capture filter, ring and counters (`xlb capture`).
    pub const CAPTURE: &str = "CAPTURE";
    pub const CAPTURE_RING: &str = "CAPTURE_RING";
    pub const CAPTURE_STATS: &str = "CAPTURE_STATS";
    /// Slot 0: `xlb_capture`, set by each load (not pinned: it holds that load's program).
    pub const CAPTURE_PROG: &str = "CAPTURE_PROG";
    /// Generator and benchmark sink (not pinned by the daemon).
    pub const LOADGEN: &str = "LOADGEN";
    pub const LOADGEN_SEQ: &str = "LOADGEN_SEQ";
    pub const SINK_STATS: &str = "SINK_STATS";
    /// The maps the daemon pins and checks on adoption.
    pub const ALL: &[&str] = &[
        VIPS,
        VIP_BY_ID,
        RINGS,
        BACKENDS,
        CONNTRACK,
        CONNTRACK_V4,
        CONFIG,
        TX_PORTS,
        TX_IFINDEX,
        VIP_STATS,
        BACKEND_STATS,
        REASON_STATS,
        DECAP_ADDRS,
        DECAP_STATS,
        VIP_FILTER,
        CLOCK,
        NEW_FLOW_RATE,
        CAPTURE,
        CAPTURE_RING,
        CAPTURE_STATS,
    ];
}

/// Program names in the object.
pub mod prog_names {
    pub const FORWARD: &str = "xlb_forward";
    pub const DECAP: &str = "xlb_decap";
    pub const PASS: &str = "xlb_pass";
    /// Packet generator for `xlb loadgen` (run as XDP live frames).
    pub const LOADGEN: &str = "xlb_loadgen";
    /// Counts and drops: the benchmark's receiver.
    pub const SINK: &str = "xlb_sink";
    /// Redirects everything to `TX_PORTS[1]`: the benchmark's trivial baseline.
    pub const REDIRECT: &str = "xlb_redirect";
    /// The record half of `xlb capture`, tail-called by the forwarder (`CAPTURE_PROG`).
    pub const CAPTURE: &str = "xlb_capture";
    /// The forwarder's conntrack insert alone: `xlb bench`'s reference for new flows.
    pub const INSERT: &str = "xlb_insert";
    /// Every XDP program of the object.
    pub const ALL: &[&str] = &[
        FORWARD, DECAP, PASS, LOADGEN, SINK, REDIRECT, CAPTURE, INSERT,
    ];
    /// TC egress: encapsulates health probes sent through the data path (`PROBE_MARK`).
    pub const PROBE: &str = "xlb_probe";
}

/// Address family of a key or backend (`AF_INET`/`AF_INET6` values, for readability in dumps).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// How a VIP hashes a flow onto its ring (`VipMeta::hash_mode`).
pub const HASH_FIVE_TUPLE: u8 = 0;
/// Source address only: session affinity, all of a client's flows on one backend.
pub const HASH_SRC_IP: u8 = 1;
/// Source and destination address plus protocol, no ports.
pub const HASH_SRC_DST_IP: u8 = 2;
/// Source address and destination port: per-service affinity on wildcard VIPs.
pub const HASH_SRC_IP_DST_PORT: u8 = 3;
pub const HASH_MODE_MAX: u8 = 3;

/// How a VIP reaches its backends (`VipMeta::fwd_mode`).
/// IP-in-IP with the outer family of the backend: IPIP, IPv6-in-IPv6, 4in6 or 6in4.
pub const FWD_IPIP: u8 = 0;
/// GUE variant 1 (the IP packet right after a UDP header): crosses families, RSS-friendly.
pub const FWD_GUE: u8 = 1;
/// L2 direct server return: only the destination MAC is rewritten.
pub const FWD_L2: u8 = 2;
pub const FWD_MODE_MAX: u8 = 2;

/// `LbConfig::flags`: some VIP is a port-0 wildcard. Without it the forwarder skips the
/// wildcard lookup, so traffic to non-VIP addresses costs one hash lookup instead of two.
pub const CFG_F_WILDCARD_VIPS: u16 = 1 << 0;

/// `LbConfig::flags`: a capture is running; the forwarder consults `CAPTURE` after its verdict.
/// Off, capture costs one test of a flag already in a register.
pub const CFG_F_CAPTURE: u16 = 1 << 1;

/// `LbConfig::flags`: `VIP_FILTER` holds every VIP address; an address whose bit is clear is
/// not a VIP and its packet passes without a hash lookup. Set by the daemon only; without it
/// (fixtures, older pins) every packet is looked up.
pub const CFG_F_VIP_FILTER: u16 = 1 << 2;

/// How far ahead of CLOCK_MONOTONIC_COARSE the daemon writes `CLOCK` (it rewrites it every
/// second): stamps are never older than the packet, so an active flow never looks idle.
pub const CLOCK_LEAD_NS: u64 = 2_000_000_000;

/// Bits of the VIP address filter (a power of two), in 32-bit words.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 32;

/// Default idle timeouts: an entry unused for longer is a new flow on its next packet. TCP
/// outlasts Linux's default keepalive (2 h); UDP as Katran's 30 s.
pub const TCP_IDLE_TIMEOUT_DEFAULT: u32 = 3 * 3600;
pub const UDP_IDLE_TIMEOUT_DEFAULT: u32 = 30;

/// `VipMeta::flags`: no conntrack for this VIP; every packet follows the ring (stateless UDP).
pub const VIP_F_NO_CONNTRACK: u16 = 1 << 0;
/// `VipMeta::flags` of an address's echo entry (key: the address, port 0, ICMP or ICMPv6):
/// echo requests to it are answered by the forwarder.
pub const VIP_F_PING: u16 = 1 << 1;

/// `Backend::state`: the backend takes no packets at all (health down or removed); tracked flows
/// on it are re-picked through the ring. A drained backend is absent from the ring but not down.
pub const BACKEND_F_DOWN: u8 = 1 << 0;

/// Health probes through the data path (`via = "vip"`): the probe socket's `SO_MARK` is
/// `PROBE_MARK | fwd_mode << PROBE_MODE_SHIFT | backend_id`; `xlb_probe` encapsulates what
/// carries it as the forwarder would for that backend.
pub const PROBE_MARK: u32 = 0x584c_0000;
/// The bits of a mark that say "xlb probe".
pub const PROBE_MARK_MASK: u32 = 0xffff_0000;
pub const PROBE_MODE_SHIFT: u32 = 14;
/// Backend ids fit in the low 14 bits (`MAX_BACKENDS`).
pub const PROBE_ID_MASK: u32 = (1 << PROBE_MODE_SHIFT) - 1;
const _: () = assert!(MAX_BACKENDS - 1 <= PROBE_ID_MASK);

/// Encapsulation overheads (outer headers only; the Ethernet header is kept in size).
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const UDP_HDR_LEN: usize = 8;
pub const ETH_HDR_LEN: usize = 14;
/// Default GUE destination port.
pub const GUE_PORT_DEFAULT: u16 = 6080;
/// Default largest L3 packet the forwarder emits (after encapsulation).
pub const MTU_DEFAULT: u16 = 1500;
