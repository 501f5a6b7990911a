//! The one task that owns the state, the maps and the capture lease. Everything reaches it as a
//! `Command` on a channel and is handled to completion before the next; nothing else holds the
//! state, and the task never waits on the network: next hops are resolved by spawned tasks that
//! report back, while the change that needs them waits in the queue and queries are answered.

use std::{collections::VecDeque, sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{
    announce::{Announcements, Wanted},
    capture::{self, Lease},
    occupancy::{self, Occupancy},
    query::{self, Node, Sampler},
};
use crate::{
    api::{ApplyReport, Response},
    config::{Change, Config, Removal},
    dataplane::{Dataplane, ReadyRing, pin},
    health::{Monitor, Transition},
    nexthop::Resolver,
    state::{
        ApplyError, NextHop, Planned, Prepared, Resolved, State, Unreachable, persist::FileStore,
    },
};

pub enum Command {
    /// A control request and where its answer goes.
    Request {
        req: Box<crate::api::Request>,
        reply: oneshot::Sender<Response>,
    },
    /// A health check changed its verdict.
    Health(Transition),
    /// Once a second: clock, counters, drains, capture lease, probes.
    Tick,
    /// Re-resolve every member's next hop.
    RefreshNextHops,
    /// Next hops a queued change waited for.
    Resolved(Box<Waited>),
    /// Answers of a `RefreshNextHops`.
    Refreshed(Vec<(u32, Result<NextHop, Unreachable>)>),
    /// A queued change planned on a blocking thread, with its rings filled ahead.
    Planned(Box<(Job, Result<Planned, ApplyError>, Vec<ReadyRing>)>),
    Ready {
        reply: oneshot::Sender<Readiness>,
    },
    /// What the route task found in the kernel table after its writes.
    Routes(super::announce::Report),
    /// From the flow-sync task: peers' records, a peer's resync request, resync over.
    Sync(super::sync::Inbound),
    /// Stop; with `detach`, remove the forwarder, its pins and the saved state.
    Shutdown {
        detach: bool,
        reply: oneshot::Sender<()>,
    },
}

/// A change whose next hops were resolved.
pub struct Waited {
    job: Job,
    new: Config,
    removal: Removal,
    resolved: Resolved,
}

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub applied: bool,
    pub unresolved: usize,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.applied && self.unresolved == 0
    }
}

/// A change of the configuration, queued until it can be applied.
pub struct Job {
    what: What,
    reply: Option<oneshot::Sender<Response>>,
    queued: Instant,
}

enum What {
    Change(Box<Change>),
    Apply {
        text: String,
        now: bool,
        force: bool,
    },
    /// The same configuration again (after a health transition).
    Reapply,
}

impl Job {
    pub fn change(change: Change, reply: oneshot::Sender<Response>) -> Job {
        Job {
            what: What::Change(Box::new(change)),
            reply: Some(reply),
            queued: Instant::now(),
        }
    }
    pub fn apply(text: String, now: bool, force: bool, reply: oneshot::Sender<Response>) -> Job {
        Job {
            what: What::Apply { text, now, force },
            reply: Some(reply),
            queued: Instant::now(),
        }
    }
    fn reapply() -> Job {
        Job {
            what: What::Reapply,
            reply: None,
            queued: Instant::now(),
        }
    }

    /// The configuration this job asks for, from the running one.
    fn desired(&self, cur: &Config) -> Result<(Config, Removal), String> {
        match &self.what {
            What::Change(c) => cur
                .apply_change(c.as_ref().clone())
                .map_err(|e| e.to_string()),
            What::Apply { text, now, force } => {
                let new = Config::parse_apply(text, cur).map_err(|e| e.to_string())?;
                if !force {
                    cur.check_apply(&new).map_err(|e| e.to_string())?;
                }
                Ok((new, if *now { Removal::Now } else { Removal::Drain }))
            }
            What::Reapply => Ok((cur.clone(), Removal::Drain)),
        }
    }

    fn answer(self, r: Response) {
        if let Some(tx) = self.reply {
            let _ = tx.send(r);
        }
    }
}

pub struct Owner {
    pub(super) state: State,
    pub(super) dp: Dataplane,
    pub(super) store: FileStore,
    pub(super) sampler: Sampler,
    pub(super) lease: Option<Lease>,
    pub(super) node: Node,
    pub(super) occupancy: Occupancy,
    pub(super) monitor: Monitor,
    pub(super) resolver: Arc<Resolver>,
    pub(super) announce: Announcements,
    /// Flow sync with the fleet, when `[sync]` is configured.
    pub(super) sync: Option<super::sync::SyncLink>,
    ticks: u64,
    /// For spawned tasks to report back.
    pub(super) tx: mpsc::Sender<Command>,
    queue: VecDeque<Job>,
    /// A queued change waits for next hops or for its plan.
    waiting: bool,
    refreshing: bool,
}

/// The effects of one operation on the owner's maps and state file.
macro_rules! effects {
    ($o:expr) => {
        $crate::state::Env {
            maps: &mut $o.dp,
            store: &mut $o.store,
            ifindex: &$crate::daemon::ifindex,
            clock: $crate::daemon::clock(),
        }
    };
}
pub(super) use effects;

impl Owner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: State,
        dp: Dataplane,
        store: FileStore,
        node: Node,
        monitor: Monitor,
        resolver: Arc<Resolver>,
        announce: Announcements,
        tx: mpsc::Sender<Command>,
    ) -> Owner {
        Owner {
            state,
            dp,
            store,
            sampler: Sampler::default(),
            lease: None,
            node,
            occupancy: Occupancy::default(),
            monitor,
            resolver,
            announce,
            sync: None,
            ticks: 0,
            tx,
            queue: VecDeque::new(),
            waiting: false,
            refreshing: false,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.sync_probes();
        self.announce();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Request { req, reply } => self.request(*req, reply),
                Command::Health(t) => self.health(t),
                Command::Tick => self.tick(),
                Command::RefreshNextHops => self.refresh(),
                Command::Resolved(w) => {
                    self.waiting = false;
                    let Waited {
                        job,
                        new,
                        removal,
                        resolved,
                    } = *w;
                    self.finish(job, new, removal, &resolved);
                    self.pump();
                }
                Command::Planned(p) => {
                    self.waiting = false;
                    let (job, planned, ready) = *p;
                    self.dp.ready(ready);
                    let mut env = effects!(self);
                    let result = planned.and_then(|p| self.state.apply_planned(&mut env, p));
                    self.dp.unready();
                    self.answer(job, result);
                    self.pump();
                }
                Command::Refreshed(answers) => {
                    self.refreshing = false;
                    let mut env = effects!(self);
                    if self.state.refresh_nexthops(&mut env, answers) {
                        self.queue.push_front(Job::reapply());
                        self.pump();
                    }
                }
                Command::Routes(r) => self.announce.report(r),
                Command::Sync(s) => self.sync_in(s),
                Command::Ready { reply } => {
                    let _ = reply.send(Readiness {
                        applied: self.state.counters().applies > 0,
                        unresolved: self.state.summary().unresolved,
                    });
                }
                Command::Shutdown { detach, reply } => {
                    self.shutdown(detach);
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    /// Changes queued or in flight, not yet in the maps.
    pub(super) fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.waiting)
    }

    /// Queue a change and start on the queue.
    pub(super) fn enqueue(&mut self, job: Job) {
        self.queue.push_back(job);
        self.pump();
    }

    /// Apply queued changes in order; one that needs next hops resolved waits for them (in a
    /// spawned task) and holds up only the changes behind it.
    fn pump(&mut self) {
        while !self.waiting {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            let (new, removal) = match job.desired(self.state.cfg()) {
                Ok(x) => x,
                Err(e) => {
                    job.answer(Response::err(e));
                    continue;
                }
            };
            let missing = self.state.missing_nexthops(&new);
            if missing.is_empty() {
                self.finish(job, new, removal, &Resolved::new());
                continue;
            }
            self.waiting = true;
            let (resolver, tx) = (self.resolver.clone(), self.tx.clone());
            tokio::spawn(async move {
                let answers = resolver.resolve_all(&missing).await;
                let resolved = missing.into_iter().zip(answers).collect();
                let w = Waited {
                    job,
                    new,
                    removal,
                    resolved,
                };
                let _ = tx.send(Command::Resolved(Box::new(w))).await;
            });
        }
    }

    /// Prepare a change on the state and plan it on a blocking thread: building the rings of
    /// a large change must not hold up queries.
    fn finish(&mut self, job: Job, new: Config, removal: Removal, resolved: &Resolved) {
        let env = effects!(self);
        let prepared: Result<Prepared, ApplyError> =
            self.state.prepare(&env, new, removal, resolved.clone());
        match prepared {
            Err(e) => self.answer(job, Err(e)),
            Ok(p) => {
                self.waiting = true;
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || {
                    let planned = p.plan();
                    // The kernel-side ring fills too: a 1M-slot ring takes tens of ms to write.
                    // A ring that fails here is simply written on the owner.
                    let ready = planned.as_ref().map_or_else(
                        |_| Vec::new(),
                        |p| {
                            p.ring_tables()
                                .iter()
                                .filter_map(|t| Dataplane::prefill_ring(t).ok())
                                .collect()
                        },
                    );
                    let _ = tx.blocking_send(Command::Planned(Box::new((job, planned, ready))));
                });
            }
        }
    }

    fn answer(&mut self, job: Job, result: Result<crate::state::ApplyReport, ApplyError>) {
        // Flows the new rings disagree with are shipped at once, before any node can die.
        if matches!(&result, Ok(r) if r.rings_swapped > 0) {
            self.sync_scan(None, true);
        }
        let response = match result {
            Ok(r) => {
                let report = ApplyReport {
                    vips_added: r.vips_added,
                    vips_removed: r.vips_removed,
                    vips_changed: r.vips_changed,
                    backends_added: r.backends_added,
                    backends_removed: r.backends_removed,
                    backends_draining: r.backends_draining,
                    rings_swapped: r.rings_swapped,
                    map_writes: r.map_writes,
                    elapsed_us: job.queued.elapsed().as_micros() as u64,
                    warnings: r.warnings,
                };
                if job.reply.is_some() {
                    info!(?report, "configuration applied");
                }
                release_freed_memory();
                Response::of(&report)
            }
            Err(e) => {
                if job.reply.is_some() {
                    warn!(error = %e, "configuration refused");
                } else {
                    error!(error = %e, "applying a health transition");
                }
                Response::err(e)
            }
        };
        job.answer(response);
        self.sync_probes();
        self.announce();
    }

    fn health(&mut self, t: Transition) {
        let Some(m) = self.state.members().get(&t.id) else {
            return;
        };
        let (vip, backend) = (m.vip.to_string(), m.address.to_string());
        if !self
            .state
            .record_health(t.id, t.up, &t.reason, Instant::now())
        {
            return;
        }
        let state = if t.up { "up" } else { "down" };
        if t.up {
            info!(%vip, %backend, state, reason = %t.reason, "backend health changed");
        } else {
            warn!(%vip, %backend, state, reason = %t.reason, "backend health changed");
        }
        // Health goes before queued edits: it is what keeps traffic off a dead backend.
        self.queue.push_front(Job::reapply());
        self.pump();
    }

    fn tick(&mut self) {
        let mut env = effects!(self);
        if let Err(e) = self.state.tick_clock(&mut env) {
            warn!(error = %e, "writing the conntrack clock");
        }
        // While a change is in flight its plan stands on the ids a reap would change.
        if !self.waiting
            && let Err(e) = self.state.reap(&mut env)
        {
            warn!(error = %e, "finishing drained removals");
        }
        capture::expire(&mut self.lease, &mut self.state, &mut env);
        if !self.waiting && self.state.check_interfaces(&env) {
            self.queue.push_front(Job::reapply());
            self.pump();
        }
        let snap = query::snapshot(&self.state, &self.dp);
        // Entries written: new flows less the re-picks that rewrote an existing entry.
        let writes = snap
            .vips
            .values()
            .map(|v| v.new_flows.saturating_sub(v.failovers + v.expired))
            .sum();
        let capacity = crate::state::Maps::conntrack_capacity(&self.dp).unwrap_or(0) as u64;
        let dp = &self.dp;
        self.occupancy
            .observe(Instant::now(), writes, capacity, || {
                dp.flows().ok().map(|f| occupancy::tally(&f))
            });
        self.sampler.record(Instant::now(), snap);
        self.ticks += 1;
        if let Some(l) = &self.sync
            && self.ticks.is_multiple_of(u64::from(l.refresh_secs))
        {
            self.sync_scan(None, false);
        }
        self.sync_probes();
        // Holds and min_up periods end with the clock.
        self.announce();
    }

    fn refresh(&mut self) {
        if self.refreshing || self.waiting {
            return;
        }
        self.refreshing = true;
        let queries = self.state.nexthop_queries();
        let (resolver, tx) = (self.resolver.clone(), self.tx.clone());
        tokio::spawn(async move {
            let asked: Vec<_> = queries.iter().map(|(_, a, l2)| (*a, *l2)).collect();
            let answers = resolver.resolve_all(&asked).await;
            let answers = queries.iter().map(|q| q.0).zip(answers).collect();
            let _ = tx.send(Command::Refreshed(answers)).await;
        });
    }

    /// Point the health monitor at the current members.
    fn sync_probes(&mut self) {
        let targets = self.state.probe_targets();
        let health = self.state.health();
        self.monitor
            .sync(targets, |id| health.get(&id).is_none_or(|h| h.up));
    }

    /// Scan conntrack for divergent flows and hand them to the sync task: a refresh to every
    /// peer, or a resync answer to one.
    fn sync_scan(&mut self, to: Option<std::net::SocketAddr>, ask_peers: bool) {
        let Some(link) = &self.sync else {
            return;
        };
        let t0 = Instant::now();
        let now = super::clock().stamp();
        match self.state.divergent(&self.dp, now) {
            Ok(d) => {
                link.scanned(d.records.len(), t0.elapsed());
                let out = super::sync::Outbound {
                    digests: self.state.vip_digests(),
                    records: d.records,
                    to,
                    ask_peers,
                };
                // A full channel drops this scan; the next refresh sends the same flows.
                if link.tx.try_send(out).is_err() {
                    warn!("sync: the sender is behind; this scan is skipped");
                }
            }
            Err(e) => warn!(error = %e, "sync: scanning conntrack"),
        }
    }

    fn sync_in(&mut self, s: super::sync::Inbound) {
        match s {
            super::sync::Inbound::Records {
                peer,
                digests,
                records,
            } => {
                let mut env = effects!(self);
                let r = self.state.receive(&mut env, &digests, &records);
                if !r.mismatched.is_empty() {
                    warn!(%peer, vips = ?r.mismatched, "sync: the peer's config differs for these VIPs; its flows for them are refused");
                }
                if let Some(l) = &self.sync {
                    l.received(peer, &r);
                }
            }
            super::sync::Inbound::ResyncRequest { peer } => self.sync_scan(Some(peer), false),
            super::sync::Inbound::Ready => {
                self.announce.announcer.resync_pending = false;
                self.announce();
            }
        }
    }

    /// Decide announcements again and hand them to the route task.
    pub(super) fn announce(&mut self) {
        let cfg = self.state.cfg();
        let addrs = match &cfg.announce {
            Some(settings) => self.announce.announcer.evaluate(
                settings,
                &self.state.serving(),
                self.state.node_drained(),
                Instant::now(),
            ),
            None => Default::default(),
        };
        self.announce.want(Wanted {
            settings: cfg.announce.clone(),
            addrs,
        });
    }

    fn shutdown(&mut self, detach: bool) {
        // A stopped node attracts no traffic: its routes go (a killed one leaves them, and
        // the routers' BFD or hold timers take it out).
        self.announce.want(Wanted {
            settings: self.state.cfg().announce.clone(),
            addrs: Default::default(),
        });
        // A capture nobody will read any more must not keep costing the forwarder.
        if let Some(session) = self.lease.as_ref().map(|l| l.session) {
            let mut env = effects!(self);
            let _ = capture::stop(&mut self.lease, &mut self.state, &mut env, session);
        }
        if !detach {
            info!(
                "exiting; the forwarder keeps running from its pinned links until the next daemon adopts them"
            );
            return;
        }
        let pin_dir = self.state.cfg().daemon.pin_dir.clone();
        for iface in self.dp.attached() {
            let _ = self
                .dp
                .detach(&iface, Some(&pin::link_path(&pin_dir, &iface)));
        }
        match pin::remove_all(&pin_dir) {
            Ok(removed) => info!(?removed, "detached; pins and state removed"),
            Err(e) => warn!(error = %e, "removing pins"),
        }
        let _ = std::fs::remove_file(&self.state.cfg().daemon.state_file);
    }
}

/// Give the allocator's free memory back to the system. An apply builds every changed ring at
/// once (256 KiB each at the default size), and glibc keeps such freed chunks in the heap, so
/// without this the daemon's RSS would stay at its peak after a large change.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
