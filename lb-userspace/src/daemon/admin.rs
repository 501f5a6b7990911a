//! The admin endpoint on a TCP listener (localhost by default): `GET /metrics` in the
//! Prometheus text format, `/livez` (the owner task answers) and `/readyz` (data plane loaded,
//! configuration applied, every next hop resolved).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::owner::Command;
use crate::{
    api::{MetricsView, Request},
    metrics::ApiCounters,
};

/// How long the owner may take to answer a probe or a scrape.
const OWNER_WAIT: Duration = Duration::from_secs(5);

pub async fn serve(l: TcpListener, owner: mpsc::Sender<Command>, api: Arc<ApiCounters>) {
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (owner, api) = (owner.clone(), api.clone());
        tokio::spawn(async move {
            let mut head = vec![0u8; 8192];
            let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut head)).await;
            let Ok(Ok(n)) = read else { return };
            let req = String::from_utf8_lossy(&head[..n]);
            let path = req
                .strip_prefix("GET ")
                .and_then(|r| r.split([' ', '?']).next())
                .unwrap_or("");
            let (status, body) = answer(path, &owner, &api).await;
            let ctype = if path == "/metrics" && status.starts_with("200") {
                "text/plain; version=0.0.4; charset=utf-8"
            } else {
                "text/plain"
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

async fn ask<T>(
    owner: &mpsc::Sender<Command>,
    cmd: Command,
    rx: oneshot::Receiver<T>,
) -> Option<T> {
    owner.send(cmd).await.ok()?;
    tokio::time::timeout(OWNER_WAIT, rx).await.ok()?.ok()
}

async fn answer(
    path: &str,
    owner: &mpsc::Sender<Command>,
    api: &ApiCounters,
) -> (&'static str, String) {
    const UNAVAILABLE: &str = "503 Service Unavailable";
    match path {
        "/metrics" => {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Request {
                req: Box::new(Request::Metrics),
                reply,
            };
            let view = ask(owner, cmd, rx)
                .await
                .and_then(|r| r.data)
                .and_then(|d| serde_json::from_value::<MetricsView>(d).ok());
            match view {
                Some(v) => ("200 OK", crate::metrics::render(&v, api)),
                None => (UNAVAILABLE, "the daemon did not answer\n".into()),
            }
        }
        "/livez" | "/readyz" => {
            let (reply, rx) = oneshot::channel();
            match ask(owner, Command::Ready { reply }, rx).await {
                None => (
                    UNAVAILABLE,
                    "the daemon's owner task does not answer\n".into(),
                ),
                Some(_) if path == "/livez" => ("200 OK", "ok\n".into()),
                Some(r) if r.ready() => ("200 OK", "ready\n".into()),
                Some(r) if !r.applied => (UNAVAILABLE, "configuration not applied yet\n".into()),
                Some(r) => (
                    UNAVAILABLE,
                    format!("{} backend next hop(s) unresolved\n", r.unresolved),
                ),
            }
        }
        _ => (
            "404 Not Found",
            "served here: /metrics, /livez, /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{MetricsView, Response, StatsView, StatusView, VipStatsView},
        daemon::owner::Readiness,
    };

    fn status() -> StatusView {
        StatusView {
            version: "0".into(),
            uptime_secs: 1,
            pin_dir: "/sys/fs/bpf/xlb".into(),
            adopted: false,
            forward_program_id: 1,
            interfaces: vec![],
            vips: 1,
            backends: 0,
            backends_up: 0,
            backends_drained: 0,
            backends_removing: 0,
            backends_unresolved: 0,
            backends_down: 0,
            health_transitions: 3,
            below_quorum: vec![],
            quorum_losses: 0,
            conntrack_capacity: 1024,
            conntrack_entries: 7,
            conntrack_evictions: 4,
            applies: 2,
            ring_rebuilds: 1,
            capture: None,
        }
    }

    /// An owner that answers readiness and metrics as given.
    fn owner(ready: Readiness) -> mpsc::Sender<Command> {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Ready { reply } => {
                        let _ = reply.send(ready);
                    }
                    Command::Request { reply, .. } => {
                        let view = MetricsView {
                            status: status(),
                            stats: StatsView {
                                vips: vec![VipStatsView {
                                    vip: "10.0.0.1:80/tcp".into(),
                                    packets: 5,
                                    bytes: 500,
                                    new_flows: 1,
                                    conntrack_hits: 4,
                                    conntrack_misses: 1,
                                    failovers: 0,
                                    expired: 0,
                                    deferred: 2,
                                    pps: 0.0,
                                    bps: 0.0,
                                }],
                                ..StatsView::default()
                            },
                            backends: vec![],
                            conntrack_entries: 7,
                        };
                        let _ = reply.send(Response::of(&view));
                    }
                    _ => {}
                }
            }
        });
        tx
    }

    #[tokio::test]
    async fn probes_say_alive_and_ready_only_when_applied_and_resolved() {
        let api = ApiCounters::default();
        let ok = owner(Readiness {
            applied: true,
            unresolved: 0,
        });
        assert_eq!(answer("/livez", &ok, &api).await.0, "200 OK");
        assert_eq!(
            answer("/readyz", &ok, &api).await,
            ("200 OK", "ready\n".into())
        );
        let pending = owner(Readiness {
            applied: false,
            unresolved: 0,
        });
        assert_eq!(answer("/livez", &pending, &api).await.0, "200 OK");
        assert!(answer("/readyz", &pending, &api).await.0.starts_with("503"));
        let unresolved = owner(Readiness {
            applied: true,
            unresolved: 2,
        });
        let (code, body) = answer("/readyz", &unresolved, &api).await;
        assert!(
            code.starts_with("503") && body.contains("2 backend next hop"),
            "{body}"
        );
        assert!(answer("/nope", &ok, &api).await.0.starts_with("404"));
    }

    #[tokio::test]
    async fn a_gone_owner_is_not_alive() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let api = ApiCounters::default();
        assert!(answer("/livez", &tx, &api).await.0.starts_with("503"));
        assert!(answer("/metrics", &tx, &api).await.0.starts_with("503"));
    }

    #[tokio::test]
    async fn metrics_render_the_daemons_view() {
        let api = ApiCounters::default();
        api.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let o = owner(Readiness {
            applied: true,
            unresolved: 0,
        });
        let (code, body) = answer("/metrics", &o, &api).await;
        assert_eq!(code, "200 OK");
        for want in [
            "xlb_vip_packets_total{vip=\"10.0.0.1:80/tcp\"} 5",
            "xlb_conntrack_entries 7",
            "xlb_conntrack_capacity 1024",
            "xlb_health_transitions_total 3",
            "xlb_api_refused_total 1",
            "xlb_conntrack_evictions_total 4",
            "xlb_vip_flows_deferred_total{vip=\"10.0.0.1:80/tcp\"} 2",
        ] {
            assert!(body.contains(want), "{want} missing:\n{body}");
        }
    }
}
