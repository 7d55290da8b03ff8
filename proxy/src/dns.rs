//! STRICT_DNS clusters: their names are looked up in the background, as Envoy's DNS
//! resolver does, and the router reads the last answers (a request never waits for DNS).
//!
//! A name new to the configuration is looked up at once; every name is looked up again at
//! its cluster's `dns_refresh_rate` (5 s by default). A failed lookup keeps the previous
//! addresses, as Envoy keeps a cluster's hosts when a refresh fails.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Shared;
use crate::model::{Config, Discovery, DnsLookup};

/// A name to resolve: host, port, and which addresses to keep.
pub type Name = (String, u16, DnsLookup);

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every non-address host of the STRICT_DNS clusters, and the shortest refresh among them.
pub fn names(config: &Config) -> (HashSet<Name>, Option<Duration>) {
    let mut names = HashSet::new();
    let mut refresh: Option<Duration> = None;
    for c in config
        .clusters
        .values()
        .filter(|c| c.discovery == Discovery::StrictDns)
    {
        for (host, port) in &c.hosts {
            if host.parse::<std::net::IpAddr>().is_err() {
                names.insert((host.clone(), *port, c.dns_lookup));
                refresh = Some(refresh.map_or(c.dns_refresh, |r| r.min(c.dns_refresh)));
            }
        }
    }
    (names, refresh)
}

/// The addresses Envoy would use for a name's answers under `family`.
pub fn choose(family: DnsLookup, answers: &[SocketAddr]) -> Vec<SocketAddr> {
    let v4: Vec<SocketAddr> = answers
        .iter()
        .copied()
        .filter(SocketAddr::is_ipv4)
        .collect();
    let v6: Vec<SocketAddr> = answers
        .iter()
        .copied()
        .filter(SocketAddr::is_ipv6)
        .collect();
    match family {
        DnsLookup::V4Only => v4,
        DnsLookup::V6Only => v6,
        DnsLookup::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookup::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookup::All => answers.to_vec(),
    }
}

async fn lookup(name: &Name) -> Option<Vec<SocketAddr>> {
    let (host, port, family) = name;
    match tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), *port)),
    )
    .await
    {
        Ok(Ok(answers)) => {
            let mut got = choose(*family, &answers.collect::<Vec<_>>());
            got.sort();
            got.dedup();
            Some(got)
        }
        Ok(Err(e)) => {
            tracing::warn!(%host, error = %e, "DNS lookup failed; keeping the last addresses");
            None
        }
        Err(_) => {
            tracing::warn!(%host, "DNS lookup timed out; keeping the last addresses");
            None
        }
    }
}

/// Keeps `shared.upstreams.dns` current until the configuration channel closes.
pub async fn run(shared: Arc<Shared>) {
    let mut config_rx = shared.config.clone();
    let mut refresh_all = true;
    loop {
        let config = config_rx.borrow_and_update().clone();
        let (wanted, refresh) = names(&config);
        let known: HashSet<Name> = shared
            .upstreams
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut answers: HashMap<Name, Vec<SocketAddr>> = HashMap::new();
        for name in wanted.iter().filter(|n| refresh_all || !known.contains(*n)) {
            if let Some(addrs) = lookup(name).await {
                answers.insert(name.clone(), addrs);
            }
        }
        {
            let mut dns = shared
                .upstreams
                .dns
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            dns.retain(|n, _| wanted.contains(n));
            dns.extend(answers);
        }
        let wait = refresh.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = config_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                refresh_all = false;
            }
            () = tokio::time::sleep(wait) => refresh_all = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_keep_the_addresses_envoy_would() {
        let v4: SocketAddr = ([127, 0, 0, 1], 80).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 80).into();
        let both = [v4, v6];
        assert_eq!(choose(DnsLookup::V4Only, &both), [v4]);
        assert_eq!(choose(DnsLookup::V6Only, &both), [v6]);
        assert_eq!(choose(DnsLookup::Auto, &both), [v6]);
        assert_eq!(choose(DnsLookup::Auto, &[v4]), [v4]);
        assert_eq!(choose(DnsLookup::V4Preferred, &both), [v4]);
        assert_eq!(choose(DnsLookup::V4Preferred, &[v6]), [v6]);
        assert_eq!(choose(DnsLookup::All, &both), both);
    }
}
