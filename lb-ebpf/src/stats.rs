//! Tiny per-CPU counter helpers.

use aya_ebpf::programs::XdpContext;
use lb_common::{decision::Pick, stats::Reason};

use crate::{
    maps::{BACKEND_STATS, REASON_STATS, VIP_STATS},
    verdict::Verdict,
};

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    if let Some(c) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot of an array map; only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Count an early exit and return its action.
#[inline(always)]
pub fn finish(ctx: &XdpContext, v: Verdict) -> u32 {
    count_reason(v.reason, (ctx.data_end() - ctx.data()) as u64);
    v.action
}

#[inline(always)]
pub fn count_forward(vip_id: u32, backend_id: u32, pick: Pick, stateful: bool, bytes: u64) {
    // An entry was written: a new flow for the VIP and the backend.
    let fresh = stateful && pick != Pick::Tracked && pick != Pick::Deferred;
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot of an array map; only this CPU writes it.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if stateful {
                if pick == Pick::Tracked {
                    (*s).conntrack_hits += 1;
                } else {
                    (*s).conntrack_misses += 1;
                }
            }
            if fresh {
                (*s).new_flows += 1;
            }
            match pick {
                Pick::Failover => (*s).failovers += 1,
                Pick::Expired => (*s).expired += 1,
                Pick::Deferred => (*s).deferred += 1,
                _ => {}
            }
        }
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if fresh {
                (*s).new_flows += 1;
            }
        }
    }
}
