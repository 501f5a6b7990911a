//! Packet capture from the forwarder. The daemon owns the switch: `xlb capture` asks it for a
//! capture with a filter and receives a lease, which it renews while it reads the pinned ring;
//! a lease not renewed (the client was killed) expires and capture goes off by itself.

pub mod client;
pub mod pcap;
pub mod record;

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    Addr, CFG_F_CAPTURE,
    capture::{
        CAPTURE_ALL_OUTCOMES, CAPTURE_F_OUTPUT, CAPTURE_FORWARD, CAPTURE_NO_VIP,
        CAPTURE_SNAPLEN_MAX, CaptureConfig, CaptureCounters,
    },
    family_of, map_names,
    stats::Reason,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::VipRef,
    engine::{Engine, vip_key},
};

/// A capture lease lasts this long without a renewal.
pub const LEASE: Duration = Duration::from_secs(5);

/// What to capture, as the operator asks for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub vip: Option<VipRef>,
    pub backend: Option<IpAddr>,
    /// Outcome names (`forward`, a reason such as `drop_no_backend`) or groups (`forwards`,
    /// `drops`, `passes`, `all`); empty: all.
    #[serde(default)]
    pub outcomes: Vec<String>,
    /// Keep one matching packet in this many (0 and 1: every one).
    #[serde(default)]
    pub sample: u32,
    /// Frame bytes to keep (0: as many as a record holds).
    #[serde(default)]
    pub snaplen: u32,
    /// Record frames as sent (encapsulated or rewritten) rather than as received.
    #[serde(default)]
    pub output: bool,
}

/// The bit mask of outcome names and groups; unknown names are an error that lists the known.
pub fn outcome_mask(names: &[String]) -> Result<u32, String> {
    if names.is_empty() {
        return Ok(CAPTURE_ALL_OUTCOMES);
    }
    let group = |pred: fn(&str) -> bool| {
        Reason::ALL
            .iter()
            .filter(|r| pred(r.name()))
            .fold(0u32, |m, r| m | 1 << *r as u32)
    };
    let mut mask = 0;
    for n in names {
        mask |= match n.as_str() {
            "all" => CAPTURE_ALL_OUTCOMES,
            "forward" => 1 << CAPTURE_FORWARD,
            "forwards" => 1 << CAPTURE_FORWARD | group(|n| n.starts_with("fwd_")),
            "drops" => group(|n| n.starts_with("drop_")),
            "passes" => group(|n| n.starts_with("pass_")),
            other => match Reason::ALL.iter().find(|r| r.name() == other) {
                Some(r) => 1 << *r as u32,
                None => {
                    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
                    return Err(format!(
                        "unknown outcome {other:?}: use forward, forwards, drops, passes, all or one of {}",
                        known.join(", ")
                    ));
                }
            },
        };
    }
    Ok(mask)
}

/// The running capture.
#[derive(Clone, Debug)]
pub struct Lease {
    pub session: u32,
    pub expires: Instant,
    pub filter: Filter,
    /// Counters when the capture started (the map counts across captures).
    base: CaptureCounters,
}

impl Lease {
    /// One line for `xlb status`.
    pub fn describe(&self) -> String {
        let f = &self.filter;
        let mut d = format!("session {}", self.session);
        if let Some(v) = &f.vip {
            d += &format!(", vip {v}");
        }
        if let Some(b) = &f.backend {
            d += &format!(", backend {b}");
        }
        if !f.outcomes.is_empty() {
            d += &format!(", outcomes {}", f.outcomes.join(","));
        }
        if f.sample > 1 {
            d += &format!(", 1 in {}", f.sample);
        }
        d += if f.output {
            ", frames as sent"
        } else {
            ", frames as received"
        };
        d
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Started {
    pub session: u32,
    /// The pinned ring to read.
    pub ring: PathBuf,
    /// The daemon's pin directory (VIP names are read from its `VIPS`).
    pub pin_dir: PathBuf,
    pub lease_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Stopped {
    /// Packets that matched the filter and the sampling while the capture ran.
    pub matched: u64,
    /// Of those, records lost because the ring was full (the reader fell behind).
    pub lost: u64,
}

impl Engine {
    /// Start a capture; refused while another one holds a live lease.
    pub fn capture_start(&mut self, f: Filter) -> Result<Started, String> {
        self.capture_expire();
        if let Some(l) = &self.capture {
            return Err(format!(
                "a capture is already running (session {}); one at a time",
                l.session
            ));
        }
        let pin_dir = self
            .dp
            .pin_dir()
            .ok_or("capture needs the daemon's maps pinned (daemon.pin_dir)")?
            .to_path_buf();
        let vip_id = match &f.vip {
            None => CAPTURE_NO_VIP,
            Some(v) => self
                .vip_meta
                .get(&vip_key(v))
                .map(|m| m.vip_id)
                .ok_or_else(|| format!("no VIP {v}"))?,
        };
        let (backend, backend_family) = match f.backend {
            None => (Addr::default(), 0),
            Some(ip) => (Addr::from(ip), family_of(&ip)),
        };
        if f.snaplen > CAPTURE_SNAPLEN_MAX {
            return Err(format!(
                "snaplen {} exceeds the largest record ({CAPTURE_SNAPLEN_MAX} bytes)",
                f.snaplen
            ));
        }
        let session = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(1)
            | 1;
        let conf = CaptureConfig {
            backend,
            session,
            vip_id,
            outcomes: outcome_mask(&f.outcomes)?,
            sample: f.sample,
            snaplen: f.snaplen,
            backend_family,
            flags: if f.output { CAPTURE_F_OUTPUT } else { 0 },
            _pad: [0; 2],
        };
        let base = self.dp.capture_counters().map_err(|e| e.to_string())?;
        // Filter first, then the switch: the forwarder never sees the flag with a stale filter.
        self.dp.set_capture(&conf).map_err(|e| e.to_string())?;
        self.capture = Some(Lease {
            session,
            expires: Instant::now() + LEASE,
            filter: f,
            base,
        });
        if let Err(e) = self.write_live_config() {
            self.capture = None;
            return Err(e);
        }
        tracing::info!(session, filter = ?self.capture.as_ref().map(|l| &l.filter), "capture started");
        Ok(Started {
            session,
            ring: pin_dir.join(map_names::CAPTURE_RING),
            pin_dir,
            lease_ms: LEASE.as_millis() as u64,
        })
    }

    pub fn capture_renew(&mut self, session: u32) -> Result<(), String> {
        match &mut self.capture {
            Some(l) if l.session == session => {
                l.expires = Instant::now() + LEASE;
                Ok(())
            }
            _ => Err(format!(
                "no capture session {session} (it expired or was stopped)"
            )),
        }
    }

    pub fn capture_stop(&mut self, session: u32) -> Result<Stopped, String> {
        match &self.capture {
            Some(l) if l.session == session => {
                let base = l.base;
                self.capture = None;
                self.write_live_config()?;
                let now = self.dp.capture_counters().map_err(|e| e.to_string())?;
                tracing::info!(session, "capture stopped");
                Ok(Stopped {
                    matched: now.matched.saturating_sub(base.matched),
                    lost: now.lost.saturating_sub(base.lost),
                })
            }
            _ => Err(format!(
                "no capture session {session} (it expired or was stopped)"
            )),
        }
    }

    /// Turn off a capture whose client stopped renewing it.
    pub fn capture_expire(&mut self) {
        if let Some(l) = &self.capture
            && l.expires <= Instant::now()
        {
            tracing::warn!(session = l.session, "capture lease expired; capture off");
            self.capture = None;
            if let Err(e) = self.write_live_config() {
                tracing::warn!(error = %e, "turning capture off");
            }
        }
    }

    /// `CONFIG` for `cfg` as it should be now: the configuration plus run-time state that is
    /// not configuration (a running capture).
    pub fn live_config(&self, cfg: &crate::config::Config) -> lb_common::LbConfig {
        let mut c = crate::engine::lb_config(cfg);
        if self.capture.is_some() {
            c.flags |= CFG_F_CAPTURE;
        }
        c
    }

    fn write_live_config(&mut self) -> Result<(), String> {
        let c = self.live_config(&self.cfg);
        self.dp.set_config(&c).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn outcome_names_and_groups_make_masks() {
        assert_eq!(outcome_mask(&[]), Ok(CAPTURE_ALL_OUTCOMES));
        assert_eq!(outcome_mask(&names(&["all"])), Ok(CAPTURE_ALL_OUTCOMES));
        assert_eq!(
            outcome_mask(&names(&["forward", "drop_no_backend"])),
            Ok(1 << CAPTURE_FORWARD | 1 << Reason::DropNoBackend as u32)
        );
        let drops = outcome_mask(&names(&["drops"])).expect("drops");
        let passes = outcome_mask(&names(&["passes"])).expect("passes");
        let forwards = outcome_mask(&names(&["forwards"])).expect("forwards");
        assert_eq!(drops & passes, 0);
        assert_eq!(drops & forwards, 0);
        assert_ne!(drops & 1 << Reason::DropMalformed as u32, 0);
        assert_ne!(passes & 1 << Reason::PassNotVip as u32, 0);
        assert_ne!(forwards & 1 << Reason::FwdIcmp as u32, 0);
        // tx_too_big is neither a drop nor a pass nor a forward: only `all` or its name.
        assert_eq!(
            (drops | passes | forwards | 1 << Reason::TxTooBig as u32),
            CAPTURE_ALL_OUTCOMES
        );
        let e = outcome_mask(&names(&["drop_everything"])).expect_err("unknown");
        assert!(
            e.contains("drop_everything") && e.contains("drop_no_backend"),
            "{e}"
        );
    }
}
