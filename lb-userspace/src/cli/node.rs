//! `xlb drain-node` and `undrain-node`: take this node out of the routers' ECMP for
//! maintenance (every VIP address withdrawn, forwarding kept for what still arrives), and back.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::output::{OutputArg, print_json};
use crate::api::{AnnounceView, Client};

/// Arguments of `xlb drain-node`.
#[derive(clap::Args)]
pub struct DrainArgs {
    /// Wait until the VIP traffic still arriving has fallen below `--below` packets per second.
    #[arg(long)]
    wait: bool,
    /// The traffic, in packets per second over every VIP, that counts as drained.
    #[arg(long, default_value_t = 1.0, requires = "wait")]
    below: f64,
    /// Give up waiting after this many seconds (exit status 1).
    #[arg(long, default_value_t = 300, requires = "wait")]
    timeout: u64,
    #[command(flatten)]
    o: OutputArg,
}

pub fn drain(client: &Client, a: DrainArgs) -> Result<()> {
    let v = client.drain_node(true)?;
    if a.o.json() && !a.wait {
        return print_json(&v);
    }
    if !a.o.json() {
        println!(
            "node drained: withdrawing {} VIP address(es); forwarding continues for what still arrives",
            v.addresses.len()
        );
    }
    if !a.wait {
        if !a.o.json() {
            println!("watch it fall with `xlb stats --watch`, or use `xlb drain-node --wait`");
        }
        return Ok(());
    }
    let t0 = Instant::now();
    // Rates are over the daemon's last second of samples: the first is read a second in.
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let pps: f64 = client.stats()?.vips.iter().map(|s| s.pps).sum();
        let routes = client.status()?.announce.map_or(0, |a| count(&a));
        if routes == 0 && pps < a.below {
            let secs = t0.elapsed().as_secs_f64();
            if a.o.json() {
                return print_json(&serde_json::json!({ "drained_after_secs": secs, "pps": pps }));
            }
            println!("drained: VIP traffic at {pps:.1} pps after {secs:.1} s");
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(a.timeout) {
            bail!(
                "still {pps:.1} pps of VIP traffic after {} s ({routes} route(s) still announced): the routers may not have converged, or clients reach this node directly",
                a.timeout
            );
        }
    }
}

/// Addresses whose route is still in the table.
fn count(a: &AnnounceView) -> usize {
    a.addresses.iter().filter(|x| x.announced).count()
}

pub fn undrain(client: &Client, o: OutputArg) -> Result<()> {
    let v = client.drain_node(false)?;
    if o.json() {
        return print_json(&v);
    }
    let wanted = v.addresses.iter().filter(|a| a.wanted).count();
    println!(
        "node undrained: announcing {wanted} of {} VIP address(es) (`xlb status` says why not the others)",
        v.addresses.len()
    );
    Ok(())
}
