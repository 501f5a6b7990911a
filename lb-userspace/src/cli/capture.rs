//! `xlb capture` and `xlb replay`: record what the forwarder does, and ask what it would do.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Result;
use clap::ValueEnum;

use super::output::{OutputArg, print_json};
use crate::{
    api::{CaptureFilter, Client},
    config::VipRef,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramesArg {
    /// As they arrived (replayable with `xlb replay`).
    Received,
    /// As the forwarder sent them: encapsulated or MAC-rewritten.
    Sent,
}

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// Only packets of this VIP (ADDRESS:PORT/PROTOCOL).
    #[arg(long)]
    pub vip: Option<VipRef>,
    /// Only packets sent to this backend address.
    #[arg(long)]
    pub backend: Option<IpAddr>,
    /// Only these outcomes (repeatable): forward, forwards, drops, passes, all, or a reason such
    /// as drop_no_backend or pass_not_vip (`xlb stats` lists them).
    #[arg(long = "outcome", value_name = "OUTCOME")]
    pub outcomes: Vec<String>,
    /// Keep one matching packet in N (sampling, decided in the forwarder).
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    /// Frame bytes kept per packet (at most 2048; 0: all of that).
    #[arg(long, default_value_t = 0)]
    pub snaplen: u32,
    /// Record frames as they arrived (replayable with `xlb replay`) or as the forwarder sent
    /// them (encapsulated or MAC-rewritten).
    #[arg(long, value_enum, default_value_t = FramesArg::Received)]
    pub frames: FramesArg,
    /// Write pcapng to this file (`-`: stdout, e.g. `| tcpdump -nr -`).
    #[arg(short = 'w', long = "write")]
    pub write: Option<PathBuf>,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Stop before the output exceeds this size (e.g. 64M, 1G).
    #[arg(long, default_value = "64M", value_parser = crate::capture::client::parse_size)]
    pub max_size: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub o: OutputArg,
}

/// Arguments of `xlb replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Capture file (pcap or pcapng, Ethernet frames).
    pub file: PathBuf,
    /// Write the output frames to this pcapng file.
    #[arg(short = 'w', long = "write")]
    pub write: Option<PathBuf>,
    /// Print each output frame in hex.
    #[arg(short = 'x', long)]
    pub hex: bool,
    /// The daemon's pin directory (default: asked from the daemon).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    #[command(flatten)]
    pub o: OutputArg,
}

pub fn capture(client: &Client, a: CaptureArgs) -> Result<()> {
    use crate::capture::client as capture_client;
    let json = a.o.json();
    let opts = capture_client::Options {
        filter: CaptureFilter {
            vip: a.vip,
            backend: a.backend,
            outcomes: a.outcomes,
            sample: a.sample,
            snaplen: a.snaplen,
            output: a.frames == FramesArg::Sent,
        },
        write: a.write,
        count: a.count,
        max_bytes: a.max_size,
        duration: a
            .duration
            .map(|d| std::time::Duration::from_secs_f64(d.max(0.0))),
        json,
    };
    let r = capture_client::run(client, &opts)?;
    eprintln!(
        "{} packets captured ({} bytes), {} matched in the forwarder, {} lost to a full ring; ended by {}",
        r.captured, r.bytes, r.matched, r.lost, r.ended_by
    );
    Ok(())
}

pub fn replay(client: &Client, a: ReplayArgs) -> Result<()> {
    let status = client.status().ok();
    let pin_dir = match a.pin_dir {
        Some(p) => p,
        None => status
            .as_ref()
            .map(|s| PathBuf::from(&s.pin_dir))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the daemon is not reachable to ask its pin directory: give --pin-dir"
                )
            })?,
    };
    let live_program = status
        .as_ref()
        .map(|s| s.forward_program_id)
        .filter(|id| *id != 0);
    let r = crate::replay::replay(&crate::replay::Options {
        file: a.file,
        pin_dir,
        write: a.write,
        hex: a.hex,
        live_program,
    })?;
    if a.o.json() {
        print_json(&r)
    } else {
        print!("{}", crate::replay::render(&r, a.hex));
        Ok(())
    }
}
