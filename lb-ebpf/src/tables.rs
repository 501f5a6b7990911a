//! The decision's tables, backed by the BPF maps.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{Backend, FlowKey, FlowState, VipKey, VipMeta, decision::Tables};

use crate::maps::{BACKENDS, CONNTRACK, RINGS, VIPS};

pub struct Maps {
    /// Some VIP is a port-0 wildcard (`CFG_F_WILDCARD_VIPS`); otherwise port-0 lookups are
    /// known misses and skipped.
    pub wildcards: bool,
}

impl Tables for Maps {
    #[inline(always)]
    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        if key.port_be == 0 && !self.wildcards {
            return None;
        }
        // SAFETY: values are written whole by the daemon; a copy is taken immediately.
        unsafe { VIPS.get(key).copied() }
    }

    #[inline(always)]
    fn tracked(&mut self, key: &FlowKey) -> Option<u32> {
        let state = CONNTRACK.get_ptr_mut(key)?;
        // SAFETY: per-CPU value of an LRU map: only this CPU reads and writes this slot.
        unsafe {
            let id = (*state).backend_id;
            if id == 0 {
                return None;
            }
            (*state).last_seen_ns = bpf_ktime_get_coarse_ns();
            Some(id)
        }
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<&Backend> {
        BACKENDS.get(id)
    }

    #[inline(always)]
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32> {
        RINGS.get_value(vip_id, &slot).copied()
    }

    #[inline(always)]
    fn track(&mut self, key: &FlowKey, backend_id: u32) {
        // SAFETY: the helper has no preconditions on the clock.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let state = FlowState {
            backend_id,
            _pad: 0,
            last_seen_ns: now,
        };
        // A failed insert (map full of locked entries) only loses stickiness; the ring still
        // routes the flow consistently while the backend set is unchanged.
        let _ = CONNTRACK.insert(key, state, 0);
    }
}
