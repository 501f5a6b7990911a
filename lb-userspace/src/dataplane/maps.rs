//! The state's seam on the real maps: `state::Maps` for `Dataplane`.

use lb_common::{
    Backend, FlowKey, FlowState, VipKey, VipMeta,
    capture::{CaptureConfig, CaptureCounters},
    stats::{BackendStats, Counter, Reason, VipStats},
};

use super::{Dataplane, DataplaneError, pin};
use crate::state::{Attached, MapOp, Maps, MapsError};

fn err(op: &str) -> impl FnOnce(DataplaneError) -> MapsError + '_ {
    move |e| MapsError::new(op, e)
}

impl Maps for Dataplane {
    fn write(&mut self, op: &MapOp) -> Result<Option<Attached>, MapsError> {
        let link = |dp: &Dataplane, iface: &str| dp.pin_dir().map(|d| pin::link_path(d, iface));
        match op {
            MapOp::VipFilter { words, old } => self
                .set_vip_filter(words, old)
                .map(drop)
                .map_err(err("writing the VIP address filter")),
            MapOp::Config(c) => self.set_config(c).map_err(err("writing CONFIG")),
            MapOp::TxPort { slot, ifindex } => self
                .set_tx_port(*slot, *ifindex)
                .map_err(|e| MapsError::new(format!("egress port {slot} (ifindex {ifindex})"), e)),
            MapOp::Backend { id, value } => self
                .set_backend(*id, value)
                .map_err(|e| MapsError::new(format!("backend {id}"), e)),
            MapOp::Ring { vip_id, table } => self
                .set_ring(*vip_id, table)
                .map_err(|e| MapsError::new(format!("ring of VIP id {vip_id}"), e)),
            MapOp::ClearRing { vip_id } => self
                .clear_ring(*vip_id)
                .map_err(|e| MapsError::new(format!("dropping the ring of VIP id {vip_id}"), e)),
            MapOp::Vip { key, meta } => self
                .set_vip(key, meta)
                .map_err(|e| MapsError::new(format!("VIP id {}", meta.vip_id), e)),
            MapOp::RemoveVip { key } => self.remove_vip(key).map_err(err("removing a VIP")),
            MapOp::Attach { iface, mode } => {
                let path = link(self, iface);
                return self
                    .attach(
                        lb_common::prog_names::FORWARD,
                        iface,
                        *mode,
                        path.as_deref(),
                    )
                    .map(Some)
                    .map_err(|e| MapsError::new(format!("attaching to {iface}"), e));
            }
            MapOp::Detach { iface } => {
                let path = link(self, iface);
                self.detach(iface, path.as_deref())
                    .map_err(|e| MapsError::new(format!("detaching from {iface}"), e))
            }
        }
        .map(|()| None)
    }
    fn set_clock(&mut self, ns: u64) -> Result<(), MapsError> {
        Dataplane::set_clock(self, ns).map_err(err("writing the conntrack clock"))
    }
    fn set_capture(&mut self, c: &CaptureConfig) -> Result<(), MapsError> {
        Dataplane::set_capture(self, c).map_err(err("writing the capture filter"))
    }
    fn capture_counters(&self) -> Result<CaptureCounters, MapsError> {
        Dataplane::capture_counters(self).map_err(err("reading capture counters"))
    }
    fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>, MapsError> {
        Dataplane::flows(self).map_err(err("reading conntrack"))
    }
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>, MapsError> {
        Dataplane::flow(self, key).map_err(err("reading a conntrack entry"))
    }
    fn set_flow(&mut self, key: &FlowKey, state: &FlowState) -> Result<(), MapsError> {
        Dataplane::set_flow(self, key, state).map_err(err("writing a conntrack entry"))
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, MapsError> {
        Dataplane::vips(self).map_err(err("reading VIPS"))
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        Dataplane::backends(self).map_err(err("reading BACKENDS"))
    }
    fn ring(&self, vip_id: u32) -> Result<Vec<u32>, MapsError> {
        Dataplane::ring(self, vip_id).map_err(|e| MapsError::new(format!("ring {vip_id}"), e))
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Result<u32, MapsError> {
        Dataplane::ring_entry(self, vip_id, slot)
            .map_err(|e| MapsError::new(format!("ring {vip_id} slot {slot}"), e))
    }
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats, MapsError> {
        Dataplane::vip_stats(self, vip_id).map_err(err("reading VIP_STATS"))
    }
    fn backend_stats(&self, id: u32) -> Result<BackendStats, MapsError> {
        Dataplane::backend_stats(self, id).map_err(err("reading BACKEND_STATS"))
    }
    fn reason_stats(&self) -> Result<Vec<(Reason, Counter)>, MapsError> {
        let mut v: Vec<(Reason, Counter)> = Dataplane::reason_stats(self)
            .map_err(err("reading REASON_STATS"))?
            .into_iter()
            .collect();
        v.sort_by_key(|(r, _)| *r as u32);
        Ok(v)
    }
    fn conntrack_capacity(&self) -> Result<u32, MapsError> {
        Dataplane::conntrack_capacity(self).map_err(err("reading the conntrack capacity"))
    }

    fn conntrack_capacity_v6(&self) -> Result<u32, MapsError> {
        Dataplane::conntrack_capacity_v6(self).map_err(err("reading the conntrack capacity"))
    }
}
