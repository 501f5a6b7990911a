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
    /// Read the pin directory and state file from this configuration (it must exist; without
    /// this option, /etc/xlb/xlb.toml or the defaults).
    #[arg(long, conflicts_with = "pin_dir")]
    config: Option<PathBuf>,
    /// Remove the pins of this directory only (no configuration read, no state file removed).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Remove them even while a daemon holds them: forwarding stops and that daemon's saved
    /// state is deleted under it.
    #[arg(long)]
    force: bool,
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("XLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // journald stamps lines itself; timestamps only when not under systemd.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colour only for a person at a terminal: never in a file or the journal, and not when
    // NO_COLOR asks (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match (format, journald) {
        (LogFormat::Json, _) => b.json().init(),
        (LogFormat::Text, true) => b.without_time().init(),
        (LogFormat::Text, false) => b.init(),
    }
}

pub fn daemon(a: DaemonArgs, socket: Option<PathBuf>) -> Result<()> {
    init_logs(a.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(crate::daemon::run(crate::daemon::Options {
        config: a.config,
        socket,
        detach: a.detach,
    }))
}

/// Whether another process holds the lock file at `path`.
fn lock_held(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

pub fn detach(a: DetachArgs) -> Result<()> {
    let (pin_dir, state_file, lock, announce) = match (&a.pin_dir, &a.config) {
        (Some(dir), _) => (dir.clone(), None, None, None),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; `xlb detach` acts only on what a configuration names",
                    path.display()
                )
            })?;
            let cfg =
                Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let d = cfg.daemon;
            (
                d.pin_dir,
                Some(d.state_file),
                Some(d.socket.with_extension("lock")),
                cfg.announce,
            )
        }
        (None, None) => {
            let cfg = match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(t) => Config::parse(&t).map_err(|e| anyhow::anyhow!("{DEFAULT_PATH}: {e}"))?,
                Err(_) => Config::default(),
            };
            let d = cfg.daemon;
            (
                d.pin_dir,
                Some(d.state_file),
                Some(d.socket.with_extension("lock")),
                cfg.announce,
            )
        }
    };
    let held = pin::dir_held(&pin_dir) || lock.as_deref().is_some_and(lock_held);
    if held && !a.force {
        anyhow::bail!(
            "a running xlb daemon holds {}: stop it first (`systemctl stop xlb`, or SIGTERM to the daemon: forwarding continues from the pins; `xlb daemon --detach` removes everything when it exits), or pass --force to remove its pins and saved state under it (forwarding stops)",
            pin_dir.display()
        );
    }
    if held {
        eprintln!(
            "xlb: warning: removing the pins of {} and the saved state of a running daemon: forwarding stops, and that daemon's state is gone",
            pin_dir.display()
        );
    }
    let removed = pin::remove_all(&pin_dir)?;
    if let Some(a) = &announce {
        match withdraw_all(a) {
            Ok(0) => {}
            Ok(n) => println!("withdrew {n} VIP route(s) from table {}", a.table),
            Err(e) => eprintln!("xlb: warning: VIP routes in table {}: {e}", a.table),
        }
    }
    if let Some(f) = &state_file {
        let _ = std::fs::remove_file(f);
    }
    if let Some(l) = &lock
        && !held
    {
        let _ = std::fs::remove_file(l);
    }
    println!(
        "removed {} (forwarder detached from: {})",
        pin_dir.display(),
        if removed.is_empty() {
            "-".into()
        } else {
            removed.join(", ")
        }
    );
    Ok(())
}

/// Delete every VIP route xlb left in `a.table` (a daemon that was killed leaves them).
fn withdraw_all(a: &crate::config::Announce) -> Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let routes = crate::routes::KernelRoutes::new()?;
        let found = routes.list(a).await?;
        for addr in &found {
            routes.del(a, *addr).await?;
        }
        Ok(found.len())
    })
}
