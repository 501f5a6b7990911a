//! The capture path: runs only while `CFG_F_CAPTURE` is set. The record is assembled in a
//! per-CPU scratch buffer (a forwarded frame is copied there as received just before it is
//! rewritten; passes and drops are never rewritten); after the verdict the forwarder stages what
//! it knew there and tail-calls `xlb_capture`, which filters on outcome, VIP and backend,
//! samples, and copies the record to the ring at its exact size.

use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_output,
        bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use lb_common::{
    Addr, Backend, FlowKey,
    capture::{
        CAPTURE_F_OUTPUT, CAPTURE_SNAPLEN_MAX, CaptureConfig, CaptureHeader, CaptureScratch,
    },
};

use crate::maps::{CAPTURE, CAPTURE_PROG, CAPTURE_RING, CAPTURE_SCRATCH, CAPTURE_STATS};

const SNAP_MAX: usize = CAPTURE_SNAPLEN_MAX as usize;
const HDR: usize = size_of::<CaptureHeader>();

/// What the forwarder knew when it gave its verdict.
pub struct Event<'a> {
    pub key: Option<&'a FlowKey>,
    pub vip_id: u32,
    pub backend_id: u32,
    pub backend: Option<&'a Backend>,
    pub action: u32,
    pub outcome: u32,
}

/// Before the forwarder runs: keep the frame as it arrived, unless the capture wants output.
/// Inline: as a BPF-to-BPF call it doubled the verifier's work on everything after it.
#[inline(always)]
pub fn keep_input(ctx: &XdpContext) {
    if let Some(f) = CAPTURE.get(0)
        && f.flags & CAPTURE_F_OUTPUT == 0
        && let Some(s) = CAPTURE_SCRATCH.get_ptr_mut(0)
    {
        copy_frame(ctx, f, s);
    }
}

/// After the verdict: stage what the forwarder knew in this CPU's scratch record and hand over
/// to `xlb_capture` (a tail call: it does not return). If the slot is empty (a load without the
/// capture program) nothing is recorded and the kept input is dropped.
#[inline(always)]
pub fn record(ctx: &XdpContext, ev: &Event) {
    let Some(s) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value; nothing else runs on this CPU meanwhile.
    unsafe {
        let h = core::ptr::addr_of_mut!((*s).hdr);
        (*h).parsed = ev.key.is_some() as u8;
        if let Some(k) = ev.key {
            (*h).key = *k;
        }
        (*h).backend_family = ev.backend.map_or(0, |b| b.family);
        if let Some(b) = ev.backend {
            (*h).backend = b.addr;
        }
        (*h).action = ev.action;
        (*h).outcome = ev.outcome;
        (*h).vip_id = ev.vip_id;
        (*h).backend_id = ev.backend_id;
        CAPTURE_PROG.tail_call(ctx, 0);
        (*s).hdr.caplen = 0;
    }
}

/// `xlb_capture`: filter, sample, and put the staged record on the ring; the forwarder's action.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(s) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return aya_ebpf::bindings::xdp_action::XDP_ABORTED;
    };
    let ok = emit(ctx, s);
    // SAFETY: this CPU's scratch value. Consumed: a copy kept for this packet must never be
    // taken for a later one (capture may go off and on between packets).
    let action = unsafe {
        (*s).hdr.caplen = 0;
        (*s).hdr.action
    };
    if let Some(ok) = ok
        && let Some(c) = CAPTURE_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot; only this CPU writes it.
        unsafe {
            (*c).matched += 1;
            if !ok {
                (*c).lost += 1;
            }
        }
    }
    action
}

/// The record of one packet, if it matches: `Some(written)`.
#[inline(always)]
fn emit(ctx: &XdpContext, s: *mut CaptureScratch) -> Option<bool> {
    let f = CAPTURE.get(0)?;
    // SAFETY: this CPU's scratch value, staged by the forwarder.
    let h = unsafe { &*core::ptr::addr_of!((*s).hdr) };
    let backend = (h.backend_id != 0).then_some((&h.backend, h.backend_family));
    if !f.matches(h.outcome, h.vip_id, backend) {
        return None;
    }
    let backend_id = h.backend_id;
    // SAFETY: the helper has no preconditions.
    if f.sample > 1 && unsafe { bpf_get_prandom_u32() } % f.sample != 0 {
        return None;
    }
    // SAFETY: this CPU's scratch value; nothing else runs on this CPU meanwhile.
    let ok = unsafe {
        // Output wanted, or no copy kept (capture came on mid-packet): take the frame as it is
        // now. Without a backend it was never rewritten; with one it is as sent.
        let mut as_sent = f.flags & CAPTURE_F_OUTPUT != 0;
        if as_sent || (*s).hdr.caplen == 0 {
            copy_frame(ctx, f, s);
            as_sent |= backend_id != 0;
        }
        let h = core::ptr::addr_of_mut!((*s).hdr);
        (*h).ktime_ns = bpf_ktime_get_ns();
        if (*h).parsed == 0 {
            (*h).key = FlowKey::default();
        }
        if (*h).backend_family == 0 {
            (*h).backend = Addr::default();
        }
        (*h).session = f.session;
        (*h).ifindex = ctx.ingress_ifindex() as u32;
        (*h).rx_queue = ctx.rx_queue_index();
        (*h).cpu = bpf_get_smp_processor_id();
        (*h).flags = if as_sent { CAPTURE_F_OUTPUT } else { 0 };
        // Read back through a volatile load and bounded on that register: the verifier (6.18)
        // must see the size within the scratch value.
        let n = core::ptr::addr_of!((*h).caplen).read_volatile() as usize;
        n <= SNAP_MAX
            && bpf_ringbuf_output(
                core::ptr::from_ref(&CAPTURE_RING).cast_mut().cast(),
                s.cast(),
                (HDR + n) as u64,
                0,
            ) == 0
    };
    Some(ok)
}

/// Copy the frame's first bytes (up to the snaplen) into this CPU's scratch record and set its
/// lengths.
#[inline(always)]
fn copy_frame(ctx: &XdpContext, f: &CaptureConfig, s: *mut CaptureScratch) {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let caplen = f.caplen(len);
    // SAFETY: this CPU's scratch value; `n` is within its data (see below).
    unsafe {
        (*s).hdr.len = len;
        (*s).hdr.caplen = 0;
        if caplen == 0 {
            return;
        }
        // The same value, bounded to 1..=SNAP_MAX on the helper's own register (verifier, 6.18:
        // LLVM tests bounds on a copy and the helper's length is then unbounded below).
        let v = core::ptr::addr_of!(caplen).read_volatile() as usize;
        let n = (v.wrapping_sub(1) & (SNAP_MAX - 1)) + 1;
        if bpf_xdp_load_bytes(
            ctx.ctx.cast(),
            0,
            core::ptr::addr_of_mut!((*s).data).cast(),
            n as u32,
        ) == 0
        {
            (*s).hdr.caplen = n as u32;
        }
    }
}
