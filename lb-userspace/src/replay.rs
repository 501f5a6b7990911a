//! `xlb replay`: "what would the forwarder do with this packet". Each frame of a capture file
//! runs through the forwarder with BPF_PROG_TEST_RUN, in a private instance that reads the
//! daemon's pinned forwarding tables (VIPs, rings, backends, ports: read-only to the forwarder)
//! and writes only its own conntrack, counters and capture ring. Live traffic and live state are
//! never touched; a flow the live conntrack tracks is copied into the private one first, so
//! established flows replay on the backend they really use.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData};
use lb_common::{
    FlowKey, FlowState,
    capture::{CAPTURE_ALL_OUTCOMES, CAPTURE_NO_VIP, CaptureConfig},
    map_names, prog_names,
    stats::VipStats,
};
use serde::Serialize;

use crate::{
    capture::{
        Error,
        record::{Clock, Names, Record, Summary},
    },
    dataplane::{Dataplane, LoadOptions, PinnedConntrack},
};

/// Conntrack capacity of the private instance (flows of one capture file).
const REPLAY_CONNTRACK: u32 = 1 << 16;

/// The answer for one frame.
#[derive(Clone, Debug, Serialize)]
pub struct Replayed {
    /// 1-based position in the file.
    pub packet: usize,
    pub input_len: usize,
    pub action: &'static str,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// How the backend was found: `tracked` (conntrack hit), `new` (ring, entry written),
    /// `failover` (tracked on a down backend, re-picked), `stateless` (ring, no conntrack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pick: Option<&'static str>,
    /// The backend came from the flow's entry in the live conntrack (copied in for the replay).
    pub live_entry: bool,
    pub output_len: usize,
    #[serde(skip)]
    pub output: Vec<u8>,
    #[serde(skip)]
    pub comment: String,
}

pub struct Replayer {
    dp: Dataplane,
    live_conntrack: PinnedConntrack,
    /// Private conntrack entries as the replay left them, per flow seen so far (None: absent).
    mirror: HashMap<FlowKey, Option<FlowState>>,
    names: Names,
}

impl Replayer {
    /// A private forwarder over the tables pinned in `pin_dir`.
    pub fn new(pin_dir: &Path) -> Result<Replayer, Error> {
        let mut dp = Dataplane::load(&LoadOptions {
            conntrack_entries: REPLAY_CONNTRACK,
            share_tables_from: Some(pin_dir.to_path_buf()),
            programs: &[prog_names::FORWARD],
            ..LoadOptions::default()
        })?;
        let live_cfg = pinned_config(pin_dir)?;
        // Every packet leaves a record on the private ring: that is how the replay learns the
        // verdict, the flow and the backend.
        dp.set_capture(&CaptureConfig {
            session: 1,
            vip_id: CAPTURE_NO_VIP,
            outcomes: CAPTURE_ALL_OUTCOMES,
            ..Default::default()
        })?;
        let mut cfg = live_cfg;
        cfg.flags |= lb_common::CFG_F_CAPTURE;
        dp.set_config(&cfg)?;
        let live_conntrack = PinnedConntrack::open(pin_dir)?;
        let names = Names::from_vips(dp.vips()?);
        Ok(Replayer {
            dp,
            live_conntrack,
            mirror: HashMap::new(),
            names,
        })
    }

    /// Whether the attached forwarder (by program id) runs the same code as this replay.
    pub fn same_program_as(&mut self, live_id: u32) -> Option<bool> {
        let mine = self
            .dp
            .program(prog_names::FORWARD)
            .ok()?
            .info()
            .ok()?
            .tag();
        let live = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == live_id)?
            .tag();
        Some(mine == live)
    }

    /// Run one frame: a probe run finds its flow, the flow's conntrack entry is set to what the
    /// replay (or else the live map) has, and the real run gives the answer.
    pub fn run(&mut self, packet: usize, frame: &[u8]) -> Result<Replayed, Error> {
        let probe = self.once(frame)?.0;
        let vip = (probe.hdr.vip_id != CAPTURE_NO_VIP).then_some(probe.hdr.vip_id);
        let mut live_entry = false;
        if probe.hdr.parsed != 0 {
            let key = probe.hdr.key;
            let want = match self.mirror.get(&key) {
                Some(v) => *v,
                None => {
                    let live = self.live_entry(&key)?;
                    live_entry = live.is_some();
                    live
                }
            };
            self.restore(&key, want)?;
        }
        let before = self.vip_stats(vip)?;
        let (rec, output) = self.once(frame)?;
        let after = self.vip_stats(vip)?;
        if rec.hdr.parsed != 0 {
            let key = rec.hdr.key;
            let now = self.private_entry(&key)?;
            self.mirror.insert(key, now);
        }
        let pick = match (before, after) {
            (Some(b), Some(a)) if a.packets > b.packets => Some(if a.failovers > b.failovers {
                "failover"
            } else if a.expired > b.expired {
                "expired"
            } else if a.conntrack_hits > b.conntrack_hits {
                "tracked"
            } else if a.new_flows > b.new_flows {
                "new"
            } else {
                "stateless"
            }),
            _ => None,
        };
        // A SYN or a stateless VIP ignores the entry: only a tracked pick used it.
        let live_entry = live_entry && matches!(pick, Some("tracked" | "failover"));
        let s = Summary::of(&rec.hdr, &self.names, &Clock::now());
        Ok(Replayed {
            packet,
            input_len: frame.len(),
            action: s.action,
            outcome: s.outcome,
            vip: s.vip.clone(),
            backend: s.backend,
            backend_id: s.backend_id,
            flow: s.flow.clone(),
            pick,
            live_entry,
            output_len: output.len(),
            output,
            comment: format!("{} pick={}", s.comment(), pick.unwrap_or("-")),
        })
    }

    fn once(&mut self, frame: &[u8]) -> Result<(Record, Vec<u8>), Error> {
        let out = self.dp.test_run(prog_names::FORWARD, frame)?;
        let mut ring = self.dp.capture_ring()?;
        let mut last = None;
        while let Some(item) = ring.next() {
            last = Record::decode(&item);
        }
        let rec = last.ok_or(Error::Replay("the forwarder left no record of the packet"))?;
        if rec.hdr.action != out.action {
            return Err(Error::Replay(
                "the capture record and the run's result disagree on the action",
            ));
        }
        Ok((rec, out.frame))
    }

    fn live_entry(&self, key: &FlowKey) -> Result<Option<FlowState>, Error> {
        Ok(self.live_conntrack.flow(key)?)
    }

    fn private_entry(&mut self, key: &FlowKey) -> Result<Option<FlowState>, Error> {
        Ok(self.dp.flow(key)?)
    }

    fn restore(&mut self, key: &FlowKey, want: Option<FlowState>) -> Result<(), Error> {
        match want {
            Some(v) => Ok(self.dp.set_flow(key, &v)?),
            None => Ok(self.dp.remove_flow(key)?),
        }
    }

    fn vip_stats(&self, vip: Option<u32>) -> Result<Option<VipStats>, Error> {
        match vip {
            None => Ok(None),
            Some(id) => Ok(Some(self.dp.vip_stats(id)?)),
        }
    }
}

fn pinned_config(pin_dir: &Path) -> Result<lb_common::LbConfig, Error> {
    let path = pin_dir.join(map_names::CONFIG);
    let what = path.display();
    let err = |e| Error::map(&what, e);
    let data = MapData::from_pin(&path).map_err(err)?;
    let a: aya::maps::Array<MapData, lb_common::LbConfig> =
        aya::maps::Array::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
    let mut c = a.get(&0, 0).map_err(err)?;
    // A capture running live must not make the replay's copy think one is wanted twice.
    c.flags &= !lb_common::CFG_F_CAPTURE;
    // What the forwarder does with a flow, not what the live flood protection would.
    c.new_flow_limit = 0;
    Ok(c)
}

pub struct Options {
    pub file: PathBuf,
    pub pin_dir: PathBuf,
    /// Output frames to this pcapng (with the verdict as each packet's comment).
    pub write: Option<PathBuf>,
    /// Print each output frame as hex.
    pub hex: bool,
    /// The attached forwarder's program id, to say whether it is the same code.
    pub live_program: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    /// Whether the attached forwarder runs the same program as the replay (None: unknown).
    pub same_program: Option<bool>,
    pub packets: Vec<Replayed>,
}

/// Replay every frame of `o.file`.
pub fn replay(o: &Options) -> Result<Report, Error> {
    let frames = crate::capture::pcap::read_frames(&o.file)?;
    let mut r = Replayer::new(&o.pin_dir)?;
    let same_program = o.live_program.and_then(|id| r.same_program_as(id));
    let mut writer = match &o.write {
        None => None,
        Some(p) => {
            let f = std::fs::File::create(p).map_err(|source| Error::File {
                path: p.clone(),
                source,
            })?;
            Some(crate::capture::pcap::NgWriter::new(
                std::io::BufWriter::new(f),
                65535,
                "xlb-replay",
            )?)
        }
    };
    let mut packets = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let p = r.run(i + 1, &f.data)?;
        if let Some(w) = &mut writer {
            w.write(f.time, p.output.len() as u32, &p.output, p.comment.clone())?;
        }
        packets.push(p);
    }
    if let Some(w) = &mut writer {
        w.flush()?;
    }
    Ok(Report {
        file: o.file.display().to_string(),
        same_program,
        packets,
    })
}

/// The table `xlb replay` prints.
pub fn render(r: &Report, hex: bool) -> String {
    let mut s = String::new();
    match r.same_program {
        Some(false) => {
            s += "note: the attached forwarder is a different build than this xlb; \
                             these are this build's decisions\n"
        }
        None => s += "note: the attached forwarder could not be compared with this build\n",
        Some(true) => {}
    }
    for p in &r.packets {
        let to = match (&p.vip, p.backend) {
            (Some(v), Some(b)) => format!("{v} -> {b}"),
            (Some(v), None) => v.clone(),
            _ => "-".into(),
        };
        s += &format!(
            "#{:<4} {:<8} {:<16} {to}  {}{}{}  out {} bytes\n",
            p.packet,
            p.action,
            p.outcome,
            p.flow.as_deref().unwrap_or("(not parsed)"),
            p.pick.map(|k| format!("  [{k}]")).unwrap_or_default(),
            if p.live_entry {
                " (live conntrack)"
            } else {
                ""
            },
            p.output_len
        );
        if hex {
            for chunk in p.output.chunks(16) {
                let h: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                s += &format!("      {}\n", h.join(" "));
            }
        }
    }
    s
}
