//! `xlb decap`: the backend side, stripping xlb's encapsulation on an interface.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Result;
use clap::Subcommand;

use super::output::OutputArg;
use crate::{config::AttachMode, decap};

#[derive(Subcommand)]
pub enum DecapCmd {
    /// Attach (or update) the decap program; it stays attached after this command exits.
    Attach {
        /// The backend's interface that receives the tunnelled packets.
        iface: String,
        /// Tunnel endpoint address of this host (repeatable; default: the interface's addresses).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// GUE destination port.
        #[arg(long, default_value_t = lb_common::GUE_PORT_DEFAULT)]
        gue_port: u16,
        /// XDP mode: native (in the driver) or generic (after the stack builds an skb; slow).
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        mode: AttachMode,
        /// Where the link and maps are pinned (bpffs), one directory per interface.
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the decap program and remove its pins.
    Detach {
        /// The interface to detach from.
        iface: String,
        /// Where `attach` pinned it.
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Addresses and counters of the decap program on an interface.
    Status {
        /// The interface to report on.
        iface: String,
        /// Where `attach` pinned it.
        #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        o: OutputArg,
    },
}

pub fn run(c: DecapCmd) -> Result<()> {
    match c {
        DecapCmd::Attach {
            iface,
            addresses,
            gue_port,
            mode,
            pin_dir,
        } => {
            let (addrs, a) = decap::attach(&pin_dir, &iface, &addresses, gue_port, mode)?;
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            if a.fell_back {
                eprintln!("xlb: FALLBACK: {iface} refused native XDP; decap runs in generic mode");
            }
            println!(
                "decap {} on {iface} ({:?} XDP) for {}",
                if a.replaced { "updated" } else { "attached" },
                a.mode,
                list.join(", ")
            );
            Ok(())
        }
        DecapCmd::Detach { iface, pin_dir } => {
            decap::detach(&pin_dir, &iface)?;
            println!("decap detached from {iface}");
            Ok(())
        }
        DecapCmd::Status { iface, pin_dir, o } => {
            let (addrs, [ok, pass, drop]) = decap::status(&pin_dir, &iface)?;
            let v = serde_json::json!({
                "interface": iface,
                "addresses": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "decapsulated": {"packets": ok.packets, "bytes": ok.bytes},
                "passed": {"packets": pass.packets, "bytes": pass.bytes},
                "dropped": {"packets": drop.packets, "bytes": drop.bytes},
            });
            if o.json() {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("decap on {iface} for {}", list.join(", "));
                println!("  decapsulated {} packets, {} bytes", ok.packets, ok.bytes);
                println!(
                    "  passed       {} packets (not xlb's tunnels)",
                    pass.packets
                );
                println!(
                    "  dropped      {} packets (malformed tunnels)",
                    drop.packets
                );
            }
            Ok(())
        }
    }
}
