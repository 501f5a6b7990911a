//! `xlb backend`: add, remove, drain, weigh and list a VIP's backends.

use std::net::IpAddr;

use anyhow::Result;
use clap::Subcommand;

use super::output::{OutputArg, print_json, report, table};
use crate::{
    api::{Client, Request},
    config::{BackendConfig, VipRef},
};

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// Relative share of new flows.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Add it drained (no new flows until `undrain`).
        #[arg(long)]
        drain: bool,
    },
    /// Remove a backend. It is drained first (tracked flows continue until idle or the drain
    /// timeout) unless --now, which re-picks its flows immediately.
    Remove {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// Remove at once: mark it down so its tracked flows are re-picked on their next packet.
        #[arg(long)]
        now: bool,
    },
    /// Stop sending new flows to a backend; its tracked flows continue.
    Drain {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
    },
    /// Change a backend's weight (0 takes no new flows).
    SetWeight {
        /// The VIP as ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp.
        vip: VipRef,
        /// The backend's address.
        address: IpAddr,
        /// New weight: a relative share of new flows (0: none, like drain).
        weight: u32,
    },
    /// List backends with state, ring share, next hop and counters.
    List {
        /// Only this VIP's backends (default: every VIP's).
        vip: Option<VipRef>,
        #[command(flatten)]
        o: OutputArg,
    },
}

pub fn run(client: &Client, cmd: BackendCmd) -> Result<()> {
    let set = |vip, address, weight, drain| Request::BackendSet {
        vip,
        address,
        weight,
        drain,
    };
    let req = match cmd {
        BackendCmd::Add {
            vip,
            address,
            weight,
            drain,
        } => Request::BackendAdd {
            vip,
            backend: BackendConfig {
                address,
                weight,
                drain,
                health: None,
            },
        },
        BackendCmd::Remove { vip, address, now } => Request::BackendRemove { vip, address, now },
        BackendCmd::Drain { vip, address } => set(vip, address, None, Some(true)),
        BackendCmd::Undrain { vip, address } => set(vip, address, None, Some(false)),
        BackendCmd::SetWeight {
            vip,
            address,
            weight,
        } => set(vip, address, Some(weight), None),
        BackendCmd::List { vip, o } => return list(client, vip, o),
    };
    report(&client.change(req)?);
    Ok(())
}

fn list(client: &Client, vip: Option<VipRef>, o: OutputArg) -> Result<()> {
    let list = client.backend_list(vip)?;
    if o.json() {
        return print_json(&list);
    }
    let rows = list
        .into_iter()
        .map(|b| {
            let health = match &b.health {
                None => "-".to_string(),
                Some(h) => format!(
                    "{} {:.0}s, {} fail, {:.2}% avail",
                    if h.healthy { "up" } else { "down" },
                    h.since_secs,
                    h.failures,
                    100.0 * h.availability
                ),
            };
            vec![
                b.vip,
                b.address,
                b.id.to_string(),
                b.weight.to_string(),
                b.state,
                health,
                b.slots.to_string(),
                b.packets.to_string(),
                b.new_flows.to_string(),
                b.next_hop.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "VIP",
                "BACKEND",
                "ID",
                "WEIGHT",
                "STATE",
                "HEALTH",
                "SLOTS",
                "PACKETS",
                "NEW-FLOWS",
                "NEXT-HOP"
            ],
            rows
        )
    );
    Ok(())
}
