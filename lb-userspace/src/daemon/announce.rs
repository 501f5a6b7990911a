//! Route announcements: the owner decides what to announce (`state::announce`) and hands the
//! set to the route task here, which keeps xlb's kernel table equal to it and reports what the
//! table holds. The owner never waits on netlink; a withdrawal is one route delete, which the
//! routing daemon (BIRD) turns into a BGP withdraw within milliseconds.

use std::{collections::BTreeSet, future::Future, net::IpAddr, time::Duration};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::owner::Command;
use crate::{
    api::{AnnounceView, AnnouncedView},
    config::Announce,
    routes::KernelRoutes,
    state::announce::{Announcer, RouteOp, reconcile},
};

/// What the owner wants in the kernel table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Table, protocol and interface; `None`: announcing is off (nothing in any table).
    pub settings: Option<Announce>,
    pub addrs: BTreeSet<IpAddr>,
}

/// What the route task found after a round of writes.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub present: BTreeSet<IpAddr>,
    pub error: Option<String>,
}

/// The owner's view of announcements: the decision, and what the kernel table holds.
pub struct Announcements {
    pub announcer: Announcer,
    pub present: BTreeSet<IpAddr>,
    pub errors: u64,
    pub last_error: Option<String>,
    tx: watch::Sender<Wanted>,
}

impl Announcements {
    pub fn new(announcer: Announcer, present: BTreeSet<IpAddr>, tx: watch::Sender<Wanted>) -> Self {
        Announcements {
            announcer,
            present,
            errors: 0,
            last_error: None,
            tx,
        }
    }

    /// Hand a new wanted set to the route task (it wakes only when something changed).
    pub fn want(&self, wanted: Wanted) {
        self.tx.send_if_modified(|w| {
            if *w == wanted {
                return false;
            }
            *w = wanted;
            true
        });
    }

    pub fn report(&mut self, r: Report) {
        self.present = r.present;
        if let Some(e) = &r.error {
            self.errors += 1;
            if self.last_error.as_ref() != Some(e) {
                warn!(error = %e, "writing VIP routes; retrying every second");
            }
        }
        self.last_error = r.error;
    }

    pub fn view(
        &self,
        settings: &Announce,
        drained: bool,
        now: std::time::Instant,
    ) -> AnnounceView {
        AnnounceView {
            table: settings.table,
            protocol: settings.protocol,
            node_drained: drained,
            hold_left_secs: self.announcer.hold_left(settings, now),
            announces: self.announcer.announces,
            withdraws: self.announcer.withdraws,
            route_errors: self.errors,
            last_error: self.last_error.clone(),
            addresses: self
                .announcer
                .addrs()
                .iter()
                .map(|(a, s)| AnnouncedView {
                    address: a.to_string(),
                    vips: s.vips.iter().map(ToString::to_string).collect(),
                    announced: self.present.contains(a),
                    wanted: s.wanted,
                    reason: s.why_not.clone(),
                    since_secs: now.saturating_duration_since(s.since).as_secs(),
                })
                .collect(),
        }
    }
}

/// The kernel side, behind a trait so the task's rules are tested against a fake.
pub trait Routes: Send + Sync + 'static {
    fn list(&self, a: &Announce) -> impl Future<Output = Result<BTreeSet<IpAddr>, String>> + Send;
    fn add(&self, a: &Announce, addr: IpAddr) -> impl Future<Output = Result<(), String>> + Send;
    fn del(&self, a: &Announce, addr: IpAddr) -> impl Future<Output = Result<(), String>> + Send;
}

impl Routes for KernelRoutes {
    async fn list(&self, a: &Announce) -> Result<BTreeSet<IpAddr>, String> {
        KernelRoutes::list(self, a).await.map_err(|e| e.to_string())
    }
    async fn add(&self, a: &Announce, addr: IpAddr) -> Result<(), String> {
        KernelRoutes::add(self, a, addr)
            .await
            .map_err(|e| e.to_string())
    }
    async fn del(&self, a: &Announce, addr: IpAddr) -> Result<(), String> {
        KernelRoutes::del(self, a, addr)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The route task. `applied` and `present`: the settings and routes found at start. Runs until
/// the owner drops its sender, then writes the last wanted set (empty on a clean stop) and
/// ends.
pub async fn run<R: Routes>(
    routes: R,
    mut applied: Option<Announce>,
    mut present: BTreeSet<IpAddr>,
    mut rx: watch::Receiver<Wanted>,
    owner: mpsc::Sender<Command>,
) {
    loop {
        let wanted = rx.borrow_and_update().clone();
        let error = sync(&routes, &mut applied, &mut present, &wanted).await;
        let retry = error.is_some();
        let report = Report {
            present: present.clone(),
            error,
        };
        if owner.send(Command::Routes(report)).await.is_err() {
            return;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    let last = rx.borrow().clone();
                    let _ = sync(&routes, &mut applied, &mut present, &last).await;
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
        }
    }
}

/// One round: move to new settings if they changed (the old table's routes go first), then
/// withdraw and announce. Returns the first error; what succeeded stays done.
pub async fn sync<R: Routes>(
    routes: &R,
    applied: &mut Option<Announce>,
    present: &mut BTreeSet<IpAddr>,
    wanted: &Wanted,
) -> Option<String> {
    if *applied != wanted.settings {
        if let Some(old) = applied.as_ref() {
            for a in present.clone() {
                if let Err(e) = routes.del(old, a).await {
                    return Some(e);
                }
                info!(address = %a, table = old.table, "route withdrawn (announce settings changed)");
                present.remove(&a);
            }
        }
        *applied = wanted.settings.clone();
        if let Some(new) = applied.as_ref() {
            match routes.list(new).await {
                Ok(found) => *present = found,
                Err(e) => return Some(e),
            }
        }
    }
    let settings = applied.as_ref()?;
    let mut first = None;
    for op in reconcile(present, &wanted.addrs) {
        let (r, addr, what) = match op {
            RouteOp::Del(a) => (routes.del(settings, a).await, a, "withdrawn"),
            RouteOp::Add(a) => (routes.add(settings, a).await, a, "announced"),
        };
        match r {
            Ok(()) => {
                info!(address = %addr, table = settings.table, "VIP address {what}");
                if matches!(op, RouteOp::Del(_)) {
                    present.remove(&addr);
                } else {
                    present.insert(addr);
                }
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// Tables in memory; writes to an address in `fail` fail.
    #[derive(Clone, Default)]
    struct Fake {
        tables: Arc<Mutex<BTreeMap<u32, BTreeSet<IpAddr>>>>,
        log: Arc<Mutex<Vec<String>>>,
        fail: Arc<Mutex<BTreeSet<IpAddr>>>,
    }

    impl Routes for Fake {
        async fn list(&self, a: &Announce) -> Result<BTreeSet<IpAddr>, String> {
            Ok(self
                .tables
                .lock()
                .expect("lock")
                .get(&a.table)
                .cloned()
                .unwrap_or_default())
        }
        async fn add(&self, a: &Announce, addr: IpAddr) -> Result<(), String> {
            if self.fail.lock().expect("lock").contains(&addr) {
                return Err(format!("adding {addr}: refused"));
            }
            self.log
                .lock()
                .expect("lock")
                .push(format!("add {addr} {}", a.table));
            self.tables
                .lock()
                .expect("lock")
                .entry(a.table)
                .or_default()
                .insert(addr);
            Ok(())
        }
        async fn del(&self, a: &Announce, addr: IpAddr) -> Result<(), String> {
            self.log
                .lock()
                .expect("lock")
                .push(format!("del {addr} {}", a.table));
            if let Some(t) = self.tables.lock().expect("lock").get_mut(&a.table) {
                t.remove(&addr);
            }
            Ok(())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn wanted(table: u32, addrs: &[&str]) -> Wanted {
        Wanted {
            settings: Some(Announce {
                table,
                ..Announce::default()
            }),
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    #[tokio::test]
    async fn rounds_withdraw_first_and_move_tables_when_settings_change() {
        let f = Fake::default();
        let (mut applied, mut present) = (None, BTreeSet::new());
        let w = wanted(100, &["10.0.0.1", "10.0.0.2"]);
        assert_eq!(sync(&f, &mut applied, &mut present, &w).await, None);
        assert_eq!(present, w.addrs);
        let w = wanted(100, &["10.0.0.2", "10.0.0.3"]);
        sync(&f, &mut applied, &mut present, &w).await;
        assert_eq!(
            f.log.lock().expect("lock")[2..],
            ["del 10.0.0.1 100", "add 10.0.0.3 100"]
        );
        // Another table: the old one is emptied, then the new one filled.
        let w = wanted(101, &["10.0.0.3"]);
        sync(&f, &mut applied, &mut present, &w).await;
        let tables = f.tables.lock().expect("lock").clone();
        assert!(tables[&100].is_empty());
        assert_eq!(tables[&101], [ip("10.0.0.3")].into());
        // Off: everything withdrawn, nothing listed.
        let off = Wanted::default();
        sync(&f, &mut applied, &mut present, &off).await;
        assert!(f.tables.lock().expect("lock")[&101].is_empty());
        assert!(present.is_empty());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_retried() {
        let f = Fake::default();
        f.fail.lock().expect("lock").insert(ip("10.0.0.2"));
        let (tx, rx) = watch::channel(wanted(100, &["10.0.0.1", "10.0.0.2"]));
        let (otx, mut orx) = mpsc::channel(8);
        let task = tokio::spawn(run(f.clone(), None, BTreeSet::new(), rx, otx));
        let Some(Command::Routes(r)) = orx.recv().await else {
            panic!("a report")
        };
        assert_eq!(r.present, [ip("10.0.0.1")].into());
        assert!(r.error.is_some_and(|e| e.contains("10.0.0.2")));
        f.fail.lock().expect("lock").clear();
        let Some(Command::Routes(r)) = orx.recv().await else {
            panic!("a retry")
        };
        assert_eq!(r.present.len(), 2);
        assert!(r.error.is_none());
        // The owner goes with an empty wanted set: the task withdraws and ends.
        tx.send_replace(wanted(100, &[]));
        drop(tx);
        while orx.recv().await.is_some() {}
        task.await.expect("task");
        assert!(f.tables.lock().expect("lock")[&100].is_empty());
    }
}
