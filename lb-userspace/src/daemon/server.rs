//! The control socket: who may talk (peer credentials, whatever the file mode says), one
//! request per connection read within a bound of size and time, handed to the owner, answered.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{error, warn};

use super::owner::Command;
use crate::{
    api::{self, MAX_REQUEST, REQUEST_TIMEOUT, Response},
    metrics::ApiCounters,
};

pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
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

/// Who may use the socket: root, and members of `socket_group`. Checked on the peer's
/// credentials (`SO_PEERCRED`), so a socket file made world-writable grants nothing.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    group: Option<u32>,
}

impl Access {
    pub fn new(group: Option<&str>) -> Result<Access> {
        Ok(Access {
            group: group.map(group_id).transpose()?,
        })
    }

    /// Whether a peer with these credentials may send requests.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 {
            return true;
        }
        let Some(g) = self.group else {
            return false;
        };
        gid == g || pid.is_some_and(|p| supplementary_groups(p).contains(&g))
    }
}

/// The supplementary groups of a live process (`Groups:` of /proc/PID/status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Control connections served at once (each a CLI command): a bound on descriptors.
pub const MAX_CONNECTIONS: usize = 128;

pub async fn serve(
    listener: UnixListener,
    owner: mpsc::Sender<Command>,
    api: Arc<ApiCounters>,
    access: Access,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    api.control_refused.fetch_add(1, Ordering::Relaxed);
                    drop(conn);
                    continue;
                };
                let (owner, api) = (owner.clone(), api.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = client(conn, owner, &api, access).await {
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

async fn client(
    mut conn: UnixStream,
    owner: mpsc::Sender<Command>,
    api: &ApiCounters,
    access: Access,
) -> std::io::Result<()> {
    let cred = conn.peer_cred()?;
    if !access.allows(cred.uid(), cred.gid(), cred.pid()) {
        api.refused.fetch_add(1, Ordering::Relaxed);
        warn!(
            uid = cred.uid(),
            gid = cred.gid(),
            pid = cred.pid(),
            "control connection refused: the peer is neither root nor in socket_group"
        );
        let r = Response::err(
            "permission denied: the xlb control socket takes requests from root and members of [daemon] socket_group only",
        );
        let _ = conn
            .write_all(&serde_json::to_vec(&r).unwrap_or_default())
            .await;
        return conn.shutdown().await;
    }
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
                let (reply, answer) = oneshot::channel();
                if owner
                    .send(Command::Request {
                        req: Box::new(req),
                        reply,
                    })
                    .await
                    .is_err()
                {
                    Response::err("the daemon is shutting down")
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Response::err("the daemon is shutting down"))
                }
            }
        },
    };
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !response.ok {
        api.errors.fetch_add(1, Ordering::Relaxed);
    }
    let body = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    // A client that does not take its answer does not hold the connection for ever.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        conn.write_all(&body).await?;
        conn.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_socket_group_may_talk() {
        let none = Access { group: None };
        assert!(none.allows(0, 0, None));
        assert!(!none.allows(1000, 1000, None));
        let g = Access { group: Some(4242) };
        assert!(g.allows(0, 0, None));
        assert!(g.allows(1000, 4242, None), "primary group");
        assert!(!g.allows(1000, 1000, None));
        // This test process: its supplementary groups are read from /proc.
        let me = std::process::id() as i32;
        let mine = supplementary_groups(me);
        if let Some(&sup) = mine.first() {
            let s = Access { group: Some(sup) };
            assert!(s.allows(1000, 1000, Some(me)), "supplementary group {sup}");
        }
        assert!(!g.allows(1000, 1000, Some(me)) || mine.contains(&4242));
    }
}
