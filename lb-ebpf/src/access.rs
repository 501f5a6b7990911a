//! Bounds-checked packet access: every read and write of the frame goes through here, so the
//! verifier sees each access checked against `data_end`.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::stats::Reason;

use crate::verdict::Verdict;

/// Largest L3 offset: Ethernet plus two VLAN tags.
pub const MAX_L3_OFF: usize = 22;

/// Re-establish the bound of an L3 offset that travelled through a stack copy: the verifier
/// (6.x) forgets scalar ranges across such spills and then rejects `pkt + off`.
#[inline(always)]
pub fn bound_l3(off: usize) -> Result<usize, Verdict> {
    if off > MAX_L3_OFF {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    Ok(off)
}

/// A pointer to a `T` at `off`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Verdict> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    Ok((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, Verdict> {
    const {
        assert!(
            core::mem::align_of::<T>() <= 2,
            "packet data is only 2-aligned"
        )
    };
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes at p lie inside the packet; packet
    // headers are 2-aligned (see `hdr`) and T asks for no more.
    Ok(unsafe { p.read() })
}

/// Store `v` at `off` (bounds-checked), with the same alignment contract as `read`.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Result<(), Verdict> {
    const {
        assert!(
            core::mem::align_of::<T>() <= 2,
            "packet data is only 2-aligned"
        )
    };
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: as in `read`: in bounds and suitably aligned.
    unsafe { p.write(v) };
    Ok(())
}

/// Whether the frame holds `end` bytes: in its first buffer (checked without a helper call), or
/// across its buffers (a multi-buffer jumbo frame, whose first buffer is one page).
#[inline(always)]
pub fn frame_holds(ctx: &XdpContext, end: usize) -> bool {
    ctx.data() + end <= ctx.data_end() || end <= frame_len(ctx)
}

/// Length of the whole frame, every buffer included.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}
