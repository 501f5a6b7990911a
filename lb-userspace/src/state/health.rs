//! Health of one backend as the daemon recorded it, and its availability (MTBF, MTTR) from
//! the observed transitions. Pure: times are given, never read.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Health {
    pub up: bool,
    pub since: Instant,
    up_total: Duration,
    down_total: Duration,
    /// Up -> down transitions.
    pub failures: u64,
    /// Down -> up transitions.
    pub recoveries: u64,
    pub reason: String,
    born: Instant,
}

/// What `Health::report` derives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub healthy: bool,
    pub since_secs: f64,
    pub failures: u64,
    pub uptime_percent: f64,
    /// Mean time between failures (seconds up per failure); `None` before the first failure.
    pub mtbf_secs: Option<f64>,
    /// Mean time to repair (seconds down per recovery); `None` before the first recovery.
    pub mttr_secs: Option<f64>,
    /// MTBF / (MTBF + MTTR) once both are known, otherwise the uptime fraction.
    pub availability: f64,
    pub reason: String,
}

impl Health {
    pub fn new(up: bool, reason: &str, now: Instant) -> Health {
        Health {
            up,
            since: now,
            up_total: Duration::ZERO,
            down_total: Duration::ZERO,
            failures: 0,
            recoveries: 0,
            reason: reason.into(),
            born: now,
        }
    }

    /// Record a transition; returns false when the state did not change.
    pub fn set(&mut self, up: bool, reason: &str, now: Instant) -> bool {
        if up == self.up {
            return false;
        }
        let span = now.duration_since(self.since);
        if self.up {
            self.up_total += span;
            self.failures += 1;
        } else {
            self.down_total += span;
            self.recoveries += 1;
        }
        self.up = up;
        self.since = now;
        self.reason = reason.into();
        true
    }

    pub fn report(&self, now: Instant) -> Report {
        let current = now.duration_since(self.since);
        let (up, down) = if self.up {
            (self.up_total + current, self.down_total)
        } else {
            (self.up_total, self.down_total + current)
        };
        let total = now.duration_since(self.born).as_secs_f64().max(1e-9);
        let uptime = up.as_secs_f64() / total;
        let mtbf = (self.failures > 0).then(|| up.as_secs_f64() / self.failures as f64);
        let mttr = (self.recoveries > 0).then(|| down.as_secs_f64() / self.recoveries as f64);
        let availability = match (mtbf, mttr) {
            (Some(b), Some(r)) if b + r > 0.0 => b / (b + r),
            _ => uptime,
        };
        Report {
            healthy: self.up,
            since_secs: current.as_secs_f64(),
            failures: self.failures,
            uptime_percent: 100.0 * uptime,
            mtbf_secs: mtbf,
            mttr_secs: mttr,
            availability,
            reason: self.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtbf_mttr_and_availability_follow_the_transitions() {
        let t0 = Instant::now();
        let mut h = Health::new(true, "start", t0);
        let s = |x: u64| t0 + Duration::from_secs(x);
        assert!(h.set(false, "down", s(90)));
        assert!(!h.set(false, "again", s(91)));
        assert!(h.set(true, "up", s(100)));
        let r = h.report(s(190));
        // Up 90 + 90 s, down 10 s; one failure, one recovery.
        assert_eq!(r.failures, 1);
        assert_eq!(r.mtbf_secs, Some(180.0));
        assert_eq!(r.mttr_secs, Some(10.0));
        assert!((r.availability - 180.0 / 190.0).abs() < 1e-9);
        assert!((r.uptime_percent - 100.0 * 180.0 / 190.0).abs() < 1e-9);
    }
}
