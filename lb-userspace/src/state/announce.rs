//! Which VIP addresses this node announces, and why not. A route carries every port of an
//! address, so an address is announced when every VIP on it can serve (backends in its ring,
//! its quorum met where losing it withdraws) and has for `min_up_secs`, the start-up hold is
//! over and the node is not drained. An announced address stays announced while it serves:
//! `min_up_secs` and the hold gate announcing, not keeping (a restarted daemon keeps the routes
//! its predecessor left). No I/O: the daemon writes the routes this decides.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::config::{Announce, VipRef};

/// Whether a VIP can take traffic on this node, or why not.
pub type Serving = Result<(), String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrState {
    /// The VIPs on this address.
    pub vips: Vec<VipRef>,
    /// Since when every VIP on the address has served.
    pub serving_since: Option<Instant>,
    /// Announced (wanted in the kernel table).
    pub wanted: bool,
    /// Why it is not announced.
    pub why_not: Option<String>,
    /// When `wanted` last changed.
    pub since: Instant,
}

#[derive(Clone, Debug)]
pub struct Announcer {
    started: Instant,
    addrs: BTreeMap<IpAddr, AddrState>,
    pub announces: u64,
    pub withdraws: u64,
    /// Flow sync's start-up resync is not finished: like the hold, nothing new is announced
    /// (routers must not send this node flows its peers know and it does not yet).
    pub resync_pending: bool,
}

impl Announcer {
    pub fn new(started: Instant) -> Announcer {
        Announcer {
            started,
            addrs: BTreeMap::new(),
            announces: 0,
            withdraws: 0,
            resync_pending: false,
        }
    }

    /// Routes found in the kernel at start, left by a daemon that did not stop cleanly: they
    /// stay announced for as long as their VIPs serve, without a new hold.
    pub fn adopt(&mut self, present: impl IntoIterator<Item = IpAddr>, now: Instant) {
        for a in present {
            self.addrs.insert(
                a,
                AddrState {
                    vips: Vec::new(),
                    serving_since: Some(now),
                    wanted: true,
                    why_not: None,
                    since: now,
                },
            );
        }
    }

    /// Decide every address again; returns the addresses to announce.
    pub fn evaluate(
        &mut self,
        settings: &Announce,
        vips: &[(VipRef, Serving)],
        drained: bool,
        now: Instant,
    ) -> BTreeSet<IpAddr> {
        let mut by_addr: BTreeMap<IpAddr, Vec<&(VipRef, Serving)>> = BTreeMap::new();
        for v in vips {
            by_addr.entry(v.0.address).or_default().push(v);
        }
        let gone: Vec<IpAddr> = self
            .addrs
            .keys()
            .filter(|a| !by_addr.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            if self.addrs.remove(&a).is_some_and(|s| s.wanted) {
                self.withdraws += 1;
            }
        }
        let hold_until = self.started + Duration::from_secs(settings.hold_secs.into());
        let min_up = Duration::from_secs(settings.min_up_secs.into());
        for (addr, vs) in by_addr {
            let st = self.addrs.entry(addr).or_insert_with(|| AddrState {
                vips: Vec::new(),
                serving_since: None,
                wanted: false,
                why_not: None,
                since: now,
            });
            st.vips = vs.iter().map(|(r, _)| *r).collect();
            let failing = vs
                .iter()
                .find_map(|(r, s)| s.as_ref().err().map(|e| format!("{r}: {e}")));
            match &failing {
                Some(_) => st.serving_since = None,
                None => {
                    st.serving_since.get_or_insert(now);
                }
            }
            let why_not = if drained {
                Some("node drained (`xlb undrain-node` announces again)".to_string())
            } else if let Some(e) = failing {
                Some(e)
            } else if st.wanted {
                None
            } else if now < hold_until {
                Some(format!(
                    "holding after start: {} s left of hold_secs {}",
                    (hold_until - now).as_secs_f64().ceil() as u64,
                    settings.hold_secs
                ))
            } else if self.resync_pending {
                Some("waiting for the peers' flows (sync resync after start)".to_string())
            } else {
                let served = st.serving_since.map_or(Duration::ZERO, |t| now - t);
                (served < min_up).then(|| {
                    format!(
                        "serving for {:.1} s of min_up_secs {}",
                        served.as_secs_f64(),
                        settings.min_up_secs
                    )
                })
            };
            let wanted = why_not.is_none();
            if wanted != st.wanted {
                st.wanted = wanted;
                st.since = now;
                if wanted {
                    self.announces += 1;
                } else {
                    self.withdraws += 1;
                }
            }
            st.why_not = why_not;
        }
        self.wanted()
    }

    pub fn wanted(&self) -> BTreeSet<IpAddr> {
        self.addrs
            .iter()
            .filter(|(_, s)| s.wanted)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn addrs(&self) -> &BTreeMap<IpAddr, AddrState> {
        &self.addrs
    }

    /// Seconds of the start-up hold left.
    pub fn hold_left(&self, settings: &Announce, now: Instant) -> u64 {
        let until = self.started + Duration::from_secs(settings.hold_secs.into());
        until.saturating_duration_since(now).as_secs_f64().ceil() as u64
    }
}

/// One change to the kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOp {
    Add(IpAddr),
    Del(IpAddr),
}

/// The route writes that take `present` to `wanted`: withdrawals first, so a node that must
/// stop attracting traffic does so before anything else.
pub fn reconcile(present: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> Vec<RouteOp> {
    present
        .difference(wanted)
        .map(|a| RouteOp::Del(*a))
        .chain(wanted.difference(present).map(|a| RouteOp::Add(*a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hold: u32, min_up: u32) -> Announce {
        Announce {
            hold_secs: hold,
            min_up_secs: min_up,
            ..Announce::default()
        }
    }

    fn vip(s: &str) -> VipRef {
        s.parse().expect("vip")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const A80: &str = "10.100.0.1:80/tcp";
    const A53: &str = "10.100.0.1:53/udp";
    const B80: &str = "10.100.0.2:80/tcp";

    fn all_ok() -> Vec<(VipRef, Serving)> {
        vec![(vip(A80), Ok(())), (vip(A53), Ok(())), (vip(B80), Ok(()))]
    }

    #[test]
    fn nothing_is_announced_during_the_hold_or_before_min_up() {
        let t0 = Instant::now();
        let s = settings(5, 2);
        let mut a = Announcer::new(t0);
        assert!(a.evaluate(&s, &all_ok(), false, t0).is_empty());
        let why = a.addrs()[&ip("10.100.0.1")].why_not.clone().expect("why");
        assert!(why.starts_with("holding after start: 5 s left"), "{why}");
        // The VIPs have served since t0: at the end of the hold, min_up is met.
        let at = t0 + Duration::from_secs(5);
        let on = a.evaluate(&s, &all_ok(), false, at);
        assert_eq!(on, [ip("10.100.0.1"), ip("10.100.0.2")].into());
        assert_eq!((a.announces, a.withdraws), (2, 0));
        assert_eq!(a.hold_left(&s, at), 0);
    }

    #[test]
    fn one_vip_that_cannot_serve_withdraws_its_address_only() {
        let t0 = Instant::now();
        let s = settings(0, 0);
        let mut a = Announcer::new(t0);
        a.evaluate(&s, &all_ok(), false, t0);
        let mut v = all_ok();
        v[1].1 = Err("no backend takes new flows".into());
        let on = a.evaluate(&s, &v, false, t0 + Duration::from_secs(1));
        assert_eq!(on, [ip("10.100.0.2")].into());
        assert_eq!(
            a.addrs()[&ip("10.100.0.1")].why_not.as_deref(),
            Some("10.100.0.1:53/udp: no backend takes new flows")
        );
        assert_eq!(a.withdraws, 1);
        // Back: announced again only after min_up.
        let s = settings(0, 3);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(a.evaluate(&s, &all_ok(), false, t1).len(), 1);
        let why = a.addrs()[&ip("10.100.0.1")].why_not.clone().expect("why");
        assert!(
            why.starts_with("serving for 0.0 s of min_up_secs 3"),
            "{why}"
        );
        assert_eq!(
            a.evaluate(&s, &all_ok(), false, t1 + Duration::from_secs(3))
                .len(),
            2
        );
    }

    #[test]
    fn min_up_gates_announcing_not_keeping() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0);
        a.evaluate(&settings(0, 0), &all_ok(), false, t0);
        // A larger min_up later does not withdraw what serves.
        let on = a.evaluate(
            &settings(0, 60),
            &all_ok(),
            false,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(on.len(), 2);
    }

    #[test]
    fn a_drained_node_withdraws_everything_and_undrain_skips_min_up_only_if_serving() {
        let t0 = Instant::now();
        let s = settings(0, 1);
        let mut a = Announcer::new(t0);
        a.evaluate(&s, &all_ok(), false, t0);
        a.evaluate(&s, &all_ok(), false, t0 + Duration::from_secs(1));
        assert_eq!(a.wanted().len(), 2);
        assert!(
            a.evaluate(&s, &all_ok(), true, t0 + Duration::from_secs(2))
                .is_empty()
        );
        assert!(
            a.addrs()[&ip("10.100.0.2")]
                .why_not
                .as_deref()
                .is_some_and(|w| w.starts_with("node drained"))
        );
        assert_eq!(a.withdraws, 2);
        // The VIPs kept serving while drained: announced at once on undrain.
        assert_eq!(
            a.evaluate(&s, &all_ok(), false, t0 + Duration::from_secs(3))
                .len(),
            2
        );
    }

    #[test]
    fn nothing_new_is_announced_until_the_resync_ends() {
        let t0 = Instant::now();
        let s = settings(0, 0);
        let mut a = Announcer::new(t0);
        a.resync_pending = true;
        assert!(a.evaluate(&s, &all_ok(), false, t0).is_empty());
        let why = a.addrs().values().next().and_then(|x| x.why_not.clone());
        assert!(why.expect("reason").contains("resync"));
        a.resync_pending = false;
        assert_eq!(a.evaluate(&s, &all_ok(), false, t0).len(), 2);
        a.resync_pending = true;
        assert_eq!(
            a.evaluate(&s, &all_ok(), false, t0).len(),
            2,
            "gates announcing, not keeping"
        );
    }

    #[test]
    fn adopted_routes_stay_through_the_hold_while_they_serve() {
        let t0 = Instant::now();
        let s = settings(30, 10);
        let mut a = Announcer::new(t0);
        a.adopt([ip("10.100.0.2"), ip("10.9.9.9")], t0);
        let on = a.evaluate(&s, &all_ok(), false, t0);
        assert_eq!(on, [ip("10.100.0.2")].into(), "kept; the unknown one goes");
        assert_eq!(a.withdraws, 1);
    }

    #[test]
    fn removed_vips_are_withdrawn() {
        let t0 = Instant::now();
        let s = settings(0, 0);
        let mut a = Announcer::new(t0);
        a.evaluate(&s, &all_ok(), false, t0);
        let on = a.evaluate(&s, &all_ok()[..2], false, t0);
        assert_eq!(on, [ip("10.100.0.1")].into());
        assert!(!a.addrs().contains_key(&ip("10.100.0.2")));
    }

    #[test]
    fn reconcile_withdraws_before_it_announces() {
        let present = [ip("10.0.0.1"), ip("10.0.0.2")].into();
        let wanted = [ip("10.0.0.2"), ip("10.0.0.3")].into();
        assert_eq!(
            reconcile(&present, &wanted),
            vec![RouteOp::Del(ip("10.0.0.1")), RouteOp::Add(ip("10.0.0.3"))]
        );
        assert!(reconcile(&wanted, &wanted).is_empty());
    }
}
