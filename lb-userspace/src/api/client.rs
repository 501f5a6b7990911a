//! The client side of the control socket: one request per connection, answers decoded into
//! their views.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::{
    API_VERSION, AnnounceView, ApplyReport, CaptureFilter, CaptureStarted, CaptureStopped,
    Envelope, ExplainView, ExportView, FlowsView, MetricsView, Request, Response, StatsView,
    StatusView,
    view::{BackendView, VipView},
};
use crate::config::{Protocol, VipRef};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the xlb daemon at {}: {source} (is `xlb daemon` running? --socket selects another)",
        .socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the request: {0}")]
    Send(#[source] std::io::Error),
    #[error("reading the daemon's answer: {0}")]
    Receive(#[source] std::io::Error),
    #[error("the daemon answered something unreadable: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// The daemon refused the request; its message.
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon closed the connection without answering (did it stop? see its log)")]
    Closed,
}

/// A connection target: the daemon's control socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Send one request and decode the answer as `T`.
    pub fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(ClientError::Receive)?;
        let body = serde_json::to_vec(&Envelope {
            version: API_VERSION,
            request,
        })
        .map_err(ClientError::Unreadable)?;
        // The daemon may answer before reading everything (a refused peer, an oversized
        // request) and close: its answer then explains the broken pipe better than we can.
        let sent = s
            .write_all(&body)
            .and_then(|()| s.shutdown(std::net::Shutdown::Write));
        let mut out = Vec::new();
        let received = s.read_to_end(&mut out);
        let r: Response = match (sent, received, serde_json::from_slice(&out)) {
            (_, _, Ok(r)) => r,
            (_, Ok(_), Err(_)) if out.is_empty() => return Err(ClientError::Closed),
            (Err(e), _, _) => return Err(ClientError::Send(e)),
            (Ok(()), Err(e), _) => return Err(ClientError::Receive(e)),
            (Ok(()), Ok(_), Err(e)) => return Err(ClientError::Unreadable(e)),
        };
        if !r.ok {
            return Err(ClientError::Daemon(
                r.error.unwrap_or_else(|| "unknown error".into()),
            ));
        }
        serde_json::from_value(r.data.unwrap_or(serde_json::Value::Null))
            .map_err(ClientError::Unreadable)
    }

    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.call(Request::Status)
    }
    pub fn vip_list(&self) -> Result<Vec<VipView>, ClientError> {
        self.call(Request::VipList)
    }
    pub fn backend_list(&self, vip: Option<VipRef>) -> Result<Vec<BackendView>, ClientError> {
        self.call(Request::BackendList { vip })
    }
    /// A configuration change (`vip add`, `backend drain`, `apply`, ...).
    pub fn change(&self, request: Request) -> Result<ApplyReport, ClientError> {
        self.call(request)
    }
    pub fn export(&self) -> Result<ExportView, ClientError> {
        self.call(Request::Export)
    }
    pub fn stats(&self) -> Result<StatsView, ClientError> {
        self.call(Request::Stats)
    }
    /// Drain or undrain the node; answered with what is announced afterwards.
    pub fn drain_node(&self, drain: bool) -> Result<AnnounceView, ClientError> {
        self.call(if drain {
            Request::DrainNode
        } else {
            Request::UndrainNode
        })
    }
    pub fn metrics(&self) -> Result<MetricsView, ClientError> {
        self.call(Request::Metrics)
    }
    pub fn flows(&self, vip: Option<VipRef>, limit: usize) -> Result<FlowsView, ClientError> {
        self.call(Request::Flows { vip, limit })
    }
    pub fn explain(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        syn: bool,
    ) -> Result<ExplainView, ClientError> {
        self.call(Request::Explain {
            src,
            dst,
            protocol,
            syn,
        })
    }
    pub fn capture_start(&self, filter: CaptureFilter) -> Result<CaptureStarted, ClientError> {
        self.call(Request::CaptureStart { filter })
    }
    pub fn capture_renew(&self, session: u32) -> Result<(), ClientError> {
        self.call(Request::CaptureRenew { session })
    }
    pub fn capture_stop(&self, session: u32) -> Result<CaptureStopped, ClientError> {
        self.call(Request::CaptureStop { session })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A daemon stand-in that answers one connection with `answer` after reading the request.
    fn daemon(answer: &'static str) -> (Client, std::thread::JoinHandle<String>, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "xlb-client-test-{}-{}",
            std::process::id(),
            answer.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sock");
        let l = UnixListener::bind(&path).expect("bind");
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = String::new();
            c.read_to_string(&mut req).expect("request");
            c.write_all(answer.as_bytes()).expect("answer");
            req
        });
        (Client::new(&path), h, dir)
    }

    #[test]
    fn answers_decode_into_their_views() {
        let (c, h, dir) = daemon(r#"{"ok":true,"data":{"config":"[daemon]\n"}}"#);
        let v = c.export().expect("export");
        assert_eq!(v.config, "[daemon]\n");
        let req = h.join().expect("server");
        assert_eq!(req, r#"{"version":1,"request":{"op":"export"}}"#);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refusals_unreadable_answers_and_absent_daemons_are_told_apart() {
        let (c, h, dir) = daemon(r#"{"ok":false,"error":"no VIP 10.0.0.9:80/tcp"}"#);
        let e = c.vip_list().expect_err("refused");
        assert!(
            matches!(&e, ClientError::Daemon(m) if m == "no VIP 10.0.0.9:80/tcp"),
            "{e}"
        );
        h.join().expect("server");
        let _ = std::fs::remove_dir_all(dir);
        let (c, h, dir) = daemon("{\"ok\":true,\"data\":{\"vip\":1}}xx");
        assert!(matches!(c.stats(), Err(ClientError::Unreadable(_))));
        h.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
        let e = Client::new(&dir.join("none"))
            .status()
            .expect_err("no daemon");
        assert!(e.to_string().contains("is `xlb daemon` running?"), "{e}");
    }
}
