//! `xlb daemon` and `xlb detach`: run the daemon, or remove what a stopped one left pinned.

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;

use crate::{
    config::{Config, DEFAULT_PATH},
    dataplane::pin,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (suits journald).
    Text,
    /// One JSON object per line (suits log shippers).
    Json,
}

/// Arguments of `xlb daemon`.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Configuration file (default /etc/xlb/xlb.toml; absent: start empty).
    #[arg(long)]
    config: Option<PathBuf>,
    /// On exit, detach the forwarder and remove pinned maps and state instead of leaving
    /// forwarding running for the next daemon.
    #[arg(long)]
    detach: bool,
    /// Log format (text suits journald; json suits log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Arguments of `xlb detach`.
#[derive(clap::Args)]
pub struct DetachArgs {
    /// Read the pin directory and state file from this configuration.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("XLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // journald stamps lines itself; timestamps only when not under systemd.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match (format, journald) {
        (LogFormat::Json, _) => b.json().init(),
        (LogFormat::Text, true) => b.without_time().with_ansi(false).init(),
        (LogFormat::Text, false) => b.init(),
    }
}

pub fn daemon(a: DaemonArgs) -> Result<()> {
    init_logs(a.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(crate::daemon::run(crate::daemon::Options {
        config: a.config,
        detach: a.detach,
    }))
}

pub fn detach(a: DetachArgs) -> Result<()> {
    let path = a.config.unwrap_or_else(|| DEFAULT_PATH.into());
    let cfg = match std::fs::read_to_string(&path) {
        Ok(t) => Config::parse(&t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(_) => Config::default(),
    };
    let removed = pin::remove_all(&cfg.daemon.pin_dir)?;
    let _ = std::fs::remove_file(&cfg.daemon.state_file);
    println!(
        "removed {} (forwarder detached from: {})",
        cfg.daemon.pin_dir.display(),
        if removed.is_empty() {
            "-".into()
        } else {
            removed.join(", ")
        }
    );
    Ok(())
}
