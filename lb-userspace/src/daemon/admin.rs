//! The admin endpoint on a TCP listener (localhost by default): `GET /metrics` in the
//! Prometheus text format, `/livez` (the owner task answers), `/readyz` (data plane loaded,
//! configuration applied, every next hop resolved), and the status page: `/status` (one
//! self-contained HTML page that refreshes itself) over `/status.json`.

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
/// Connections served at once: scrapers and probes need a handful. More are closed at once,
/// so no local user can take the daemon's descriptors or memory through this port.
pub const MAX_CONNECTIONS: usize = 32;
/// A client must send its request, and take the answer, within these.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page: static, no external assets; its script reads `/status.json`.
const STATUS_PAGE: &str = include_str!("status.html");

/// A metrics page is rendered at most once per this: scrapes arriving together share it.
const PAGE_TTL: Duration = Duration::from_secs(1);

pub async fn serve(l: TcpListener, owner: mpsc::Sender<Command>, api: Arc<ApiCounters>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let endpoint = Arc::new(Endpoint::new(owner, api));
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            endpoint
                .api
                .admin_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(c);
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut head = vec![0u8; 8192];
            let read = tokio::time::timeout(READ_TIMEOUT, c.read(&mut head)).await;
            let Ok(Ok(n)) = read else { return };
            let req = String::from_utf8_lossy(&head[..n]);
            let path = req
                .strip_prefix("GET ")
                .and_then(|r| r.split([' ', '?']).next())
                .unwrap_or("");
            let (status, body) = endpoint.answer(path).await;
            let ctype = match path {
                _ if !status.starts_with("200") => "text/plain",
                "/metrics" => "text/plain; version=0.0.4; charset=utf-8",
                "/" | "/status" => "text/html; charset=utf-8",
                "/status.json" => "application/json",
                _ => "text/plain",
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A client that does not read its answer is dropped with it; the body is shared
            // with every other scrape of the same page, never copied per connection.
            let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                if c.write_all(head.as_bytes()).await.is_ok() {
                    let _ = c.write_all(body.as_bytes()).await;
                }
                let _ = c.shutdown().await;
            })
            .await;
        });
    }
}

/// What the endpoint answers, and the last metrics page.
struct Endpoint {
    owner: mpsc::Sender<Command>,
    api: Arc<ApiCounters>,
    page: tokio::sync::Mutex<Option<(std::time::Instant, Arc<str>)>>,
}

async fn ask<T>(
    owner: &mpsc::Sender<Command>,
    cmd: Command,
    rx: oneshot::Receiver<T>,
) -> Option<T> {
    owner.send(cmd).await.ok()?;
    tokio::time::timeout(OWNER_WAIT, rx).await.ok()?.ok()
}

impl Endpoint {
    fn new(owner: mpsc::Sender<Command>, api: Arc<ApiCounters>) -> Endpoint {
        Endpoint {
            owner,
            api,
            page: tokio::sync::Mutex::new(None),
        }
    }

    async fn answer(&self, path: &str) -> (&'static str, Arc<str>) {
        const UNAVAILABLE: &str = "503 Service Unavailable";
        match path {
            "/metrics" => {
                // One render at a time, shared by the scrapes that wait for it: a burst of
                // scrapes costs one page of memory and one owner query.
                let mut page = self.page.lock().await;
                if let Some((at, body)) = &*page
                    && at.elapsed() < PAGE_TTL
                {
                    return ("200 OK", body.clone());
                }
                let (reply, rx) = oneshot::channel();
                let cmd = Command::Request {
                    req: Box::new(Request::Metrics),
                    reply,
                };
                let view = ask(&self.owner, cmd, rx)
                    .await
                    .and_then(|r| r.data)
                    .and_then(|d| serde_json::from_value::<MetricsView>(d).ok());
                match view {
                    Some(v) => {
                        let body: Arc<str> = crate::metrics::render(&v, &self.api).into();
                        *page = Some((std::time::Instant::now(), body.clone()));
                        ("200 OK", body)
                    }
                    None => (UNAVAILABLE, "the daemon did not answer\n".into()),
                }
            }
            "/livez" | "/readyz" => {
                let (reply, rx) = oneshot::channel();
                match ask(&self.owner, Command::Ready { reply }, rx).await {
                    None => (
                        UNAVAILABLE,
                        "the daemon's owner task does not answer\n".into(),
                    ),
                    Some(_) if path == "/livez" => ("200 OK", "ok\n".into()),
                    Some(r) if r.ready() => ("200 OK", "ready\n".into()),
                    Some(r) if !r.applied => {
                        (UNAVAILABLE, "configuration not applied yet\n".into())
                    }
                    Some(r) => (
                        UNAVAILABLE,
                        format!("{} backend next hop(s) unresolved\n", r.unresolved).into(),
                    ),
                }
            }
            "/" | "/status" => ("200 OK", STATUS_PAGE.into()),
            "/status.json" => {
                let (reply, rx) = oneshot::channel();
                let cmd = Command::Request {
                    req: Box::new(Request::Metrics),
                    reply,
                };
                match ask(&self.owner, cmd, rx).await.and_then(|r| r.data) {
                    Some(d) => ("200 OK", d.to_string().into()),
                    None => (UNAVAILABLE, "the daemon did not answer\n".into()),
                }
            }
            _ => (
                "404 Not Found",
                "served here: /metrics, /livez, /readyz, /status, /status.json\n".into(),
            ),
        }
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
            health_transitions: 3,
            conntrack_capacity: 1024,
            conntrack_entries: 7,
            conntrack_entries_v6: 2,
            conntrack_evictions: 4,
            applies: 2,
            ring_rebuilds: 1,
            ..StatusView::sample()
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
                            conntrack_entries_v6: 2,
                        };
                        let _ = reply.send(Response::of(&view));
                    }
                    _ => {}
                }
            }
        });
        tx
    }

    /// `path` answered by an endpoint on `owner`.
    async fn answer(
        path: &str,
        owner: &mpsc::Sender<Command>,
        api: &Arc<ApiCounters>,
    ) -> (&'static str, Arc<str>) {
        Endpoint::new(owner.clone(), api.clone()).answer(path).await
    }

    #[tokio::test]
    async fn probes_say_alive_and_ready_only_when_applied_and_resolved() {
        let api = Arc::new(ApiCounters::default());
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
    async fn the_status_page_is_self_contained_and_reads_the_daemons_view() {
        let api = Arc::new(ApiCounters::default());
        let o = owner(Readiness {
            applied: true,
            unresolved: 0,
        });
        let (code, page) = answer("/status", &o, &api).await;
        assert_eq!(code, "200 OK");
        assert!(
            page.contains("fetch(\"/status.json\""),
            "the page reads its data"
        );
        // No external assets: nothing is loaded from anywhere but this endpoint.
        for external in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(!page.contains(external), "{external} in the status page");
        }
        let (code, json) = answer("/status.json", &o, &api).await;
        assert_eq!(code, "200 OK");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["stats"]["vips"][0]["vip"], "10.0.0.1:80/tcp");
        assert_eq!(v["status"]["applies"], 2);
    }

    #[tokio::test]
    async fn a_gone_owner_is_not_alive() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let api = Arc::new(ApiCounters::default());
        assert!(answer("/livez", &tx, &api).await.0.starts_with("503"));
        assert!(answer("/metrics", &tx, &api).await.0.starts_with("503"));
    }

    #[tokio::test]
    async fn metrics_render_the_daemons_view() {
        let api = Arc::new(ApiCounters::default());
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
            "xlb_conntrack_entries_v6 2",
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
