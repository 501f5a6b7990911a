//! `xlb vip`: add, remove, list VIPs.

use anyhow::Result;
use clap::Subcommand;

use super::output::{OutputArg, print_json, report, table};
use crate::{
    api::{Client, Request},
    config::{FwdMode, HashMode, Vip, VipRef},
};

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a VIP (ADDRESS:PORT/PROTOCOL; port 0 = every port of the address).
    Add {
        /// ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.1:80/tcp or [2001:db8::1]:443/tcp.
        vip: VipRef,
        /// What a flow is hashed on.
        #[arg(long, value_enum, default_value_t = HashMode::FiveTuple)]
        hash: HashMode,
        /// How packets reach the backends.
        #[arg(long, value_enum, default_value_t = FwdMode::Ipip)]
        forwarding: FwdMode,
        /// Do not track flows (stateless: every packet follows the ring).
        #[arg(long)]
        no_conntrack: bool,
        /// Maglev ring size (prime); default: the daemon's `ring_size`.
        #[arg(long)]
        ring_size: Option<u32>,
    },
    /// Remove a VIP: its packets pass to the kernel from then on.
    Remove {
        /// ADDRESS:PORT/PROTOCOL of the VIP.
        vip: VipRef,
    },
    /// List VIPs.
    List {
        #[command(flatten)]
        o: OutputArg,
    },
}

pub fn run(client: &Client, cmd: VipCmd) -> Result<()> {
    match cmd {
        VipCmd::Add {
            vip,
            hash,
            forwarding,
            no_conntrack,
            ring_size,
        } => {
            let mut v = Vip::new(vip);
            v.hash = hash;
            v.forwarding = forwarding;
            v.conntrack = !no_conntrack;
            v.ring_size = ring_size;
            report(&client.change(Request::VipAdd { vip: v })?);
        }
        VipCmd::Remove { vip } => report(&client.change(Request::VipRemove { vip })?),
        VipCmd::List { o } => {
            let vips = client.vip_list()?;
            if o.json() {
                return print_json(&vips);
            }
            let rows = vips
                .into_iter()
                .map(|v| {
                    vec![
                        v.vip,
                        v.id.to_string(),
                        v.hash,
                        v.forwarding,
                        if v.conntrack { "yes" } else { "no" }.into(),
                        v.ring_size.to_string(),
                        format!("{}/{}", v.in_ring, v.backends),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "VIP",
                        "ID",
                        "HASH",
                        "FORWARDING",
                        "CONNTRACK",
                        "RING",
                        "IN-RING/BACKENDS"
                    ],
                    rows
                )
            );
        }
    }
    Ok(())
}
