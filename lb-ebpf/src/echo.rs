//! Echo replies for VIP addresses that answer ping: the request becomes its reply in place
//! (addresses and MACs swapped, type changed, checksums adjusted) and goes back out (XDP_TX).
//! Only echo reaches here, and only VIP addresses pay the one lookup.

use core::mem::size_of;

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::programs::XdpContext;
use lb_common::{VIP_F_PING, VipKey, stats::Reason};

use crate::{
    access::{bound_l3, read, write},
    csum,
    hdr::*,
    maps::VIPS,
    parse::Parsed,
    stats::count_reason,
    verdict::Verdict,
};

/// TTL / hop limit of an answer, as Linux's default.
const TTL: u8 = 64;

/// A 16-bit word of two header bytes, as it lies in memory.
#[inline(always)]
fn word(a: u8, b: u8) -> u16 {
    u16::from_ne_bytes([a, b])
}

#[inline(always)]
pub fn answer(ctx: &XdpContext, p: &Parsed) -> Result<u32, Verdict> {
    let k = &p.pkt.key;
    let key = VipKey::of_flow(k, 0);
    // SAFETY: a plain lookup; the value is copied out at once.
    let on = unsafe { VIPS.get(key) }.is_some_and(|m| m.flags & VIP_F_PING != 0);
    if !on {
        return Err(Verdict::pass(Reason::PassIcmp));
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let l3 = bound_l3(p.l3_off)?;
    let l4 = if k.is_v6() {
        let mut ip: Ipv6Hdr = read(ctx, l3)?;
        (ip.src, ip.dst) = (ip.dst, ip.src);
        ip.hop = TTL;
        write(ctx, l3, ip)?;
        l3 + size_of::<Ipv6Hdr>()
    } else {
        let mut ip: Ipv4Hdr = read(ctx, l3)?;
        ip.csum = csum::replace16(ip.csum, word(ip.ttl, ip.proto), word(TTL, ip.proto));
        ip.ttl = TTL;
        (ip.src, ip.dst) = (ip.dst, ip.src);
        write(ctx, l3, ip)?;
        l3 + ((ip.vihl & 0x0f) as usize) * 4
    };
    let mut icmp: IcmpHdr = read(ctx, l4)?;
    let reply = if k.is_v6() {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    icmp.csum = csum::replace16(
        icmp.csum,
        word(icmp.kind, icmp.code),
        word(reply, icmp.code),
    );
    icmp.kind = reply;
    write(ctx, l4, icmp)?;
    let eth: EthHdr = read(ctx, 0)?;
    write(
        ctx,
        0,
        EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto_be: eth.proto_be,
        },
    )?;
    count_reason(Reason::TxEcho, bytes);
    Ok(xdp_action::XDP_TX)
}
