//! Service names inside pods: every Service gets a virtual IP from 240.240.0.0/16 (the range
//! Istio auto-allocates from), and each pod gets an `/etc/hosts` naming them the way
//! Kubernetes DNS would answer from that pod's namespace (`name` there, `name.ns`,
//! `name.ns.svc`, `name.ns.svc.cluster.local` everywhere). `ip netns exec` mounts
//! `/etc/netns/NETNS/{hosts,resolv.conf}` over the pod's `/etc`, which is how they apply.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const DOMAIN: &str = "cluster.local";

/// A Service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("240.240.0.0/16 is full: no virtual IP left for {0}")]
pub struct VipsExhausted(pub String);

/// Virtual IPs by service, stable for a service's life: an address is given out again only
/// after its service is released.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vips {
    assigned: BTreeMap<ServiceName, Ipv4Addr>,
}

const FIRST: u32 = u32::from_be_bytes([240, 240, 0, 1]);
const LAST: u32 = u32::from_be_bytes([240, 240, 255, 254]);

impl Vips {
    /// The service's address, assigning the lowest free one the first time.
    pub fn assign(&mut self, svc: &ServiceName) -> Result<Ipv4Addr, VipsExhausted> {
        if let Some(ip) = self.assigned.get(svc) {
            return Ok(*ip);
        }
        let used: std::collections::HashSet<Ipv4Addr> = self.assigned.values().copied().collect();
        let ip = (FIRST..=LAST)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
            .ok_or_else(|| VipsExhausted(format!("{}/{}", svc.namespace, svc.name)))?;
        self.assigned.insert(svc.clone(), ip);
        Ok(ip)
    }

    pub fn release(&mut self, svc: &ServiceName) {
        self.assigned.remove(svc);
    }

    pub fn get(&self, svc: &ServiceName) -> Option<Ipv4Addr> {
        self.assigned.get(svc).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServiceName, &Ipv4Addr)> {
        self.assigned.iter()
    }
}

/// The pod's `/etc/hosts`: itself, then every service as seen from `pod_namespace`.
pub fn hosts_file(pod: &str, pod_ip: Ipv4Addr, pod_namespace: &str, vips: &Vips) -> String {
    let mut out = format!(
        "# Written by keel: the pod's view of service names.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{pod}\n"
    );
    push_services(&mut out, pod_namespace, vips);
    out
}

/// The service names as a pod in `namespace` would see them, for a control-plane component
/// that runs on the host (mixer's `--hosts-file`): its adapters' backends are cluster names.
pub fn component_hosts_file(namespace: &str, vips: &Vips) -> String {
    let mut out = format!("# Written by keel: service names as seen from {namespace}.\n");
    push_services(&mut out, namespace, vips);
    out
}

fn push_services(out: &mut String, namespace: &str, vips: &Vips) {
    for (svc, ip) in vips.iter() {
        let (n, ns) = (&svc.name, &svc.namespace);
        let mut names = vec![
            format!("{n}.{ns}.svc.{DOMAIN}"),
            format!("{n}.{ns}.svc"),
            format!("{n}.{ns}"),
        ];
        if ns == namespace {
            names.push(n.clone());
        }
        out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
}

/// No nameserver: glibc then asks 127.0.0.1 inside the pod, where nothing listens, so names
/// not in the hosts file fail at once instead of waiting on a resolver the pod cannot reach.
pub const RESOLV_CONF: &str =
    "# Written by keel: names come from /etc/hosts.\noptions timeout:1 attempts:1\n";

/// Where `ip netns exec` finds a namespace's files.
pub fn netns_etc(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// Writes the pod's hosts file and resolv.conf. A file that exists is rewritten in place:
/// `ip netns exec` bind-mounts it into the pod's processes, and a bind mount keeps the
/// inode it was made with, so a replaced file would go unseen by running processes.
pub fn write_pod_files(netns: &str, hosts: &str) -> std::io::Result<()> {
    let dir = netns_etc(netns);
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [("hosts", hosts), ("resolv.conf", RESOLV_CONF)] {
        let path = dir.join(name);
        if path.exists() {
            if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
                continue;
            }
            // One write call: glibc re-reads the file per lookup and sees old or new.
            std::fs::write(&path, text)?;
        } else {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str) -> ServiceName {
        ServiceName {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn vips_are_stable_and_reused_after_release() {
        let mut v = Vips::default();
        let details = v.assign(&svc("default", "details")).unwrap();
        let reviews = v.assign(&svc("default", "reviews")).unwrap();
        assert_eq!(details, Ipv4Addr::new(240, 240, 0, 1));
        assert_eq!(reviews, Ipv4Addr::new(240, 240, 0, 2));
        assert_eq!(v.assign(&svc("default", "details")).unwrap(), details);
        v.release(&svc("default", "details"));
        assert_eq!(
            v.assign(&svc("istio-system", "istio-telemetry")).unwrap(),
            details
        );
        assert_eq!(v.get(&svc("default", "details")), None);
    }

    #[test]
    fn hosts_file_answers_like_cluster_dns() {
        let mut v = Vips::default();
        v.assign(&svc("default", "details")).unwrap();
        v.assign(&svc("istio-system", "istio-telemetry")).unwrap();
        let h = hosts_file(
            "productpage-v1-a",
            Ipv4Addr::new(10, 88, 0, 2),
            "default",
            &v,
        );
        assert!(h.contains("10.88.0.2\tproductpage-v1-a\n"), "{h}");
        assert!(h.contains("240.240.0.1\tdetails.default.svc.cluster.local details.default.svc details.default details\n"), "{h}");
        // Another namespace's service has no short name here.
        assert!(h.contains("240.240.0.2\tistio-telemetry.istio-system.svc.cluster.local istio-telemetry.istio-system.svc istio-telemetry.istio-system\n"), "{h}");
        // Mixer's view from istio-system: the short name there, no pod line.
        let m = component_hosts_file("istio-system", &v);
        assert!(m.contains("240.240.0.2\tistio-telemetry.istio-system.svc.cluster.local istio-telemetry.istio-system.svc istio-telemetry.istio-system istio-telemetry\n"), "{m}");
        assert!(m.contains("240.240.0.1\tdetails.default.svc.cluster.local details.default.svc details.default\n"), "{m}");
        assert!(!m.contains("localhost"), "{m}");
    }
}
