//! `xlb_probe` (TC egress): health probes through the data path. A probe socket of the daemon
//! marks its packets (`PROBE_MARK`, the VIP's forwarding mode, the backend id); here they are
//! encapsulated exactly as the forwarder would encapsulate a client's packet for that backend
//! and sent towards it, so the probe passes the backend's decap, its VIP on loopback and its
//! service, and the answer comes back from the VIP as a client's would. Everything else passes
//! untouched (the forwarder's own output never reaches TC: XDP_TX and XDP_REDIRECT bypass it).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{
    Addr, Backend, FAMILY_V4, FAMILY_V6, FWD_GUE, FWD_L2, FlowKey, LbConfig, PROBE_ID_MASK,
    PROBE_MARK, PROBE_MARK_MASK, PROBE_MODE_SHIFT, decision::encap_entropy,
};

use crate::{
    encap::{gue_header, outer_proto, v4_header, v6_header},
    hdr::*,
    maps::{BACKENDS, CONFIG, TX_IFINDEX},
};

const ETH: usize = size_of::<EthHdr>();

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // SAFETY: the live __sk_buff of this invocation.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & PROBE_MARK_MASK != PROBE_MARK {
        return TC_ACT_OK;
    }
    // Once: a second xlb_probe on the way (a daemon hand-over) must not wrap it again.
    ctx.set_mark(0);
    send(ctx, mark).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn send(ctx: &TcContext, mark: u32) -> Result<i32, i64> {
    let b = BACKENDS.get(mark & PROBE_ID_MASK).ok_or(-1)?;
    let cfg = CONFIG.get(0).ok_or(-1)?;
    let fwd_mode = ((mark >> PROBE_MODE_SHIFT) & 3) as u8;
    if fwd_mode != FWD_L2 {
        encapsulate(ctx, b, cfg, fwd_mode)?;
    }
    ctx.store(0, &b.dst_mac, 0)?;
    // Zero: keep the interface's own MAC, which the stack already wrote (one-arm).
    if b.src_mac != [0; 6] {
        ctx.store(6, &b.src_mac, 0)?;
    }
    if b.tx_port == 0 {
        return Ok(TC_ACT_OK);
    }
    let ifindex = *TX_IFINDEX.get(b.tx_port).ok_or(-1)?;
    // SAFETY: a plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Put the outer IP (and for GUE, UDP) header between the Ethernet header and the probe's own
/// IP packet, with the forwarder's addresses and entropy.
#[inline(always)]
fn encapsulate(ctx: &TcContext, b: &Backend, cfg: &LbConfig, fwd_mode: u8) -> Result<(), i64> {
    let inner_len = ctx.len() as usize - ETH;
    let version = ctx.load::<u8>(ETH)? >> 4;
    let inner_v6 = version == 6;
    let mut key = FlowKey {
        family: if inner_v6 { FAMILY_V6 } else { FAMILY_V4 },
        ..FlowKey::default()
    };
    let (tos, df, l4) = if inner_v6 {
        let ip: Ipv6Hdr = ctx.load(ETH)?;
        key.src = Addr(ip.src);
        key.proto = ip.next;
        let tos = (ip.vtcfl[0] << 4) | (ip.vtcfl[1] >> 4);
        (tos, true, ETH + size_of::<Ipv6Hdr>())
    } else {
        let ip: Ipv4Hdr = ctx.load(ETH)?;
        key.src = Addr::v4(ip.src);
        key.proto = ip.proto;
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        (ip.tos, u16::from_be(ip.frag_be) & 0x4000 != 0, ETH + ihl)
    };
    let ports: [u16; 2] = ctx.load(l4)?;
    (key.src_port_be, key.dst_port_be) = (ports[0], ports[1]);
    let entropy = encap_entropy(&key);

    let outer_v6 = b.family == FAMILY_V6;
    let ip_len = if outer_v6 {
        size_of::<Ipv6Hdr>()
    } else {
        size_of::<Ipv4Hdr>()
    };
    let gue = fwd_mode == FWD_GUE;
    let udp_len = if gue { size_of::<UdpHdr>() } else { 0 };
    let mut flags = if outer_v6 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    } as u64;
    if gue {
        flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    }
    ctx.adjust_room((ip_len + udp_len) as i32, BPF_ADJ_ROOM_MAC, flags)?;
    let proto = outer_proto(gue, inner_v6);
    let payload = inner_len + udp_len;
    if outer_v6 {
        ctx.store(ETH, &v6_header(cfg, b, entropy, tos, payload, proto), 0)?;
        ctx.store(12, &ETH_P_IPV6_BE, 0)?;
    } else {
        ctx.store(ETH, &v4_header(cfg, b, entropy, tos, df, payload, proto), 0)?;
        ctx.store(12, &ETH_P_IPV4_BE, 0)?;
    }
    if gue {
        ctx.store(ETH + ip_len, &gue_header(cfg, entropy, payload), 0)?;
    }
    Ok(())
}
