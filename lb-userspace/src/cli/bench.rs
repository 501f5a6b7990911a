//! `xlb bench` and `xlb check`: measure the forwarder, and load it through the verifier.

use anyhow::Result;

use crate::dataplane::{Dataplane, LoadOptions};

/// Arguments of `xlb bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Skip the namespace throughput runs.
    #[arg(long)]
    no_throughput: bool,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Per-packet: batches of runs (min and median are over batch means).
    #[arg(long, default_value_t = 15)]
    batches: usize,
    /// Per-packet: BPF_PROG_TEST_RUN calls per batch.
    #[arg(long, default_value_t = 2000)]
    runs_per_batch: usize,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let r = crate::bench::run(&crate::bench::Options {
        throughput: !a.no_throughput,
        batches: a.batches.max(1),
        per_batch: a.runs_per_batch.max(1),
        seconds: a.seconds,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::bench::render(&r));
    }
    Ok(())
}

pub fn check() -> Result<()> {
    let dp = Dataplane::load(&LoadOptions::default()).map_err(|e| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            anyhow::anyhow!(
                "xlb check loads the XDP programs into the kernel, which needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): {e}"
            )
        } else {
            e.into()
        }
    })?;
    let all = lb_common::prog_names::ALL.iter();
    for &name in all.chain([&lb_common::prog_names::PROBE]) {
        let info = dp.program_info(name)?;
        println!(
            "{name}: loaded, program id {}, {} BPF instructions ({} verified), {} bytes JITed",
            info.id(),
            info.size_translated().unwrap_or(0) / 8,
            info.verified_instruction_count().unwrap_or(0),
            info.size_jitted()
        );
    }
    Ok(())
}
