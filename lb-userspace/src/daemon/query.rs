//! Answers to the read-only requests (status, lists, stats, flows, explain, metrics), made
//! from the state and the maps as `api` views. Nothing here writes.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use lb_common::{
    Backend, FlowKey, FlowState, VipKey, VipMeta, VipSlot,
    decision::{self, PKT_NORMAL, Packet, Pick, Tables},
    stats::{BackendStats, VipStats},
};

use super::{capture::Lease, occupancy::Occupancy};
use crate::{
    api::{
        AnnounceView, Availability, BackendStatsView, BackendView, ExplainView, FlowView,
        FlowsView, IfaceView, MetricsView, ReasonView, StatsView, StatusView, VipStatsView,
        VipView,
    },
    config::{Protocol, VipRef, flow_key},
    state::{Maps, State, health},
};

/// Facts about the daemon's data plane that do not change while it runs.
#[derive(Clone, Debug)]
pub struct Node {
    pub pin_dir: String,
    pub adopted: bool,
    pub forward_program_id: u32,
    /// Possible CPUs: every one of them reads the one conntrack entry of a flow.
    pub cpus: usize,
}

/// What a query reads.
pub struct Ctx<'a> {
    pub state: &'a State,
    pub maps: &'a dyn Maps,
    pub sampler: &'a Sampler,
    pub capture: Option<&'a Lease>,
    pub node: &'a Node,
    pub occupancy: &'a Occupancy,
    pub now: Instant,
    /// `CLOCK_MONOTONIC_COARSE` in ns, for flow idle times.
    pub mono_ns: u64,
    /// Route announcements, when configured.
    pub announce: Option<AnnounceView>,
    /// Changes queued or in flight (edits, health transitions) not yet in the maps.
    pub pending: usize,
    /// Flow sync, when configured.
    pub sync: Option<crate::api::SyncView>,
}

/// Counter samples for rates.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub vips: HashMap<u32, VipStats>,
    pub backends: HashMap<u32, BackendStats>,
}

#[derive(Default)]
pub struct Sampler {
    /// Recent samples, oldest first (at most a few seconds).
    samples: Vec<(Instant, Snapshot)>,
}

impl Sampler {
    pub fn record(&mut self, at: Instant, s: Snapshot) {
        self.samples.push((at, s));
        if self.samples.len() > 3 {
            self.samples.remove(0);
        }
    }
    /// The most recent sample at least half a second older than `now`.
    fn base(&self, now: Instant) -> Option<&(Instant, Snapshot)> {
        self.samples
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t).as_secs_f64() >= 0.5)
    }
}

/// The counters of every published VIP and member.
pub fn snapshot(state: &State, maps: &dyn Maps) -> Snapshot {
    let mut s = Snapshot::default();
    for meta in state.published().vips.values() {
        if let Ok(v) = maps.vip_stats(meta.vip_id) {
            s.vips.insert(meta.vip_id, v);
        }
    }
    for id in state.members().keys() {
        if let Ok(b) = maps.backend_stats(*id) {
            s.backends.insert(*id, b);
        }
    }
    s
}

fn availability(r: health::Report) -> Availability {
    Availability {
        healthy: r.healthy,
        since_secs: r.since_secs,
        failures: r.failures,
        uptime_percent: r.uptime_percent,
        mtbf_secs: r.mtbf_secs,
        mttr_secs: r.mttr_secs,
        availability: r.availability,
        reason: r.reason,
    }
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn status(c: &Ctx) -> StatusView {
    let s = c.state.summary();
    let n = c.state.counters();
    StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: c.now.duration_since(c.state.started()).as_secs(),
        pin_dir: c.node.pin_dir.clone(),
        adopted: c.node.adopted,
        forward_program_id: c.node.forward_program_id,
        interfaces: c
            .state
            .attached()
            .iter()
            .map(|a| IfaceView {
                name: a.name.clone(),
                requested: kebab(&a.requested),
                mode: kebab(&a.mode),
                ifindex: a.ifindex.unwrap_or(0),
            })
            .collect(),
        vips: s.vips,
        backends: s.backends,
        backends_up: s.up,
        backends_down: s.down,
        health_transitions: n.health_transitions,
        interfaces_lost: n.interfaces_lost,
        nexthop_losses: n.unresolved,
        below_quorum: c
            .state
            .below_quorum()
            .iter()
            .map(ToString::to_string)
            .collect(),
        quorum_losses: n.quorum_losses,
        backends_drained: s.drained,
        backends_removing: s.removing,
        backends_unresolved: s.unresolved,
        conntrack_capacity: c.maps.conntrack_capacity().unwrap_or(0),
        conntrack_capacity_v6: c.maps.conntrack_capacity_v6().unwrap_or(0),
        conntrack_entries: c.occupancy.entries(),
        conntrack_entries_v6: c.occupancy.entries_v6(),
        conntrack_evictions: c.occupancy.evictions,
        capture: c.capture.map(Lease::describe),
        announce: c.announce.clone(),
        sync: c.sync.clone(),
        applies: n.applies,
        ring_rebuilds: n.ring_rebuilds,
        changes_pending: c.pending,
    }
}

pub fn vip_list(c: &Ctx) -> Vec<VipView> {
    let cfg = c.state.cfg();
    cfg.vips
        .iter()
        .map(|v| VipView {
            vip: v.id().to_string(),
            id: c.state.ids().vip_id(&v.id()).unwrap_or(0),
            hash: kebab(&v.hash),
            forwarding: kebab(&v.forwarding),
            conntrack: v.conntrack,
            ring_size: cfg.ring_size(v),
            backends: v.backends.len(),
            // What the published ring holds: health-down, unresolved and drained ones are out.
            in_ring: c
                .state
                .ids()
                .vip_id(&v.id())
                .and_then(|id| c.state.published().rings.get(&id))
                .map_or(0, |r| r.members.len()),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("no VIP {0} (see `xlb vip list`)")]
pub struct NoVip(pub VipRef);

pub fn backend_list(c: &Ctx, only: Option<VipRef>) -> Result<Vec<BackendView>, NoVip> {
    rows(c, only, true)
}

/// Backend rows; `slots` reads every ring back from the kernel to count them (metrics do not
/// show slots, and a scrape should not read a million ring slots).
fn rows(c: &Ctx, only: Option<VipRef>, slots: bool) -> Result<Vec<BackendView>, NoVip> {
    let with_slots = slots;
    let cfg = c.state.cfg();
    if let Some(v) = &only
        && cfg.vip(v).is_none()
    {
        return Err(NoVip(*v));
    }
    let mut out = Vec::new();
    // Looked up once: a linear search per row is quadratic in thousands of backends, and a
    // scrape holds the owner task.
    let ids = c.state.ids().by_member();
    let vip_ids: HashMap<VipRef, u32> = c.state.ids().vips.iter().copied().collect();
    for v in &cfg.vips {
        if only.is_some_and(|o| o != v.id()) {
            continue;
        }
        let vip_id = vip_ids.get(&v.id()).copied().unwrap_or(0);
        let mut slots: HashMap<u32, u32> = HashMap::new();
        if with_slots {
            let mut ring = c.maps.ring(vip_id).unwrap_or_default();
            ring.sort_unstable();
            for run in ring.chunk_by(|a, b| a == b) {
                slots.insert(run[0], run.len() as u32);
            }
        }
        let mut rows: Vec<(std::net::IpAddr, u32, &str, bool)> = v
            .backends
            .iter()
            .map(|b| {
                let state = if b.drain || b.weight == 0 {
                    "drained"
                } else {
                    "up"
                };
                (b.address, b.weight, state, v.check_for(b).is_some())
            })
            .collect();
        for r in c.state.removing().iter().filter(|r| r.vip == v.id()) {
            rows.push((r.address, 0, "removing", false));
        }
        for (address, weight, state, probed) in rows {
            let id = ids.get(&(v.id(), address)).copied().unwrap_or(0);
            let m = c.state.members().get(&id);
            let health = c.state.health().get(&id);
            let mut state = state.to_string();
            if health.is_some_and(|h| !h.up) {
                state = "down".into();
            }
            if m.is_some_and(|m| m.unresolved.is_some()) {
                state = "unresolved".into();
            }
            let st = c.maps.backend_stats(id).unwrap_or_default();
            out.push(BackendView {
                vip: v.id().to_string(),
                address: address.to_string(),
                id,
                weight,
                state,
                slots: slots.get(&id).copied().unwrap_or(0),
                next_hop: m.and_then(|m| m.nexthop.as_ref()).map(|n| {
                    format!(
                        "{} via {} {}",
                        crate::nexthop::format_mac(&n.dst_mac),
                        n.via,
                        n.ifname
                    )
                }),
                packets: st.packets,
                bytes: st.bytes,
                new_flows: st.new_flows,
                health: health
                    .filter(|_| probed)
                    .map(|h| availability(h.report(c.now))),
            });
        }
    }
    Ok(out)
}

pub fn stats(c: &Ctx) -> StatsView {
    let cur = snapshot(c.state, c.maps);
    let base = c.sampler.base(c.now);
    let dt = base
        .map(|(t, _)| c.now.duration_since(*t).as_secs_f64())
        .unwrap_or(0.0);
    let rate = |new: u64, old: Option<u64>| -> f64 {
        match old {
            Some(o) if dt > 0.0 => new.saturating_sub(o) as f64 / dt,
            _ => 0.0,
        }
    };
    let mut out = StatsView {
        interval_secs: dt,
        ..StatsView::default()
    };
    for v in &c.state.cfg().vips {
        let Some(id) = c.state.ids().vip_id(&v.id()) else {
            continue;
        };
        let s = cur.vips.get(&id).copied().unwrap_or_default();
        let old = base.and_then(|(_, b)| b.vips.get(&id));
        out.vips.push(VipStatsView {
            vip: v.id().to_string(),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            conntrack_hits: s.conntrack_hits,
            conntrack_misses: s.conntrack_misses,
            failovers: s.failovers,
            expired: s.expired,
            deferred: s.deferred,
            pps: rate(s.packets, old.map(|o| o.packets)),
            bps: rate(s.bytes, old.map(|o| o.bytes)) * 8.0,
        });
    }
    for (id, m) in c.state.members() {
        let s = cur.backends.get(id).copied().unwrap_or_default();
        let old = base.and_then(|(_, b)| b.backends.get(id));
        out.backends.push(BackendStatsView {
            vip: m.vip.to_string(),
            address: m.address.to_string(),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            pps: rate(s.packets, old.map(|o| o.packets)),
            bps: rate(s.bytes, old.map(|o| o.bytes)) * 8.0,
        });
    }
    if let Ok(reasons) = c.maps.reason_stats() {
        for (k, r) in reasons {
            out.reasons.push(ReasonView {
                reason: k.name().into(),
                packets: r.packets,
                bytes: r.bytes,
            });
        }
    }
    out
}

fn sock(ip: std::net::IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error(transparent)]
    NoVip(#[from] NoVip),
    #[error(transparent)]
    Maps(#[from] crate::state::MapsError),
}

pub fn flows(c: &Ctx, vip: Option<VipRef>, limit: usize) -> Result<FlowsView, FlowsError> {
    if let Some(v) = &vip
        && c.state.cfg().vip(v).is_none()
    {
        return Err(NoVip(*v).into());
    }
    let mut out = FlowsView {
        flows: Vec::new(),
        truncated: false,
    };
    let published = &c.state.published().vips;
    for (k, st) in c.maps.flows()? {
        let Some(proto) = Protocol::from_number(k.proto) else {
            continue;
        };
        let dst_ip = k.dst.to_ip(k.family);
        let dport = u16::from_be(k.dst_port_be);
        if let Some(v) = &vip
            && (v.address != dst_ip || v.protocol != proto || (v.port != 0 && v.port != dport))
        {
            continue;
        }
        if out.flows.len() >= limit {
            out.truncated = true;
            break;
        }
        let mut vk = VipKey {
            addr: k.dst,
            port_be: k.dst_port_be,
            proto: k.proto,
            family: k.family,
        };
        let exact = published.get(&vk).copied();
        vk.port_be = 0;
        let timeout = exact
            .or_else(|| published.get(&vk).copied())
            .map_or(0, |m| m.idle_timeout_s);
        let id = st.backend_id;
        out.flows.push(FlowView {
            src: sock(k.src.to_ip(k.family), u16::from_be(k.src_port_be)),
            dst: sock(dst_ip, dport),
            protocol: kebab(&proto),
            backend: c
                .state
                .members()
                .get(&id)
                .map(|m| m.address.to_string())
                .unwrap_or_else(|| format!("(removed id {id})")),
            backend_id: id,
            cpus: (0..c.node.cpus).collect(),
            idle_ms: c.mono_ns.saturating_sub(st.last_seen_ns) / 1_000_000,
            idle_timeout_secs: timeout,
            expired: st.expired(c.mono_ns, timeout),
        });
    }
    Ok(out)
}

/// The live tables as the decision reads them; never writes.
struct Live<'a> {
    c: &'a Ctx<'a>,
    cpus: Vec<usize>,
}

impl Tables for Live<'_> {
    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.c.state.published().vips.get(key).copied()
    }
    fn vip_by_id(&self, vip_id: u32) -> Option<VipSlot> {
        lb_common::model::vip_by_id(&self.c.state.published().vips, vip_id)
    }
    fn flow(&mut self, key: &FlowKey) -> Option<FlowState> {
        let s = self.c.maps.flow(key).ok()??;
        // One entry, read by every CPU.
        self.cpus = (0..self.c.node.cpus).collect();
        Some(s)
    }
    fn now(&self) -> u64 {
        self.c.mono_ns
    }
    fn stamp(&mut self, _: &FlowKey, _: u64) {}
    fn backend(&self, id: u32) -> Option<&Backend> {
        self.c.state.members().get(&id).map(|m| &m.value)
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32> {
        self.c.maps.ring_entry(vip_id, slot).ok()
    }
    fn track(&mut self, _: &FlowKey, _: u32) {}
}

pub fn explain(
    c: &Ctx,
    src: SocketAddr,
    dst: SocketAddr,
    protocol: Protocol,
    syn: bool,
) -> ExplainView {
    let pkt = Packet {
        key: flow_key(src, dst, protocol),
        kind: PKT_NORMAL,
        syn,
    };
    let mut t = Live {
        c,
        cpus: Vec::new(),
    };
    let cfg = c.state.cfg();
    let flow = format!("{src} -> {dst}/{}", kebab(&protocol));
    let vip = decision::lookup_vip(&t, &pkt).ok();
    let vip_name = vip.and_then(|m| {
        cfg.vips
            .iter()
            .find(|v| c.state.ids().vip_id(&v.id()) == Some(m.vip_id))
            .map(|v| (v.id().to_string(), kebab(&v.hash)))
    });
    let mut out = ExplainView {
        flow,
        vip: vip_name.as_ref().map(|v| v.0.clone()),
        verdict: "forward".into(),
        reason: None,
        backend: None,
        backend_id: None,
        how: None,
        slot: None,
        ring_size: vip.map(|m| m.ring_size),
        hash: vip_name.map(|v| v.1),
        tracked_on_cpus: Vec::new(),
    };
    match decision::route(&mut t, &pkt, cfg.forwarding.hash_seed) {
        Ok(d) => {
            out.backend_id = Some(d.backend_id);
            out.backend = c
                .state
                .members()
                .get(&d.backend_id)
                .map(|m| m.address.to_string());
            out.how = Some(
                match d.pick {
                    Pick::Tracked => "tracked",
                    Pick::Ring | Pick::Deferred => "ring",
                    Pick::Failover => "failover",
                    Pick::Expired => "expired",
                }
                .into(),
            );
            if d.pick != Pick::Tracked {
                out.slot = Some(d.slot);
            }
        }
        Err(r) => {
            let name = r.name();
            out.verdict = if name.starts_with("pass") {
                "pass"
            } else {
                "drop"
            }
            .into();
            out.reason = Some(name.into());
        }
    }
    out.tracked_on_cpus = t.cpus;
    out
}

/// Everything the Prometheus endpoint exports.
pub fn metrics(c: &Ctx) -> MetricsView {
    MetricsView {
        status: status(c),
        stats: stats(c),
        backends: rows(c, None, false).unwrap_or_default(),
        conntrack_entries: c.occupancy.entries(),
        conntrack_entries_v6: c.occupancy.entries_v6(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_common::{FlowState, stats::VipStats};

    use super::*;
    use crate::{
        config::{BackendConfig, Config, Interface, Removal, Vip},
        state::{
            Clock, Env,
            fake::{FakeMaps, MemStore, ifindex, resolved},
        },
    };

    const VIP: &str = "10.100.0.1:80/tcp";
    /// The daemon's clock in these tests: 100,000 s after boot.
    const NOW_NS: u64 = 100_000_000_000_000;

    fn config(weights: &[u32]) -> Config {
        let mut c = Config::default();
        c.forwarding.encap_source_v4 = Some("10.0.0.1".parse().expect("v4"));
        c.interfaces.push(Interface {
            name: "eth0".into(),
            mode: crate::config::AttachMode::Native,
        });
        let mut v = Vip::new(VIP.parse().expect("vip"));
        v.ring_size = Some(101);
        for (i, w) in weights.iter().enumerate() {
            v.backends.push(BackendConfig {
                address: format!("10.1.0.{}", i + 1).parse().expect("ip"),
                weight: *w,
                drain: false,
                health: None,
            });
        }
        c.vips.push(v);
        c
    }

    struct World {
        state: State,
        maps: FakeMaps,
        store: MemStore,
        sampler: Sampler,
        node: Node,
        occupancy: Occupancy,
        t0: Instant,
    }

    impl World {
        fn new(c: Config) -> World {
            let t0 = Instant::now();
            let mut w = World {
                state: State::new(c.daemon.clone(), 2, t0),
                maps: FakeMaps::default(),
                store: MemStore::default(),
                sampler: Sampler::default(),
                node: Node {
                    pin_dir: "/sys/fs/bpf/xlb".into(),
                    adopted: true,
                    forward_program_id: 42,
                    cpus: 2,
                },
                occupancy: Occupancy::default(),
                t0,
            };
            w.apply(c, Removal::Drain);
            w
        }
        fn apply(&mut self, c: Config, removal: Removal) {
            let r = resolved(&self.state.missing_nexthops(&c));
            let mut env = Env {
                maps: &mut self.maps,
                store: &mut self.store,
                ifindex: &ifindex,
                clock: Clock {
                    now: self.t0,
                    unix_ms: 1,
                    mono_ns: NOW_NS,
                },
            };
            self.state.apply(&mut env, c, removal, &r).expect("apply");
        }
        fn ctx(&self, now: Instant) -> Ctx<'_> {
            Ctx {
                state: &self.state,
                maps: &self.maps,
                sampler: &self.sampler,
                capture: None,
                node: &self.node,
                occupancy: &self.occupancy,
                now,
                mono_ns: NOW_NS,
                announce: None,
                pending: 0,
                sync: None,
            }
        }
    }

    #[test]
    fn status_reports_the_node_the_interfaces_and_the_counts() {
        let w = World::new(config(&[1, 1, 0]));
        let s = status(&w.ctx(w.t0 + Duration::from_secs(7)));
        assert_eq!(s.uptime_secs, 7);
        assert_eq!((s.adopted, s.forward_program_id), (true, 42));
        assert_eq!(s.interfaces[0].name, "eth0");
        assert_eq!(s.interfaces[0].mode, "native");
        assert_eq!(
            (s.vips, s.backends, s.backends_up, s.backends_drained),
            (1, 3, 2, 1)
        );
        assert_eq!(s.conntrack_capacity, lb_common::CONNTRACK_DEFAULT_ENTRIES);
        assert_eq!(s.applies, 1);
        assert!(s.capture.is_none());
    }

    #[test]
    fn lists_show_ring_shares_and_states() {
        let mut w = World::new(config(&[3, 1, 0]));
        let mut c = config(&[3, 1]);
        c.vips[0].backends.truncate(2);
        w.apply(c, Removal::Drain);
        let ctx = w.ctx(w.t0);
        let vips = vip_list(&ctx);
        assert_eq!((vips[0].backends, vips[0].in_ring), (2, 2));
        let rows = backend_list(&ctx, None).expect("list");
        let by = |a: &str| rows.iter().find(|r| r.address == a).expect("row");
        assert_eq!(by("10.1.0.1").slots + by("10.1.0.2").slots, 101);
        assert!(by("10.1.0.1").slots > 2 * by("10.1.0.2").slots);
        assert_eq!(by("10.1.0.3").state, "removing");
        assert_eq!(by("10.1.0.3").slots, 0);
        assert!(
            by("10.1.0.1")
                .next_hop
                .as_deref()
                .is_some_and(|n| n.contains("eth0"))
        );
        let e =
            backend_list(&ctx, Some("10.9.9.9:80/tcp".parse().expect("vip"))).expect_err("missing");
        assert_eq!(e.to_string(), "no VIP 10.9.9.9:80/tcp (see `xlb vip list`)");
        let id = w.state.ids().backends[0].2;
        assert!(w.state.record_health(id, false, "test", w.t0));
        let c = w.state.cfg().clone();
        w.apply(c, Removal::Drain);
        let ctx = w.ctx(w.t0);
        let vips = vip_list(&ctx);
        assert_eq!(
            (vips[0].backends, vips[0].in_ring),
            (2, 1),
            "health-down is out"
        );
    }

    #[test]
    fn stats_give_rates_over_the_last_sample() {
        let mut w = World::new(config(&[1]));
        let id = w
            .state
            .ids()
            .vip_id(&VIP.parse().expect("vip"))
            .expect("id");
        w.maps.vip_stats.insert(
            id,
            VipStats {
                packets: 100,
                bytes: 10_000,
                ..VipStats::default()
            },
        );
        let snap = snapshot(&w.state, &w.maps);
        w.sampler.record(w.t0, snap);
        w.maps.vip_stats.insert(
            id,
            VipStats {
                packets: 300,
                bytes: 30_000,
                ..VipStats::default()
            },
        );
        let s = stats(&w.ctx(w.t0 + Duration::from_secs(2)));
        assert_eq!(s.interval_secs, 2.0);
        assert_eq!((s.vips[0].packets, s.vips[0].pps), (300, 100.0));
        assert_eq!(s.vips[0].bps, 80_000.0);
        assert_eq!(s.reasons.len(), lb_common::stats::REASON_COUNT as usize);
    }

    fn flow(sport: u16, dport: u16, backend_id: u32, idle_s: u64) -> (FlowKey, FlowState) {
        (
            flow_key(
                format!("192.0.2.1:{sport}").parse().expect("src"),
                format!("10.100.0.1:{dport}").parse().expect("dst"),
                Protocol::Tcp,
            ),
            FlowState {
                backend_id,
                _pad: 0,
                last_seen_ns: NOW_NS - idle_s * 1_000_000_000,
            },
        )
    }

    #[test]
    fn flows_filter_by_vip_and_respect_the_limit() {
        let mut w = World::new(config(&[1, 1]));
        w.maps.flows = vec![
            flow(1000, 80, 1, 3),
            flow(1001, 80, 2, 0),
            flow(1002, 81, 1, 0),
        ];
        let ctx = w.ctx(w.t0);
        let f = flows(&ctx, Some(VIP.parse().expect("vip")), 10).expect("flows");
        assert_eq!(f.flows.len(), 2);
        assert_eq!(f.flows[0].backend, "10.1.0.1");
        assert_eq!(f.flows[0].idle_ms, 3000);
        assert_eq!(f.flows[0].cpus, vec![0, 1], "one entry for every CPU");
        assert_eq!(
            f.flows[0].idle_timeout_secs,
            lb_common::TCP_IDLE_TIMEOUT_DEFAULT
        );
        assert!(!f.flows[0].expired);
        assert!(!f.truncated);
        let f = flows(&ctx, None, 1).expect("flows");
        assert_eq!((f.flows.len(), f.truncated), (1, true));
    }

    #[test]
    fn explain_follows_the_tracked_entry_or_the_ring() {
        let mut w = World::new(config(&[1, 1]));
        let src: SocketAddr = "192.0.2.1:1000".parse().expect("src");
        let dst: SocketAddr = "10.100.0.1:80".parse().expect("dst");
        let syn = explain(&w.ctx(w.t0), src, dst, Protocol::Tcp, true);
        assert_eq!(
            (syn.verdict.as_str(), syn.how.as_deref()),
            ("forward", Some("ring"))
        );
        assert!(syn.slot.is_some());
        let ring_id = syn.backend_id.expect("backend");
        w.maps.flows = vec![flow(1000, 80, 3 - ring_id, 0)];
        let e = explain(&w.ctx(w.t0), src, dst, Protocol::Tcp, false);
        assert_eq!(e.how.as_deref(), Some("tracked"));
        assert_eq!(e.backend_id, Some(3 - ring_id));
        assert_eq!(e.tracked_on_cpus, vec![0, 1]);
        w.maps.flows = vec![flow(1000, 80, 3 - ring_id, 4 * 3600)];
        let e = explain(&w.ctx(w.t0), src, dst, Protocol::Tcp, false);
        assert_eq!(
            e.how.as_deref(),
            Some("expired"),
            "idle past the timeout: a new flow"
        );
        assert_eq!(e.backend_id, Some(ring_id));
        let other = explain(
            &w.ctx(w.t0),
            src,
            "10.100.0.1:9".parse().expect("dst"),
            Protocol::Tcp,
            true,
        );
        assert_eq!(
            (other.verdict.as_str(), other.reason.as_deref()),
            ("pass", Some("pass_not_vip"))
        );
    }

    #[test]
    fn the_metrics_view_counts_tracked_flows() {
        let mut w = World::new(config(&[1, 1]));
        let mut v6 = flow(1002, 80, 1, 0);
        v6.0 = flow_key(
            "[2001:db8::1]:1002".parse().expect("src"),
            "[2001:db8::100]:80".parse().expect("dst"),
            Protocol::Tcp,
        );
        w.maps.flows = vec![flow(1000, 80, 1, 0), flow(1001, 80, 2, 0), v6];
        let maps = &w.maps;
        w.occupancy.observe(w.t0, 3, 1000, || {
            Some(crate::daemon::occupancy::tally(&maps.flows))
        });
        let m = metrics(&w.ctx(w.t0));
        assert_eq!((m.conntrack_entries, m.conntrack_entries_v6), (3, 1));
        assert_eq!(
            (m.status.conntrack_entries, m.status.conntrack_entries_v6),
            (3, 1)
        );
        assert_eq!(m.backends.len(), 2);
        assert_eq!(m.status.vips, 1);
    }
}
