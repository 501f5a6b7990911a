//! The control API between `xlb` commands and the daemon: one JSON request per connection on a
//! unix socket, answered by one JSON response. Versioned; oversized or malformed requests are
//! answered with an error and change nothing.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{BackendConfig, Protocol, Vip, VipRef};

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
    },
    Export,
    Stats,
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
        filter: crate::capture::Filter,
    },
    CaptureRenew {
        session: u32,
    },
    CaptureStop {
        session: u32,
    },
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
}

/// Decode one request; every failure becomes a message for the client.
pub fn decode(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    // Read the version first so a newer client gets a version error, not a schema error.
    #[derive(Deserialize)]
    struct Probe {
        version: Option<u32>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed request: {e}"))?;
    match probe.version {
        Some(API_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "API version {v} is not supported (this daemon speaks version {API_VERSION})"
            ));
        }
        None => return Err("malformed request: no version".into()),
    }
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed request: {e}"))?;
    Ok(env.request)
}

/// Send one request to the daemon at `socket` and wait for its answer.
pub fn call(socket: &Path, request: Request) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the xlb daemon at {}: {e} (is `xlb daemon` running? --socket selects another)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&Envelope {
        version: API_VERSION,
        request,
    })
    .map_err(|e| e.to_string())?;
    s.write_all(&body)
        .map_err(|e| format!("sending request: {e}"))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    let r: Response = serde_json::from_slice(&out)
        .map_err(|e| format!("the daemon answered something unreadable: {e}"))?;
    if r.ok {
        Ok(r.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(r.error.unwrap_or_else(|| "unknown error".into()))
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
        assert_eq!(decode(&bytes), Ok(r));
        assert!(
            decode(b"{")
                .expect_err("rejected")
                .starts_with("malformed request")
        );
        assert!(
            decode(br#"{"version":9,"request":{"op":"status"}}"#)
                .expect_err("rejected")
                .contains("version 9 is not supported")
        );
        assert!(
            decode(br#"{"version":1,"request":{"op":"reboot"}}"#)
                .expect_err("rejected")
                .contains("unknown variant")
        );
        assert!(
            decode(&vec![b' '; MAX_REQUEST + 1])
                .expect_err("rejected")
                .contains("larger than")
        );
    }
}
