//! ICMP "fragmentation needed" / ICMPv6 "packet too big" answers for packets that would exceed
//! the MTU once encapsulated. The frame is rewritten in place and sent back with XDP_TX.

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, stats::Reason};

use crate::{
    access::{bound_l3, frame_len, ptr_at, read, write},
    csum,
    hdr::*,
    l2::{L2, write_l2},
    parse::Parsed,
    stats::count_reason,
    verdict::Verdict,
};

/// Bytes of the offending IPv4 packet quoted: the largest header (60) plus 8 bytes of payload.
const QUOTE_V4: usize = 68;
/// Bytes of the offending IPv6 packet quoted: header, extension headers and L4 ports fit.
const QUOTE_V6: usize = 128;

/// Answer the client with "fragmentation needed" / "packet too big" for a path MTU of `mtu`.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, l2: &L2, mtu: u32) -> Result<u32, Verdict> {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let action = if p.pkt.key.is_v6() {
        too_big_v6(ctx, p, l2, mtu)?
    } else {
        too_big_v4(ctx, p, l2, mtu)?
    };
    count_reason(Reason::TxTooBig, bytes);
    Ok(action)
}

#[inline(always)]
fn adjust(ctx: &XdpContext, head: i32, new_len: usize) -> Result<(), Verdict> {
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, head) } != 0 {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    // The tail moves relative to the whole frame: a jumbo frame's other buffers go first.
    let len = frame_len(ctx);
    if len < new_len {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    // SAFETY: as above; shrinking only.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - len as i32) } != 0 {
        return Err(Verdict::drop(Reason::DropAdjust));
    }
    Ok(())
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, p: &Parsed, l2: &L2, mtu: u32) -> Result<u32, Verdict> {
    let l3 = bound_l3(p.l3_off)?;
    let orig: Ipv4Hdr = read(ctx, l3)?;
    let head = size_of::<Ipv4Hdr>() + size_of::<IcmpHdr>();
    adjust(ctx, -(head as i32), l3 + head + QUOTE_V4)?;
    write_l2(ctx, l2, l2.eth.src, l2.eth.dst, ETH_P_IPV4_BE)?;
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len_be: ((head + QUOTE_V4) as u16).to_be(),
        id_be: 0,
        frag_be: 0,
        ttl: 64,
        proto: PROTO_ICMP,
        csum: 0,
        src: orig.dst,
        dst: orig.src,
    };
    ip.csum = csum::ipv4(&ip);
    let icmp_off = l3 + size_of::<Ipv4Hdr>();
    let icmp = IcmpHdr {
        kind: 3,
        code: 4,
        csum: 0,
        rest: (mtu & 0xffff).to_be(),
    };
    // SAFETY: every pointer is bounds-checked by ptr_at, the checksum range included.
    unsafe {
        write::<Ipv4Hdr>(ctx, l3, ip)?;
        let msg = ptr_at::<[u8; size_of::<IcmpHdr>() + QUOTE_V4]>(ctx, icmp_off)?;
        (msg as *mut IcmpHdr).write(icmp);
        let sum = csum::partial(msg as *mut u8, (size_of::<IcmpHdr>() + QUOTE_V4) as u32, 0);
        (*(msg as *mut IcmpHdr)).csum = csum::fold(sum);
    }
    Ok(xdp_action::XDP_TX)
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, p: &Parsed, l2: &L2, mtu: u32) -> Result<u32, Verdict> {
    let l3 = bound_l3(p.l3_off)?;
    let orig: Ipv6Hdr = read(ctx, l3)?;
    let head = size_of::<Ipv6Hdr>() + size_of::<IcmpHdr>();
    let msg_len = size_of::<IcmpHdr>() + QUOTE_V6;
    adjust(ctx, -(head as i32), l3 + head + QUOTE_V6)?;
    write_l2(ctx, l2, l2.eth.src, l2.eth.dst, ETH_P_IPV6_BE)?;
    let ip = Ipv6Hdr {
        vtcfl: [0x60, 0, 0, 0],
        payload_len_be: (msg_len as u16).to_be(),
        next: PROTO_ICMPV6,
        hop: 64,
        src: orig.dst,
        dst: orig.src,
    };
    // Pseudo-header: source, destination, upper-layer length, next header.
    let mut pseudo = [0u32; 10];
    let (src, dst) = (ip.src, ip.dst);
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[8] = (msg_len as u32).to_be();
    pseudo[9] = (PROTO_ICMPV6 as u32).to_be();
    let icmp = IcmpHdr {
        kind: 2,
        code: 0,
        csum: 0,
        rest: mtu.to_be(),
    };
    let icmp_off = l3 + size_of::<Ipv6Hdr>();
    // SAFETY: every pointer is bounds-checked by ptr_at, the checksum range included.
    unsafe {
        write::<Ipv6Hdr>(ctx, l3, ip)?;
        let msg = ptr_at::<[u8; size_of::<IcmpHdr>() + QUOTE_V6]>(ctx, icmp_off)?;
        (msg as *mut IcmpHdr).write(icmp);
        let seed = csum::partial(pseudo.as_mut_ptr() as *mut u8, 40, 0) as u32;
        let sum = csum::partial(msg as *mut u8, msg_len as u32, seed);
        (*(msg as *mut IcmpHdr)).csum = csum::fold(sum);
    }
    Ok(xdp_action::XDP_TX)
}
