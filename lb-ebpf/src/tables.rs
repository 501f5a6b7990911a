//! The decision's tables, backed by the BPF maps.

use aya_ebpf::helpers::bpf_map_lookup_percpu_elem;
use lb_common::{
    Backend, CONNTRACK_SCAN_CPUS, FlowKey, FlowState, PROTO_TCP, VipKey, VipMeta, decision::Tables,
};

use crate::maps::{BACKENDS, CLOCK, CONNTRACK, RINGS, VIP_FILTER, VIPS};

pub struct Maps {
    /// Some VIP is a port-0 wildcard (`CFG_F_WILDCARD_VIPS`); otherwise port-0 lookups are
    /// known misses and skipped.
    pub wildcards: bool,
    /// CPUs to search when a TCP packet of an established flow misses this CPU's conntrack.
    pub nr_cpus: u32,
    /// `VIP_FILTER` is populated (`CFG_F_VIP_FILTER`).
    pub filter: bool,
}

impl Maps {
    /// A TCP flow's entry on another CPU. Conntrack is per CPU and RSS normally keeps a flow on
    /// one, but a flow can move (veth schedules by sender CPU, NIC RSS tables get rehashed);
    /// following the ring instead would move it to another backend whenever the ring changed
    /// since it started. Found entries are copied to this CPU, so the search runs once.
    #[inline(never)]
    fn tracked_elsewhere(&self, key: &FlowKey) -> Option<u32> {
        let map = core::ptr::from_ref(&CONNTRACK)
            .cast_mut()
            .cast::<core::ffi::c_void>();
        let mut cpu = 0u32;
        while cpu < CONNTRACK_SCAN_CPUS && cpu < self.nr_cpus {
            // SAFETY: a lookup helper on our own map with a key of its key type.
            let p = unsafe { bpf_map_lookup_percpu_elem(map, core::ptr::from_ref(key).cast(), cpu) }
                as *const FlowState;
            if !p.is_null() {
                // SAFETY: a non-null value pointer of this map; read once.
                let id = unsafe { (*p).backend_id };
                if id != 0 {
                    insert(key, id);
                    return Some(id);
                }
            }
            cpu += 1;
        }
        None
    }
}

impl Tables for Maps {
    #[inline(always)]
    fn may_be_vip(&self, addr: &lb_common::Addr) -> bool {
        if !self.filter {
            return true;
        }
        let bit = addr.filter_bit();
        match VIP_FILTER.get(bit >> 5) {
            Some(w) => w & (1 << (bit & 31)) != 0,
            None => true,
        }
    }

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
        // An element of a per-CPU map holds a value for every CPU: this CPU's may be zero
        // (the flow was tracked elsewhere) even when the lookup succeeds.
        if let Some(state) = CONNTRACK.get_ptr_mut(key) {
            // SAFETY: per-CPU value of an LRU map: only this CPU reads and writes this slot.
            unsafe {
                let id = (*state).backend_id;
                if id != 0 {
                    (*state).last_seen_ns = now();
                    return Some(id);
                }
            }
        }
        if key.proto == PROTO_TCP && self.nr_cpus > 1 {
            return self.tracked_elsewhere(key);
        }
        None
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
        insert(key, backend_id);
    }
}

/// The daemon's clock (see `CLOCK`); 0 when no daemon writes it (fixtures, replay).
#[inline(always)]
fn now() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// Track `key` on this CPU. A failed insert (map full of locked entries) only loses
/// stickiness; the ring still routes the flow consistently while the backend set is unchanged.
#[inline(always)]
fn insert(key: &FlowKey, backend_id: u32) {
    let state = FlowState {
        backend_id,
        _pad: 0,
        last_seen_ns: now(),
    };
    let _ = CONNTRACK.insert(key, state, 0);
}
