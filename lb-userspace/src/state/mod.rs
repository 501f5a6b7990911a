//! The daemon's state and its rules, without I/O: ids (`ids`), what the maps should hold
//! (`plan`), the ordered writes that get them there (`diff`), health records (`health`) and
//! the saved state (`persist`). Effects go through two seams, `Maps` (the kernel) and `Store`
//! (the state file), so every rule here is a unit test against `fake`.

pub mod diff;
pub mod fake;
pub mod health;
pub mod ids;
pub mod maps;
pub mod persist;
pub mod plan;

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
use crate::config::{Config, ConfigError, DaemonConfig, FwdMode, HealthCheck, Removal, VipRef};

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
    #[error("data plane update failed: {0}")]
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
}

/// Control-plane event counts since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub applies: u64,
    pub ring_rebuilds: u64,
    pub health_transitions: u64,
    pub quorum_losses: u64,
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
    capture: bool,
    nr_cpus: u16,
    started: Instant,
    counters: Counters,
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
            capture: false,
            nr_cpus,
            started,
            counters: Counters::default(),
        }
    }

    /// Take over ids, pending removals, interfaces and health from a saved state before the
    /// first apply, so a restarted daemon writes exactly the values its predecessor left.
    pub fn restore(&mut self, saved: &Saved, now: Instant) {
        self.ids = saved.ids.clone();
        self.removing = saved.removing.clone();
        self.attached = saved.attached.clone();
        for id in &saved.down {
            self.health
                .insert(*id, Health::new(false, "down before the restart", now));
        }
        self.seeded_from = saved.seeded_from.clone();
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
    fn cached_nexthop(&self, new: &Config, vip: &VipRef, addr: IpAddr) -> Option<NextHop> {
        let id = self.ids.backend_id(vip, &addr)?;
        let fwd = |c: &Config| c.vip(vip).map(|v| v.forwarding);
        self.members
            .get(&id)
            .filter(|m| m.address == addr && m.unresolved.is_none())
            .filter(|_| fwd(&self.cfg) == fwd(new))
            .and_then(|m| m.nexthop.clone())
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

    /// Every member's next hop: known, or from `resolved`.
    fn nexthops_for(
        &self,
        new: &Config,
        ids: &Ids,
        resolved: &Resolved,
    ) -> Result<HashMap<u32, NextHop>, Vec<String>> {
        let mut out = HashMap::new();
        let mut errs = Vec::new();
        for (vip, addr, id) in &ids.backends {
            let Some(v) = new.vip(vip) else { continue };
            if let Some(nh) = self.cached_nexthop(new, vip, *addr) {
                out.insert(*id, nh);
                continue;
            }
            match resolved.get(&(*addr, v.forwarding == FwdMode::L2)) {
                Some(Ok(nh)) => {
                    out.insert(*id, nh.clone());
                }
                Some(Err(e)) => errs.push(format!("{vip} backend {addr}: {e}")),
                None => errs.push(format!("{vip} backend {addr}: next hop not resolved")),
            }
        }
        if errs.is_empty() { Ok(out) } else { Err(errs) }
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
        new.validate()?;
        if new.daemon != self.cfg.daemon {
            return Err(ApplyError::Refused(vec![
                "the [daemon] section differs from the running daemon's; it only changes with a restart"
                    .into(),
            ]));
        }
        let plan = self.plan(env, &new, removal, resolved)?;
        let before = self.published.clone();
        let report = self.report(&plan);
        match self.publish(env, &plan) {
            Ok(writes) => {
                let old = self.commit(env, new, plan);
                if let Err(e) = env.store.save(&self.saved()) {
                    warn!(error = %e, "saving state failed, restoring the previous state");
                    self.roll_back(env, old, &before);
                    return Err(e.into());
                }
                self.counters.applies += 1;
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

    fn plan(
        &self,
        env: &Env,
        new: &Config,
        removal: Removal,
        resolved: &Resolved,
    ) -> Result<Plan, ApplyError> {
        let alloc = ids::allocate(new, &self.ids, &self.removing, removal, env.clock.unix_ms)
            .map_err(ApplyError::Refused)?;
        let nexthops = self
            .nexthops_for(new, &alloc.ids, resolved)
            .map_err(ApplyError::Refused)?;
        let single_ingress = match new.interfaces.as_slice() {
            [only] => (env.ifindex)(&only.name),
            _ => None,
        };
        let plan = plan::plan(
            new,
            alloc,
            &plan::Inputs {
                nexthops: &nexthops,
                health: &self.health,
                published: &self.published,
                single_ingress,
                capture: self.capture,
                nr_cpus: self.nr_cpus,
            },
        )
        .map_err(|e| ApplyError::Refused(e.0))?;
        for v in &new.vips {
            let empty = plan.ids.vip_id(&v.id()).and_then(|id| plan.rings.get(&id)).is_some_and(
                |r| matches!(r, plan::RingPlan::Build { inputs, .. } if inputs.members.is_empty()),
            );
            if empty && !v.backends.is_empty() {
                warn!(vip = %v.id(), "no healthy, undrained backend: the VIP's packets are dropped (drop_no_backend)");
            }
        }
        Ok(plan)
    }

    fn report(&self, plan: &Plan) -> ApplyReport {
        let p = &self.published;
        ApplyReport {
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
        let held: Vec<String> = self.attached.iter().map(|a| a.name.clone()).collect();
        let mut writes = 0;
        for step in diff::diff(plan, &self.published, &held) {
            let outcome = env.maps.write(&step.op)?;
            writes += step.op.writes();
            self.published.record(&step.op, step.inputs.as_ref());
            match (&step.op, outcome) {
                (MapOp::Ring { .. }, _) => self.counters.ring_rebuilds += 1,
                (MapOp::Attach { iface, mode }, Some(a)) => self.attached_as(iface, *mode, a),
                (MapOp::Detach { iface }, _) => {
                    self.attached.retain(|a| &a.name != iface);
                    info!(%iface, "forwarder detached");
                }
                _ => {}
            }
        }
        // Rings of VIPs that left are no longer this daemon's to compare against.
        let live: BTreeSet<u32> = plan.rings.keys().copied().collect();
        self.published.rings.retain(|id, _| live.contains(id));
        Ok(writes)
    }

    fn attached_as(&mut self, iface: &str, requested: crate::config::AttachMode, a: Attached) {
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
        });
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
        self.members = plan.members;
        let members = &self.members;
        self.health.retain(|id, _| members.contains_key(id));
        for (id, m) in &self.members {
            self.health.entry(*id).or_insert_with(|| {
                Health::new(
                    m.value.state & lb_common::BACKEND_F_DOWN == 0,
                    "start state",
                    env.clock.now,
                )
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
            .plan(env, &cfg, Removal::Now, &resolved)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                self.publish(env, &p).map_err(|e| e.to_string())?;
                Ok(p)
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
        self.counters.health_transitions += 1;
        true
    }

    /// Advance the clock conntrack stamps flows with (ahead of the coarse clock, so stamps are
    /// never older than the packet).
    pub fn tick_clock(&mut self, env: &mut Env) -> Result<(), MapsError> {
        env.maps
            .set_clock(env.clock.mono_ns + lb_common::CLOCK_LEAD_NS)
    }

    /// Turn the capture flag of `CONFIG` on or off.
    pub fn set_capture(&mut self, env: &mut Env, on: bool) -> Result<(), MapsError> {
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

    /// Fresh next-hop answers: rewrite backends whose MACs changed. A next hop that stops
    /// resolving keeps its last known MAC (a neighbour entry can expire while the host is fine)
    /// and is reported as unresolved. Returns how many backends were rewritten.
    pub fn refresh_nexthops(
        &mut self,
        env: &mut Env,
        answers: Vec<(u32, Result<NextHop, Unreachable>)>,
    ) -> usize {
        let mut changed = 0;
        for (id, answer) in answers {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            match answer {
                Ok(nh) => {
                    let mut value = m.value;
                    value.dst_mac = nh.dst_mac;
                    if value.tx_port != 0 {
                        value.src_mac = nh.src_mac;
                    }
                    if m.unresolved.take().is_some() {
                        info!(backend = %m.address, vip = %m.vip, "next hop resolves again");
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
                        changed += 1;
                    }
                }
                Err(e) => {
                    if m.unresolved.is_none() {
                        warn!(backend = %m.address, vip = %m.vip, error = %e, "next hop lost; keeping the last known MAC");
                    }
                    m.unresolved = Some(e.0);
                }
            }
        }
        changed
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
    pub fn probe_targets(&self) -> HashMap<u32, (SocketAddr, HealthCheck)> {
        let ids = self.ids.by_member();
        let mut out = HashMap::new();
        for v in &self.cfg.vips {
            for b in &v.backends {
                let (Some(check), Some(id)) = (v.check_for(b), ids.get(&(v.id(), b.address)))
                else {
                    continue;
                };
                let port = check.port.unwrap_or(v.port);
                out.insert(*id, (SocketAddr::new(b.address, port), check.clone()));
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

/// The part of the state an apply replaces.
struct Snapshot {
    cfg: Config,
    ids: Ids,
    removing: Vec<Removing>,
    members: BTreeMap<u32, Member>,
    health: HashMap<u32, Health>,
    below_quorum: BTreeSet<VipRef>,
}
