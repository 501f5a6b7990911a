//! The L2 header of a frame (Ethernet and up to two VLAN tags): saved before the head moves,
//! written back with new MACs and the innermost ethertype replaced.

use crate::{
    access::{bound_l3, read, write},
    hdr::*,
    verdict::Verdict,
};
use aya_ebpf::programs::XdpContext;

/// The L2 header of a frame, saved across head adjustments.
#[derive(Clone, Copy)]
pub struct L2 {
    pub eth: EthHdr,
    pub tags: [[u8; 4]; 2],
    pub len: usize,
}

#[inline(always)]
pub fn read_l2(ctx: &XdpContext, l3_off: usize) -> Result<L2, Verdict> {
    let l3_off = bound_l3(l3_off)?;
    let mut l2 = L2 {
        eth: read(ctx, 0)?,
        tags: [[0; 4]; 2],
        len: 14,
    };
    if l3_off >= 18 {
        l2.tags[0] = read(ctx, 14)?;
        l2.len = 18;
    }
    if l3_off >= 22 {
        l2.tags[1] = read(ctx, 18)?;
        l2.len = 22;
    }
    Ok(l2)
}

/// Write `l2` at the head of the frame with new MACs and the innermost ethertype replaced.
#[inline(always)]
pub fn write_l2(
    ctx: &XdpContext,
    l2: &L2,
    dst: [u8; 6],
    src: [u8; 6],
    proto_be: u16,
) -> Result<(), Verdict> {
    let mut eth = EthHdr {
        dst,
        src,
        proto_be: l2.eth.proto_be,
    };
    let mut tags = l2.tags;
    let proto = proto_be.to_ne_bytes();
    match l2.len {
        14 => eth.proto_be = proto_be,
        18 => tags[0][2..4].copy_from_slice(&proto),
        _ => tags[1][2..4].copy_from_slice(&proto),
    }
    write::<EthHdr>(ctx, 0, eth)?;
    if l2.len >= 18 {
        write::<[u8; 4]>(ctx, 14, tags[0])?;
    }
    if l2.len >= 22 {
        write::<[u8; 4]>(ctx, 18, tags[1])?;
    }
    Ok(())
}
