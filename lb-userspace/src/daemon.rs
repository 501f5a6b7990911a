//! `xlb daemon`: load (or adopt) the data plane, restore the desired state, serve the control
//! socket, keep next hops fresh and finish drains. On SIGTERM/SIGINT the pinned maps and links
//! stay, so forwarding continues until the next daemon adopts them; `--detach` removes them.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};
use tracing::{error, info, warn};

use crate::{
    api::{self, MAX_REQUEST, REQUEST_TIMEOUT, Response},
    config::{Config, DEFAULT_PATH},
    control::{self, Sampler},
    dataplane::{Dataplane, LoadOptions, PinState, pin},
    engine::{Engine, Removal, load_saved},
    health::{Monitor, Transition},
    metrics::ApiCounters,
};

pub struct Options {
    pub config: Option<PathBuf>,
    /// Remove maps, links and pins on exit instead of leaving forwarding running.
    pub detach: bool,
}

struct Shared {
    engine: Mutex<Engine>,
    sampler: Mutex<Sampler>,
    monitor: Mutex<Monitor>,
    api: ApiCounters,
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

pub async fn run(opts: Options) -> Result<()> {
    let (file_cfg, file_digest) = read_config(&opts)?;
    let d = file_cfg.daemon.clone();
    let lock_path = d.socket.with_extension("lock");
    let _lock = lock(&lock_path)?;

    let saved = load_saved(&d.state_file).map_err(anyhow::Error::msg)?;
    let dp = Dataplane::load(&LoadOptions {
        conntrack_entries: d.conntrack_entries,
        pin_dir: Some(d.pin_dir.clone()),
        ..LoadOptions::default()
    })
    .context("loading the data plane")?;
    let adopted = dp.pin_state() == PinState::Adopted;
    info!(pin_dir = %d.pin_dir.display(), adopted, "data plane loaded");
    let mut engine = Engine::new(dp, d.clone()).context("opening rtnetlink")?;

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
        engine.restore(s);
    }
    engine.set_seeded_from(file_digest);
    let report = engine
        .apply(desired, Removal::Drain)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(?report, "desired state applied");
    match engine.sweep_orphans() {
        Ok(0) => {}
        Ok(n) => info!(
            entries = n,
            "removed map entries no saved state accounted for"
        ),
        Err(e) => warn!(error = %e, "sweeping orphaned map entries"),
    }

    let listener = bind(&d.socket, d.socket_group.as_deref())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        sampler: Mutex::new(Sampler::default()),
        monitor: Mutex::new(Monitor::new(tx)),
        api: ApiCounters::default(),
    });
    sync_probes(&shared).await;
    tokio::spawn(transitions(rx, shared.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(socket = %d.socket.display(), "ready");

    tokio::spawn(serve(listener, shared.clone()));
    if !d.metrics_listen.is_empty() {
        let l = tokio::net::TcpListener::bind(&d.metrics_listen)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", d.metrics_listen))?;
        info!(listen = %d.metrics_listen, "metrics at /metrics");
        tokio::spawn(metrics_server(l, shared.clone()));
    }
    tokio::spawn(housekeeping(
        shared.clone(),
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
    let mut e = shared.engine.lock().await;
    // A capture nobody will read any more must not keep costing the forwarder.
    if let Some(l) = e.capture.as_ref().map(|l| l.session) {
        let _ = e.capture_stop(l);
    }
    if opts.detach {
        for iface in e.dp.attached() {
            let _ =
                e.dp.detach(&iface, Some(&pin::link_path(&d.pin_dir, &iface)));
        }
        let removed = pin::remove_all(&d.pin_dir)?;
        let _ = std::fs::remove_file(&d.state_file);
        info!(?removed, "detached; pins and state removed");
    } else {
        info!(
            "exiting; the forwarder keeps running from its pinned links until the next daemon adopts them"
        );
    }
    Ok(())
}

fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // We hold the lock, so a socket file here is a leftover of a dead daemon.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match group {
        None => 0o600,
        Some(g) => {
            let gid = group_id(g).with_context(|| format!("socket_group {g:?}"))?;
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
            // SAFETY: chown on a path we just created; -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("chown {}", path.display()));
            }
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

fn group_id(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam returns a pointer into static storage or null; read once, immediately.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        bail!("no such group");
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*g).gr_gid })
}

async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let s = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(conn, s).await {
                        warn!(error = %e, "control connection");
                    }
                });
            }
            Err(e) => {
                error!(error = %e, "accept on the control socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(mut conn: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut conn)
            .take(MAX_REQUEST as u64 + 1)
            .read_to_end(&mut buf),
    )
    .await;
    let response = match read {
        Err(_) => Response::err(format!(
            "request not completed within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Response::err(format!("reading request: {e}")),
        Ok(Ok(_)) => match api::decode(&buf) {
            Err(e) => Response::err(e),
            Ok(req) => {
                let mut e = shared.engine.lock().await;
                let sampler = shared.sampler.lock().await;
                control::handle(&mut e, &sampler, req).await
            }
        },
    };
    shared
        .api
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !response.ok {
        shared
            .api
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let body = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    conn.write_all(&body).await?;
    conn.shutdown().await
}

/// Once a second: counter samples (for rates) and finished drains; next hops every `refresh`.
async fn housekeeping(shared: Arc<Shared>, refresh: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_refresh = Instant::now();
    loop {
        tick.tick().await;
        let mut e = shared.engine.lock().await;
        e.tick_clock();
        let snap = control::snapshot(&e);
        shared.sampler.lock().await.record(Instant::now(), snap);
        if let Err(err) = e.reap_removals() {
            warn!(error = %err, "finishing drained removals");
        }
        e.capture_expire();
        drop(e);
        sync_probes(&shared).await;
        let mut e = shared.engine.lock().await;
        if last_refresh.elapsed() >= refresh {
            last_refresh = Instant::now();
            e.refresh_nexthops().await;
        }
    }
}

/// Point the health monitor at the current members (after any configuration change).
async fn sync_probes(shared: &Shared) {
    let e = shared.engine.lock().await;
    let targets = e.probe_targets();
    shared
        .monitor
        .lock()
        .await
        .sync(targets, |id| e.health.get(&id).is_none_or(|h| h.up));
}

/// Apply health transitions as the monitor reports them.
async fn transitions(mut rx: tokio::sync::mpsc::Receiver<Transition>, shared: Arc<Shared>) {
    while let Some(t) = rx.recv().await {
        let mut e = shared.engine.lock().await;
        let who = e
            .members
            .get(&t.id)
            .map(|m| (m.vip.to_string(), m.address.to_string()));
        let Some((vip, backend)) = who else { continue };
        match e.set_health(t.id, t.up, &t.reason).await {
            Ok(true) => {
                let state = if t.up { "up" } else { "down" };
                if t.up {
                    info!(%vip, %backend, state, reason = %t.reason, "backend health changed");
                } else {
                    warn!(%vip, %backend, state, reason = %t.reason, "backend health changed");
                }
            }
            Ok(false) => {}
            Err(err) => error!(%vip, %backend, error = %err, "applying a health transition"),
        }
    }
}

/// `GET /metrics` in the Prometheus text format; anything else is a 404.
async fn metrics_server(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let mut head = vec![0u8; 8192];
            let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut head)).await;
            let Ok(Ok(n)) = read else { return };
            let req = String::from_utf8_lossy(&head[..n]);
            let (status, ctype, body) =
                if req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?") {
                    let e = s.engine.lock().await;
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        crate::metrics::render(&e, &s.api),
                    )
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        "only /metrics is served here\n".to_string(),
                    )
                };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
            let _ = c.shutdown().await;
        });
    }
}
