//! The forwarding path: parse, decide (shared `lb_common::decision`), count, send; then, only
//! while a capture runs, record what was done.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Backend, CFG_F_VIP_FILTER, CFG_F_WILDCARD_VIPS, LbConfig, MTU_DEFAULT, VIP_F_NO_CONNTRACK,
    capture::{CAPTURE_NO_VIP, CaptureConfig, outcome},
    decision::{
        PKT_ECHO, PKT_FRAGMENT, PKT_ICMP_ERROR, PKT_NORMAL, check_vip_address, decide, established,
        lookup_vip,
    },
    stats::Reason,
};

use crate::{
    capture, echo, encap, icmp, l2,
    maps::{BACKENDS, CONFIG},
    parse::{self, Parsed},
    stats::{self, count_forward, count_reason},
    tables::Maps,
    verdict::Verdict,
};

/// What `route` learned on the way, for the capture record.
struct Seen {
    vip_id: u32,
    backend_id: u32,
    backend: Option<&'static Backend>,
}

#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    // Index 0 of an array always exists; the check is for the verifier.
    let Some(cfg) = CONFIG.get(0) else {
        return stats::finish(ctx, Verdict::pass(Reason::PassNotVip));
    };
    let mut seen = Seen {
        vip_id: CAPTURE_NO_VIP,
        backend_id: 0,
        backend: None,
    };
    // Nothing here may differ between capture on and off but the call itself: a variable set
    // only when on would make the verifier walk the whole forwarder twice.
    if CaptureConfig::enabled(cfg) {
        capture::keep_input(ctx);
    }
    let parsed = parse::parse(ctx);
    let (action, reason) = match &parsed {
        Ok(p) => match route(ctx, cfg, p, &mut seen) {
            Ok(action) => (action, None),
            Err(v) => (stats::finish(ctx, v), Some(v.reason)),
        },
        Err(v) => (stats::finish(ctx, *v), Some(v.reason)),
    };
    if CaptureConfig::enabled(cfg) {
        let key = parsed.as_ref().ok().map(|p| &p.pkt.key);
        let reason = reason.or(match parsed.as_ref().map(|p| p.pkt.kind) {
            Ok(PKT_FRAGMENT) => Some(Reason::FwdFragment),
            Ok(PKT_ICMP_ERROR) => Some(Reason::FwdIcmp),
            Ok(PKT_ECHO) => Some(Reason::TxEcho),
            _ => None,
        });
        capture::record(
            ctx,
            &capture::Event {
                key,
                vip_id: seen.vip_id,
                backend_id: seen.backend_id,
                backend: seen.backend,
                action,
                outcome: outcome(reason),
            },
        );
    }
    action
}

#[inline(always)]
fn route(ctx: &XdpContext, cfg: &LbConfig, p: &Parsed, seen: &mut Seen) -> Result<u32, Verdict> {
    if p.pkt.kind == PKT_ECHO {
        return echo::answer(ctx, p);
    }
    let mut maps = Maps {
        wildcards: cfg.flags & CFG_F_WILDCARD_VIPS != 0,
        filter: cfg.flags & CFG_F_VIP_FILTER != 0,
        new_flow_limit: cfg.new_flow_limit,
        v4: p.v4,
        last: core::ptr::null_mut(),
    };
    // `decision::route` step by step (the model runs that; the agreement tests hold the two
    // together), with the VIP noted for capture before the backend is picked. Calling a shared
    // `route` that notes it instead was tried: 527k verified instructions against 426k.
    check_vip_address(&maps, &p.pkt).map_err(Verdict::of)?;
    let d = match established(&mut maps, &p.pkt) {
        Ok(d) => d,
        Err(flow) => {
            let vip = lookup_vip(&maps, &p.pkt).map_err(Verdict::of)?;
            seen.vip_id = vip.vip_id;
            decide(&mut maps, &p.pkt, vip, cfg.hash_seed, flow).map_err(Verdict::of)?
        }
    };
    let vip = d.vip;
    seen.vip_id = vip.vip_id;
    let backend = BACKENDS
        .get(d.backend_id)
        .ok_or(Verdict::drop(Reason::DropBadBackend))?;
    seen.backend_id = d.backend_id;
    seen.backend = Some(backend);
    // Too big once encapsulated: a DF packet gets "fragmentation needed" / "packet too big"
    // back, others are dropped (fragmenting is the sender's job).
    let l2 = l2::read_l2(ctx, p.l3_off)?;
    let overhead = encap::overhead(backend, vip.fwd_mode);
    let mtu = crate::parse::opaque(if cfg.mtu == 0 { MTU_DEFAULT } else { cfg.mtu } as usize);
    let action = if overhead != 0 && p.l3_len + overhead > mtu {
        if !p.df {
            return Err(Verdict::drop(Reason::DropTooBig));
        }
        icmp::too_big(ctx, p, &l2, (mtu - overhead) as u32)?
    } else {
        encap::send(ctx, p, &l2, backend, vip.fwd_mode, cfg)?
    };
    let stateful = d.vip.flags & VIP_F_NO_CONNTRACK == 0 && p.pkt.kind == PKT_NORMAL;
    // The frame as received: L2 header and datagram, every buffer of a multi-buffer frame
    // (Ethernet padding of minimum-size frames is not traffic). Read from the parse result
    // here, after the send, rather than held in a register across it.
    let bytes = (p.l3_off + p.l3_len) as u64;
    count_forward(vip.vip_id, d.backend_id, d.pick, stateful, bytes);
    if p.pkt.kind == PKT_FRAGMENT {
        count_reason(Reason::FwdFragment, bytes);
    } else if p.pkt.kind == PKT_ICMP_ERROR {
        count_reason(Reason::FwdIcmp, bytes);
    }
    Ok(action)
}
