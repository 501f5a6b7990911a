//! xlb userspace: the daemon (`daemon`) around a pure state core (`state`) and its seam to the
//! kernel (`dataplane`), the wire contract (`api`), the configuration model (`config`), the
//! operator CLI (`cli`), and the tools (capture, replay, decap, loadgen, bench). The `xlb` binary
//! is a thin `main` over this library; tests drive the same code.

pub mod api;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod health;
pub mod loadgen;
pub mod metrics;
pub mod nexthop;
pub mod replay;
pub mod routes;
pub mod state;
pub mod sync;

/// The XDP object built from `lb-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
