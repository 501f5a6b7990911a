//! The contract between the XDP programs and userspace: map key/value layouts, capacities, counter
//! indices, the flow hash and the forwarding decision. Everything here is `#![no_std]` so the
//! kernel side compiles the very same code that the userspace reference model runs.
//!
//! With the `user` feature: `aya::Pod` impls, the Maglev table builder and the reference model.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;
#[cfg(feature = "user")]
extern crate std;

pub mod capture;
pub mod consts;
pub mod decision;
pub mod hash;
pub mod loadgen;
pub mod stats;
pub mod types;

#[cfg(feature = "user")]
pub mod maglev;
#[cfg(feature = "user")]
pub mod model;

pub use consts::*;
pub use types::*;
