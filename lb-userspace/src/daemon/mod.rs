//! `xlb daemon`: load (or adopt) the data plane, restore the desired state, then run the owner
//! task (`owner`) fed by the control socket (`server`), the health monitor, the clock and drain
//! housekeeping (`housekeeping`) and the admin endpoint (`admin`). On SIGTERM/SIGINT the pinned
//! maps and links stay, so forwarding continues until the next daemon adopts them; `--detach`
//! removes them.

mod admin;
pub mod announce;
pub mod capture;
mod handlers;
mod housekeeping;
pub mod occupancy;
pub mod owner;
pub mod query;
pub mod server;
pub mod sync;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    config::{Config, DEFAULT_PATH, Removal},
    dataplane::{Dataplane, LoadOptions, PinState, monotonic_coarse_ns},
    health::Monitor,
    metrics::ApiCounters,
    nexthop::Resolver,
    state::{Clock, Env, Resolved, State, persist},
};

pub struct Options {
    pub config: Option<PathBuf>,
    /// Control socket overriding `[daemon] socket` (`xlb --socket`, `XLB_SOCKET`).
    pub socket: Option<PathBuf>,
    /// Remove maps, links and pins on exit instead of leaving forwarding running.
    pub detach: bool,
}

/// The times an operation of the owner runs at.
pub(crate) fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        mono_ns: monotonic_coarse_ns(),
    }
}

/// An interface's index in this network namespace.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Stable digest of the config file's text, to notice edits between runs.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn read_config(opts: &Options) -> Result<(Config, Option<String>)> {
    let (path, explicit) = match &opts.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let cfg =
                Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok((cfg, Some(digest(&text))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            info!(path = %path.display(), "no configuration file; starting empty");
            Ok((Config::default(), None))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Hold an exclusive lock for this daemon's lifetime: two daemons on one state would fight.
fn lock(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another xlb daemon holds {}; stop it first (or give this one its own [daemon] socket)",
            path.display()
        );
    }
    Ok(f)
}

/// Raise the descriptor limit to its hard maximum: probes, clients and maps all take
/// descriptors, and the listeners are bounded well below it.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub async fn run(opts: Options) -> Result<()> {
    raise_fd_limit();
    let (mut file_cfg, file_digest) = read_config(&opts)?;
    if let Some(s) = &opts.socket {
        file_cfg.daemon.socket = s.clone();
    }
    let d = file_cfg.daemon.clone();
    let lock_path = d.socket.with_extension("lock");
    let lock_file = lock(&lock_path)?;
    crate::dataplane::pin::require_bpffs(&d.pin_dir)?;
    // The pins are what two daemons would fight over, whatever their sockets.
    let pin_lock = crate::dataplane::pin::lock_dir(&d.pin_dir)?;

    let saved = persist::load(&d.state_file)?;
    let mut dp = Dataplane::load(&LoadOptions {
        conntrack_entries: d.conntrack_entries,
        conntrack_entries_v6: d.conntrack_entries_v6,
        pin_dir: Some(d.pin_dir.clone()),
        ..LoadOptions::default()
    })
    .context("loading the data plane")?;
    let adopted = dp.pin_state() == PinState::Adopted;
    info!(pin_dir = %d.pin_dir.display(), adopted, "data plane loaded");
    let node = query::Node {
        pin_dir: d.pin_dir.display().to_string(),
        adopted,
        forward_program_id: dp.program_id(lb_common::prog_names::FORWARD).unwrap_or(0),
        cpus: aya::util::nr_cpus().unwrap_or(1),
    };
    let resolver = Arc::new(Resolver::new().context("opening rtnetlink")?);
    let nr_cpus = aya::util::nr_cpus().map(|n| n as u16).unwrap_or(0);
    let mut state = State::new(d.clone(), nr_cpus, Instant::now());

    let desired = match &saved {
        Some(s) if s.seeded_from == file_digest => {
            info!(state = %d.state_file.display(), vips = s.config.vips.len(), "restoring saved state");
            Config {
                daemon: d.clone(),
                ..s.config.clone()
            }
        }
        Some(_) => {
            info!("configuration file changed since the state was saved; applying the file");
            file_cfg.clone()
        }
        None => {
            if adopted {
                warn!(
                    "pinned maps found but no saved state: backend ids are reassigned, so tracked flows may be re-picked once"
                );
            }
            file_cfg.clone()
        }
    };
    if let Some(s) = &saved {
        state.restore(s, Instant::now());
    }
    state.set_seeded_from(file_digest);
    let mut store = persist::FileStore {
        path: d.state_file.clone(),
    };
    let missing = state.missing_nexthops(&desired);
    let answers = resolver.resolve_all(&missing).await;
    let resolved: Resolved = missing.into_iter().zip(answers).collect();
    {
        let mut env = Env {
            maps: &mut dp,
            store: &mut store,
            ifindex: &ifindex,
            clock: clock(),
        };
        // The first apply runs before housekeeping does: stamps need the clock.
        state.tick_clock(&mut env)?;
        let report = state.apply(&mut env, desired, Removal::Drain, &resolved)?;
        info!(?report, "desired state applied");
        match state.sweep_orphans(&mut env) {
            Ok(0) => {}
            Ok(n) => info!(
                entries = n,
                "removed map entries no saved state accounted for"
            ),
            Err(e) => warn!(error = %e, "sweeping orphaned map entries"),
        }
    }

    // Routes a daemon that did not stop cleanly left are adopted: they stay announced while
    // their VIPs serve, so a crash-restart does not withdraw a healthy node.
    let routes = crate::routes::KernelRoutes::new()?;
    let mut announcer = crate::state::announce::Announcer::new(Instant::now());
    let mut present = Default::default();
    if let Some(a) = &state.cfg().announce {
        match routes.list(a).await {
            Ok(found) => {
                if !found.is_empty() {
                    info!(addresses = ?found, table = a.table, "adopting VIP routes left by the previous daemon");
                }
                announcer.adopt(found.iter().copied(), Instant::now());
                present = found;
            }
            Err(e) => warn!(error = %e, "listing VIP routes"),
        }
    }
    // The sync socket and key are checked before anything is announced or served.
    let sync_cfg = state.cfg().sync.clone();
    let sync_open = match &sync_cfg {
        Some(c) => Some(sync::open(c)?),
        None => None,
    };
    announcer.resync_pending = sync_cfg.is_some();
    let (routes_tx, routes_rx) = tokio::sync::watch::channel(announce::Wanted {
        settings: state.cfg().announce.clone(),
        addrs: present.clone(),
    });

    let listener = server::bind(&d.socket, d.socket_group.as_deref())?;
    let api = Arc::new(ApiCounters::default());
    let (tx, rx) = mpsc::channel(1024);
    let route_task = tokio::spawn(announce::run(
        routes,
        state.cfg().announce.clone(),
        present.clone(),
        routes_rx,
        tx.clone(),
    ));
    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let mut owner = owner::Owner::new(
        state,
        dp,
        store,
        node,
        Monitor::new(health_tx),
        resolver,
        announce::Announcements::new(announcer, present, routes_tx),
        tx.clone(),
    );
    if let (Some(c), Some((sock, key))) = (&sync_cfg, sync_open) {
        info!(listen = %c.listen, peers = ?c.peers, "flow sync with the fleet");
        owner.sync = Some(sync::start(c, sock, key, tx.clone())?);
    }
    let owner_task = tokio::spawn(owner.run(rx));
    let to_owner = tx.clone();
    tokio::spawn(async move {
        while let Some(t) = health_rx.recv().await {
            if to_owner.send(owner::Command::Health(t)).await.is_err() {
                return;
            }
        }
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(socket = %d.socket.display(), "ready");

    tokio::spawn(server::serve(
        listener,
        tx.clone(),
        api.clone(),
        server::Access::new(d.socket_group.as_deref())?,
    ));
    if !d.metrics_listen.is_empty() {
        let l = tokio::net::TcpListener::bind(&d.metrics_listen)
            .await
            .with_context(|| format!("binding the admin endpoint {}", d.metrics_listen))?;
        info!(listen = %d.metrics_listen, "metrics at /metrics, probes at /livez and /readyz");
        tokio::spawn(admin::serve(l, tx.clone(), api.clone()));
    }
    tokio::spawn(housekeeping::run(
        tx.clone(),
        Duration::from_secs(d.nexthop_refresh_secs as u64),
    ));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&d.socket);
    let (reply, done) = tokio::sync::oneshot::channel();
    if tx
        .send(owner::Command::Shutdown {
            detach: opts.detach,
            reply,
        })
        .await
        .is_ok()
    {
        let _ = done.await;
    }
    let _ = owner_task.await;
    // The owner is gone with its sender: the route task writes the last (empty) set and ends.
    if tokio::time::timeout(Duration::from_secs(3), route_task)
        .await
        .is_err()
    {
        warn!("withdrawing VIP routes took over 3 s; some may remain");
    }
    drop(pin_lock);
    let _ = std::fs::remove_file(&lock_path);
    drop(lock_file);
    Ok(())
}
