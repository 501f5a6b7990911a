//! Output towards a backend: IP-in-IP (outer family of the backend), GUE (UDP + IP) or an L2 DSR
//! MAC rewrite; then XDP_TX (one-arm) or XDP_REDIRECT through `TX_PORTS` (two-arm).

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    Backend, FAMILY_V6, FWD_GUE, FWD_L2, LbConfig, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
    decision::encap_entropy, stats::Reason,
};

use crate::{
    access::{bound_l3, write},
    csum,
    hdr::*,
    l2::{L2, write_l2},
    maps::TX_PORTS,
    parse::Parsed,
    verdict::Verdict,
};

/// Bytes the encapsulation adds in front of the IP packet (0 for L2 DSR).
#[inline(always)]
pub fn overhead(b: &Backend, fwd_mode: u8) -> usize {
    if fwd_mode == FWD_L2 {
        return 0;
    }
    let ip_len = if b.family == FAMILY_V6 {
        size_of::<Ipv6Hdr>()
    } else {
        size_of::<Ipv4Hdr>()
    };
    if fwd_mode == FWD_GUE {
        ip_len + size_of::<UdpHdr>()
    } else {
        ip_len
    }
}

#[inline(always)]
fn transmit(b: &Backend) -> Result<u32, Verdict> {
    if b.tx_port == 0 {
        return Ok(xdp_action::XDP_TX);
    }
    TX_PORTS
        .redirect(b.tx_port, 0)
        .map_err(|_| Verdict::drop(Reason::DropRedirect))
}

#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    p: &Parsed,
    l2: &L2,
    b: &Backend,
    fwd_mode: u8,
    cfg: &LbConfig,
) -> Result<u32, Verdict> {
    let src_mac = if b.src_mac == [0; 6] {
        l2.eth.dst
    } else {
        b.src_mac
    };
    let inner_v6 = p.pkt.key.is_v6();
    let inner_proto_be = if inner_v6 {
        ETH_P_IPV6_BE
    } else {
        ETH_P_IPV4_BE
    };

    if fwd_mode == FWD_L2 {
        write_l2(ctx, l2, b.dst_mac, src_mac, inner_proto_be)?;
        return transmit(b);
    }

    let outer_v6 = b.family == FAMILY_V6;
    let ip_len = if outer_v6 {
        size_of::<Ipv6Hdr>()
    } else {
        size_of::<Ipv4Hdr>()
    };
    let udp_len = if fwd_mode == FWD_GUE {
        size_of::<UdpHdr>()
    } else {
        0
    };
    let overhead = ip_len + udp_len;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    let outer_proto_be = if outer_v6 {
        ETH_P_IPV6_BE
    } else {
        ETH_P_IPV4_BE
    };
    write_l2(ctx, l2, b.dst_mac, src_mac, outer_proto_be)?;

    let entropy = encap_entropy(&p.pkt.key);
    let proto = outer_proto(udp_len != 0, inner_v6);
    let payload = p.l3_len + udp_len;
    let l3 = bound_l3(p.l3_off)?;
    if outer_v6 {
        write::<Ipv6Hdr>(ctx, l3, v6_header(cfg, b, entropy, p.tos, payload, proto))?;
    } else {
        let h = v4_header(cfg, b, entropy, p.tos, p.df, payload, proto);
        write::<Ipv4Hdr>(ctx, l3, h)?;
    }
    if udp_len != 0 {
        write::<UdpHdr>(ctx, l3 + ip_len, gue_header(cfg, entropy, payload))?;
    }
    transmit(b)
}

/// The outer header's protocol: UDP for GUE, else the inner family's IP-in-IP number.
#[inline(always)]
pub fn outer_proto(gue: bool, inner_v6: bool) -> u8 {
    if gue {
        PROTO_UDP
    } else if inner_v6 {
        PROTO_IPV6
    } else {
        PROTO_IPIP
    }
}

/// The outer IPv6 header towards `b`: the configured source with the flow's entropy in its
/// masked bits and the flow label, the inner traffic class.
#[inline(always)]
pub fn v6_header(
    cfg: &LbConfig,
    b: &Backend,
    entropy: u32,
    tos: u8,
    payload: usize,
    proto: u8,
) -> Ipv6Hdr {
    let mut src = cfg.encap_src_v6.0;
    src[3] = (src[3] & !cfg.encap_src_v6_mask) | (entropy & cfg.encap_src_v6_mask);
    let flow = entropy & 0x000f_ffff;
    Ipv6Hdr {
        vtcfl: [
            0x60 | (tos >> 4),
            (tos << 4) | (flow >> 16) as u8,
            (flow >> 8) as u8,
            flow as u8,
        ],
        payload_len_be: (payload as u16).to_be(),
        next: proto,
        hop: 64,
        src,
        dst: b.addr.0,
    }
}

/// The outer IPv4 header towards `b`, checksummed: the configured source with the flow's
/// entropy in its masked bits, the inner TOS and DF.
#[inline(always)]
pub fn v4_header(
    cfg: &LbConfig,
    b: &Backend,
    entropy: u32,
    tos: u8,
    df: bool,
    payload: usize,
    proto: u8,
) -> Ipv4Hdr {
    let src = (cfg.encap_src_v4 & !cfg.encap_src_v4_mask) | (entropy & cfg.encap_src_v4_mask);
    let mut h = Ipv4Hdr {
        vihl: 0x45,
        tos,
        tot_len_be: ((payload + size_of::<Ipv4Hdr>()) as u16).to_be(),
        id_be: 0,
        frag_be: if df { 0x4000u16.to_be() } else { 0 },
        ttl: 64,
        proto,
        csum: 0,
        src,
        dst: b.addr.0[0],
    };
    h.csum = csum::ipv4(&h);
    h
}

/// The GUE UDP header: a source port from the flow, in the ephemeral range, so the backend's
/// RSS spreads flows; no checksum (the inner packet carries its own).
#[inline(always)]
pub fn gue_header(cfg: &LbConfig, entropy: u32, payload: usize) -> UdpHdr {
    UdpHdr {
        sport_be: (0xc000 | (entropy & 0x3fff) as u16).to_be(),
        dport_be: cfg.gue_port_be,
        len_be: (payload as u16).to_be(),
        csum: 0,
    }
}
