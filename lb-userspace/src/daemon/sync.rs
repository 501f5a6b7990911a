//! The flow-sync task: the one owner of the sync socket. It ships what the owner's scans find
//! (`Outbound`) to the peers, and hands authenticated, fresh, first-seen records from peers to
//! the owner (`Inbound`), which writes them. At start it asks every peer for its divergent
//! flows and tells the owner when all answered (or the resync timed out), so announcing waits.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ring::rand::SecureRandom;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{info, warn};

use super::owner::Command;
use crate::{
    api::{PeerView, SyncView},
    config::{SyncConfig, VipRef},
    sync::{
        replay::{Window, boot_id},
        wire::{FlowRecord, Key, Kind, Message, pack},
    },
};

/// What the owner asks the task to send.
#[derive(Debug)]
pub struct Outbound {
    pub digests: BTreeMap<VipRef, u64>,
    pub records: Vec<FlowRecord>,
    /// One peer's resync answer, or (None) a refresh to every peer.
    pub to: Option<SocketAddr>,
    /// Also ask every peer for its flows again: this node's rings (and config digests) just
    /// changed, so flows peers sent under the old digests were refused and are wanted now.
    pub ask_peers: bool,
}

/// What the task hands the owner.
#[derive(Debug)]
pub enum Inbound {
    Records {
        peer: SocketAddr,
        digests: BTreeMap<VipRef, u64>,
        records: Vec<FlowRecord>,
    },
    ResyncRequest {
        peer: SocketAddr,
    },
    /// The start-up resync is over.
    Ready,
}

/// The owner's end: where to send, and the view both sides keep up to date.
pub struct SyncLink {
    pub tx: mpsc::Sender<Outbound>,
    pub view: Arc<Mutex<SyncView>>,
    pub refresh_secs: u32,
}

impl SyncLink {
    pub fn view(&self) -> SyncView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Record one scan and a receive's outcome per peer (owner side).
    pub fn scanned(&self, divergent: usize, took: Duration) {
        if let Ok(mut v) = self.view.lock() {
            v.divergent_flows = divergent;
            v.scans += 1;
            v.last_scan_us = took.as_micros() as u64;
        }
    }

    pub fn received(&self, peer: SocketAddr, r: &crate::state::sync::Received) {
        if let Ok(mut v) = self.view.lock() {
            v.flows_written += r.written;
            for (why, n) in &r.refused {
                *v.refused.entry((*why).to_string()).or_default() += n;
            }
            if let Some(p) = v.peers.iter_mut().find(|p| p.address == peer.to_string()) {
                p.flows_written += r.written;
                p.config_mismatch = r.mismatched.iter().map(|x| x.to_string()).collect();
            }
        }
    }
}

struct Peer {
    addr: SocketAddr,
    window: Window,
    last_heard: Option<Instant>,
    /// Highest of our sequence numbers it acknowledged.
    acked: u64,
    /// The last full set sent to it (refresh or resync answer): its last sequence number and
    /// how many records.
    batch_last: u64,
    batch_records: usize,
    /// When the last full set went out, until the peer acknowledged it.
    batch_sent: Option<Instant>,
    /// Sending to acknowledgement of the last full set the peer acknowledged.
    lag: Option<Duration>,
    answered_resync: bool,
}

/// Bind the socket and read the key: errors here stop the daemon's start with a reason.
pub fn open(cfg: &SyncConfig) -> Result<(std::net::UdpSocket, Key)> {
    let bytes = std::fs::read(&cfg.key_file)
        .with_context(|| format!("reading sync.key_file {}", cfg.key_file.display()))?;
    let key = Key::new(&bytes)
        .map_err(|e| anyhow::anyhow!("sync.key_file {}: {e}", cfg.key_file.display()))?;
    let sock = std::net::UdpSocket::bind(&cfg.listen)
        .with_context(|| format!("binding sync.listen {}", cfg.listen))?;
    sock.set_nonblocking(true)?;
    Ok((sock, key))
}

struct Task {
    sock: UdpSocket,
    key: Key,
    boot: u64,
    seq: u64,
    peers: Vec<Peer>,
    view: Arc<Mutex<SyncView>>,
    owner: mpsc::Sender<Command>,
    refresh: Duration,
}

pub fn start(
    cfg: &SyncConfig,
    sock: std::net::UdpSocket,
    key: Key,
    owner: mpsc::Sender<Command>,
) -> Result<SyncLink> {
    let peers: Vec<SocketAddr> = cfg
        .peers
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let mut random = [0u8; 2];
    ring::rand::SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| anyhow::anyhow!("no randomness for the sync boot id"))?;
    let view = Arc::new(Mutex::new(SyncView {
        listen: cfg.listen.clone(),
        resync: "waiting".into(),
        peers: peers
            .iter()
            .map(|a| PeerView {
                address: a.to_string(),
                ..PeerView::default()
            })
            .collect(),
        ..SyncView::default()
    }));
    let (tx, rx) = mpsc::channel(64);
    let task = Task {
        sock: UdpSocket::from_std(sock)?,
        key,
        boot: boot_id(super::clock().unix_ms, u16::from_be_bytes(random)),
        seq: 0,
        peers: peers
            .into_iter()
            .map(|addr| Peer {
                addr,
                window: Window::default(),
                last_heard: None,
                acked: 0,
                batch_last: 0,
                batch_records: 0,
                batch_sent: None,
                lag: None,
                answered_resync: false,
            })
            .collect(),
        view: view.clone(),
        owner,
        refresh: Duration::from_secs(cfg.refresh_secs.into()),
    };
    tokio::spawn(task.run(rx, Duration::from_millis(cfg.resync_timeout_ms.into())));
    Ok(SyncLink {
        tx,
        view,
        refresh_secs: cfg.refresh_secs,
    })
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Outbound>, resync_timeout: Duration) {
        let started = Instant::now();
        let mut resyncing = true;
        for i in 0..self.peers.len() {
            let ack = self.peers[i].window.ack().1;
            let addr = self.peers[i].addr;
            let m = self.message(Kind::ResyncRequest, ack);
            self.send(addr, &m).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.datagram(&buf[..n], from).await,
                    Err(e) => warn!(error = %e, "sync socket"),
                },
                out = rx.recv() => match out {
                    Some(o) => self.outbound(o).await,
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if resyncing {
                let all = self.peers.iter().all(|p| p.answered_resync);
                if all || started.elapsed() >= resync_timeout {
                    resyncing = false;
                    let missing: Vec<String> = self
                        .peers
                        .iter()
                        .filter(|p| !p.answered_resync)
                        .map(|p| p.addr.to_string())
                        .collect();
                    let state = if missing.is_empty() {
                        info!(took = ?started.elapsed(), "sync: every peer's flows received");
                        "done".to_string()
                    } else {
                        warn!(peers = ?missing, "sync: resync timed out; announcing without them");
                        format!("timed out ({})", missing.join(", "))
                    };
                    if let Ok(mut v) = self.view.lock() {
                        v.resync = state;
                    }
                    let _ = self.owner.send(Command::Sync(Inbound::Ready)).await;
                }
            }
            self.publish();
        }
    }

    fn message(&mut self, kind: Kind, ack: u64) -> Message {
        self.seq += 1;
        Message::new(kind, self.boot, self.seq, ack, super::clock().unix_ms)
    }

    async fn send(&self, to: SocketAddr, m: &Message) {
        let d = m.encode(&self.key);
        match self.sock.send_to(&d, to).await {
            Ok(_) => {
                if let Ok(mut v) = self.view.lock() {
                    v.records_sent += m.records.len() as u64;
                    v.bytes_sent += d.len() as u64;
                }
            }
            Err(e) => warn!(peer = %to, error = %e, "sync: sending"),
        }
    }

    async fn outbound(&mut self, o: Outbound) {
        if o.ask_peers {
            for i in 0..self.peers.len() {
                let ack = self.peers[i].window.ack().1;
                let addr = self.peers[i].addr;
                let m = self.message(Kind::ResyncRequest, ack);
                self.send(addr, &m).await;
            }
        }
        let targets: Vec<usize> = (0..self.peers.len())
            .filter(|&i| o.to.is_none_or(|t| self.peers[i].addr == t))
            .collect();
        for i in targets {
            let ack = self.peers[i].window.ack().1;
            let template = Message::new(Kind::Flows, self.boot, 0, ack, 0);
            let mut msgs = pack(&template, &o.digests, &o.records);
            if o.to.is_some()
                && let Some(last) = msgs.last_mut()
            {
                last.kind = Kind::ResyncDone;
            }
            for m in &mut msgs {
                self.seq += 1;
                m.seq = self.seq;
                m.unix_ms = super::clock().unix_ms;
            }
            let addr = self.peers[i].addr;
            for m in &msgs {
                self.send(addr, m).await;
            }
            // A resync answer is the whole set too: it is what the peer must acknowledge.
            self.peers[i].batch_last = self.seq;
            self.peers[i].batch_records = o.records.len();
            // Only sets with flows are acknowledged.
            self.peers[i].batch_sent = (!o.records.is_empty()).then(Instant::now);
        }
    }

    fn refuse(&self, why: &str) {
        if let Ok(mut v) = self.view.lock() {
            *v.refused.entry(why.to_string()).or_default() += 1;
        }
    }

    async fn datagram(&mut self, d: &[u8], from: SocketAddr) {
        let Some(i) = self.peers.iter().position(|p| p.addr == from) else {
            self.refuse("unknown_peer");
            return;
        };
        let m = match Message::decode(d, &self.key) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(e.reason());
                return;
            }
        };
        if let Err(why) =
            self.peers[i]
                .window
                .accept(m.boot, m.seq, m.unix_ms, super::clock().unix_ms)
        {
            self.refuse(why);
            return;
        }
        let p = &mut self.peers[i];
        p.last_heard = Some(Instant::now());
        p.acked = p.acked.max(m.ack);
        if p.acked >= p.batch_last
            && let Some(t) = p.batch_sent.take()
        {
            p.lag = Some(t.elapsed());
        }
        if let Ok(mut v) = self.view.lock() {
            v.records_received += m.records.len() as u64;
            if let Some(pv) = v.peers.get_mut(i) {
                pv.records_received += m.records.len() as u64;
            }
        }
        match m.kind {
            Kind::Ack => {}
            Kind::ResyncRequest => {
                info!(peer = %from, "sync: a peer (re)started; sending it our divergent flows");
                let _ = self
                    .owner
                    .send(Command::Sync(Inbound::ResyncRequest { peer: from }))
                    .await;
            }
            Kind::Flows | Kind::ResyncDone => {
                if m.kind == Kind::ResyncDone {
                    p.answered_resync = true;
                }
                if !m.records.is_empty() {
                    let ack = p.window.ack().1;
                    let a = self.message(Kind::Ack, ack);
                    self.send(from, &a).await;
                    let _ = self
                        .owner
                        .send(Command::Sync(Inbound::Records {
                            peer: from,
                            digests: m.digests,
                            records: m.records,
                        }))
                        .await;
                }
            }
        }
    }

    /// Liveness and unsynced counts into the view.
    fn publish(&self) {
        let Ok(mut v) = self.view.lock() else {
            return;
        };
        for (p, pv) in self.peers.iter().zip(v.peers.iter_mut()) {
            let heard = p.last_heard.map(|t| t.elapsed());
            pv.last_heard_ms = heard.map(|d| d.as_millis() as u64);
            pv.up = heard.is_some_and(|d| d < self.refresh * 3);
            pv.lag_ms = p.lag.map(|d| d.as_secs_f64() * 1000.0);
            pv.unsynced = if pv.up && p.acked >= p.batch_last {
                0
            } else {
                p.batch_records
            };
        }
    }
}
