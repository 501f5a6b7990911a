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
            Request::DrainNode | Request::UndrainNode => {
                let drain = matches!(req, Request::DrainNode);
                self.drain_node(drain)
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

    /// `xlb drain-node` / `undrain-node`: saved, then announcements decided again at once.
    fn drain_node(&mut self, drain: bool) -> Response {
        if self.state.cfg().announce.is_none() {
            return Response::err(
                "this daemon announces nothing (no [announce] section): withdraw the node from the routers yourself",
            );
        }
        let mut env = effects!(self);
        if let Err(e) = self.state.set_node_drained(&mut env, drain) {
            return Response::err(e);
        }
        if drain {
            tracing::warn!(
                "node drained: withdrawing every VIP address; forwarding continues for what still arrives"
            );
        } else {
            tracing::info!("node undrained: announcing what serves");
        }
        self.announce();
        match self.announce_view() {
            Some(v) => Response::of(&v),
            None => Response::err("no [announce] section"),
        }
    }

    pub(super) fn announce_view(&self) -> Option<crate::api::AnnounceView> {
        let settings = self.state.cfg().announce.as_ref()?;
        Some(
            self.announce
                .view(settings, self.state.node_drained(), Instant::now()),
        )
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
            announce: self.announce_view(),
            pending: self.pending(),
            sync: self.sync.as_ref().map(|l| l.view()),
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
