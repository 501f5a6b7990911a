//! The forwarding path: parse, decide (shared `lb_common::decision`), count, send.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    CFG_F_WILDCARD_VIPS, VIP_F_NO_CONNTRACK,
    decision::{PKT_FRAGMENT, PKT_ICMP_ERROR, PKT_NORMAL, decide, lookup_vip},
    stats::Reason,
};

use crate::{
    encap,
    maps::{BACKENDS, CONFIG},
    parse,
    stats::{Verdict, count_forward, count_reason},
    tables::Maps,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> Result<u32, Verdict> {
    let p = parse::parse(ctx)?;
    // Index 0 of an array always exists; the check is for the verifier.
    let cfg = CONFIG.get(0).ok_or(Verdict::pass(Reason::PassNotVip))?;
    let mut maps = Maps {
        wildcards: cfg.flags & CFG_F_WILDCARD_VIPS != 0,
        nr_cpus: cfg.nr_cpus as u32,
    };
    let vip = lookup_vip(&maps, &p.pkt).map_err(Verdict::of)?;
    let d = decide(&mut maps, &p.pkt, vip, cfg.hash_seed).map_err(Verdict::of)?;
    let backend = BACKENDS
        .get(d.backend_id)
        .ok_or(Verdict::drop(Reason::DropBadBackend))?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let action = encap::send(ctx, &p, backend, vip.fwd_mode, cfg)?;
    let stateful = d.vip.flags & VIP_F_NO_CONNTRACK == 0 && p.pkt.kind == PKT_NORMAL;
    count_forward(vip.vip_id, d.backend_id, d.pick, stateful, bytes);
    if p.pkt.kind == PKT_FRAGMENT {
        count_reason(Reason::FwdFragment, bytes);
    } else if p.pkt.kind == PKT_ICMP_ERROR {
        count_reason(Reason::FwdIcmp, bytes);
    }
    Ok(action)
}
