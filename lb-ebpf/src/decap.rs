//! Backend side: strip IPIP / IPv6-in-IPv6 / 4in6 / 6in4 / GUE addressed to one of this host's
//! `DECAP_ADDRS` and pass the inner packet to the local stack, which owns the VIP on loopback.
//! Needed because hosts may lack the ipip/fou/sit modules.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    Addr, GUE_PORT_DEFAULT, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
    stats::{DECAP_DROP, DECAP_OK, DECAP_PASS},
};

use crate::{
    access::read,
    hdr::*,
    l2::{read_l2, write_l2},
    maps::{DECAP_ADDRS, DECAP_STATS},
    parse::l2,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (idx, action) = match strip(ctx) {
        Ok(true) => (DECAP_OK, xdp_action::XDP_PASS),
        Ok(false) => (DECAP_PASS, xdp_action::XDP_PASS),
        Err(()) => (DECAP_DROP, xdp_action::XDP_DROP),
    };
    if let Some(c) = DECAP_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    action
}

/// `Ok(true)`: decapsulated; `Ok(false)`: not ours, untouched; `Err`: ours but broken.
#[inline(always)]
fn strip(ctx: &XdpContext) -> Result<bool, ()> {
    let Ok((l3, proto)) = l2(ctx) else {
        return Ok(false);
    };
    let (dst, next, outer_len) = if proto == ETH_P_IPV4_BE {
        let Ok(ip) = read::<Ipv4Hdr>(ctx, l3) else {
            return Ok(false);
        };
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ip.vihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() || u16::from_be(ip.frag_be) & 0x3fff != 0
        {
            return Ok(false);
        }
        (Addr::v4(ip.dst), ip.proto, ihl)
    } else if proto == ETH_P_IPV6_BE {
        let Ok(ip) = read::<Ipv6Hdr>(ctx, l3) else {
            return Ok(false);
        };
        (Addr(ip.dst), ip.next, size_of::<Ipv6Hdr>())
    } else {
        return Ok(false);
    };
    if next != PROTO_IPIP && next != PROTO_IPV6 && next != PROTO_UDP {
        return Ok(false);
    }
    // SAFETY: a copy of the value is taken at once.
    let Some(gue_port) = (unsafe { DECAP_ADDRS.get(dst).copied() }) else {
        return Ok(false);
    };
    let mut strip_len = outer_len;
    if next == PROTO_UDP {
        let Ok(udp) = read::<UdpHdr>(ctx, l3 + outer_len) else {
            return Ok(false);
        };
        let port = if gue_port == 0 {
            GUE_PORT_DEFAULT
        } else {
            gue_port as u16
        };
        if u16::from_be(udp.dport_be) != port {
            return Ok(false);
        }
        strip_len += size_of::<UdpHdr>();
    }
    // The inner version decides the new ethertype (GUE variant 1 carries either family).
    let version = read::<u8>(ctx, l3 + strip_len).map_err(|_| ())? >> 4;
    let inner_proto_be = match version {
        4 => ETH_P_IPV4_BE,
        6 => ETH_P_IPV6_BE,
        _ => return Err(()),
    };
    let saved = read_l2(ctx, l3).map_err(|_| ())?;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip_len as i32) } != 0 {
        return Err(());
    }
    write_l2(ctx, &saved, saved.eth.dst, saved.eth.src, inner_proto_be).map_err(|_| ())?;
    Ok(true)
}
