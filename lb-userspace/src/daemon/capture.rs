//! The capture lease: `xlb capture` asks for a capture with a filter and receives a lease, which
//! it renews while it reads the pinned ring; a lease not renewed (the client was killed)
//! expires and capture goes off by itself. One capture at a time.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    Addr,
    capture::{
        CAPTURE_F_OUTPUT, CAPTURE_NO_VIP, CAPTURE_SNAPLEN_MAX, CaptureConfig, CaptureCounters,
    },
    family_of, map_names,
};

use crate::{
    api::{CaptureFilter, CaptureStarted, CaptureStopped},
    capture::{UnknownOutcome, outcome_mask},
    config::VipRef,
    state::{Env, MapsError, State},
};

/// A capture lease lasts this long without a renewal.
pub const LEASE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("a capture is already running (session {0}); one at a time")]
    Busy(u32),
    #[error("capture needs the daemon's maps pinned (daemon.pin_dir)")]
    NotPinned,
    #[error("no VIP {0}")]
    NoVip(VipRef),
    #[error("snaplen {0} exceeds the largest record ({CAPTURE_SNAPLEN_MAX} bytes)")]
    Snaplen(u32),
    #[error(transparent)]
    Outcome(#[from] UnknownOutcome),
    #[error("no capture session {0} (it expired or was stopped)")]
    NoSession(u32),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// The running capture.
#[derive(Clone, Debug)]
pub struct Lease {
    pub session: u32,
    pub expires: Instant,
    pub filter: CaptureFilter,
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

/// Start a capture; refused while another one holds a live lease.
pub fn start(
    lease: &mut Option<Lease>,
    state: &mut State,
    env: &mut Env,
    pin_dir: Option<&Path>,
    f: CaptureFilter,
) -> Result<CaptureStarted, CaptureError> {
    expire(lease, state, env);
    if let Some(l) = lease {
        return Err(CaptureError::Busy(l.session));
    }
    let pin_dir = pin_dir.ok_or(CaptureError::NotPinned)?.to_path_buf();
    let vip_id = match &f.vip {
        None => CAPTURE_NO_VIP,
        Some(v) => state
            .published()
            .vips
            .get(&v.key())
            .map(|m| m.vip_id)
            .ok_or(CaptureError::NoVip(*v))?,
    };
    let (backend, backend_family) = match f.backend {
        None => (Addr::default(), 0),
        Some(ip) => (Addr::from(ip), family_of(&ip)),
    };
    if f.snaplen > CAPTURE_SNAPLEN_MAX {
        return Err(CaptureError::Snaplen(f.snaplen));
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
    let base = env.maps.capture_counters()?;
    // Filter first, then the switch: the forwarder never sees the flag with a stale filter.
    env.maps.set_capture(&conf)?;
    state.set_capture(env, true)?;
    tracing::info!(session, filter = ?f, "capture started");
    *lease = Some(Lease {
        session,
        expires: env.clock.now + LEASE,
        filter: f,
        base,
    });
    Ok(CaptureStarted {
        session,
        ring: pin_dir.join(map_names::CAPTURE_RING),
        pin_dir,
        lease_ms: LEASE.as_millis() as u64,
    })
}

pub fn renew(lease: &mut Option<Lease>, session: u32, now: Instant) -> Result<(), CaptureError> {
    match lease {
        Some(l) if l.session == session => {
            l.expires = now + LEASE;
            Ok(())
        }
        _ => Err(CaptureError::NoSession(session)),
    }
}

pub fn stop(
    lease: &mut Option<Lease>,
    state: &mut State,
    env: &mut Env,
    session: u32,
) -> Result<CaptureStopped, CaptureError> {
    let base = match lease {
        Some(l) if l.session == session => l.base,
        _ => return Err(CaptureError::NoSession(session)),
    };
    *lease = None;
    state.set_capture(env, false)?;
    let now = env.maps.capture_counters()?;
    tracing::info!(session, "capture stopped");
    Ok(CaptureStopped {
        matched: now.matched.saturating_sub(base.matched),
        lost: now.lost.saturating_sub(base.lost),
    })
}

/// Turn off a capture whose client stopped renewing it.
pub fn expire(lease: &mut Option<Lease>, state: &mut State, env: &mut Env) {
    if let Some(l) = lease
        && l.expires <= env.clock.now
    {
        tracing::warn!(session = l.session, "capture lease expired; capture off");
        *lease = None;
        if let Err(e) = state.set_capture(env, false) {
            tracing::warn!(error = %e, "turning capture off");
        }
    }
}
