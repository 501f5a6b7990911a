//! Health probing: one tokio task per probed backend (per VIP membership), started at a
//! jittered offset, bounded in flight by a semaphore, each probe under its own timeout so a hung
//! backend delays nobody. A task reports only transitions, after `rise` consecutive successes or
//! `fall` consecutive failures, so a flapping backend cannot churn the rings faster than that.

pub mod probe;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

use crate::config::HealthCheck;

/// At most this many probes run at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// What to probe for one backend id.
pub use crate::state::ProbeTarget as Target;

#[derive(Debug)]
pub struct Transition {
    pub id: u32,
    pub up: bool,
    pub reason: String,
}

pub struct Monitor {
    tasks: HashMap<u32, (Target, JoinHandle<()>)>,
    tx: mpsc::Sender<Transition>,
    slots: Arc<Semaphore>,
}

impl Monitor {
    pub fn new(tx: mpsc::Sender<Transition>) -> Monitor {
        Monitor {
            tasks: HashMap::new(),
            tx,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Probe exactly `wanted`: stop tasks of removed or changed targets, start new ones from
    /// their current state (`up_now`).
    pub fn sync(&mut self, wanted: HashMap<u32, Target>, up_now: impl Fn(u32) -> bool) {
        self.tasks.retain(|id, (t, h)| {
            let keep = wanted.get(id) == Some(t);
            if !keep {
                h.abort();
            }
            keep
        });
        for (id, t) in wanted {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let h = tokio::spawn(run(
                id,
                t.clone(),
                up_now(id),
                self.tx.clone(),
                self.slots.clone(),
            ));
            self.tasks.insert(id, (t, h));
        }
    }

    pub fn probing(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for (_, h) in self.tasks.values() {
            h.abort();
        }
    }
}

/// A start offset in [0, interval): spreads a thousand backends over the interval.
fn jitter(id: u32, interval: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mix = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ nanos;
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(mix % ms)
}

fn kind_name(c: &HealthCheck) -> String {
    serde_json::to_value(c.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn run(
    id: u32,
    t: Target,
    mut up: bool,
    tx: mpsc::Sender<Transition>,
    slots: Arc<Semaphore>,
) {
    let c = &t.check;
    let interval = Duration::from_millis(c.interval_ms as u64);
    let timeout = Duration::from_millis(c.timeout_ms as u64);
    tokio::time::sleep(jitter(id, interval)).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    let kind = kind_name(c);
    loop {
        tick.tick().await;
        let Ok(permit) = slots.acquire().await else {
            return;
        };
        let result = match tokio::time::timeout(timeout, probe::probe(t.addr, t.mark, c)).await {
            Ok(r) => r,
            Err(_) => Err(probe::ProbeFailure(format!(
                "timeout after {} ms",
                c.timeout_ms
            ))),
        };
        drop(permit);
        let transition = match result {
            Ok(()) => {
                ok_run += 1;
                fail_run = 0;
                (!up && ok_run >= c.rise).then(|| {
                    up = true;
                    format!(
                        "{} consecutive successful {kind} probes of {}",
                        c.rise, t.addr
                    )
                })
            }
            Err(e) => {
                fail_run += 1;
                ok_run = 0;
                (up && fail_run >= c.fall).then(|| {
                    up = false;
                    format!(
                        "{} consecutive {kind} probe failures of {} (last: {e})",
                        c.fall, t.addr
                    )
                })
            }
        };
        if let Some(reason) = transition
            && tx.send(Transition { id, up, reason }).await.is_err()
        {
            return;
        }
    }
}
