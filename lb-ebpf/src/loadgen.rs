//! `xlb_loadgen`: stamps the generator's template onto a live frame, varies the flow, and sends
//! it (`XDP_TX` out of the test-run interface). Live frames are recycled after whatever the
//! receiver did to them, so every header is rewritten every time.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::loadgen::csum_replace;

use crate::maps::{LOADGEN, LOADGEN_SEQ};

/// Pointer to a 2-byte word at `off`, bounds-checked; offsets are masked so the verifier sees
/// them bounded.
#[inline(always)]
fn word(ctx: &XdpContext, off: u16) -> Option<*mut u16> {
    let off = (off & 0xff) as usize;
    let p = ctx.data() + off;
    if p + 2 > ctx.data_end() {
        return None;
    }
    Some(p as *mut u16)
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match stamp(ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn stamp(ctx: &XdpContext) -> Option<()> {
    let cfg = LOADGEN.get(0)?;
    let seq = LOADGEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; only this CPU touches it.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows };
    let flow = (n % flows as u64) as u32;

    // The template, 8 bytes at a time (bounded loop; frames are 2-aligned, so the stores are
    // split by the JIT where needed).
    let data = ctx.data();
    let end = ctx.data_end();
    let mut i = 0usize;
    while i < lb_common::loadgen::TEMPLATE_MAX / 8 {
        if (i * 8) as u32 >= cfg.copy_len || data + i * 8 + 8 > end {
            break;
        }
        // SAFETY: in bounds (checked above); the template is plain bytes.
        unsafe {
            let src = cfg.template.as_ptr().add(i * 8) as *const [u16; 4];
            ((data + i * 8) as *mut [u16; 4]).write(src.read_unaligned());
        }
        i += 1;
    }

    let sport_p = word(ctx, cfg.sport_off)?;
    let saddr_p = word(ctx, cfg.saddr_lo_off)?;
    // SAFETY: both pointers are bounds-checked words of the frame just written.
    unsafe {
        let (old_sport, old_lo) = (*sport_p, *saddr_p);
        let (sport, lo) = cfg.flow_fields(flow, u16::from_be(old_lo));
        let (new_sport, new_lo) = (sport.to_be(), lo.to_be());
        *sport_p = new_sport;
        *saddr_p = new_lo;
        if cfg.ip_csum_off != 0 {
            let c = word(ctx, cfg.ip_csum_off)?;
            // Only the address changed in the IP header.
            *c = csum_replace(*c, [old_lo, 0], [new_lo, 0]);
        }
        if cfg.l4_csum_off != 0 {
            let c = word(ctx, cfg.l4_csum_off)?;
            // The pseudo-header covers the address; the port is in the L4 header.
            *c = csum_replace(*c, [old_lo, old_sport], [new_lo, new_sport]);
        }
    }
    Some(())
}
