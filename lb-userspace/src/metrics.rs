//! The Prometheus text exposition of a `MetricsView` (what the daemon answers at scrape time):
//! per-VIP and per-backend counters, health and availability, data-path passes and drops by
//! reason, control-plane counters. Labels are VIPs and backends, never flows. Names follow
//! node_exporter's IPVS collector and Cilium (`xlb_vip_packets_total{vip="10.0.0.1:80/tcp"}`).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::api::MetricsView;

type Labels = Vec<(String, String)>;

/// Control-API counters, kept by the daemon.
#[derive(Default)]
pub struct ApiCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Connections refused for their peer's credentials.
    pub refused: AtomicU64,
    /// Admin (metrics) connections closed because the limit was reached.
    pub admin_refused: AtomicU64,
    /// Control connections closed because the limit was reached.
    pub control_refused: AtomicU64,
}

fn counter(r: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    r.register(name, help, f.clone());
    f
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    r.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Unlabelled counters (`NAME_total`) with the daemon's totals.
fn totals(r: &mut Registry, items: &[(&str, &str, u64)]) {
    for (name, help, v) in items {
        let c = Counter::<u64>::default();
        c.inc_by(*v);
        r.register(*name, *help, c);
    }
}

/// One unlabelled gauge.
fn value(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    r.register(name, help, g);
}

/// `xlb_vip_announced{vip}` and the announcement counters.
fn announcements(r: &mut Registry, a: &crate::api::AnnounceView) {
    let announced = Family::<Labels, Gauge<i64>>::default();
    for addr in &a.addresses {
        for v in &addr.vips {
            announced
                .get_or_create(&l(&[("vip", v)]))
                .set(addr.announced.into());
        }
    }
    r.register(
        "vip_announced",
        "1 while the VIP's address route is in the announce table (exported by the routing daemon).",
        announced,
    );
    totals(
        r,
        &[
            ("announces", "VIP addresses announced.", a.announces),
            ("withdraws", "VIP addresses withdrawn.", a.withdraws),
            (
                "announce_errors",
                "Failed route writes (retried every second).",
                a.route_errors,
            ),
        ],
    );
    value(
        r,
        "node_drained",
        "1 while the node is drained (`xlb drain-node`): nothing announced.",
        a.node_drained.into(),
    );
}

/// `xlb_sync_*`: flow sync with the fleet's other nodes.
fn sync(r: &mut Registry, y: &crate::api::SyncView) {
    value(
        r,
        "sync_divergent_flows",
        "Flows tracked on another backend than the ring picks now (last scan).",
        y.divergent_flows as i64,
    );
    totals(
        r,
        &[
            (
                "sync_records_sent",
                "Flow records sent to peers.",
                y.records_sent,
            ),
            ("sync_bytes_sent", "Sync datagram bytes sent.", y.bytes_sent),
            (
                "sync_records_received",
                "Flow records received from peers.",
                y.records_received,
            ),
            (
                "sync_flows_written",
                "Conntrack entries written or refreshed from peers' records.",
                y.flows_written,
            ),
        ],
    );
    let refused = Family::<Labels, Counter<u64>>::default();
    for (why, n) in &y.refused {
        refused.get_or_create(&l(&[("reason", why)])).inc_by(*n);
    }
    r.register(
        "sync_refused",
        "Sync datagrams and records refused, by reason.",
        refused,
    );
    let up = Family::<Labels, Gauge<i64>>::default();
    let unsynced = Family::<Labels, Gauge<i64>>::default();
    let mismatch = Family::<Labels, Gauge<i64>>::default();
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for p in &y.peers {
        let k = l(&[("peer", &p.address)]);
        if let Some(ms) = p.lag_ms {
            lag.get_or_create(&k).set(ms / 1000.0);
        }
        up.get_or_create(&k).set(p.up.into());
        unsynced.get_or_create(&k).set(p.unsynced as i64);
        mismatch
            .get_or_create(&k)
            .set(p.config_mismatch.len() as i64);
    }
    r.register(
        "sync_peer_up",
        "1 while the peer was heard from within three refresh periods.",
        up,
    );
    r.register(
        "sync_unsynced_flows",
        "Divergent flows the peer has not acknowledged (it would lack them if this node died now).",
        unsynced,
    );
    r.register(
        "sync_lag_seconds",
        "From sending the last set of divergent flows to the peer's acknowledgement.",
        lag,
    );
    r.register(
        "sync_config_mismatch_vips",
        "VIPs whose config digest differs on the peer (its flows for them are refused).",
        mismatch,
    );
}

/// The text exposition of every metric, as of now.
pub fn render(m: &MetricsView, api: &ApiCounters) -> String {
    let st = &m.status;
    let mut r = Registry::with_prefix("xlb");
    let vp = counter(&mut r, "vip_packets", "Packets forwarded for the VIP.");
    let vb = counter(&mut r, "vip_bytes", "Bytes forwarded for the VIP.");
    let vn = counter(
        &mut r,
        "vip_new_flows",
        "Flows the VIP's ring assigned (conntrack inserts).",
    );
    let vh = counter(&mut r, "vip_conntrack_hits", "Packets of tracked flows.");
    let vm = counter(
        &mut r,
        "vip_conntrack_misses",
        "Packets that found no conntrack entry.",
    );
    let vf = counter(
        &mut r,
        "vip_failovers",
        "Tracked flows re-picked because their backend was down.",
    );
    let ve = counter(
        &mut r,
        "vip_conntrack_expired",
        "Tracked flows idle past the VIP's timeout, re-picked as new flows.",
    );
    let vd = counter(
        &mut r,
        "vip_flows_deferred",
        "Flow starts above the new-flow limit, forwarded by the ring without a conntrack entry.",
    );
    let bp = counter(
        &mut r,
        "backend_packets",
        "Packets forwarded to the backend.",
    );
    let bb = counter(&mut r, "backend_bytes", "Bytes forwarded to the backend.");
    let bn = counter(
        &mut r,
        "backend_new_flows",
        "Flows assigned to the backend.",
    );
    let up = gauge(
        &mut r,
        "backend_up",
        "1 when the backend is healthy (or not probed), 0 when down.",
    );
    let fails = counter(
        &mut r,
        "backend_failures",
        "Health transitions from up to down.",
    );
    let avail = gauge(
        &mut r,
        "backend_availability_ratio",
        "MTBF / (MTBF + MTTR) over the daemon's lifetime.",
    );
    let mtbf = gauge(
        &mut r,
        "backend_mtbf_seconds",
        "Mean time between failures.",
    );
    let mttr = gauge(&mut r, "backend_mttr_seconds", "Mean time to repair.");
    let reasons = counter(
        &mut r,
        "datapath_packets",
        "Packets the forwarder passed to the kernel or dropped, by reason.",
    );
    let reason_bytes = counter(
        &mut r,
        "datapath_bytes",
        "Bytes the forwarder passed to the kernel or dropped, by reason.",
    );
    let scalars = [
        (
            "ring_rebuilds",
            "Maglev rings rebuilt and swapped.",
            st.ring_rebuilds,
        ),
        (
            "health_transitions",
            "Backend health transitions.",
            st.health_transitions,
        ),
        (
            "quorum_losses",
            "Times a VIP fell below its quorum of healthy backends.",
            st.quorum_losses,
        ),
        ("applies", "Configuration changes applied.", st.applies),
        (
            "api_requests",
            "Control API requests.",
            api.requests.load(Ordering::Relaxed),
        ),
        (
            "api_errors",
            "Control API requests answered with an error.",
            api.errors.load(Ordering::Relaxed),
        ),
        (
            "interfaces_lost",
            "Times an attached interface was deleted or re-created under the forwarder.",
            st.interfaces_lost,
        ),
        (
            "nexthop_losses",
            "Times a backend's next hop stopped resolving and took it out of its ring.",
            st.nexthop_losses,
        ),
        (
            "conntrack_evictions",
            "Conntrack entries pushed out by inserts into a full table (estimated).",
            st.conntrack_evictions,
        ),
        (
            "admin_connections_refused",
            "Admin endpoint connections closed at once: the connection limit was reached.",
            api.admin_refused.load(Ordering::Relaxed),
        ),
        (
            "api_connections_refused",
            "Control socket connections closed at once: the connection limit was reached.",
            api.control_refused.load(Ordering::Relaxed),
        ),
        (
            "api_refused",
            "Control connections refused for their peer's credentials.",
            api.refused.load(Ordering::Relaxed),
        ),
    ];
    totals(&mut r, &scalars);
    value(
        &mut r,
        "conntrack_capacity",
        "Conntrack capacity in IPv4 flows, shared by every CPU.",
        st.conntrack_capacity as i64,
    );
    value(
        &mut r,
        "conntrack_capacity_v6",
        "Conntrack capacity in IPv6 flows (a table of its own).",
        st.conntrack_capacity_v6 as i64,
    );
    value(
        &mut r,
        "conntrack_entries",
        "Tracked flows, both address families.",
        m.conntrack_entries as i64,
    );
    value(
        &mut r,
        "conntrack_entries_v6",
        "Tracked IPv6 flows (also counted in xlb_conntrack_entries).",
        m.conntrack_entries_v6 as i64,
    );
    value(
        &mut r,
        "backends_unresolved",
        "Backends out of their rings because their next hop does not resolve.",
        st.backends_unresolved as i64,
    );

    for s in &m.stats.vips {
        let lv = l(&[("vip", &s.vip)]);
        vp.get_or_create(&lv).inc_by(s.packets);
        vb.get_or_create(&lv).inc_by(s.bytes);
        vn.get_or_create(&lv).inc_by(s.new_flows);
        vh.get_or_create(&lv).inc_by(s.conntrack_hits);
        vm.get_or_create(&lv).inc_by(s.conntrack_misses);
        vf.get_or_create(&lv).inc_by(s.failovers);
        ve.get_or_create(&lv).inc_by(s.expired);
        vd.get_or_create(&lv).inc_by(s.deferred);
    }
    for b in &m.backends {
        let lb = l(&[("vip", &b.vip), ("backend", &b.address)]);
        bp.get_or_create(&lb).inc_by(b.packets);
        bb.get_or_create(&lb).inc_by(b.bytes);
        bn.get_or_create(&lb).inc_by(b.new_flows);
        let healthy = b.health.as_ref().is_none_or(|h| h.healthy) && b.state != "down";
        up.get_or_create(&lb).set(if healthy { 1.0 } else { 0.0 });
        if let Some(h) = &b.health {
            fails.get_or_create(&lb).inc_by(h.failures);
            avail.get_or_create(&lb).set(h.availability);
            if let Some(x) = h.mtbf_secs {
                mtbf.get_or_create(&lb).set(x);
            }
            if let Some(x) = h.mttr_secs {
                mttr.get_or_create(&lb).set(x);
            }
        }
    }
    if let Some(a) = &st.announce {
        announcements(&mut r, a);
    }
    if let Some(y) = &st.sync {
        sync(&mut r, y);
    }
    for r in &m.stats.reasons {
        let lr = l(&[("reason", &r.reason)]);
        reasons.get_or_create(&lr).inc_by(r.packets);
        reason_bytes.get_or_create(&lr).inc_by(r.bytes);
    }
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::{
        AnnounceView, AnnouncedView, Availability, BackendStatsView, BackendView, PeerView,
        ReasonView, StatsView, StatusView, SyncView, VipStatsView,
    };

    /// Every metric name the daemon exports, with every optional part (announce, sync) on.
    fn exported() -> BTreeSet<String> {
        let mut status = StatusView::sample();
        status.announce = Some(AnnounceView {
            table: 100,
            protocol: 201,
            node_drained: false,
            hold_left_secs: 0,
            announces: 0,
            withdraws: 0,
            route_errors: 0,
            last_error: None,
            addresses: vec![AnnouncedView {
                address: "10.0.0.1".into(),
                vips: vec!["10.0.0.1:80/tcp".into()],
                announced: true,
                wanted: true,
                reason: None,
                since_secs: 1,
            }],
        });
        status.sync = Some(SyncView {
            refused: [("bad_tag".to_string(), 1)].into(),
            peers: vec![PeerView {
                address: "10.0.0.2:4790".into(),
                lag_ms: Some(4.0),
                ..PeerView::default()
            }],
            ..SyncView::default()
        });
        let (vip, address) = ("10.0.0.1:80/tcp".to_string(), "10.1.0.1".to_string());
        let view = MetricsView {
            status,
            stats: StatsView {
                interval_secs: 1.0,
                vips: vec![VipStatsView {
                    vip: vip.clone(),
                    packets: 1,
                    bytes: 1,
                    new_flows: 1,
                    conntrack_hits: 1,
                    conntrack_misses: 1,
                    failovers: 1,
                    expired: 1,
                    deferred: 1,
                    pps: 1.0,
                    bps: 1.0,
                }],
                backends: vec![BackendStatsView {
                    vip: vip.clone(),
                    address: address.clone(),
                    packets: 1,
                    bytes: 1,
                    new_flows: 1,
                    pps: 1.0,
                    bps: 1.0,
                }],
                reasons: vec![ReasonView {
                    reason: "drop_no_backend".into(),
                    packets: 1,
                    bytes: 1,
                }],
            },
            backends: vec![BackendView {
                vip,
                address,
                id: 1,
                weight: 1,
                state: "up".into(),
                slots: 1,
                next_hop: None,
                packets: 1,
                bytes: 1,
                new_flows: 1,
                health: Some(Availability {
                    healthy: true,
                    since_secs: 1.0,
                    failures: 1,
                    uptime_percent: 99.0,
                    mtbf_secs: Some(1.0),
                    mttr_secs: Some(1.0),
                    availability: 0.5,
                    reason: String::new(),
                }),
            }],
            conntrack_entries: 0,
            conntrack_entries_v6: 0,
        };
        let text = render(&view, &ApiCounters::default());
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let mut p = l.split_whitespace();
                let name = p.next().unwrap_or_default();
                match p.next() {
                    Some("counter") => format!("{name}_total"),
                    _ => name.to_string(),
                }
            })
            .collect()
    }

    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => exprs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../dist/grafana/xlb.json")).expect("JSON");
        let mut all = Vec::new();
        exprs(&dash, &mut all);
        assert!(all.len() >= 30, "{} queries", all.len());
        let have = exported();
        let mut used = BTreeSet::new();
        for e in &all {
            let mut rest = e.as_str();
            while let Some(i) = rest.find("xlb_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                assert!(have.contains(&name), "{name} in `{e}` is not exported");
                used.insert(name);
            }
        }
        // The dashboard covers traffic, health, drops, conntrack, control plane and fleet.
        for must in [
            "xlb_vip_packets_total",
            "xlb_backend_up",
            "xlb_backend_availability_ratio",
            "xlb_datapath_packets_total",
            "xlb_conntrack_entries",
            "xlb_applies_total",
            "xlb_vip_announced",
            "xlb_sync_peer_up",
        ] {
            assert!(used.contains(must), "{must} not on the dashboard");
        }
    }
}
