//! Caps that keep one client from starving the gateway: connections in total and per
//! client IP (checked at accept: a connection over a cap is accepted and closed at once,
//! never left in the backlog), and requests in flight (load shedding with a 503 and
//! `Retry-After`).
//!
//! Behind a load balancer every connection comes from the balancer's address. Addresses
//! in `limits.trusted_proxies` are exempt from the per-IP connection cap; for their
//! requests, the client is the right-most `x-forwarded-for` address that is not itself a
//! trusted proxy, and the per-IP cap applies to that client's requests in flight instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Counts of something per key, with a total; admits up to the caps.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases what a [`Counter::admit`] took when dropped.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<Counter>,
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut m = self
                .counter
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// Why something was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the total cap.
    Total,
    /// Over the per-IP cap.
    PerIp,
}

impl Counter {
    /// Takes one slot, for `ip` when given (counted against `per_ip`, 0 = no per-IP
    /// cap), unless that would pass `max` in total or `per_ip` for that IP.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: usize,
        per_ip: usize,
    ) -> Result<Permit, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let ip = ip.filter(|_| per_ip > 0);
        if let Some(ip) = ip {
            let mut m = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = m.entry(ip).or_insert(0);
            if *n >= per_ip {
                drop(m);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        Ok(Permit {
            counter: Arc::clone(self),
            ip,
        })
    }

    /// Slots taken now.
    pub fn current(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The addresses whose `x-forwarded-for` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address, as a dual-stack
    /// listener reports IPv4 peers, counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer`: the right-most `x-forwarded-for` address that is not a
    /// trusted proxy when `peer` is one, else `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !self.contains(*ip))
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn regression_ipv4_mapped_peers_match_ipv4_proxies() {
        // Review finding: a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        let t = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(t.contains(ip("::ffff:10.0.0.5")));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(t.client(ip("::ffff:10.0.0.5"), &h), ip("192.0.2.7"));
        assert_eq!(t.client(ip("::ffff:192.0.2.9"), &h), ip("192.0.2.9"));
    }

    #[test]
    fn caps_total_and_per_ip_and_releases_on_drop() {
        let c = Arc::new(Counter::default());
        let a1 = c.admit(Some(ip("10.0.0.1")), 3, 2).unwrap();
        let _a2 = c.admit(Some(ip("10.0.0.1")), 3, 2).unwrap();
        assert_eq!(
            c.admit(Some(ip("10.0.0.1")), 3, 2).unwrap_err(),
            Refused::PerIp
        );
        let _b = c.admit(Some(ip("10.0.0.2")), 3, 2).unwrap();
        assert_eq!(
            c.admit(Some(ip("10.0.0.3")), 3, 2).unwrap_err(),
            Refused::Total
        );
        assert_eq!(c.current(), 3);
        drop(a1);
        assert!(c.admit(Some(ip("10.0.0.1")), 3, 2).is_ok());
        // 0 turns the per-IP cap off.
        let d = Arc::new(Counter::default());
        let _p: Vec<_> = (0..5)
            .map(|_| d.admit(Some(ip("1.1.1.1")), 10, 0).unwrap())
            .collect();
        assert_eq!(d.current(), 5);
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_comes_from_x_forwarded_for() {
        let t = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        assert_eq!(t.client(ip("10.0.0.5"), &h), ip("203.0.113.9"));
        // An untrusted peer's header is ignored (it could be forged).
        assert_eq!(t.client(ip("198.51.100.7"), &h), ip("198.51.100.7"));
        assert_eq!(t.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
    }
}
