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
    API_VERSION, ApplyReport, CaptureFilter, CaptureStarted, CaptureStopped, Envelope, ExplainView,
    ExportView, FlowsView, MetricsView, Request, Response, StatsView, StatusView,
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
        s.write_all(&body).map_err(ClientError::Send)?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(ClientError::Send)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(ClientError::Receive)?;
        let r: Response = serde_json::from_slice(&out).map_err(ClientError::Unreadable)?;
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
