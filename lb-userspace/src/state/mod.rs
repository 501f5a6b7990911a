//! The daemon's state and its rules, without I/O: ids (`ids`), what the maps should hold
//! (`plan`), the ordered writes that get them there (`diff`), health records (`health`) and
//! the saved state (`persist`). Effects go through two seams, `Maps` (the kernel) and `Store`
//! (the state file), so every rule here is a unit test against `fake`.

pub mod announce;
pub mod diff;
pub mod fake;
pub mod health;
pub mod ids;
pub mod maps;
pub mod persist;
pub mod plan;
pub mod sync;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tracing::{info, warn};

pub use self::{
    diff::{MapOp, Published, RingInputs},
    health::Health,
    ids::{Ids, Removing},
    maps::{Attached, Maps, MapsError},
    persist::{AttachedIface, PersistError, Saved, Store},
    plan::{Member, NextHop, Plan, PlanError, Unreachable},
};
use crate::config::{
    Config, ConfigError, DaemonConfig, FwdMode, HealthCheck, ProbeVia, Removal, VipRef,
};

/// Next-hop answers for (address, must be on link).
pub type Resolved = HashMap<(IpAddr, bool), Result<NextHop, Unreachable>>;

/// The times an operation runs at, given rather than read so tests choose them.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
    /// `CLOCK_MONOTONIC_COARSE` in ns: the clock conntrack stamps are compared with.
    pub mono_ns: u64,
}

impl Clock {
    /// What the forwarder stamps flows with now: the `CLOCK` value this clock writes.
    pub fn stamp(&self) -> u64 {
        self.mono_ns + lb_common::CLOCK_LEAD_NS
    }
}

/// The effects an operation may have.
pub struct Env<'a> {
    pub maps: &'a mut dyn Maps,
    pub store: &'a mut dyn Store,
    /// An interface's index in the daemon's namespace.
    pub ifindex: &'a dyn Fn(&str) -> Option<u32>,
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// Valid, but cannot be realised now (unresolvable next hop, a daemon setting changed).
    #[error("change refused, nothing applied:{}", .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Refused(Vec<String>),
    /// A write failed; the previous state was restored where possible.
    #[error("nothing applied, rolled back: a data plane write failed ({0})")]
    Dataplane(#[source] MapsError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// What an apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub vips_changed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_draining: usize,
    pub rings_swapped: usize,
    pub map_writes: usize,
    /// What the operator should know about the result (unreachable backends, VIPs left
    /// without a backend that takes new flows).
    pub warnings: Vec<String>,
}

/// Control-plane event counts since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub applies: u64,
    pub ring_rebuilds: u64,
    pub health_transitions: u64,
    pub quorum_losses: u64,
    /// Times a backend's next hop became unresolvable (it left the rings).
    pub unresolved: u64,
    /// Times an attached interface was deleted or re-created under the forwarder.
    pub interfaces_lost: u64,
}

/// What the health monitor probes for one backend id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The backend's address and check port, or the VIP's (`via = "vip"`).
    pub addr: SocketAddr,
    /// `SO_MARK` of the probe socket (`via = "vip"`: `xlb_probe` encapsulates it).
    pub mark: Option<u32>,
    pub check: HealthCheck,
}

/// Backend counts for `xlb status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub vips: usize,
    pub backends: usize,
    pub up: usize,
    pub down: usize,
    pub drained: usize,
    pub removing: usize,
    pub unresolved: usize,
}

pub struct State {
    cfg: Config,
    ids: Ids,
    removing: Vec<Removing>,
    attached: Vec<AttachedIface>,
    members: BTreeMap<u32, Member>,
    published: Published,
    health: HashMap<u32, Health>,
    below_quorum: BTreeSet<VipRef>,
    seeded_from: Option<String>,
    /// The node is drained (`xlb drain-node`): it announces nothing, and stays so across
    /// restarts until `xlb undrain-node`.
    node_drained: bool,
    capture: bool,
    nr_cpus: u16,
    started: Instant,
    counters: Counters,
    /// Bumped by every change a plan depends on, so a plan made meanwhile is made again.
    generation: u64,
}

impl State {
    pub fn new(daemon: DaemonConfig, nr_cpus: u16, started: Instant) -> State {
        State {
            cfg: Config {
                daemon,
                ..Config::default()
            },
            ids: Ids::default(),
            removing: Vec::new(),
            attached: Vec::new(),
            members: BTreeMap::new(),
            published: Published::default(),
            health: HashMap::new(),
            below_quorum: BTreeSet::new(),
            seeded_from: None,
            node_drained: false,
            capture: false,
            nr_cpus,
            started,
            counters: Counters::default(),
            generation: 0,
        }
    }

    /// Take over ids, pending removals, interfaces and health from a saved state before the
    /// first apply, so a restarted daemon writes exactly the values its predecessor left.
    pub fn restore(&mut self, saved: &Saved, now: Instant) {
        self.generation += 1;
        self.ids = saved.ids.clone();
        self.removing = saved.removing.clone();
        self.attached = saved.attached.clone();
        for id in &saved.down {
            self.health
                .insert(*id, Health::new(false, "down before the restart", now));
        }
        self.seeded_from = saved.seeded_from.clone();
        self.node_drained = saved.node_drained;
    }

    pub fn node_drained(&self) -> bool {
        self.node_drained
    }

    /// Drain or undrain the node, saved at once so a restart keeps it.
    pub fn set_node_drained(&mut self, env: &mut Env, drained: bool) -> Result<(), PersistError> {
        let was = self.node_drained;
        self.node_drained = drained;
        if let Err(e) = env.store.save(&self.saved()) {
            self.node_drained = was;
            return Err(e);
        }
        Ok(())
    }

    /// Whether each VIP can take traffic here, or why not: the input of announcements.
    pub fn serving(&self) -> Vec<(VipRef, announce::Serving)> {
        self.cfg
            .vips
            .iter()
            .map(|v| {
                let id = v.id();
                let members = self
                    .ids
                    .vip_id(&id)
                    .and_then(|vid| self.published.rings.get(&vid))
                    .map_or(0, |r| r.members.len());
                let serving = if members == 0 {
                    Err("no backend takes new flows".to_string())
                } else if v.on_quorum_loss == crate::config::QuorumLoss::Withdraw
                    && self.below_quorum.contains(&id)
                {
                    Err(format!(
                        "below its quorum of {} healthy backends",
                        v.quorum.unwrap_or(0)
                    ))
                } else {
                    Ok(())
                };
                (id, serving)
            })
            .collect()
    }

    pub fn set_seeded_from(&mut self, digest: Option<String>) {
        self.seeded_from = digest;
    }

    pub fn cfg(&self) -> &Config {
        &self.cfg
    }
    pub fn ids(&self) -> &Ids {
        &self.ids
    }
    pub fn members(&self) -> &BTreeMap<u32, Member> {
        &self.members
    }
    pub fn removing(&self) -> &[Removing] {
        &self.removing
    }
    pub fn attached(&self) -> &[AttachedIface] {
        &self.attached
    }
    pub fn health(&self) -> &HashMap<u32, Health> {
        &self.health
    }
    pub fn below_quorum(&self) -> &BTreeSet<VipRef> {
        &self.below_quorum
    }
    pub fn published(&self) -> &Published {
        &self.published
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn started(&self) -> Instant {
        self.started
    }
    pub fn capture(&self) -> bool {
        self.capture
    }

    /// The next hop already known for a member of `new`, if it still holds: same address,
    /// same forwarding mode (L2 needs an on-link neighbour), resolved.
    fn cached_nexthop(
        &self,
        new: &Config,
        vip: &VipRef,
        addr: IpAddr,
    ) -> Option<Result<NextHop, Unreachable>> {
        let id = self.ids.backend_id(vip, &addr)?;
        let fwd = |c: &Config| c.vip(vip).map(|v| v.forwarding);
        let m = self
            .members
            .get(&id)
            .filter(|m| m.address == addr)
            .filter(|_| fwd(&self.cfg) == fwd(new))?;
        match (&m.unresolved, &m.nexthop) {
            // Known unreachable: the periodic refresh resolves it again, not every change.
            (Some(e), _) => Some(Err(Unreachable(e.clone()))),
            (None, Some(nh)) => Some(Ok(nh.clone())),
            (None, None) => None,
        }
    }

    /// Next hops `new` needs that are not known: (address, must be on link).
    pub fn missing_nexthops(&self, new: &Config) -> Vec<(IpAddr, bool)> {
        let mut out = BTreeSet::new();
        for v in &new.vips {
            for b in &v.backends {
                if self.cached_nexthop(new, &v.id(), b.address).is_none() {
                    out.insert((b.address, v.forwarding == FwdMode::L2));
                }
            }
        }
        out.into_iter().collect()
    }

    /// Every member's next hop: known, or from `resolved`, or why not.
    fn nexthops_for(
        &self,
        new: &Config,
        ids: &Ids,
        resolved: &Resolved,
    ) -> HashMap<u32, Result<NextHop, Unreachable>> {
        let mut out = HashMap::new();
        for (vip, addr, id) in &ids.backends {
            let Some(v) = new.vip(vip) else { continue };
            let nh = self.cached_nexthop(new, vip, *addr).unwrap_or_else(|| {
                resolved
                    .get(&(*addr, v.forwarding == FwdMode::L2))
                    .cloned()
                    .unwrap_or_else(|| Err(Unreachable("next hop not resolved".into())))
            });
            out.insert(*id, nh);
        }
        out
    }

    /// Apply a complete desired configuration: plan everything that can fail, then write only
    /// what changed, in safe order, then save. A failed write or save puts back what was
    /// there; nothing half-applies.
    pub fn apply(
        &mut self,
        env: &mut Env,
        new: Config,
        removal: Removal,
        resolved: &Resolved,
    ) -> Result<ApplyReport, ApplyError> {
        let planned = self.prepare(env, new, removal, resolved.clone())?.plan()?;
        self.apply_planned(env, planned)
    }

    /// Everything of a change that needs the state: validation, ids, next hops. The result
    /// owns what the plan needs, so the plan (the Maglev builds) can run on another thread
    /// while the state keeps answering.
    pub fn prepare(
        &self,
        env: &Env,
        new: Config,
        removal: Removal,
        resolved: Resolved,
    ) -> Result<Prepared, ApplyError> {
        new.validate()?;
        if new.daemon != self.cfg.daemon {
            return Err(ApplyError::Refused(vec![
                "the [daemon] section differs from the running daemon's; it only changes with a restart"
                    .into(),
            ]));
        }
        // The sync task is set up once at start, with its socket and key.
        if self.counters.applies > 0 && new.sync != self.cfg.sync {
            return Err(ApplyError::Refused(vec![
                "the [sync] section differs from the running daemon's; it only changes with a restart"
                    .into(),
            ]));
        }
        let alloc = ids::allocate(&new, &self.ids, &self.removing, removal, env.clock.unix_ms)
            .map_err(ApplyError::Refused)?;
        let nexthops = self.nexthops_for(&new, &alloc.ids, &resolved);
        let single_ingress = match new.interfaces.as_slice() {
            [only] => (env.ifindex)(&only.name),
            _ => None,
        };
        Ok(Prepared {
            generation: self.generation,
            new,
            removal,
            resolved,
            alloc,
            nexthops,
            health: self.health.clone(),
            published: self.published.clone(),
            single_ingress,
            capture: self.capture,
            nr_cpus: self.nr_cpus,
        })
    }

    /// Write a planned change, commit it and save; a failed write or save puts back what was
    /// there. A plan made from a state that changed since (a drain finished, a next hop moved)
    /// is made again first.
    pub fn apply_planned(
        &mut self,
        env: &mut Env,
        planned: Planned,
    ) -> Result<ApplyReport, ApplyError> {
        let Planned {
            generation,
            new,
            removal,
            resolved,
            plan,
        } = planned;
        let (new, plan) = if generation == self.generation {
            (new, plan)
        } else {
            let p = self.prepare(env, new, removal, resolved)?.plan()?;
            (p.new, p.plan)
        };
        let before = self.published.clone();
        let report = self.report(&new, &plan);
        match self.publish(env, &plan) {
            Ok(writes) => {
                let old = self.commit(env, new, plan);
                if let Err(e) = env.store.save(&self.saved()) {
                    warn!(error = %e, "saving state failed, restoring the previous state");
                    self.roll_back(env, old, &before);
                    return Err(e.into());
                }
                self.counters.applies += 1;
                for w in report
                    .warnings
                    .iter()
                    .filter(|w| w.contains("no backend takes"))
                {
                    warn!("{w}");
                }
                Ok(ApplyReport {
                    map_writes: writes,
                    ..report
                })
            }
            Err(e) => {
                warn!(error = %e, "apply failed midway, restoring the previous state");
                let old = self.snapshot();
                self.roll_back(env, old, &before);
                Err(ApplyError::Dataplane(e))
            }
        }
    }

    /// What an operator should hear about a plan, also logged.
    fn warnings(new: &Config, plan: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        for m in plan.members.values() {
            if let Some(e) = &m.unresolved {
                out.push(format!(
                    "{} backend {}: next hop unresolved ({e}); out of the ring until it resolves",
                    m.vip, m.address
                ));
            }
        }
        for v in &new.vips {
            let empty = plan
                .ids
                .vip_id(&v.id())
                .and_then(|id| plan.rings.get(&id))
                .is_some_and(|r| {
                    matches!(r, plan::RingPlan::Build { inputs, .. } if inputs.members.is_empty())
                });
            if empty {
                out.push(format!(
                    "{}: no backend takes new flows; its new flows are dropped (drop_no_backend)",
                    v.id()
                ));
            }
        }
        out
    }

    fn report(&self, new: &Config, plan: &Plan) -> ApplyReport {
        let p = &self.published;
        ApplyReport {
            warnings: Self::warnings(new, plan),
            vips_added: plan.vips.keys().filter(|k| !p.vips.contains_key(k)).count(),
            vips_removed: p.vips.keys().filter(|k| !plan.vips.contains_key(k)).count(),
            vips_changed: plan
                .vips
                .iter()
                .filter(|(k, m)| p.vips.get(k).is_some_and(|o| o != *m))
                .count(),
            backends_added: plan
                .members
                .keys()
                .filter(|id| !p.backends.contains_key(id))
                .count(),
            backends_removed: plan.freed.len(),
            backends_draining: plan.draining,
            rings_swapped: plan
                .rings
                .values()
                .filter(|r| matches!(r, plan::RingPlan::Build { .. }))
                .count(),
            map_writes: 0,
        }
    }

    /// Write the plan's diff; on failure `published` says what did get written.
    fn publish(&mut self, env: &mut Env, plan: &Plan) -> Result<usize, MapsError> {
        self.generation += 1;
        let held: Vec<String> = self.attached.iter().map(|a| a.name.clone()).collect();
        let mut writes = 0;
        for step in diff::diff(plan, &self.published, &held) {
            let outcome = env.maps.write(&step.op)?;
            writes += step.op.writes();
            self.published.record(&step.op, step.inputs.as_ref());
            match (&step.op, outcome) {
                (MapOp::Ring { .. }, _) => self.counters.ring_rebuilds += 1,
                (MapOp::Attach { iface, mode }, Some(a)) => {
                    let ifindex = (env.ifindex)(iface);
                    self.attached_as(iface, *mode, a, ifindex)
                }
                (MapOp::Detach { iface }, _) => {
                    self.attached.retain(|a| &a.name != iface);
                    info!(%iface, "forwarder detached");
                }
                _ => {}
            }
        }
        Ok(writes)
    }

    fn attached_as(
        &mut self,
        iface: &str,
        requested: crate::config::AttachMode,
        a: Attached,
        ifindex: Option<u32>,
    ) {
        if a.fell_back {
            warn!(
                %iface,
                "FALLBACK: the driver refused native XDP; the forwarder runs in generic mode, at a fraction of native speed"
            );
        }
        info!(%iface, mode = ?a.mode, replaced = a.replaced, "forwarder attached");
        let known = self
            .attached
            .iter()
            .find(|x| x.name == iface)
            .map(|x| x.mode);
        let mode = match (a.replaced, known) {
            (true, Some(m)) => m,
            _ => a.mode,
        };
        self.attached.retain(|x| x.name != iface);
        self.attached.push(AttachedIface {
            name: iface.to_string(),
            requested,
            mode,
            ifindex,
        });
    }

    /// Notice interfaces deleted or re-created under the forwarder: a deleted one is reported
    /// and counted, and the forwarder is attached again when it is back. Returns whether the
    /// configuration must be applied again (to attach).
    pub fn check_interfaces(&mut self, env: &Env) -> bool {
        let mut reapply = false;
        for a in &mut self.attached {
            let now = (env.ifindex)(&a.name);
            if now == a.ifindex {
                continue;
            }
            self.generation += 1;
            self.published.links.remove(&a.name);
            match (a.ifindex, now) {
                (Some(was), None) => {
                    warn!(iface = %a.name, ifindex = was, "interface gone: the forwarder went with it; it is attached again when the interface returns");
                    self.counters.interfaces_lost += 1;
                }
                (Some(was), Some(is)) => {
                    warn!(iface = %a.name, was, is, "interface re-created: attaching the forwarder again");
                    self.counters.interfaces_lost += 1;
                    reapply = true;
                }
                (None, Some(_)) => {
                    info!(iface = %a.name, "interface back: attaching the forwarder again");
                    reapply = true;
                }
                (None, None) => {}
            }
            a.ifindex = now;
        }
        reapply
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cfg: self.cfg.clone(),
            ids: self.ids.clone(),
            removing: self.removing.clone(),
            members: self.members.clone(),
            health: self.health.clone(),
            below_quorum: self.below_quorum.clone(),
        }
    }

    /// Make the written plan the state; returns what it replaced.
    fn commit(&mut self, env: &Env, new: Config, plan: Plan) -> Snapshot {
        let old = self.snapshot();
        for v in plan.below_quorum.difference(&self.below_quorum) {
            let policy = self.cfg.vip(v).or(new.vip(v)).map(|x| x.on_quorum_loss);
            warn!(vip = %v, ?policy, "fewer healthy backends than the quorum");
            self.counters.quorum_losses += 1;
        }
        for v in self.below_quorum.difference(&plan.below_quorum) {
            info!(vip = %v, "quorum of healthy backends restored");
        }
        self.below_quorum = plan.below_quorum;
        for (id, m) in &plan.members {
            let was = self.members.get(id).is_some_and(|o| o.unresolved.is_some());
            if let Some(e) = &m.unresolved
                && !was
            {
                warn!(vip = %m.vip, backend = %m.address, error = %e, "next hop unresolved: out of the ring until it resolves");
                self.counters.unresolved += 1;
            }
        }
        self.members = plan.members;
        let members = &self.members;
        self.health.retain(|id, _| members.contains_key(id));
        for (id, m) in &self.members {
            self.health.entry(*id).or_insert_with(|| {
                // An unreachable member is down for the rings, not for its health check.
                let up = m.unresolved.is_some() || m.value.state & lb_common::BACKEND_F_DOWN == 0;
                Health::new(up, "start state", env.clock.now)
            });
        }
        self.cfg = new;
        self.ids = plan.ids;
        self.removing = plan.removing;
        old
    }

    /// Put back `old` and, best effort, the maps as `before` had them: the old configuration
    /// planned again over what is written now.
    fn roll_back(&mut self, env: &mut Env, old: Snapshot, before: &Published) {
        self.cfg = old.cfg;
        self.ids = old.ids;
        self.removing = old.removing;
        self.members = old.members;
        self.health = old.health;
        self.below_quorum = old.below_quorum;
        // Known next hops of the old members, for re-planning without resolution.
        let resolved: Resolved = self
            .members
            .values()
            .filter_map(|m| {
                let l2 = self.cfg.vip(&m.vip)?.forwarding == FwdMode::L2;
                Some(((m.address, l2), Ok(m.nexthop.clone()?)))
            })
            .collect();
        let cfg = self.cfg.clone();
        let restored = self
            .prepare(env, cfg, Removal::Now, resolved)
            .and_then(Prepared::plan)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                self.publish(env, &p.plan).map_err(|e| e.to_string())?;
                Ok(p.plan)
            });
        match restored {
            Ok(p) => self.members = p.members,
            Err(e) => {
                warn!(error = %e, "restoring the previous state failed; the maps may differ from it");
                if self.published != *before {
                    warn!("published state differs from before the failed apply");
                }
            }
        }
    }

    /// What a restart needs.
    pub fn saved(&self) -> Saved {
        Saved {
            version: persist::SAVED_VERSION,
            config: self.cfg.clone(),
            seeded_from: self.seeded_from.clone(),
            ids: self.ids.clone(),
            removing: self.removing.clone(),
            attached: self.attached.clone(),
            node_drained: self.node_drained,
            down: {
                let mut d: Vec<u32> = self
                    .health
                    .iter()
                    .filter(|(_, h)| !h.up)
                    .map(|(id, _)| *id)
                    .collect();
                d.sort();
                d
            },
        }
    }

    /// Record a health transition of backend `id`; true when it changed (then the caller
    /// applies the configuration again, which takes it out of or back into the rings).
    pub fn record_health(&mut self, id: u32, up: bool, reason: &str, now: Instant) -> bool {
        let Some(h) = self.health.get_mut(&id) else {
            return false;
        };
        if !h.set(up, reason, now) {
            return false;
        }
        self.generation += 1;
        self.counters.health_transitions += 1;
        true
    }

    /// Advance the clock conntrack stamps flows with (ahead of the coarse clock, so stamps are
    /// never older than the packet).
    pub fn tick_clock(&mut self, env: &mut Env) -> Result<(), MapsError> {
        env.maps.set_clock(env.clock.stamp())
    }

    /// Turn the capture flag of `CONFIG` on or off.
    pub fn set_capture(&mut self, env: &mut Env, on: bool) -> Result<(), MapsError> {
        self.generation += 1;
        let mut c = plan::lb_config(&self.cfg, self.nr_cpus);
        if on {
            c.flags |= lb_common::CFG_F_CAPTURE;
        }
        let op = MapOp::Config(c);
        env.maps.write(&op)?;
        self.published.record(&op, None);
        self.capture = on;
        Ok(())
    }

    /// Backend ids with a tracked flow seen within `idle`.
    pub fn active_backends(&self, env: &Env, idle: Duration) -> Result<BTreeSet<u32>, MapsError> {
        let horizon = idle.as_nanos() as u64;
        let mut out = BTreeSet::new();
        for (_, s) in env.maps.flows()? {
            if env.clock.mono_ns.saturating_sub(s.last_seen_ns) <= horizon {
                out.insert(s.backend_id);
            }
        }
        Ok(out)
    }

    /// Finish removals whose backends have no recently active tracked flow, or whose drain
    /// timed out. Returns how many finished.
    pub fn reap(&mut self, env: &mut Env) -> Result<usize, MapsError> {
        if self.removing.is_empty() {
            return Ok(0);
        }
        let d = &self.cfg.daemon;
        let idle = Duration::from_secs(d.drain_idle_secs as u64);
        let timeout_ms = d.drain_timeout_secs as u64 * 1000;
        let active = self.active_backends(env, idle)?;
        // Flows are stamped from the clock this daemon writes: stamps made while no daemon ran
        // are stale, so idleness means nothing until the clock has ticked for `idle`.
        let trust_idle = env.clock.now.duration_since(self.started) >= idle;
        let done: Vec<u32> = self
            .removing
            .iter()
            .filter(|r| {
                let age = env.clock.unix_ms.saturating_sub(r.since_unix_ms);
                (trust_idle && !active.contains(&r.id)) || age >= timeout_ms
            })
            .map(|r| r.id)
            .collect();
        if !done.is_empty() {
            self.generation += 1;
        }
        for id in &done {
            let op = MapOp::Backend {
                id: *id,
                value: diff::down_backend(),
            };
            env.maps.write(&op)?;
            self.published.record(&op, None);
            self.members.remove(id);
            if let Some(r) = self.removing.iter().find(|r| r.id == *id) {
                info!(vip = %r.vip, backend = %r.address, "drained backend removed");
            }
            self.removing.retain(|r| r.id != *id);
            self.ids.backends.retain(|(_, _, b)| b != id);
        }
        if !done.is_empty()
            && let Err(e) = env.store.save(&self.saved())
        {
            warn!(error = %e, "saving state");
        }
        Ok(done.len())
    }

    /// What to re-resolve: (id, address, must be on link) of every member.
    pub fn nexthop_queries(&self) -> Vec<(u32, IpAddr, bool)> {
        self.members
            .iter()
            .map(|(id, m)| {
                let l2 = self
                    .cfg
                    .vip(&m.vip)
                    .is_some_and(|v| v.forwarding == FwdMode::L2);
                (*id, m.address, l2)
            })
            .collect()
    }

    /// Fresh next-hop answers. A changed MAC is rewritten at once; a next hop that stopped
    /// resolving (its host or link gone), one that resolves again, or one that moved to another
    /// interface needs the configuration applied again (the member leaves or rejoins the rings,
    /// or takes another egress port): returns whether it does.
    pub fn refresh_nexthops(
        &mut self,
        env: &mut Env,
        answers: Vec<(u32, Result<NextHop, Unreachable>)>,
    ) -> bool {
        self.generation += 1;
        let mut reapply = false;
        for (id, answer) in answers {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            match answer {
                Ok(nh) => {
                    if m.unresolved.is_some()
                        || m.nexthop.as_ref().is_none_or(|o| o.ifindex != nh.ifindex)
                    {
                        if m.unresolved.take().is_some() {
                            info!(backend = %m.address, vip = %m.vip, "next hop resolves again; back in the ring");
                        }
                        m.nexthop = Some(nh);
                        reapply = true;
                        continue;
                    }
                    let mut value = m.value;
                    value.dst_mac = nh.dst_mac;
                    if value.tx_port != 0 {
                        value.src_mac = nh.src_mac;
                    }
                    m.nexthop = Some(nh);
                    if value != m.value {
                        let op = MapOp::Backend { id, value };
                        if let Err(e) = env.maps.write(&op) {
                            warn!(backend = %m.address, error = %e, "rewriting backend");
                            continue;
                        }
                        self.published.record(&op, None);
                        info!(backend = %m.address, vip = %m.vip, "next hop changed, backend rewritten");
                        m.value = value;
                    }
                }
                Err(e) => {
                    if m.unresolved.is_none() {
                        warn!(backend = %m.address, vip = %m.vip, error = %e, "next hop lost; the backend leaves the ring until it resolves");
                        m.unresolved = Some(e.0);
                        reapply = true;
                    }
                }
            }
        }
        reapply
    }

    /// Remove map entries the saved state does not account for (a crash between a map write
    /// and the state save leaves such orphans).
    pub fn sweep_orphans(&mut self, env: &mut Env) -> Result<usize, MapsError> {
        let mut n = 0;
        for (k, _) in env.maps.vips()? {
            if !self.published.vips.contains_key(&k) {
                env.maps.write(&MapOp::RemoveVip { key: k })?;
                n += 1;
            }
        }
        for (id, b) in env.maps.backends()? {
            if !self.members.contains_key(&id) && b != lb_common::Backend::default() && !b.is_down()
            {
                env.maps.write(&MapOp::Backend {
                    id,
                    value: diff::down_backend(),
                })?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// What the health monitor should probe: every member of a VIP with a health check.
    pub fn probe_targets(&self) -> HashMap<u32, ProbeTarget> {
        let ids = self.ids.by_member();
        let mut out = HashMap::new();
        for v in &self.cfg.vips {
            for b in &v.backends {
                let (Some(check), Some(id)) = (v.check_for(b), ids.get(&(v.id(), b.address)))
                else {
                    continue;
                };
                let port = check.port.unwrap_or(v.port);
                let (addr, mark) = match check.via {
                    ProbeVia::Direct => (SocketAddr::new(b.address, port), None),
                    // To the VIP, marked for `xlb_probe` to encapsulate for this backend.
                    ProbeVia::Vip => (
                        SocketAddr::new(v.address, port),
                        Some(
                            lb_common::PROBE_MARK
                                | (v.forwarding.code() as u32) << lb_common::PROBE_MODE_SHIFT
                                | id,
                        ),
                    ),
                };
                out.insert(
                    *id,
                    ProbeTarget {
                        addr,
                        mark,
                        check: check.clone(),
                    },
                );
            }
        }
        out
    }

    /// Backend counts by state.
    pub fn summary(&self) -> Summary {
        let backends = self.members.len();
        let removing = self.removing.len();
        let drained = self
            .cfg
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .filter(|b| b.drain || b.weight == 0)
            .count();
        let unresolved = self
            .members
            .values()
            .filter(|m| m.unresolved.is_some())
            .count();
        let down = self.health.values().filter(|h| !h.up).count();
        Summary {
            vips: self.cfg.vips.len(),
            backends,
            up: backends.saturating_sub(drained + removing + unresolved + down),
            down,
            drained,
            removing,
            unresolved,
        }
    }
}

/// A change ready to be planned: see `State::prepare`.
pub struct Prepared {
    generation: u64,
    new: Config,
    removal: Removal,
    resolved: Resolved,
    alloc: ids::Allocation,
    nexthops: HashMap<u32, Result<NextHop, Unreachable>>,
    health: HashMap<u32, Health>,
    published: Published,
    single_ingress: Option<u32>,
    capture: bool,
    nr_cpus: u16,
}

/// A planned change: see `State::apply_planned`.
pub struct Planned {
    generation: u64,
    new: Config,
    removal: Removal,
    resolved: Resolved,
    plan: Plan,
}

impl Planned {
    /// The rings this plan publishes (to be filled ahead of the writes).
    pub fn ring_tables(&self) -> Vec<std::sync::Arc<Vec<u32>>> {
        self.plan
            .rings
            .values()
            .filter_map(|r| match r {
                plan::RingPlan::Build { table, .. } => Some(table.clone()),
                plan::RingPlan::Keep => None,
            })
            .collect()
    }
}

impl Prepared {
    /// The Maglev builds and the rest of the plan: pure, any thread.
    pub fn plan(self) -> Result<Planned, ApplyError> {
        let plan = plan::plan(
            &self.new,
            self.alloc,
            &plan::Inputs {
                nexthops: &self.nexthops,
                health: &self.health,
                published: &self.published,
                single_ingress: self.single_ingress,
                capture: self.capture,
                nr_cpus: self.nr_cpus,
            },
        )
        .map_err(|e| ApplyError::Refused(e.0))?;
        Ok(Planned {
            generation: self.generation,
            new: self.new,
            removal: self.removal,
            resolved: self.resolved,
            plan,
        })
    }
}

/// The part of the state an apply replaces.
struct Snapshot {
    cfg: Config,
    ids: Ids,
    removing: Vec<Removing>,
    members: BTreeMap<u32, Member>,
    health: HashMap<u32, Health>,
    below_quorum: BTreeSet<VipRef>,
}
