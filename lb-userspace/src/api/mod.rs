//! The control API between `xlb` commands and the daemon, and nothing else: one JSON request
//! per connection on a unix socket, answered by one JSON response. Versioned; oversized or
//! malformed requests are answered with an error and change nothing. The daemon and the CLI
//! meet here: requests (`Request`), typed answers (`view`), and the client (`client`).

pub mod client;
pub mod view;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use self::{client::Client, view::*};
use crate::config::{BackendConfig, Change, Protocol, Vip, VipRef};

pub const API_VERSION: u32 = 1;
/// Largest request accepted (a full config of a thousand backends is ~100 KiB).
pub const MAX_REQUEST: usize = 4 << 20;
/// A client must send its whole request within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    VipList,
    VipAdd {
        vip: Vip,
    },
    VipRemove {
        vip: VipRef,
    },
    BackendList {
        vip: Option<VipRef>,
    },
    BackendAdd {
        vip: VipRef,
        backend: BackendConfig,
    },
    BackendRemove {
        vip: VipRef,
        address: IpAddr,
        now: bool,
    },
    /// Change weight and/or drain state of one backend.
    BackendSet {
        vip: VipRef,
        address: IpAddr,
        weight: Option<u32>,
        drain: Option<bool>,
    },
    /// Replace the whole desired state with this TOML document.
    Apply {
        config: String,
        now: bool,
        /// Allow an apply that removes every VIP or detaches the forwarder from an interface.
        #[serde(default)]
        force: bool,
    },
    Export,
    Stats,
    /// Everything the Prometheus endpoint exports (status, stats, backends), in one answer.
    Metrics,
    Flows {
        vip: Option<VipRef>,
        limit: usize,
    },
    Explain {
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        /// Explain a connection-opening SYN rather than a packet of an established flow.
        syn: bool,
    },
    /// Turn capture on with this filter; answered with a session and a lease to renew.
    CaptureStart {
        filter: CaptureFilter,
    },
    CaptureRenew {
        session: u32,
    },
    CaptureStop {
        session: u32,
    },
    /// Withdraw every VIP address this node announces and keep forwarding what still arrives
    /// (maintenance); saved across restarts.
    DrainNode,
    /// Announce again what serves.
    UndrainNode,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data: Some(data),
        }
    }
    pub fn err(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            data: None,
        }
    }
    /// A typed answer.
    pub fn of<T: Serialize>(v: &T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        }
    }
}

/// Why a request could not be read; answered to the client, nothing changes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("API version {0} is not supported (this daemon speaks version {API_VERSION})")]
    Version(u32),
}

/// Decode one request.
pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
    if bytes.len() > MAX_REQUEST {
        return Err(DecodeError::TooLarge);
    }
    // Read the version first so a newer client gets a version error, not a schema error.
    #[derive(Deserialize)]
    struct Probe {
        version: Option<u32>,
    }
    let malformed = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
    let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
    match probe.version {
        Some(API_VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v)),
        None => return Err(DecodeError::Malformed("no version".into())),
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
    Ok(env.request)
}

impl Request {
    /// The configuration edit a request asks for; other requests are given back.
    pub fn into_change(self) -> Result<Change, Box<Request>> {
        Ok(match self {
            Request::VipAdd { vip } => Change::VipAdd(vip),
            Request::VipRemove { vip } => Change::VipRemove(vip),
            Request::BackendAdd { vip, backend } => Change::BackendAdd { vip, backend },
            Request::BackendRemove { vip, address, now } => {
                Change::BackendRemove { vip, address, now }
            }
            Request::BackendSet {
                vip,
                address,
                weight,
                drain,
            } => Change::BackendSet {
                vip,
                address,
                weight,
                drain,
            },
            other => return Err(Box::new(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let r = Request::BackendRemove {
            vip: "10.0.0.1:80/tcp".parse().expect("vip"),
            address: "10.0.1.1".parse().expect("ip"),
            now: false,
        };
        let bytes = serde_json::to_vec(&Envelope {
            version: API_VERSION,
            request: r.clone(),
        })
        .expect("encode");
        assert_eq!(decode(&bytes), Ok(r.clone()));
        assert_eq!(
            r.into_change(),
            Ok(Change::BackendRemove {
                vip: "10.0.0.1:80/tcp".parse().expect("vip"),
                address: "10.0.1.1".parse().expect("ip"),
                now: false,
            })
        );
        assert_eq!(
            Request::Status.into_change(),
            Err(Box::new(Request::Status))
        );
        let err = |b: &[u8]| decode(b).expect_err("rejected").to_string();
        assert!(err(b"{").starts_with("malformed request"));
        assert!(
            err(br#"{"version":9,"request":{"op":"status"}}"#)
                .contains("version 9 is not supported")
        );
        assert!(err(br#"{"version":1,"request":{"op":"reboot"}}"#).contains("unknown variant"));
        assert!(err(&vec![b' '; MAX_REQUEST + 1]).contains("larger than"));
    }
}
