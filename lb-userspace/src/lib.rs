//! xlb userspace: the data-plane loader and map access, the daemon and its control API, and the
//! operator CLI. The `xlb` binary is a thin `main` over this library; tests drive the same code.

pub mod api;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod engine;
pub mod health;
pub mod loadgen;
pub mod metrics;
pub mod nexthop;
pub mod replay;
pub mod view;

/// The XDP object built from `lb-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
