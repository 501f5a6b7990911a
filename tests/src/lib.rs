//! Test harness shared by the privileged tests and the demo: throw-away network namespaces and
//! veth pairs, frame builders, and a data-plane fixture mirrored into the reference model.

pub mod clients;
pub mod echo;
pub mod expect;
pub mod fixture;
pub mod fleet;
pub mod frames;
pub mod lab;
pub mod lb;
pub mod netns;
pub mod topo;
