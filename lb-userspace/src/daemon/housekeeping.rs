//! The daemon's heartbeat: a tick every second (conntrack clock, counter samples for rates,
//! finished drains, the capture lease, probe targets) and a next-hop refresh every `refresh`.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::owner::Command;

pub async fn run(owner: mpsc::Sender<Command>, refresh: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_refresh = Instant::now();
    loop {
        tick.tick().await;
        if owner.send(Command::Tick).await.is_err() {
            return;
        }
        if last_refresh.elapsed() >= refresh {
            last_refresh = Instant::now();
            if owner.send(Command::RefreshNextHops).await.is_err() {
                return;
            }
        }
    }
}
