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
