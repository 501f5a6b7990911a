//! Flow sync between the nodes of a fleet: the datagram format with its authentication
//! (`wire`) and replay protection (`replay`). Which flows to ship and how received ones are
//! written is `state::sync`; the task that sends and receives is `daemon::sync`.

pub mod replay;
pub mod wire;
