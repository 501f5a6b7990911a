//! Answers to control requests. Every change is expressed as a new desired configuration and goes
//! through `Engine::apply`, so the CLI, `xlb apply` and a restart share one validated path.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use lb_common::{
    Addr, Backend, FlowKey, VipKey, VipMeta,
    decision::{self, PKT_NORMAL, Packet, Pick, Tables},
    family_of,
    stats::{BackendStats, VipStats},
};
use serde_json::{Value, json};

use crate::{
    api::{Request, Response},
    config::{Config, Protocol, VipRef},
    engine::{Engine, Removal, monotonic_coarse_ns},
    view::*,
};

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

pub fn snapshot(e: &Engine) -> Snapshot {
    let mut s = Snapshot::default();
    for meta in e.vip_meta.values() {
        if let Ok(v) = e.dp.vip_stats(meta.vip_id) {
            s.vips.insert(meta.vip_id, v);
        }
    }
    for id in e.members.keys() {
        if let Ok(b) = e.dp.backend_stats(*id) {
            s.backends.insert(*id, b);
        }
    }
    s
}

pub async fn handle(e: &mut Engine, sampler: &Sampler, req: Request) -> Response {
    match req {
        Request::Status => to(status(e)),
        Request::VipList => to(vip_list(e)),
        Request::BackendList { vip } => match backend_list(e, vip) {
            Ok(v) => to(v),
            Err(m) => Response::err(m),
        },
        Request::Export => Response::ok(json!({ "config": e.cfg.to_toml() })),
        Request::Stats => to(stats(e, sampler)),
        Request::Flows { vip, limit } => match flows(e, vip, limit) {
            Ok(v) => to(v),
            Err(m) => Response::err(m),
        },
        Request::Explain {
            src,
            dst,
            protocol,
            syn,
        } => to(explain(e, src, dst, protocol, syn)),
        Request::CaptureStart { filter } => match e.capture_start(filter) {
            Ok(v) => to(v),
            Err(m) => Response::err(m),
        },
        Request::CaptureRenew { session } => match e.capture_renew(session) {
            Ok(()) => Response::ok(Value::Null),
            Err(m) => Response::err(m),
        },
        Request::CaptureStop { session } => match e.capture_stop(session) {
            Ok(v) => to(v),
            Err(m) => Response::err(m),
        },
        Request::Apply { config, now } => match parse_apply(e, &config) {
            Ok(cfg) => change(e, cfg, now).await,
            Err(m) => Response::err(m),
        },
        mutation => match edit(&e.cfg, mutation) {
            Ok((cfg, removal)) => change(e, cfg, removal == Removal::Now).await,
            Err(m) => Response::err(m),
        },
    }
}

fn to<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(e),
    }
}

async fn change(e: &mut Engine, cfg: Config, now: bool) -> Response {
    let removal = if now { Removal::Now } else { Removal::Drain };
    match e.apply(cfg, removal).await {
        Ok(report) => {
            tracing::info!(?report, "configuration applied");
            to(report)
        }
        Err(err) => {
            tracing::warn!(error = %err, "configuration refused");
            Response::err(err)
        }
    }
}

/// A TOML document to apply. Without a `[daemon]` table the running daemon's settings stand.
fn parse_apply(e: &Engine, text: &str) -> Result<Config, String> {
    let has_daemon = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("daemon"))
        .unwrap_or(false);
    let mut cfg: Config = toml::from_str(text)
        .map_err(|err| crate::config::ConfigError(vec![err.to_string()]).to_string())?;
    if !has_daemon {
        cfg.daemon = e.cfg.daemon.clone();
    }
    cfg.validate().map_err(|err| err.to_string())?;
    Ok(cfg)
}

/// The desired configuration after one CLI edit.
fn edit(cur: &Config, req: Request) -> Result<(Config, Removal), String> {
    let mut cfg = cur.clone();
    let mut removal = Removal::Drain;
    let missing = |v: &VipRef| format!("no VIP {v} (see `xlb vip list`)");
    match req {
        Request::VipAdd { vip } => {
            if cfg.vip(&vip.id()).is_some() {
                return Err(format!(
                    "VIP {} already exists; remove it first or change it with `xlb apply`",
                    vip.id()
                ));
            }
            cfg.vips.push(vip);
        }
        Request::VipRemove { vip } => {
            let before = cfg.vips.len();
            cfg.vips.retain(|v| v.id() != vip);
            if cfg.vips.len() == before {
                return Err(missing(&vip));
            }
        }
        Request::BackendAdd { vip, backend } => {
            let v = cfg.vip_mut(&vip).ok_or_else(|| missing(&vip))?;
            if v.backends.iter().any(|b| b.address == backend.address) {
                return Err(format!("{vip} already has backend {}", backend.address));
            }
            v.backends.push(backend);
        }
        Request::BackendRemove { vip, address, now } => {
            let v = cfg.vip_mut(&vip).ok_or_else(|| missing(&vip))?;
            let before = v.backends.len();
            v.backends.retain(|b| b.address != address);
            if v.backends.len() == before {
                return Err(format!("{vip} has no backend {address}"));
            }
            if now {
                removal = Removal::Now;
            }
        }
        Request::BackendSet {
            vip,
            address,
            weight,
            drain,
        } => {
            let v = cfg.vip_mut(&vip).ok_or_else(|| missing(&vip))?;
            let b = v
                .backends
                .iter_mut()
                .find(|b| b.address == address)
                .ok_or_else(|| format!("{vip} has no backend {address}"))?;
            if let Some(w) = weight {
                b.weight = w;
            }
            if let Some(d) = drain {
                b.drain = d;
            }
        }
        other => return Err(format!("not a configuration change: {other:?}")),
    }
    Ok((cfg, removal))
}

fn status(e: &mut Engine) -> StatusView {
    let backends = e.members.len();
    let removing = e.removing.len();
    let drained = e
        .cfg
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .filter(|b| b.drain || b.weight == 0)
        .count();
    let unresolved = e
        .members
        .values()
        .filter(|m| m.unresolved.is_some())
        .count();
    let down = e.health.values().filter(|h| !h.up).count();
    StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: e.started.elapsed().as_secs(),
        pin_dir: e.cfg.daemon.pin_dir.display().to_string(),
        adopted: e.dp.pin_state() == crate::dataplane::PinState::Adopted,
        forward_program_id: e.dp.program_id(lb_common::prog_names::FORWARD).unwrap_or(0),
        interfaces: e
            .attached
            .iter()
            .map(|a| IfaceView {
                name: a.name.clone(),
                requested: format!("{:?}", a.requested).to_lowercase(),
                mode: format!("{:?}", a.mode).to_lowercase(),
            })
            .collect(),
        vips: e.cfg.vips.len(),
        backends,
        backends_up: backends.saturating_sub(drained + removing + unresolved + down),
        backends_down: down,
        health_transitions: e.health_transitions,
        below_quorum: e.below_quorum.iter().map(ToString::to_string).collect(),
        quorum_losses: e.quorum_losses,
        backends_drained: drained,
        backends_removing: removing,
        backends_unresolved: unresolved,
        conntrack_capacity: e.dp.conntrack_capacity().unwrap_or(0),
        capture: e.capture.as_ref().map(|l| l.describe()),
        applies: e.applies,
        ring_rebuilds: e.ring_rebuilds,
    }
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn vip_list(e: &Engine) -> Vec<VipView> {
    e.cfg
        .vips
        .iter()
        .map(|v| VipView {
            vip: v.id().to_string(),
            id: e.vip_id_of(&v.id()).unwrap_or(0),
            hash: kebab(&v.hash),
            forwarding: kebab(&v.forwarding),
            conntrack: v.conntrack,
            ring_size: e.cfg.ring_size(v),
            backends: v.backends.len(),
            in_ring: v
                .backends
                .iter()
                .filter(|b| !b.drain && b.weight > 0)
                .count(),
        })
        .collect()
}

fn backend_list(e: &Engine, only: Option<VipRef>) -> Result<Vec<BackendView>, String> {
    if let Some(v) = &only
        && e.cfg.vip(v).is_none()
    {
        return Err(format!("no VIP {v} (see `xlb vip list`)"));
    }
    let mut out = Vec::new();
    for v in &e.cfg.vips {
        if only.is_some_and(|o| o != v.id()) {
            continue;
        }
        let vip_id = e.vip_id_of(&v.id()).unwrap_or(0);
        let mut slots: HashMap<u32, u32> = HashMap::new();
        for id in e.dp.ring(vip_id).unwrap_or_default() {
            *slots.entry(id).or_default() += 1;
        }
        let mut rows: Vec<(std::net::IpAddr, u32, String)> = v
            .backends
            .iter()
            .map(|b| {
                let state = if b.drain || b.weight == 0 {
                    "drained"
                } else {
                    "up"
                };
                (b.address, b.weight, state.to_string())
            })
            .collect();
        for r in e.removing.iter().filter(|r| r.vip == v.id()) {
            rows.push((r.address, 0, "removing".into()));
        }
        for (address, weight, mut state) in rows {
            let id = e.backend_id_of(&v.id(), &address).unwrap_or(0);
            let m = e.members.get(&id);
            let health = e.health.get(&id);
            if health.is_some_and(|h| !h.up) {
                state = "down".into();
            }
            if m.is_some_and(|m| m.unresolved.is_some()) {
                state = "unresolved".into();
            }
            let probed = e
                .cfg
                .vip(&v.id())
                .and_then(|vc| {
                    vc.backends
                        .iter()
                        .find(|b| b.address == address)
                        .and_then(|b| vc.check_for(b))
                })
                .is_some();
            let st = e.dp.backend_stats(id).unwrap_or_default();
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
                health: health.filter(|_| probed).map(|h| h.report(Instant::now())),
            });
        }
    }
    Ok(out)
}

fn stats(e: &Engine, sampler: &Sampler) -> StatsView {
    let now = Instant::now();
    let cur = snapshot(e);
    let base = sampler.base(now);
    let dt = base
        .map(|(t, _)| now.duration_since(*t).as_secs_f64())
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
    for v in &e.cfg.vips {
        let Some(id) = e.vip_id_of(&v.id()) else {
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
            pps: rate(s.packets, old.map(|o| o.packets)),
            bps: rate(s.bytes, old.map(|o| o.bytes)) * 8.0,
        });
    }
    for (id, m) in &e.members {
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
    if let Ok(reasons) = e.dp.reason_stats() {
        let mut r: Vec<_> = reasons.into_iter().collect();
        r.sort_by_key(|(k, _)| *k as u32);
        for (k, c) in r {
            out.reasons.push(ReasonView {
                reason: k.name().into(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
    }
    out
}

fn flow_key(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> FlowKey {
    FlowKey {
        src: Addr::from(src.ip()),
        dst: Addr::from(dst.ip()),
        src_port_be: src.port().to_be(),
        dst_port_be: dst.port().to_be(),
        proto: protocol.number(),
        family: family_of(&dst.ip()),
        _pad: [0; 2],
    }
}

fn flows(e: &Engine, vip: Option<VipRef>, limit: usize) -> Result<FlowsView, String> {
    let now = monotonic_coarse_ns();
    let mut out = FlowsView {
        flows: Vec::new(),
        truncated: false,
    };
    for (k, states) in e.dp.flows().map_err(|err| err.to_string())? {
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
        let Some(first) = states.first() else {
            continue;
        };
        if out.flows.len() >= limit {
            out.truncated = true;
            break;
        }
        let last = states.iter().map(|s| s.last_seen_ns).max().unwrap_or(0);
        let id = first.backend_id;
        out.flows.push(FlowView {
            src: sock(k.src.to_ip(k.family), u16::from_be(k.src_port_be)),
            dst: sock(dst_ip, dport),
            protocol: kebab(&proto),
            backend: e
                .members
                .get(&id)
                .map(|m| m.address.to_string())
                .unwrap_or_else(|| format!("(removed id {id})")),
            backend_id: id,
            cpus: (0..states.len()).collect(),
            idle_ms: now.saturating_sub(last) / 1_000_000,
        });
    }
    Ok(out)
}

fn sock(ip: std::net::IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The live tables as the decision reads them; never writes.
struct Live<'a> {
    e: &'a Engine,
    cpus: Vec<usize>,
}

impl Tables for Live<'_> {
    fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.e.vip_meta.get(key).copied()
    }
    fn tracked(&mut self, key: &FlowKey) -> Option<u32> {
        let entries = self.e.dp.flow(key).ok()?;
        self.cpus = entries.iter().map(|(c, _)| *c).collect();
        entries.first().map(|(_, s)| s.backend_id)
    }
    fn backend(&self, id: u32) -> Option<&Backend> {
        self.e.members.get(&id).map(|m| &m.value)
    }
    fn ring_entry(&self, vip_id: u32, slot: u32) -> Option<u32> {
        self.e.dp.ring_entry(vip_id, slot).ok()
    }
    fn track(&mut self, _: &FlowKey, _: u32) {}
}

fn explain(
    e: &Engine,
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
        e,
        cpus: Vec::new(),
    };
    let flow = format!("{src} -> {dst}/{}", kebab(&protocol));
    let vip = decision::lookup_vip(&t, &pkt).ok();
    let vip_name = vip.and_then(|m| {
        e.cfg
            .vips
            .iter()
            .find(|v| e.vip_id_of(&v.id()) == Some(m.vip_id))
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
    match decision::route(&mut t, &pkt, e.cfg.forwarding.hash_seed) {
        Ok(d) => {
            out.backend_id = Some(d.backend_id);
            out.backend = e.members.get(&d.backend_id).map(|m| m.address.to_string());
            out.how = Some(
                match d.pick {
                    Pick::Tracked => "tracked",
                    Pick::Ring => "ring",
                    Pick::Failover => "failover",
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

pub fn value_of<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
