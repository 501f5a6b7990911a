//! Every map of the object. Names and value layouts come from `lb_common`; userspace asserts that
//! each name in `lb_common::map_names::ALL` exists in the loaded object.

use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, DevMap, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    macros::btf_map,
};
use lb_common::{
    Backend, CONNTRACK_DEFAULT_ENTRIES, FlowKey, FlowKey4, FlowState, LbConfig, MAX_BACKENDS,
    MAX_TX_PORTS, MAX_VIPS, RING_SIZE_DEFAULT, RateWindow, VIP_FILTER_WORDS, VipKey, VipMeta,
    VipSlot,
    capture::{CAPTURE_RING_BYTES, CaptureConfig, CaptureCounters, CaptureScratch},
    stats::{BackendStats, Counter, DECAP_STATS_COUNT, REASON_SLOTS, VipStats},
};

const BPF_F_INNER_MAP: usize = lb_common::BPF_F_INNER_MAP as usize;

/// (address, port, protocol) -> VIP; port 0 is the all-ports wildcard. Written by the daemon.
/// A hash map: exact-match lookups on a sparse key space.
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, { MAX_VIPS as usize }> = HashMap::new();

/// vip_id -> the published VIP (key and meta; zero: none), written by the daemon with `VIPS`.
/// Established packets reach their VIP through the backend's VIP id here: an array load where
/// a `VIPS` lookup is a second hash of the packet.
#[btf_map]
pub static VIP_BY_ID: Array<VipSlot, { MAX_VIPS as usize }> = Array::new();

/// vip_id -> that VIP's Maglev ring (an array of backend ids). The daemon builds a new inner array
/// and swaps it in with one update, so a packet sees either the old ring or the new, never a mix.
#[btf_map]
pub static RINGS: ArrayOfMaps<
    Array<u32, { RING_SIZE_DEFAULT as usize }, BPF_F_INNER_MAP>,
    { MAX_VIPS as usize },
> = ArrayOfMaps::new();

/// backend_id -> address, next-hop MACs, egress port, state. Written by the daemon before any
/// ring names the id; an array because ids are dense and lookups are then a bounds check.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// IPv6 flow -> backend and last-seen time: one entry per flow, shared by every CPU, so a flow
/// has one answer whichever CPU its packets reach (RSS changes, veth, RPS). LRU over all CPUs:
/// capacity is flows, not flows per CPU; under pressure the least recently used entries go,
/// and flow starts above the new-flow limit are not inserted at all (`NEW_FLOW_RATE`).
#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowState, { CONNTRACK_DEFAULT_ENTRIES as usize }> =
    LruHashMap::new();

/// The same for IPv4 flows, under 16-byte keys: the kernel hashes and compares the whole key
/// on each lookup and insert, and 27 of an IPv4 flow's 40 bytes were zeros.
#[btf_map]
pub static CONNTRACK_V4: LruHashMap<FlowKey4, FlowState, { CONNTRACK_DEFAULT_ENTRIES as usize }> =
    LruHashMap::new();

/// Flow starts admitted into conntrack in the current window, per CPU (no locking).
#[btf_map]
pub static NEW_FLOW_RATE: PerCpuArray<RateWindow, 1> = PerCpuArray::new();

/// Index 0: run-time settings (hash seed, MTU, encap sources, GUE port).
#[btf_map]
pub static CONFIG: Array<LbConfig, 1> = Array::new();

/// Two-arm egress interfaces for XDP_REDIRECT (slot 0 unused).
#[btf_map]
pub static TX_PORTS: DevMap<{ MAX_TX_PORTS as usize }> = DevMap::new();

/// The egress interfaces of `TX_PORTS` as interface indexes, for `xlb_probe` (TC programs
/// redirect by index; a devmap serves XDP only). Written by the daemon with `TX_PORTS`.
#[btf_map]
pub static TX_IFINDEX: Array<u32, { MAX_TX_PORTS as usize }> = Array::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<VipStats, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Indexed by `lb_common::stats::Reason`.
#[btf_map]
pub static REASON_STATS: PerCpuArray<Counter, { REASON_SLOTS as usize }> = PerCpuArray::new();

/// Decap side: local tunnel endpoint addresses (outer destinations this host accepts).
/// Key: the address; value: its family. Anything addressed elsewhere passes untouched.
#[btf_map]
pub static DECAP_ADDRS: HashMap<lb_common::Addr, u32, 64> = HashMap::new();

#[btf_map]
pub static DECAP_STATS: PerCpuArray<Counter, { DECAP_STATS_COUNT as usize }> = PerCpuArray::new();

/// Bitmap over `Addr::filter_bit` of every VIP address, written by the daemon (with
/// `CFG_F_VIP_FILTER`). An array: the lookup is a bounds check and a load, where the VIPS hash
/// lookup it saves for non-VIP traffic costs about 40 ns.
#[btf_map]
pub static VIP_FILTER: Array<u32, { VIP_FILTER_WORDS as usize }> = Array::new();

/// Index 0: CLOCK_MONOTONIC_COARSE in ns plus `CLOCK_LEAD_NS`, written by the daemon every
/// second. Conntrack stamps flows with it: `bpf_ktime_get_coarse_ns` cost about 40 ns per
/// packet on the benchmark VM; an array load costs a few, and a second's resolution is all
/// drain detection and `xlb flows` need.
#[btf_map]
pub static CLOCK: Array<u64, 1> = Array::new();

/// Index 0: the running capture's filter (`xlb capture`); read only while `CFG_F_CAPTURE` is set.
#[btf_map]
pub static CAPTURE: Array<CaptureConfig, 1> = Array::new();

/// Capture records (`CaptureHeader` plus frame bytes), read by `xlb capture` through its pin.
/// A ring buffer: one shared, ordered stream without per-CPU buffers to merge.
#[btf_map]
pub static CAPTURE_RING: RingBuf<u8, { CAPTURE_RING_BYTES as usize }> = RingBuf::new();

/// One record being assembled, per CPU (not pinned: it lives only within one packet's run).
#[btf_map]
pub static CAPTURE_SCRATCH: PerCpuArray<CaptureScratch, 1> = PerCpuArray::new();

/// Slot 0: `xlb_capture`, which the forwarder tail-calls after its verdict while a capture runs.
/// A tail call is verified once, on its own; the record as a BPF-to-BPF call was verified again
/// for every state that reached a verdict (about 110k of the forwarder's verified instructions).
/// Filled by userspace at each load.
#[btf_map]
pub static CAPTURE_PROG: ProgramArray<1> = ProgramArray::new();

/// Capture records matched and lost to a full ring, per CPU.
#[btf_map]
pub static CAPTURE_STATS: PerCpuArray<CaptureCounters, 1> = PerCpuArray::new();

/// Generator template (`xlb loadgen`).
#[btf_map]
pub static LOADGEN: Array<lb_common::loadgen::LoadgenConfig, 1> = Array::new();

/// Generator frame counter, per CPU.
#[btf_map]
pub static LOADGEN_SEQ: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Benchmark receiver counters.
#[btf_map]
pub static SINK_STATS: PerCpuArray<Counter, 1> = PerCpuArray::new();
