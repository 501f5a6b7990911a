//! What the daemon answers: the JSON shapes of `status`, `vip list`, `backend list`, `stats`,
//! `flows`, `explain`, applies and captures (printed as-is with `-o json`, as tables
//! otherwise). Fields are only ever added.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VipRef;

/// What an apply changed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub vips_changed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_draining: usize,
    pub rings_swapped: usize,
    pub map_writes: usize,
    pub elapsed_us: u64,
    /// What the operator should know: backends whose next hop does not resolve (out of the
    /// rings), VIPs left without a backend that takes new flows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `config export`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportView {
    /// The running configuration as TOML.
    pub config: String,
}

/// A backend's health and availability over the daemon's lifetime.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Availability {
    pub healthy: bool,
    pub since_secs: f64,
    pub failures: u64,
    pub uptime_percent: f64,
    /// Mean time between failures (seconds up per failure); `None` before the first failure.
    pub mtbf_secs: Option<f64>,
    /// Mean time to repair (seconds down per recovery); `None` before the first recovery.
    pub mttr_secs: Option<f64>,
    /// MTBF / (MTBF + MTTR) once both are known, otherwise the uptime fraction.
    pub availability: f64,
    pub reason: String,
}

/// What to capture, as the operator asks for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFilter {
    pub vip: Option<VipRef>,
    pub backend: Option<IpAddr>,
    /// Outcome names (`forward`, a reason such as `drop_no_backend`) or groups (`forwards`,
    /// `drops`, `passes`, `all`); empty: all.
    #[serde(default)]
    pub outcomes: Vec<String>,
    /// Keep one matching packet in this many (0 and 1: every one).
    #[serde(default)]
    pub sample: u32,
    /// Frame bytes to keep (0: as many as a record holds).
    #[serde(default)]
    pub snaplen: u32,
    /// Record frames as sent (encapsulated or rewritten) rather than as received.
    #[serde(default)]
    pub output: bool,
}

/// A capture the daemon started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureStarted {
    pub session: u32,
    /// The pinned ring to read.
    pub ring: PathBuf,
    /// The daemon's pin directory (VIP names are read from its `VIPS`).
    pub pin_dir: PathBuf,
    pub lease_ms: u64,
}

/// A capture stopped.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CaptureStopped {
    /// Packets that matched the filter and the sampling while the capture ran.
    pub matched: u64,
    /// Of those, records lost because the ring was full (the reader fell behind).
    pub lost: u64,
}

/// Everything `/metrics` exports, in one answer of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricsView {
    pub status: StatusView,
    pub stats: StatsView,
    pub backends: Vec<BackendView>,
    /// Tracked flows at the last count.
    pub conntrack_entries: u64,
    /// Of those, IPv6 flows.
    #[serde(default)]
    pub conntrack_entries_v6: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_secs: u64,
    pub pin_dir: String,
    /// The maps were adopted from an earlier daemon (hitless restart).
    pub adopted: bool,
    pub forward_program_id: u32,
    pub interfaces: Vec<IfaceView>,
    pub vips: usize,
    pub backends: usize,
    pub backends_up: usize,
    pub backends_drained: usize,
    pub backends_removing: usize,
    pub backends_unresolved: usize,
    /// Out of the rings because their health check failed.
    pub backends_down: usize,
    pub health_transitions: u64,
    /// Times an attached interface was deleted or re-created under the forwarder.
    #[serde(default)]
    pub interfaces_lost: u64,
    /// Times a backend's next hop stopped resolving and took it out of its ring.
    #[serde(default)]
    pub nexthop_losses: u64,
    /// VIPs running below their quorum of healthy backends.
    pub below_quorum: Vec<String>,
    pub quorum_losses: u64,
    /// IPv4 flows conntrack holds at most, shared by every CPU.
    pub conntrack_capacity: u32,
    /// IPv6 flows conntrack holds at most (a table of its own).
    #[serde(default)]
    pub conntrack_capacity_v6: u32,
    /// Flows tracked at the last count (every 10 s, every 2 s when near full).
    #[serde(default)]
    pub conntrack_entries: u64,
    /// Of those, IPv6 flows (their table's capacity is `conntrack_capacity_v6`).
    #[serde(default)]
    pub conntrack_entries_v6: u64,
    /// Entries pushed out by inserts into a full table since the daemon started (estimated
    /// from writes and counts).
    #[serde(default)]
    pub conntrack_evictions: u64,
    pub applies: u64,
    pub ring_rebuilds: u64,
    /// Changes (edits, health transitions) queued or being planned, not yet in the maps.
    #[serde(default)]
    pub changes_pending: usize,
    /// The running capture (`xlb capture`): it costs the forwarder a copy per packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Route announcements, when `[announce]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceView>,
    /// Flow sync with the fleet's other nodes, when `[sync]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncView>,
}

/// Flow sync: what this node ships and receives.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncView {
    pub listen: String,
    /// `waiting`, `done`, or `timed out` (peers that did not answer the start-up resync).
    pub resync: String,
    /// Flows tracked on another backend than the ring picks now, at the last scan.
    pub divergent_flows: usize,
    pub scans: u64,
    /// Duration of the last scan of the conntrack table.
    pub last_scan_us: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub records_received: u64,
    /// Conntrack entries written or refreshed from peers' records.
    pub flows_written: u64,
    /// Datagrams and records refused, by reason (`unknown_peer`, `bad_tag`, `replayed`,
    /// `stale`, `malformed`, `config_mismatch`, `unknown_vip`, `unknown_backend`, ...).
    pub refused: std::collections::BTreeMap<String, u64>,
    pub peers: Vec<PeerView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub address: String,
    /// Heard from within three refresh periods.
    pub up: bool,
    /// Milliseconds since its last datagram (none yet: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Divergent flows of the last scan the peer has not acknowledged: what it would lack if
    /// this node died now.
    pub unsynced: usize,
    /// Milliseconds from sending the last set of flows to the peer's acknowledgement of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
    pub records_received: u64,
    pub flows_written: u64,
    /// VIPs whose config digest differs on the peer: its records for them are refused.
    pub config_mismatch: Vec<String>,
}

/// What this node announces, and why not.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnounceView {
    pub table: u32,
    pub protocol: u8,
    /// `xlb drain-node`: nothing is announced until `xlb undrain-node`.
    pub node_drained: bool,
    /// Seconds left of the start-up hold.
    pub hold_left_secs: u64,
    pub announces: u64,
    pub withdraws: u64,
    /// Failed route writes (retried every second).
    pub route_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub addresses: Vec<AnnouncedView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnouncedView {
    pub address: String,
    pub vips: Vec<String>,
    /// Its route is in the kernel table (what the routing daemon exports).
    pub announced: bool,
    /// The daemon wants it announced (differs from `announced` only while a write is pending
    /// or failing).
    pub wanted: bool,
    /// Why it is not announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since it was last announced or withdrawn.
    pub since_secs: u64,
}

#[cfg(test)]
impl StatusView {
    /// A daemon with one VIP and nothing else, for tests of what is shown.
    pub fn sample() -> StatusView {
        StatusView {
            version: "0".into(),
            uptime_secs: 1,
            pin_dir: "/sys/fs/bpf/xlb".into(),
            adopted: false,
            forward_program_id: 1,
            interfaces: vec![],
            vips: 1,
            backends: 0,
            backends_up: 0,
            backends_drained: 0,
            backends_removing: 0,
            backends_unresolved: 0,
            backends_down: 0,
            health_transitions: 0,
            interfaces_lost: 0,
            nexthop_losses: 0,
            below_quorum: vec![],
            quorum_losses: 0,
            conntrack_capacity: 0,
            conntrack_capacity_v6: 0,
            conntrack_entries: 0,
            conntrack_entries_v6: 0,
            conntrack_evictions: 0,
            applies: 0,
            ring_rebuilds: 0,
            changes_pending: 0,
            capture: None,
            announce: None,
            sync: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IfaceView {
    pub name: String,
    pub requested: String,
    pub mode: String,
    /// The interface's index; 0: it is gone (the forwarder is attached again when it returns).
    #[serde(default)]
    pub ifindex: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipView {
    pub vip: String,
    pub id: u32,
    pub hash: String,
    pub forwarding: String,
    pub conntrack: bool,
    pub ring_size: u32,
    pub backends: usize,
    /// Backends that take new flows.
    pub in_ring: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendView {
    pub vip: String,
    pub address: String,
    pub id: u32,
    pub weight: u32,
    /// `up`, `drained`, `removing` (drained, then removed) or `unresolved` (no next hop).
    pub state: String,
    /// Ring slots owned (share of new flows).
    pub slots: u32,
    pub next_hop: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Health and availability (backends with a health check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Availability>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatsView {
    /// Seconds the rates are computed over (0: no earlier sample yet).
    pub interval_secs: f64,
    pub vips: Vec<VipStatsView>,
    pub backends: Vec<BackendStatsView>,
    pub reasons: Vec<ReasonView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatsView {
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub conntrack_hits: u64,
    pub conntrack_misses: u64,
    pub failovers: u64,
    /// Entries idle past their timeout, re-picked as new flows.
    #[serde(default)]
    pub expired: u64,
    /// Flow starts above the new-flow limit, forwarded untracked.
    #[serde(default)]
    pub deferred: u64,
    pub pps: f64,
    pub bps: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatsView {
    pub vip: String,
    pub address: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub pps: f64,
    pub bps: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReasonView {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowView {
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub backend: String,
    pub backend_id: u32,
    /// CPUs whose packets of this flow use this entry: all of them (one entry per flow).
    pub cpus: Vec<usize>,
    pub idle_ms: u64,
    /// The VIP's idle timeout (0: none).
    #[serde(default)]
    pub idle_timeout_secs: u32,
    /// Idle past the timeout: its next packet is a new flow.
    #[serde(default)]
    pub expired: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowsView {
    pub flows: Vec<FlowView>,
    /// More matched than the limit allowed.
    pub truncated: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExplainView {
    pub flow: String,
    pub vip: Option<String>,
    /// `forward`, `pass` or `drop`, with the reason for the latter two.
    pub verdict: String,
    pub reason: Option<String>,
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// `tracked`, `ring`, `failover` or `expired`.
    pub how: Option<String>,
    pub slot: Option<u32>,
    pub ring_size: Option<u32>,
    pub hash: Option<String>,
    pub tracked_on_cpus: Vec<usize>,
}
