//! The seam between the state and the kernel: the calls the state makes on the forwarder's maps
//! and links. `dataplane::Dataplane` implements it on BPF maps; `fake::FakeMaps` records the
//! sequence of writes so ordering and rollback rules are unit tests.

use lb_common::{
    Backend, FlowKey, FlowState, VipKey, VipMeta,
    capture::{CaptureConfig, CaptureCounters},
    stats::{BackendStats, Counter, Reason, VipStats},
};

use super::diff::MapOp;
use crate::config::AttachMode;

/// A failed map or link operation, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct MapsError {
    pub op: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl MapsError {
    pub fn new(
        op: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        MapsError {
            op: op.into(),
            source: source.into(),
        }
    }
}

/// The outcome of an attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    /// The mode in effect (`Generic` after a fallback).
    pub mode: AttachMode,
    /// Native was asked for and refused; generic is in use.
    pub fell_back: bool,
    /// An existing pinned link was updated in place (hitless) rather than created.
    pub replaced: bool,
}

pub trait Maps {
    /// One write of an ordered sequence; an attach reports how it went.
    fn write(&mut self, op: &MapOp) -> Result<Option<Attached>, MapsError>;
    /// The clock conntrack stamps flows with.
    fn set_clock(&mut self, ns: u64) -> Result<(), MapsError>;
    /// The capture filter (written before the flag that enables it).
    fn set_capture(&mut self, c: &CaptureConfig) -> Result<(), MapsError>;
    fn capture_counters(&self) -> Result<CaptureCounters, MapsError>;
    /// Every tracked flow (one entry per flow, shared by every CPU).
    fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>, MapsError>;
    /// One flow's entry.
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>, MapsError>;
    /// Write one flow's entry (flows received from peers).
    fn set_flow(&mut self, key: &FlowKey, state: &FlowState) -> Result<(), MapsError>;
    /// What the maps hold, whoever wrote it (orphan sweeps).
    fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, MapsError>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError>;
    /// The ring published for a VIP id.
    fn ring(&self, vip_id: u32) -> Result<Vec<u32>, MapsError>;
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Result<u32, MapsError>;
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats, MapsError>;
    fn backend_stats(&self, id: u32) -> Result<BackendStats, MapsError>;
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>, MapsError>;
    /// IPv4 flows conntrack holds at most.
    fn conntrack_capacity(&self) -> Result<u32, MapsError>;
    /// IPv6 flows conntrack holds at most (its own table).
    fn conntrack_capacity_v6(&self) -> Result<u32, MapsError> {
        self.conntrack_capacity()
    }
}
