//! The state's rules against in-memory maps and state file: write order, ring rebuilds, ids,
//! drains, quorum, health, rollback, restarts. No root, no kernel.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{BACKEND_F_DOWN, FlowKey, FlowState, VIP_F_NO_CONNTRACK, maglev};

use super::{
    fake::{FakeMaps, MemStore, ifindex, nexthop, resolved as resolve},
    *,
};
use crate::config::{
    BackendConfig, Config, FwdMode, HealthCheck, Interface, ProbeKind, QuorumLoss, Removal,
    StartState, Vip, VipRef,
};

const VIP_A: &str = "10.100.0.1:80/tcp";
const VIP_B: &str = "10.100.0.2:53/udp";
const RING: u32 = 1021;

fn vref(s: &str) -> VipRef {
    s.parse().expect("vip")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn vip(s: &str, backends: &[&str]) -> Vip {
    let mut v = Vip::new(vref(s));
    v.ring_size = Some(RING);
    v.backends = backends
        .iter()
        .map(|a| BackendConfig {
            address: ip(a),
            weight: 1,
            drain: false,
            health: None,
        })
        .collect();
    v
}

fn config(vips: Vec<Vip>) -> Config {
    let mut c = Config::default();
    c.forwarding.encap_source_v4 = Some("10.0.0.1".parse().expect("v4"));
    c.interfaces.push(Interface {
        name: "eth0".into(),
        mode: crate::config::AttachMode::Native,
    });
    c.vips = vips;
    c
}

fn two_vips() -> Config {
    config(vec![
        vip(VIP_A, &["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        vip(VIP_B, &["10.1.0.1", "10.1.0.4"]),
    ])
}

/// A state with its fake kernel and file, and a clock the test moves.
struct Rig {
    state: State,
    maps: FakeMaps,
    store: MemStore,
    t0: Instant,
    now: Instant,
    unix_ms: u64,
    mono_ns: u64,
}

impl Rig {
    fn new() -> Rig {
        let t0 = Instant::now();
        Rig {
            state: State::new(Config::default().daemon, 2, t0),
            maps: FakeMaps::default(),
            store: MemStore::default(),
            t0,
            now: t0,
            unix_ms: 1_000_000,
            mono_ns: 500_000_000_000,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix_ms += d.as_millis() as u64;
        self.mono_ns += d.as_nanos() as u64;
    }

    fn try_apply(&mut self, c: Config, removal: Removal) -> Result<ApplyReport, ApplyError> {
        let resolved = resolve(&self.state.missing_nexthops(&c));
        let (state, mut env) = self.split();
        state.apply(&mut env, c, removal, &resolved)
    }

    fn apply(&mut self, c: Config) -> ApplyReport {
        self.try_apply(c, Removal::Drain).expect("apply")
    }

    fn split(&mut self) -> (&mut State, Env<'_>) {
        let clock = Clock {
            now: self.now,
            unix_ms: self.unix_ms,
            mono_ns: self.mono_ns,
        };
        (
            &mut self.state,
            Env {
                maps: &mut self.maps,
                store: &mut self.store,
                ifindex: &ifindex,
                clock,
            },
        )
    }

    fn id(&self, v: &str, a: &str) -> u32 {
        self.state
            .ids()
            .backend_id(&vref(v), &ip(a))
            .expect("backend id")
    }

    fn vip_id(&self, v: &str) -> u32 {
        self.state.ids().vip_id(&vref(v)).expect("vip id")
    }

    /// Backend ids in a VIP's ring as written.
    fn ring_members(&self, v: &str) -> BTreeSet<u32> {
        self.maps.rings[&self.vip_id(v)]
            .iter()
            .copied()
            .filter(|&x| x != 0)
            .collect()
    }

    fn mark(&self) -> usize {
        self.maps.log.len()
    }

    fn set_health(&mut self, v: &str, a: &str, up: bool) {
        let id = self.id(v, a);
        let now = self.now;
        assert!(self.state.record_health(id, up, "test", now));
        let c = self.state.cfg().clone();
        self.apply(c);
    }

    /// A conntrack entry of backend `id` last seen at the current clock minus `ago`.
    fn flow(&mut self, id: u32, ago: Duration) {
        let key = FlowKey {
            src_port_be: (self.maps.flows.len() as u16 + 1000).to_be(),
            ..FlowKey::default()
        };
        self.maps.flows.push((
            key,
            FlowState {
                backend_id: id,
                _pad: 0,
                last_seen_ns: self.mono_ns - ago.as_nanos() as u64,
            },
        ));
    }
}

fn position(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .position(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {names:?}"))
}

fn last_position(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .rposition(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {names:?}"))
}

#[test]
fn first_apply_writes_backends_before_rings_before_vips() {
    let mut r = Rig::new();
    let rep = r.apply(two_vips());
    let names = r.maps.names(0);
    assert_eq!(names[0], "filter", "the filter grows first: {names:?}");
    assert_eq!(names[1], "config", "{names:?}");
    assert!(last_position(&names, "backend") < position(&names, "ring"));
    assert!(last_position(&names, "ring") < position(&names, "vip"));
    assert_eq!(names.last().map(String::as_str), Some("attach eth0"));
    assert_eq!(
        (rep.vips_added, rep.backends_added, rep.rings_swapped),
        (2, 5, 2)
    );
    assert_eq!(r.maps.vips.len(), 2);
    assert_eq!(r.ring_members(VIP_A).len(), 3);
}

#[test]
fn the_same_configuration_again_writes_nothing() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let m = r.mark();
    let rep = r.apply(two_vips());
    assert_eq!(r.maps.names(m), Vec::<String>::new());
    assert_eq!(rep, ApplyReport::default());
    assert_eq!(r.state.counters().applies, 2);
}

#[test]
fn a_weight_change_rebuilds_only_that_vips_ring() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let rebuilds = r.state.counters().ring_rebuilds;
    let mut c = two_vips();
    c.vips[0].backends[0].weight = 3;
    let m = r.mark();
    let rep = r.apply(c);
    let a = r.vip_id(VIP_A);
    assert_eq!(r.maps.names(m), vec![format!("ring {a}")]);
    assert_eq!(rep.rings_swapped, 1);
    assert_eq!(r.state.counters().ring_rebuilds, rebuilds + 1);
    let id = r.id(VIP_A, "10.1.0.1");
    let share = r.maps.rings[&a].iter().filter(|&&x| x == id).count() as f64 / RING as f64;
    assert!((share - 0.6).abs() < 0.02, "weight 3 of 5: {share}");
}

#[test]
fn the_published_ring_is_the_maglev_table_of_its_members() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let c = two_vips();
    let members: Vec<maglev::MaglevBackend> = c.vips[0]
        .backends
        .iter()
        .map(|b| maglev::MaglevBackend {
            family: lb_common::FAMILY_V4,
            addr: lb_common::Addr::from(b.address),
            weight: 1,
            id: r.id(VIP_A, &b.address.to_string()),
        })
        .collect();
    let want = maglev::build(&members, RING, c.forwarding.hash_seed).expect("table");
    assert_eq!(r.maps.rings[&r.vip_id(VIP_A)], want);
}

#[test]
fn a_new_vip_is_published_after_its_backends_and_ring_and_the_filter_grows_first() {
    let mut r = Rig::new();
    r.apply(config(vec![vip(VIP_A, &["10.1.0.1"])]));
    let m = r.mark();
    r.apply(two_vips());
    let names = r.maps.names(m);
    assert_eq!(names[0], "filter", "{names:?}");
    let b = r.vip_id(VIP_B);
    assert!(position(&names, "backend") < position(&names, &format!("ring {b}")));
    assert!(position(&names, &format!("ring {b}")) < position(&names, &format!("vip {b}")));
}

#[test]
fn removing_a_vip_unpublishes_it_before_the_filter_shrinks_and_backends_go_down() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let only = r.id(VIP_B, "10.1.0.4");
    let m = r.mark();
    let rep = r.apply(config(vec![vip(
        VIP_A,
        &["10.1.0.1", "10.1.0.2", "10.1.0.3"],
    )]));
    let names = r.maps.names(m);
    let unvip = position(&names, "unvip");
    assert!(unvip < last_position(&names, "filter"), "{names:?}");
    let b = r.state.published().rings.contains_key(&1);
    assert!(!b, "the removed VIP's ring is forgotten");
    assert!(
        unvip < position(&names, "unring 1"),
        "and dropped after it: {names:?}"
    );
    assert!(!r.maps.rings.contains_key(&1), "its kernel memory freed");
    assert!(
        unvip < position(&names, &format!("down {only}")),
        "{names:?}"
    );
    assert_eq!(rep.vips_removed, 1);
    // A VIP's removal takes its backends at once: nothing could drain through it.
    assert_eq!(rep.backends_removed, 2);
    assert_eq!(rep.backends_draining, 0);
    assert!(r.maps.backends[&only].is_down());
}

#[test]
fn backend_values_carry_next_hop_egress_and_vip_tag() {
    let mut r = Rig::new();
    let mut c = two_vips();
    c.vips[0].backends.push(BackendConfig {
        address: ip("10.2.0.9"),
        weight: 1,
        drain: false,
        health: None,
    });
    r.apply(c);
    let local = r.maps.backends[&r.id(VIP_A, "10.1.0.2")];
    assert_eq!(local.tx_port, 0, "out of the only ingress: XDP_TX");
    assert_eq!(local.src_mac, [0; 6]);
    assert_eq!(local.dst_mac, [2, 0xbe, 0, 1, 0, 2]);
    assert_eq!(local.vip, lb_common::Backend::vip_tag(r.vip_id(VIP_A)));
    let remote = r.maps.backends[&r.id(VIP_A, "10.2.0.9")];
    assert_eq!(remote.tx_port, 1, "another interface: a devmap slot");
    assert_eq!(remote.src_mac, [2, 0, 0, 0, 0, 3]);
    assert_eq!(r.maps.tx_ports.get(&1), Some(&3));
}

#[test]
fn several_interfaces_redirect_every_backend() {
    let mut r = Rig::new();
    let mut c = two_vips();
    c.interfaces.push(Interface {
        name: "eth1".into(),
        mode: crate::config::AttachMode::Native,
    });
    r.apply(c);
    assert!(r.maps.backends.values().all(|b| b.tx_port == 1));
    assert_eq!(r.maps.links.len(), 2);
}

#[test]
fn vip_flags_and_config_flags_follow_the_configuration() {
    let mut r = Rig::new();
    let mut c = two_vips();
    c.vips[1].conntrack = false;
    c.vips.push(vip("10.100.0.3:0/tcp", &["10.1.0.5"]));
    r.apply(c);
    let meta = r.maps.vips[&vref(VIP_B).key()];
    assert_eq!(meta.flags & VIP_F_NO_CONNTRACK, VIP_F_NO_CONNTRACK);
    assert_eq!(meta.ring_size, RING);
    let cfg = r.maps.config.expect("config");
    assert_ne!(cfg.flags & lb_common::CFG_F_WILDCARD_VIPS, 0);
    assert_ne!(cfg.flags & lb_common::CFG_F_VIP_FILTER, 0);
    assert_eq!(cfg.nr_cpus, 2);
}

#[test]
fn new_backends_take_ids_round_robin_and_freed_ids_are_reused_late() {
    let mut r = Rig::new();
    r.apply(config(vec![vip(VIP_A, &["10.1.0.1", "10.1.0.2"])]));
    assert_eq!((r.id(VIP_A, "10.1.0.1"), r.id(VIP_A, "10.1.0.2")), (1, 2));
    let freed = r.id(VIP_A, "10.1.0.2");
    r.try_apply(config(vec![vip(VIP_A, &["10.1.0.1"])]), Removal::Now)
        .expect("remove now");
    r.apply(config(vec![vip(VIP_A, &["10.1.0.1", "10.1.0.3"])]));
    let next = r.id(VIP_A, "10.1.0.3");
    assert_ne!(next, freed, "a freed id is not handed out again at once");
    assert_eq!(next, 3);
}

#[test]
fn vip_ids_are_the_lowest_free() {
    let mut r = Rig::new();
    r.apply(two_vips());
    assert_eq!((r.vip_id(VIP_A), r.vip_id(VIP_B)), (0, 1));
    r.apply(config(vec![vip(VIP_B, &["10.1.0.4"])]));
    r.apply(config(vec![
        vip(VIP_B, &["10.1.0.4"]),
        vip("10.100.0.9:80/tcp", &["10.1.0.1"]),
    ]));
    assert_eq!(r.vip_id(VIP_B), 1, "a kept VIP keeps its id");
    assert_eq!(r.vip_id("10.100.0.9:80/tcp"), 0);
}

#[test]
fn remove_drains_by_default_keeping_the_id_and_its_flows() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let id = r.id(VIP_A, "10.1.0.3");
    let before = r.maps.backends[&id];
    let rep = r.apply(config(vec![
        vip(VIP_A, &["10.1.0.1", "10.1.0.2"]),
        vip(VIP_B, &["10.1.0.1", "10.1.0.4"]),
    ]));
    assert_eq!((rep.backends_draining, rep.backends_removed), (1, 0));
    assert_eq!(
        r.maps.backends[&id], before,
        "still serving its tracked flows"
    );
    assert!(!r.ring_members(VIP_A).contains(&id), "out of the ring");
    assert_eq!(r.state.removing().len(), 1);
    assert_eq!(r.id(VIP_A, "10.1.0.3"), id, "the id is kept while draining");
    assert_eq!(r.state.summary().removing, 1);
}

#[test]
fn remove_now_marks_the_backend_down_at_once() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let id = r.id(VIP_A, "10.1.0.3");
    let rep = r
        .try_apply(
            config(vec![
                vip(VIP_A, &["10.1.0.1", "10.1.0.2"]),
                vip(VIP_B, &["10.1.0.1", "10.1.0.4"]),
            ]),
            Removal::Now,
        )
        .expect("apply");
    assert_eq!((rep.backends_draining, rep.backends_removed), (0, 1));
    assert!(r.maps.backends[&id].is_down());
    assert!(r.state.removing().is_empty());
    assert!(
        r.state
            .ids()
            .backend_id(&vref(VIP_A), &ip("10.1.0.3"))
            .is_none()
    );
}

#[test]
fn a_backend_added_back_while_draining_is_simply_kept() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let id = r.id(VIP_A, "10.1.0.3");
    r.apply(config(vec![
        vip(VIP_A, &["10.1.0.1", "10.1.0.2"]),
        vip(VIP_B, &["10.1.0.1", "10.1.0.4"]),
    ]));
    r.apply(two_vips());
    assert!(r.state.removing().is_empty());
    assert_eq!(r.id(VIP_A, "10.1.0.3"), id);
    assert!(r.ring_members(VIP_A).contains(&id));
}

fn draining_rig() -> (Rig, u32) {
    let mut r = Rig::new();
    r.apply(two_vips());
    let id = r.id(VIP_A, "10.1.0.3");
    r.apply(config(vec![
        vip(VIP_A, &["10.1.0.1", "10.1.0.2"]),
        vip(VIP_B, &["10.1.0.1", "10.1.0.4"]),
    ]));
    (r, id)
}

fn reap(r: &mut Rig) -> usize {
    let (state, mut env) = r.split();
    state.reap(&mut env).expect("reap")
}

#[test]
fn reaping_waits_for_the_daemon_clock_to_have_ticked_for_drain_idle() {
    let (mut r, id) = draining_rig();
    // A stamp from before this daemon: older than drain_idle (30 s), but untrustworthy.
    r.flow(id, Duration::from_secs(100));
    assert_eq!(reap(&mut r), 0, "idleness means nothing yet");
    r.advance(Duration::from_secs(31));
    assert_eq!(reap(&mut r), 1);
    assert!(r.maps.backends[&id].is_down());
    assert!(r.state.removing().is_empty());
    assert!(
        r.state
            .ids()
            .backend_id(&vref(VIP_A), &ip("10.1.0.3"))
            .is_none()
    );
    assert!(
        r.store
            .saved
            .as_ref()
            .is_some_and(|s| s.removing.is_empty())
    );
}

#[test]
fn a_draining_backend_with_active_flows_stays_until_they_idle() {
    let (mut r, id) = draining_rig();
    r.advance(Duration::from_secs(40));
    r.flow(id, Duration::from_secs(1));
    assert_eq!(reap(&mut r), 0, "an active flow keeps it");
    r.advance(Duration::from_secs(31));
    assert_eq!(reap(&mut r), 1, "idle for drain_idle_secs");
}

#[test]
fn the_drain_timeout_ends_a_drain_whatever_its_flows() {
    let (mut r, id) = draining_rig();
    for _ in 0..11 {
        r.advance(Duration::from_secs(30));
        r.flow(id, Duration::ZERO);
        if reap(&mut r) == 1 {
            assert!(
                r.now.duration_since(r.t0) >= Duration::from_secs(300),
                "not before drain_timeout_secs"
            );
            return;
        }
    }
    panic!("never reaped");
}

fn with_quorum(q: u32, loss: QuorumLoss, fallback: &[&str]) -> Config {
    let mut c = two_vips();
    c.vips[0].quorum = Some(q);
    c.vips[0].on_quorum_loss = loss;
    c.vips[0].fallback = fallback.iter().map(|a| ip(a)).collect();
    c.vips[0].health = Some(HealthCheck {
        kind: ProbeKind::Tcp,
        port: None,
        interval_ms: 1000,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
        start: StartState::Up,
        path: None,
        host: None,
        status: None,
        body: None,
        payload: None,
        expect: None,
        via: Default::default(),
    });
    c
}

#[test]
fn health_down_takes_a_backend_out_of_the_ring_and_marks_it_down() {
    let mut r = Rig::new();
    r.apply(with_quorum(1, QuorumLoss::KeepLast, &[]));
    let id = r.id(VIP_A, "10.1.0.2");
    r.set_health(VIP_A, "10.1.0.2", false);
    assert!(!r.ring_members(VIP_A).contains(&id));
    assert_eq!(r.maps.backends[&id].state & BACKEND_F_DOWN, BACKEND_F_DOWN);
    assert_eq!(r.state.summary().down, 1);
    r.set_health(VIP_A, "10.1.0.2", true);
    assert!(r.ring_members(VIP_A).contains(&id));
    assert_eq!(r.maps.backends[&id].state, 0);
    assert_eq!(r.state.counters().health_transitions, 2);
}

#[test]
fn a_repeated_health_verdict_is_not_a_transition() {
    let mut r = Rig::new();
    r.apply(with_quorum(1, QuorumLoss::KeepLast, &[]));
    let id = r.id(VIP_A, "10.1.0.1");
    let now = r.now;
    assert!(!r.state.record_health(id, true, "still up", now));
    assert!(!r.state.record_health(999, false, "unknown", now));
    assert_eq!(r.state.counters().health_transitions, 0);
}

#[test]
fn a_check_that_starts_down_keeps_new_backends_out_until_it_passes() {
    let mut r = Rig::new();
    let mut c = with_quorum(1, QuorumLoss::KeepLast, &[]);
    if let Some(h) = c.vips[0].health.as_mut() {
        h.start = StartState::Down;
    }
    c.vips[0].quorum = None;
    r.apply(c);
    assert!(r.ring_members(VIP_A).is_empty());
    assert!(r.maps.backends.values().filter(|b| b.is_down()).count() >= 3);
    r.set_health(VIP_A, "10.1.0.1", true);
    assert_eq!(
        r.ring_members(VIP_A),
        BTreeSet::from([r.id(VIP_A, "10.1.0.1")])
    );
}

#[test]
fn quorum_loss_with_keep_last_keeps_the_last_ring() {
    let mut r = Rig::new();
    r.apply(with_quorum(2, QuorumLoss::KeepLast, &[]));
    r.set_health(VIP_A, "10.1.0.1", false);
    let ring = r.maps.rings[&r.vip_id(VIP_A)].clone();
    let m = r.mark();
    r.set_health(VIP_A, "10.1.0.2", false);
    let a = r.vip_id(VIP_A);
    assert!(
        !r.maps.names(m).contains(&format!("ring {a}")),
        "no ring swap below quorum"
    );
    assert_eq!(r.maps.rings[&a], ring, "the ring that met the quorum stays");
    assert!(r.state.below_quorum().contains(&vref(VIP_A)));
    assert_eq!(r.state.counters().quorum_losses, 1);
    r.set_health(VIP_A, "10.1.0.2", true);
    assert!(r.state.below_quorum().is_empty(), "quorum restored");
    assert_eq!(r.ring_members(VIP_A).len(), 2);
}

#[test]
fn quorum_loss_with_fallback_sends_traffic_to_the_fallback_backends() {
    let mut r = Rig::new();
    r.apply(with_quorum(2, QuorumLoss::Fallback, &["10.1.0.3"]));
    r.set_health(VIP_A, "10.1.0.1", false);
    r.set_health(VIP_A, "10.1.0.3", false);
    assert_eq!(
        r.ring_members(VIP_A),
        BTreeSet::from([r.id(VIP_A, "10.1.0.3")]),
        "the fallback takes it, whatever its health"
    );
}

#[test]
fn a_failed_write_restores_the_previous_maps_state_and_file() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let saved = r.store.saved.clone();
    let (vips, backends, rings) = (
        r.maps.vips.clone(),
        r.maps.backends.clone(),
        r.maps.rings.clone(),
    );
    let mut c = two_vips();
    c.vips[0].backends[0].weight = 5;
    c.vips[1].backends.push(BackendConfig {
        address: ip("10.1.0.7"),
        weight: 1,
        drain: false,
        health: None,
    });
    c.vips.push(vip("10.100.0.5:80/tcp", &["10.1.0.8"]));
    // Fail the write after the first ring swap.
    let n = r.maps.writes;
    let plan_len = 1 + 2 + 2; // filter, 2 backends, ring
    r.maps.fail_at = Some(n + plan_len);
    let e = r
        .try_apply(c, Removal::Drain)
        .expect_err("injected failure");
    assert!(matches!(e, ApplyError::Dataplane(_)), "{e}");
    assert!(
        e.to_string().starts_with("nothing applied, rolled back:"),
        "{e}"
    );
    r.maps.fail_at = None;
    assert_eq!(r.state.cfg(), &two_vips());
    assert_eq!(r.maps.vips, vips, "VIPs as before");
    assert_eq!(r.maps.rings, rings, "rings as before");
    for (id, b) in &backends {
        assert_eq!(r.maps.backends.get(id), Some(b), "backend {id} as before");
    }
    assert!(
        r.maps
            .backends
            .iter()
            .filter(|(id, _)| !backends.contains_key(id))
            .all(|(_, b)| b.is_down()),
        "backends written for the failed change are down"
    );
    assert_eq!(r.store.saved, saved, "the saved file is untouched");
    // And the state still works.
    let again = r.apply(two_vips());
    assert_eq!(again.rings_swapped, 0);
}

#[test]
fn a_failed_save_restores_the_previous_maps() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let rings = r.maps.rings.clone();
    r.store.fail = true;
    let mut c = two_vips();
    c.vips[0].backends[0].weight = 4;
    let e = r.try_apply(c, Removal::Drain).expect_err("save fails");
    assert!(matches!(e, ApplyError::Persist(_)), "{e}");
    assert_eq!(r.maps.rings, rings);
    assert_eq!(r.state.cfg(), &two_vips());
}

#[test]
fn the_daemon_section_only_changes_with_a_restart() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let mut c = two_vips();
    c.daemon.drain_idle_secs = 5;
    let m = r.mark();
    let e = r.try_apply(c, Removal::Drain).expect_err("refused");
    assert!(e.to_string().contains("[daemon] section differs"), "{e}");
    assert!(r.maps.names(m).is_empty());
}

#[test]
fn an_unresolvable_next_hop_takes_the_backend_out_and_applies_the_rest() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let mut c = two_vips();
    c.vips[0].backends.push(BackendConfig {
        address: ip("10.1.9.9"),
        weight: 1,
        drain: false,
        health: None,
    });
    c.vips[1].backends[1].weight = 2;
    let mut resolved = resolve(&r.state.missing_nexthops(&c));
    resolved.insert(
        (ip("10.1.9.9"), false),
        Err(Unreachable("did not answer ARP/ND".into())),
    );
    let (state, mut env) = r.split();
    let rep = state
        .apply(&mut env, c, Removal::Drain, &resolved)
        .expect("applied all the same");
    assert!(
        rep.warnings
            .iter()
            .any(|w| w.contains("10.100.0.1:80/tcp backend 10.1.9.9")
                && w.contains("did not answer ARP/ND")),
        "{:?}",
        rep.warnings
    );
    let id = r.id(VIP_A, "10.1.9.9");
    assert!(r.maps.backends[&id].is_down(), "published down");
    assert!(!r.ring_members(VIP_A).contains(&id), "out of the ring");
    assert_eq!(r.ring_members(VIP_A).len(), 3, "the others stay");
    assert_eq!(
        rep.rings_swapped, 1,
        "the other VIP's weight change applied too"
    );
    let s = r.state.summary();
    assert_eq!(
        (s.unresolved, s.down),
        (1, 0),
        "unresolved, not health-down"
    );
    assert_eq!(r.state.counters().unresolved, 1);
    // A health transition elsewhere does not ask for it again (the refresh does).
    assert!(r.state.missing_nexthops(r.state.cfg()).is_empty());
    r.set_health(VIP_A, "10.1.0.1", false);
    // When it resolves again, it rejoins.
    let (state, mut env) = r.split();
    assert!(state.refresh_nexthops(&mut env, vec![(id, Ok(nexthop(ip("10.1.9.9"))))]));
    let c = r.state.cfg().clone();
    r.apply(c);
    assert!(r.ring_members(VIP_A).contains(&id));
    assert!(!r.maps.backends[&id].is_down());
}

#[test]
fn a_vip_left_without_a_backend_is_said_so() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let mut c = two_vips();
    c.vips[1].backends.clear();
    let rep = r.apply(c);
    assert!(
        rep.warnings
            .iter()
            .any(|w| w.starts_with("10.100.0.2:53/udp: no backend takes new flows")),
        "{:?}",
        rep.warnings
    );
}

#[test]
fn only_unknown_next_hops_are_asked_for() {
    let mut r = Rig::new();
    let c = two_vips();
    assert_eq!(
        r.state.missing_nexthops(&c).len(),
        4,
        "4 distinct addresses"
    );
    r.apply(c);
    assert!(r.state.missing_nexthops(&two_vips()).is_empty());
    let mut l2 = two_vips();
    l2.vips[0].forwarding = FwdMode::L2;
    let asked = r.state.missing_nexthops(&l2);
    assert_eq!(asked.len(), 3, "L2 needs on-link neighbours: {asked:?}");
    assert!(asked.iter().all(|(_, on_link)| *on_link));
}

#[test]
fn refreshed_next_hops_rewrite_changed_macs_and_report_losses() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let id = r.id(VIP_A, "10.1.0.1");
    let mut nh = nexthop(ip("10.1.0.1"));
    nh.dst_mac = [2, 0xaa, 0, 0, 0, 1];
    let m = r.mark();
    let (state, mut env) = r.split();
    assert!(
        !state.refresh_nexthops(&mut env, vec![(id, Ok(nh))]),
        "a new MAC is rewritten in place"
    );
    assert_eq!(r.maps.names(m), vec![format!("backend {id}")]);
    assert_eq!(r.maps.backends[&id].dst_mac, [2, 0xaa, 0, 0, 0, 1]);
    // A lost next hop takes the backend out of the ring at the next apply.
    let lost = r.id(VIP_A, "10.1.0.2");
    let (state, mut env) = r.split();
    assert!(state.refresh_nexthops(&mut env, vec![(lost, Err(Unreachable("gone".into())))]));
    let c = r.state.cfg().clone();
    r.apply(c);
    assert!(!r.ring_members(VIP_A).contains(&lost));
    assert!(r.maps.backends[&lost].is_down());
    assert_eq!(r.state.summary().unresolved, 1);
    assert_eq!(r.state.members()[&lost].unresolved.as_deref(), Some("gone"));
    // Moved to another interface: applied again for its new egress port.
    let mut moved = nexthop(ip("10.1.0.3"));
    moved.ifindex = 3;
    let third = r.id(VIP_A, "10.1.0.3");
    let (state, mut env) = r.split();
    assert!(state.refresh_nexthops(&mut env, vec![(third, Ok(moved))]));
}

#[test]
fn interfaces_are_attached_replaced_on_mode_change_and_detached_when_dropped() {
    let mut r = Rig::new();
    r.apply(two_vips());
    assert_eq!(r.state.attached().len(), 1);
    let mut c = two_vips();
    c.interfaces[0].mode = crate::config::AttachMode::Generic;
    let m = r.mark();
    r.apply(c);
    assert_eq!(r.maps.names(m), vec!["attach eth0"]);
    let mut c = two_vips();
    c.interfaces.clear();
    let m = r.mark();
    r.apply(c);
    let names = r.maps.names(m);
    assert_eq!(names.last().map(String::as_str), Some("detach eth0"));
    assert!(
        names.contains(&"txport 1".to_string()),
        "without a single ingress every backend is redirected: {names:?}"
    );
    assert!(r.state.attached().is_empty());
}

#[test]
fn a_capture_sets_the_config_flag_and_applies_keep_it() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let (state, mut env) = r.split();
    state.set_capture(&mut env, true).expect("capture on");
    assert_ne!(
        r.maps.config.expect("config").flags & lb_common::CFG_F_CAPTURE,
        0
    );
    let mut c = two_vips();
    c.forwarding.mtu = 1400;
    r.apply(c);
    let cfg = r.maps.config.expect("config");
    assert_eq!(cfg.mtu, 1400);
    assert_ne!(cfg.flags & lb_common::CFG_F_CAPTURE, 0, "still capturing");
    let (state, mut env) = r.split();
    state.set_capture(&mut env, false).expect("capture off");
    assert_eq!(
        r.maps.config.expect("config").flags & lb_common::CFG_F_CAPTURE,
        0
    );
}

#[test]
fn the_clock_is_written_ahead_of_the_coarse_clock() {
    let mut r = Rig::new();
    let (state, mut env) = r.split();
    state.tick_clock(&mut env).expect("tick");
    assert_eq!(r.maps.clock, r.mono_ns + lb_common::CLOCK_LEAD_NS);
}

#[test]
fn status_counts_every_backend_once_by_state() {
    let mut r = Rig::new();
    let mut c = with_quorum(1, QuorumLoss::KeepLast, &[]);
    c.vips[1].backends[1].drain = true;
    r.apply(c.clone());
    r.set_health(VIP_A, "10.1.0.2", false);
    c.vips[0].backends.pop();
    r.apply(c);
    let s = r.state.summary();
    assert_eq!(
        (
            s.vips,
            s.backends,
            s.down,
            s.drained,
            s.removing,
            s.unresolved
        ),
        (2, 5, 1, 1, 1, 0)
    );
    assert_eq!(s.up, 2);
}

#[test]
fn the_saved_state_restores_the_same_ids_and_values_after_a_restart() {
    let mut r = Rig::new();
    r.apply(with_quorum(1, QuorumLoss::KeepLast, &[]));
    r.set_health(VIP_A, "10.1.0.2", false);
    let saved = r.store.saved.clone().expect("saved");
    assert_eq!(saved.down, vec![r.id(VIP_A, "10.1.0.2")]);
    let (backends, rings) = (r.maps.backends.clone(), r.maps.rings.clone());

    // A new daemon over the same maps.
    let mut n = Rig::new();
    n.maps = r.maps.clone();
    n.maps.log.clear();
    let now = n.now;
    n.state.restore(&saved, now);
    let rep = n.apply(saved.config.clone());
    assert_eq!(n.state.ids(), &saved.ids);
    assert_eq!(n.maps.backends, backends, "the same values");
    assert_eq!(n.maps.rings, rings);
    assert_eq!(rep.vips_added, 2, "the first apply writes everything once");
    assert!(!n.state.health()[&n.id(VIP_A, "10.1.0.2")].up);
}

#[test]
fn orphans_left_by_a_crash_are_swept() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let stray = vref("10.100.0.77:80/tcp").key();
    r.maps.vips.insert(stray, lb_common::VipMeta::default());
    r.maps.backends.insert(
        500,
        lb_common::Backend {
            family: lb_common::FAMILY_V4,
            ..Default::default()
        },
    );
    let (state, mut env) = r.split();
    assert_eq!(state.sweep_orphans(&mut env).expect("sweep"), 2);
    assert!(!r.maps.vips.contains_key(&stray));
    assert!(r.maps.backends[&500].is_down());
    let (state, mut env) = r.split();
    assert_eq!(state.sweep_orphans(&mut env).expect("again"), 0);
}

#[test]
fn probe_targets_are_the_members_with_a_check_on_its_port() {
    let mut r = Rig::new();
    let mut c = with_quorum(1, QuorumLoss::KeepLast, &[]);
    if let Some(h) = c.vips[0].health.as_mut() {
        h.port = Some(8080);
    }
    r.apply(c);
    let t = r.state.probe_targets();
    assert_eq!(t.len(), 3, "VIP B has no check");
    let p = &t[&r.id(VIP_A, "10.1.0.1")];
    assert_eq!(p.addr.to_string(), "10.1.0.1:8080");
    assert_eq!((p.check.kind, p.mark), (ProbeKind::Tcp, None));

    // Through the data path: to the VIP and the check's port, marked with the VIP's forwarding
    // mode and the backend's id for `xlb_probe`.
    let mut c = with_quorum(1, QuorumLoss::KeepLast, &[]);
    c.vips[0].forwarding = FwdMode::Gue;
    if let Some(h) = c.vips[0].health.as_mut() {
        h.port = Some(8080);
        h.via = crate::config::ProbeVia::Vip;
    }
    r.apply(c);
    let t = r.state.probe_targets();
    let id = r.id(VIP_A, "10.1.0.1");
    let vip = r.state.cfg().vips[0].address;
    assert_eq!(t[&id].addr, std::net::SocketAddr::new(vip, 8080));
    assert_eq!(
        t[&id].mark,
        Some(lb_common::PROBE_MARK | (lb_common::FWD_GUE as u32) << 14 | id)
    );
}

#[test]
fn a_change_report_counts_what_changed() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let mut c = two_vips();
    c.vips[1].hash = crate::config::HashMode::SrcIp;
    c.vips[0].backends.push(BackendConfig {
        address: ip("10.1.0.6"),
        weight: 1,
        drain: false,
        health: None,
    });
    let rep = r.apply(c);
    assert_eq!(
        (
            rep.vips_added,
            rep.vips_changed,
            rep.backends_added,
            rep.rings_swapped
        ),
        (0, 1, 1, 1)
    );
    assert!(rep.map_writes >= 3);
}

#[test]
fn an_empty_ring_is_published_when_every_backend_is_drained() {
    let mut r = Rig::new();
    let mut c = two_vips();
    for b in &mut c.vips[0].backends {
        b.drain = true;
    }
    r.apply(c);
    assert!(
        r.ring_members(VIP_A).is_empty(),
        "drop_no_backend, not a stale ring"
    );
    assert_eq!(r.state.summary().drained, 3);
}

#[test]
fn health_records_follow_the_members() {
    let mut r = Rig::new();
    r.apply(two_vips());
    assert_eq!(r.state.health().len(), 5);
    r.try_apply(config(vec![vip(VIP_A, &["10.1.0.1"])]), Removal::Now)
        .expect("apply");
    let ids: HashMap<u32, bool> = r.state.health().iter().map(|(k, h)| (*k, h.up)).collect();
    assert_eq!(ids.len(), 1);
}

#[test]
fn a_plan_made_before_a_health_transition_is_made_again() {
    let mut r = Rig::new();
    r.apply(with_quorum(1, QuorumLoss::KeepLast, &[]));
    let mut c = r.state.cfg().clone();
    c.vips[1].backends[0].weight = 2;
    let resolved = resolve(&r.state.missing_nexthops(&c));
    let (state, env) = r.split();
    let prepared = state
        .prepare(&env, c, Removal::Drain, resolved)
        .expect("prepared");
    // Meanwhile (the plan runs on another thread) a backend goes down.
    let id = r.id(VIP_A, "10.1.0.3");
    let now = r.now;
    assert!(r.state.record_health(id, false, "test", now));
    let planned = prepared.plan().expect("planned");
    let (state, mut env) = r.split();
    state.apply_planned(&mut env, planned).expect("applied");
    assert!(
        !r.ring_members(VIP_A).contains(&id),
        "the transition is not lost: the stale plan was made again"
    );
    assert!(r.maps.backends[&id].is_down());
}

#[test]
fn ids_running_out_is_said_once_per_vip() {
    let mut r = Rig::new();
    let mut c = config(vec![vip("10.100.0.1:80/tcp", &[])]);
    let many = |from: u32, n: u32| -> Vec<BackendConfig> {
        (from..from + n)
            .map(|i| BackendConfig {
                address: IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i)),
                weight: 1,
                drain: false,
                health: None,
            })
            .collect()
    };
    let max = lb_common::MAX_BACKENDS - 1;
    c.vips[0].ring_size = Some(163_841);
    c.vips[0].backends = many(1, max);
    r.apply(c.clone());
    // Replacing them all while the old ones drain needs ids nobody can give.
    c.vips[0].backends = many(100_000, 500);
    let e = r
        .try_apply(c, Removal::Drain)
        .expect_err("no ids")
        .to_string();
    assert_eq!(e.matches("no free backend id").count(), 1, "{e}");
    assert!(
        e.contains("no free backend id for 500 new backend(s)"),
        "{e}"
    );
}

#[test]
fn an_interface_gone_or_re_created_is_noticed_and_counted() {
    let mut r = Rig::new();
    r.apply(two_vips());
    assert_eq!(r.state.attached()[0].ifindex, Some(2));
    let check = |r: &mut Rig, index: Option<u32>| {
        let clock = Clock {
            now: r.now,
            unix_ms: r.unix_ms,
            mono_ns: r.mono_ns,
        };
        let lookup = move |_: &str| index;
        let env = Env {
            maps: &mut r.maps,
            store: &mut r.store,
            ifindex: &lookup,
            clock,
        };
        r.state.check_interfaces(&env)
    };
    assert!(!check(&mut r, Some(2)), "unchanged");
    assert_eq!(r.state.counters().interfaces_lost, 0);
    assert!(!check(&mut r, None), "gone: nothing to attach to yet");
    assert_eq!(r.state.counters().interfaces_lost, 1);
    assert!(
        check(&mut r, Some(9)),
        "back under a new index: attach again"
    );
    assert_eq!(
        r.state.counters().interfaces_lost,
        1,
        "its return is no loss"
    );
    assert!(check(&mut r, Some(10)), "re-created at once");
    assert_eq!(r.state.counters().interfaces_lost, 2);
    assert!(
        !r.state.published().links.contains_key("eth0"),
        "to be attached again"
    );
}

#[test]
fn quorum_loss_with_withdraw_stops_serving_and_keeps_the_healthy_ring() {
    let mut r = Rig::new();
    let mut c = with_quorum(2, QuorumLoss::Withdraw, &[]);
    c.announce = Some(Default::default());
    r.apply(c);
    let serving = |r: &Rig, v: &str| {
        r.state
            .serving()
            .into_iter()
            .find(|(id, _)| *id == vref(v))
            .expect("listed")
            .1
    };
    assert_eq!(serving(&r, VIP_A), Ok(()));
    r.set_health(VIP_A, "10.1.0.1", false);
    r.set_health(VIP_A, "10.1.0.2", false);
    let why = serving(&r, VIP_A).expect_err("below quorum");
    assert!(why.contains("quorum of 2"), "{why}");
    assert_eq!(
        r.ring_members(VIP_A),
        BTreeSet::from([r.id(VIP_A, "10.1.0.3")]),
        "what still arrives goes to the healthy backend"
    );
    assert_eq!(serving(&r, VIP_B), Ok(()), "the other VIP is not touched");
    r.set_health(VIP_A, "10.1.0.3", false);
    let why = serving(&r, VIP_A).expect_err("empty ring");
    assert_eq!(why, "no backend takes new flows");
    r.set_health(VIP_A, "10.1.0.1", true);
    r.set_health(VIP_A, "10.1.0.2", true);
    assert_eq!(serving(&r, VIP_A), Ok(()));
}

#[test]
fn a_vip_without_backends_in_its_ring_is_not_served() {
    let mut r = Rig::new();
    let mut c = two_vips();
    for b in &mut c.vips[1].backends {
        b.drain = true;
    }
    r.apply(c);
    let s = r.state.serving();
    let b = s.iter().find(|(id, _)| *id == vref(VIP_B)).expect("listed");
    assert_eq!(b.1, Err("no backend takes new flows".to_string()));
}

#[test]
fn a_drained_node_is_saved_at_once_and_restored_after_a_restart() {
    let mut r = Rig::new();
    r.apply(two_vips());
    {
        let (state, mut env) = r.split();
        state.set_node_drained(&mut env, true).expect("saved");
    }
    let saved = r.store.saved.clone().expect("saved");
    assert!(saved.node_drained);
    let mut again = State::new(Config::default().daemon, 2, r.now);
    again.restore(&saved, r.now);
    assert!(again.node_drained());

    r.store.fail = true;
    let (state, mut env) = r.split();
    state
        .set_node_drained(&mut env, false)
        .expect_err("save fails");
    assert!(state.node_drained(), "unchanged when it cannot be saved");
}

/// The key of a flow from 192.0.2.1:`port` to VIP_A.
fn vip_a_key(port: u16) -> FlowKey {
    let v = vref(VIP_A);
    crate::config::flow_key(
        std::net::SocketAddr::new(ip("192.0.2.1"), port),
        std::net::SocketAddr::new(v.address, v.port),
        v.protocol,
    )
}

/// A flow from 192.0.2.1:`port` to VIP_A, tracked on `id`, stamped now.
fn vip_a_flow(r: &mut Rig, port: u16, id: u32) -> FlowKey {
    let key = vip_a_key(port);
    let now = r.mono_ns + lb_common::CLOCK_LEAD_NS;
    r.maps.flows.retain(|(k, _)| *k != key);
    r.maps.flows.push((
        key,
        FlowState {
            backend_id: id,
            _pad: 0,
            last_seen_ns: now,
        },
    ));
    key
}

/// The backend VIP_A's ring picks for a flow from port `port`.
fn ring_pick(r: &Rig, port: u16) -> u32 {
    let key = vip_a_key(port);
    let meta = r.state.published().vips[&vref(VIP_A).key()];
    let slot = lb_common::hash::flow_hash(&key, meta.hash_mode, r.state.cfg().forwarding.hash_seed)
        % meta.ring_size;
    r.maps.rings[&meta.vip_id][slot as usize]
}

#[test]
fn only_flows_the_ring_no_longer_picks_are_divergent() {
    let mut r = Rig::new();
    r.apply(two_vips());
    let now = r.mono_ns + lb_common::CLOCK_LEAD_NS;
    let ids: Vec<u32> = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        .iter()
        .map(|a| r.id(VIP_A, a))
        .collect();
    // Port 1000: on its ring pick; port 1001: on another backend of the VIP.
    let agree = ring_pick(&r, 1000);
    vip_a_flow(&mut r, 1000, agree);
    let other = *ids
        .iter()
        .find(|&&i| i != ring_pick(&r, 1001))
        .expect("other");
    vip_a_flow(&mut r, 1001, other);
    let d = r.state.divergent(&r.maps, now).expect("scan");
    assert_eq!(d.scanned, 2);
    assert_eq!(d.records.len(), 1, "{d:?}");
    let rec = d.records[0];
    assert_eq!((rec.vip, rec.src_port), (vref(VIP_A), 1001));
    assert_eq!(r.state.members()[&other].address, rec.backend);

    // Idle past the VIP's timeout: not shipped.
    let timeout = u64::from(r.state.cfg().forwarding.tcp_idle_timeout_secs) * 1_000_000_000;
    let later = now + timeout + 1_000_000_000;
    assert!(
        r.state
            .divergent(&r.maps, later)
            .expect("scan")
            .records
            .is_empty()
    );
}

#[test]
fn peers_records_are_written_by_address_and_never_over_a_local_flow() {
    let mut a = Rig::new();
    a.apply(two_vips());
    let b_ids: Vec<u32> = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        .iter()
        .map(|x| a.id(VIP_A, x))
        .collect();
    let other = *b_ids
        .iter()
        .find(|&&i| i != ring_pick(&a, 1001))
        .expect("other");
    vip_a_flow(&mut a, 1001, other);
    let now = a.mono_ns + lb_common::CLOCK_LEAD_NS;
    let shipped = a.state.divergent(&a.maps, now).expect("scan").records;
    let digests = a.state.vip_digests();

    // Node B: same config, other ids (one VIP added first).
    let mut b = Rig::new();
    let mut cb = two_vips();
    cb.vips.insert(0, vip("10.100.0.9:80/tcp", &["10.1.0.9"]));
    b.apply(cb);
    assert_ne!(b.state.vip_digests()[&vref(VIP_A)], 0);
    let (state, mut env) = b.split();
    let got = state.receive(&mut env, &digests, &shipped);
    assert_eq!((got.written, got.local), (1, 0), "{got:?}");
    let (key, s) = b.maps.flows[0];
    assert_eq!(u16::from_be(key.src_port_be), 1001);
    assert_eq!(
        b.state.members()[&s.backend_id].address,
        shipped[0].backend,
        "the same backend, by address"
    );
    assert!(sync::is_peer_only(&s));
    // A peer-only entry is not shipped on: its owner does.
    assert!(
        b.state
            .divergent(&b.maps, now)
            .expect("scan")
            .records
            .is_empty()
    );
    // The forwarder restamps it when the flow arrives here: now ours, kept and shipped.
    b.maps.flows[0].1.last_seen_ns += 3_000_000_000;
    assert!(!sync::is_peer_only(&b.maps.flows[0].1));
    let (state, mut env) = b.split();
    assert_eq!(state.receive(&mut env, &digests, &shipped).local, 1);
    assert_eq!(
        b.state
            .divergent(&b.maps, now + 3_000_000_000)
            .expect("scan")
            .records
            .len(),
        1
    );

    // Another config for the VIP (another seed): refused, said.
    let mut c = Rig::new();
    let mut cc = two_vips();
    cc.forwarding.hash_seed ^= 1;
    c.apply(cc);
    let (state, mut env) = c.split();
    let got = state.receive(&mut env, &digests, &shipped);
    assert_eq!(got.written, 0);
    assert_eq!(got.refused.get("config_mismatch"), Some(&1));
    assert!(got.mismatched.contains(&vref(VIP_A)));
    assert!(c.maps.flows.is_empty());

    // A backend the node does not have: refused.
    let mut d = Rig::new();
    d.apply(two_vips());
    let mut wrong = shipped.clone();
    wrong[0].backend = ip("10.1.0.99");
    let (state, mut env) = d.split();
    let got = state.receive(&mut env, &digests, &wrong);
    assert_eq!(got.refused.get("unknown_backend"), Some(&1));
}

#[test]
fn the_sync_section_only_changes_with_a_restart() {
    let mut r = Rig::new();
    let mut c = two_vips();
    c.sync = Some(crate::config::SyncConfig {
        listen: "10.0.0.31:4790".into(),
        peers: vec!["10.0.0.32:4790".into()],
        key_file: "/etc/xlb/sync.key".into(),
        refresh_secs: 5,
        resync_timeout_ms: 2000,
    });
    r.apply(c.clone());
    let mut other = c.clone();
    if let Some(s) = other.sync.as_mut() {
        s.refresh_secs = 1;
    }
    let e = r.try_apply(other, Removal::Drain).expect_err("refused");
    assert!(e.to_string().contains("[sync] section differs"), "{e}");
    c.vips[0].backends[0].weight = 3;
    r.try_apply(c, Removal::Drain).expect("the rest applies");
}

#[test]
fn a_vip_that_answers_ping_publishes_one_echo_entry_for_its_address() {
    let mut r = Rig::new();
    let mut c = two_vips();
    c.vips[0].ping = true;
    r.apply(c.clone());
    let v = vref(VIP_A);
    let echo = lb_common::VipKey {
        addr: lb_common::Addr::from(v.address),
        port_be: 0,
        proto: lb_common::PROTO_ICMP,
        family: lb_common::family_of(&v.address),
    };
    let meta = r.maps.vips.get(&echo).copied().expect("echo entry");
    assert_eq!(meta.flags, lb_common::VIP_F_PING);
    assert_eq!(meta.ring_size, 0, "never forwards");
    assert_eq!(r.maps.vips.len(), 3);
    c.vips[0].ping = false;
    r.apply(c);
    assert!(!r.maps.vips.contains_key(&echo), "removed with the switch");
    assert_eq!(r.maps.vips.len(), 2);
}
