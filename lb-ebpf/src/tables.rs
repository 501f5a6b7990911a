//! The decision's tables, backed by the BPF maps.

use lb_common::{
    Backend, FlowKey, FlowKey4, FlowState, VipKey, VipMeta, VipSlot, decision::Tables,
};

use crate::maps::{
    BACKENDS, CLOCK, CONNTRACK, CONNTRACK_V4, NEW_FLOW_RATE, RINGS, VIP_BY_ID, VIP_FILTER, VIPS,
};

pub struct Maps {
    /// Some VIP is a port-0 wildcard (`CFG_F_WILDCARD_VIPS`); otherwise port-0 lookups are
    /// known misses and skipped.
    pub wildcards: bool,
    /// `VIP_FILTER` is populated (`CFG_F_VIP_FILTER`).
    pub filter: bool,
    /// `LbConfig::new_flow_limit`.
    pub new_flow_limit: u32,
    /// The flow is IPv4 (`CONNTRACK_V4`), else IPv6 (`CONNTRACK`): `Parsed::v4`.
    pub v4: bool,
    /// The conntrack entry `flow` found last, stamped in place by `stamp` (no second lookup).
    pub last: *mut FlowState,
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
    fn vip_by_id(&self, vip_id: u32) -> Option<VipSlot> {
        VIP_BY_ID.get(vip_id).copied()
    }

    #[inline(always)]
    fn flow(&mut self, key: &FlowKey) -> Option<FlowState> {
        // A known constant on every path the verifier walks: one map per path.
        let state = if self.v4 {
            CONNTRACK_V4.get_ptr_mut(FlowKey4::of(key))?
        } else {
            CONNTRACK.get_ptr_mut(key)?
        };
        self.last = state;
        // SAFETY: a value of our map, read in aligned words: another CPU may stamp the same
        // entry concurrently, which only races two equal-enough clock values; a rewrite by
        // another CPU replaces the element, never tears this one.
        Some(unsafe { *state })
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        now()
    }

    #[inline(always)]
    fn stamp(&mut self, _key: &FlowKey, now: u64) {
        if self.last.is_null() {
            return;
        }
        // SAFETY: the entry `flow` returned (see there); the clock moves once a second, so
        // the entry is written only when it changed, not on every packet.
        unsafe {
            if (*self.last).last_seen_ns != now {
                (*self.last).last_seen_ns = now;
            }
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
        insert(self.v4, key, backend_id);
    }

    #[inline(always)]
    fn admit(&mut self) -> bool {
        if self.new_flow_limit == 0 {
            return true;
        }
        match NEW_FLOW_RATE.get_ptr_mut(0) {
            // SAFETY: per-CPU slot; only this CPU reads and writes it.
            Some(w) => unsafe { (*w).admit(now(), self.new_flow_limit) },
            None => true,
        }
    }
}

/// The daemon's clock (see `CLOCK`); 0 when no daemon writes it (fixtures, replay).
#[inline(always)]
fn now() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// Track `key` for every CPU. A failed insert only loses stickiness; the ring still routes the
/// flow consistently while the backend set is unchanged.
#[inline(always)]
fn insert(v4: bool, key: &FlowKey, backend_id: u32) {
    let state = FlowState::new(backend_id, now());
    let _ = if v4 {
        CONNTRACK_V4.insert(FlowKey4::of(key), state, 0)
    } else {
        CONNTRACK.insert(key, state, 0)
    };
}

/// The frame's IPv4 flow (untagged, 20-byte IP header) tracked as the forwarder tracks a new
/// one: how much of a new flow's cost is the kernel's insert (`xlb_insert`).
#[inline(always)]
pub fn insert_only(ctx: &aya_ebpf::programs::XdpContext) -> u32 {
    use core::mem::size_of;

    use aya_ebpf::bindings::xdp_action;

    use crate::hdr::{EthHdr, Ipv4Hdr};
    let l3 = size_of::<EthHdr>();
    let (Ok(ip), Ok(ports)) = (
        crate::access::read::<Ipv4Hdr>(ctx, l3),
        crate::access::read::<[u16; 2]>(ctx, l3 + size_of::<Ipv4Hdr>()),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    let key = FlowKey {
        src: lb_common::Addr::v4(ip.src),
        dst: lb_common::Addr::v4(ip.dst),
        src_port_be: ports[0],
        dst_port_be: ports[1],
        proto: ip.proto,
        family: lb_common::FAMILY_V4,
        _pad: [0; 2],
    };
    insert(true, &key, 1);
    xdp_action::XDP_DROP
}
