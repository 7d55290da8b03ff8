//! Outlier detection by consecutive errors, per cluster and endpoint, as Envoy does it: a
//! 5xx (or a locally originated failure: connect error, reset, timeout) counts toward
//! `consecutive_5xx`, a 502/503/504 or local failure toward `consecutive_gateway`, anything
//! else resets both. Reaching a threshold ejects the endpoint (when enforced, and while the
//! cluster's ejected share stays under `max_ejection_percent`) for `base_ejection_time`
//! times the number of its ejections. Load balancing skips ejected endpoints unless fewer
//! than half are healthy (Envoy's panic threshold), when it uses them all. Time is passed in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::model::Outlier;

/// How one try ended, as the detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// Connect failure, reset, timeout: counted as a gateway error.
    LocalFailure,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

impl Host {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }
}

/// Every cluster's endpoints' state.
#[derive(Debug, Default)]
pub struct Detector {
    hosts: Mutex<HashMap<(String, SocketAddr), Host>>,
}

/// Envoy's default healthy panic threshold: below half healthy, ejections are ignored.
const PANIC_PERCENT: usize = 50;

impl Detector {
    /// The endpoints to balance over: the ones not ejected, or all in panic.
    pub fn healthy(
        &self,
        cluster: &str,
        candidates: Vec<SocketAddr>,
        now: Instant,
    ) -> Vec<SocketAddr> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.is_empty() {
            return candidates;
        }
        let healthy: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|a| {
                !hosts
                    .get(&(cluster.to_owned(), *a))
                    .is_some_and(|h| h.ejected(now))
            })
            .collect();
        if healthy.len() * 100 < candidates.len() * PANIC_PERCENT {
            candidates
        } else {
            healthy
        }
    }

    /// Records a try's outcome; true when it ejected the endpoint.
    pub fn record(
        &self,
        cluster: &str,
        config: &Outlier,
        addr: SocketAddr,
        outcome: Outcome,
        cluster_size: usize,
        now: Instant,
    ) -> bool {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cluster.to_owned(), addr);
        let (five, gateway) = match outcome {
            Outcome::Status(s) if s >= 500 => (true, (502..=504).contains(&s)),
            Outcome::Status(_) => (false, false),
            Outcome::LocalFailure => (true, true),
        };
        if !five {
            if let Some(h) = hosts.get_mut(&key) {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
            return false;
        }
        let ejected_now = hosts
            .iter()
            .filter(|((c, _), h)| c == cluster && h.ejected(now))
            .count();
        let h = hosts.entry(key).or_default();
        if h.ejected(now) {
            return false;
        }
        h.consecutive_5xx += 1;
        if gateway {
            h.consecutive_gateway += 1;
        }
        let by_5xx = config.consecutive_5xx > 0
            && h.consecutive_5xx >= config.consecutive_5xx
            && enforced(config.enforcing_5xx);
        let by_gateway = config.consecutive_gateway > 0
            && h.consecutive_gateway >= config.consecutive_gateway
            && enforced(config.enforcing_gateway);
        if !(by_5xx || by_gateway) {
            return false;
        }
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        let size = cluster_size.max(1);
        if ejected_now * 100 / size >= config.max_ejection_percent as usize {
            return false;
        }
        h.ejections += 1;
        h.ejected_until = Some(now + config.base_ejection_time * h.ejections);
        true
    }

    /// Endpoints of `cluster` ejected now.
    pub fn ejected(&self, cluster: &str, now: Instant) -> usize {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .iter()
            .filter(|((c, _), h)| c == cluster && h.ejected(now))
            .count()
    }
}

fn enforced(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && crate::random_u64() % 100 < u64::from(percent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn config(n: u32) -> Outlier {
        Outlier {
            consecutive_5xx: n,
            enforcing_5xx: 100,
            consecutive_gateway: 5,
            enforcing_gateway: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn consecutive_errors_eject_and_time_brings_back() {
        let d = Detector::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let t0 = Instant::now();
        let c = config(2);
        assert!(!d.record("x", &c, b, Outcome::Status(503), 2, t0));
        // A success in between resets the count.
        assert!(!d.record("x", &c, b, Outcome::Status(200), 2, t0));
        assert!(!d.record("x", &c, b, Outcome::Status(500), 2, t0));
        assert!(d.record("x", &c, b, Outcome::LocalFailure, 2, t0));
        assert_eq!(d.healthy("x", vec![a, b], t0), vec![a]);
        assert_eq!(d.ejected("x", t0), 1);
        // Back after the ejection time; a second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(d.healthy("x", vec![a, b], t1), vec![a, b]);
        d.record("x", &c, b, Outcome::Status(503), 2, t1);
        assert!(d.record("x", &c, b, Outcome::Status(503), 2, t1));
        assert_eq!(
            d.healthy("x", vec![a, b], t1 + Duration::from_secs(59)),
            vec![a]
        );
        assert_eq!(
            d.healthy("x", vec![a, b], t1 + Duration::from_secs(61)),
            vec![a, b]
        );
    }

    #[test]
    fn panic_and_max_ejection_percent() {
        let d = Detector::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let t0 = Instant::now();
        // One endpoint, ejected: fewer than half healthy, so it is used anyway.
        assert!(d.record("solo", &config(1), a, Outcome::Status(500), 1, t0));
        assert_eq!(d.healthy("solo", vec![a], t0), vec![a]);
        // At most 50% ejected: the second host stays in.
        let half = Outlier {
            max_ejection_percent: 50,
            ..config(1)
        };
        assert!(d.record("pair", &half, a, Outcome::Status(500), 2, t0));
        assert!(!d.record("pair", &half, b, Outcome::Status(500), 2, t0));
        assert_eq!(d.healthy("pair", vec![a, b], t0), vec![b]);
        // 4xx are not errors.
        assert!(!d.record("pair", &half, b, Outcome::Status(404), 2, t0));
    }
}
