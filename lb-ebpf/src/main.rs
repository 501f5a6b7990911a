//! XDP entry points. Each converts the final verdict to an XDP action; nothing else lives here.
#![no_std]
#![no_main]

mod access;
mod capture;
mod csum;
mod decap;
mod echo;
mod encap;
mod forward;
mod hdr;
mod icmp;
mod l2;
mod loadgen;
mod maps;
mod parse;
mod probe;
mod stats;
mod tables;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// The load balancer: packets to a VIP are encapsulated (or MAC-rewritten) towards a backend.
/// `frags`: frames larger than a page (jumbo MTUs) arrive as several buffers; every header the
/// forwarder reads or writes is in the first.
#[xdp(frags)]
pub fn xlb_forward(ctx: XdpContext) -> u32 {
    forward::xdp(&ctx)
}

/// The record half of `xlb capture`: tail-called by `xlb_forward` after its verdict, with what
/// it knew staged in the per-CPU scratch record; returns the forwarder's action.
#[xdp(frags)]
pub fn xlb_capture(ctx: XdpContext) -> u32 {
    capture::run(&ctx)
}

/// TC egress of xlb's interfaces: health probes through the data path (`probe.rs`).
#[classifier]
pub fn xlb_probe(ctx: TcContext) -> i32 {
    probe::run(&ctx)
}

/// The backend side: strips xlb's encapsulation addressed to this host (multi-buffer too).
#[xdp(frags)]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

/// Passes everything. Attached to veth peers, where XDP_TX/XDP_REDIRECT need a program on the
/// receiving side, and used as the "trivial" baseline in benchmarks. Multi-buffer aware, so
/// peers can have jumbo MTUs.
#[xdp(frags)]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The packet generator of `xlb loadgen`, run with BPF_PROG_TEST_RUN live frames.
#[xdp]
pub fn xlb_loadgen(ctx: XdpContext) -> u32 {
    loadgen::run(&ctx)
}

/// Benchmark receiver: counts and drops.
#[xdp]
pub fn xlb_sink(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if let Some(c) = maps::SINK_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    xdp_action::XDP_DROP
}

/// Benchmark reference: the conntrack insert the forwarder makes for a new IPv4 flow, alone
/// (`xlb bench`'s `new_flow_insert_only`, on untagged IPv4 frames). Attached nowhere.
#[xdp]
pub fn xlb_insert(ctx: XdpContext) -> u32 {
    tables::insert_only(&ctx)
}

/// Benchmark baseline: the cheapest useful forwarder, a redirect of everything to port 1.
/// `frags` like the forwarder: the kernel lets only programs of one kind share `TX_PORTS`.
#[xdp(frags)]
pub fn xlb_redirect(_ctx: XdpContext) -> u32 {
    maps::TX_PORTS
        .redirect(1, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
