//! xlb userspace: the data-plane loader and map access, used by the `xlb` binary and by tests.

pub mod dataplane;

/// The XDP object built from `lb-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
