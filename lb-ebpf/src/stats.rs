//! Tiny per-CPU counter helpers.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    decision::Pick,
    stats::{
        BUMP_DEFERRED, BUMP_EXPIRED, BUMP_FAILOVER, BUMP_HIT, BUMP_MISS, BUMP_NEW, Reason,
        counter_bits,
    },
};

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
    // Every counter is added to, by 0 or 1: no branch on the pick (see `counter_bits`).
    let bits = counter_bits(pick, stateful);
    let fresh = (bits >> BUMP_NEW) & 1;
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot of an array map; only this CPU writes it.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += fresh;
            (*s).conntrack_hits += (bits >> BUMP_HIT) & 1;
            (*s).conntrack_misses += (bits >> BUMP_MISS) & 1;
            (*s).failovers += (bits >> BUMP_FAILOVER) & 1;
            (*s).expired += (bits >> BUMP_EXPIRED) & 1;
            (*s).deferred += (bits >> BUMP_DEFERRED) & 1;
        }
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += fresh;
        }
    }
}
