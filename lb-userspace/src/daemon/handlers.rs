//! A request on the owner: queries are answered at once from the state, capture requests move
//! the lease, changes are queued. Each arm only translates.

use std::time::Instant;

use tokio::sync::oneshot;

use super::{
    capture,
    owner::{Job, Owner, effects},
    query::{self, Ctx},
};
use crate::{
    api::{ExportView, Request, Response},
    dataplane::monotonic_coarse_ns,
};

impl Owner {
    pub(super) fn request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match req {
            Request::Apply { config, now, force } => {
                return self.enqueue(Job::apply(config, now, force, reply));
            }
            Request::Explain { src, dst, .. } if src.is_ipv4() != dst.is_ipv4() => {
                Response::err(format!(
                    "{src} and {dst} are of different address families: a flow to an IPv{} VIP comes from an IPv{} client",
                    if dst.is_ipv4() { 4 } else { 6 },
                    if dst.is_ipv4() { 4 } else { 6 }
                ))
            }
            Request::CaptureStart { filter } => {
                let pin_dir = self.state.cfg().daemon.pin_dir.clone();
                let pinned = self.dp.pin_dir().is_some().then_some(pin_dir.as_path());
                let mut env = effects!(self);
                match capture::start(&mut self.lease, &mut self.state, &mut env, pinned, filter) {
                    Ok(v) => Response::of(&v),
                    Err(e) => Response::err(e),
                }
            }
            Request::CaptureRenew { session } => {
                match capture::renew(&mut self.lease, session, Instant::now()) {
                    Ok(()) => Response::ok(serde_json::Value::Null),
                    Err(e) => Response::err(e),
                }
            }
            Request::CaptureStop { session } => {
                let mut env = effects!(self);
                match capture::stop(&mut self.lease, &mut self.state, &mut env, session) {
                    Ok(v) => Response::of(&v),
                    Err(e) => Response::err(e),
                }
            }
            query => match query.into_change() {
                Ok(change) => return self.enqueue(Job::change(change, reply)),
                Err(query) => self.query(*query),
            },
        };
        let _ = reply.send(answer);
    }

    fn query(&self, req: Request) -> Response {
        let c = Ctx {
            state: &self.state,
            maps: &self.dp,
            sampler: &self.sampler,
            capture: self.lease.as_ref(),
            node: &self.node,
            occupancy: &self.occupancy,
            now: Instant::now(),
            mono_ns: monotonic_coarse_ns(),
        };
        match req {
            Request::Status => Response::of(&query::status(&c)),
            Request::VipList => Response::of(&query::vip_list(&c)),
            Request::BackendList { vip } => match query::backend_list(&c, vip) {
                Ok(v) => Response::of(&v),
                Err(e) => Response::err(e),
            },
            Request::Export => Response::of(&ExportView {
                config: self.state.cfg().to_toml(),
            }),
            Request::Stats => Response::of(&query::stats(&c)),
            Request::Metrics => Response::of(&query::metrics(&c)),
            Request::Flows { vip, limit } => match query::flows(&c, vip, limit) {
                Ok(v) => Response::of(&v),
                Err(e) => Response::err(e),
            },
            Request::Explain {
                src,
                dst,
                protocol,
                syn,
            } => Response::of(&query::explain(&c, src, dst, protocol, syn)),
            other => Response::err(format!("not a query: {other:?}")),
        }
    }
}
