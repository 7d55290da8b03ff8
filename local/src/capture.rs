//! iptables: a sidecar's traffic capture inside its pod, and Services' virtual IPs on the
//! host (kube-proxy's job) for pods without a sidecar.
//!
//! The rule texts are pure functions (tested directly); applying them runs
//! `iptables-restore`, inside the pod's namespace for the capture. The capture follows
//! Istio's istio-iptables: outbound TCP to 15001, inbound TCP to the pod's declared ports to
//! 15006, and the proxy's own traffic exempt by its group id, so its upstream connections
//! leave the pod as they are.

use std::net::Ipv4Addr;
use std::process::Command;

/// The group the sidecar runs as; its traffic is not captured.
pub const PROXY_GID: u32 = 1337;
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The host chain holding Services' virtual IPs.
pub const SERVICES_CHAIN: &str = "KEEL-SERVICES";
const SERVICES_POSTROUTING: &str = "KEEL-POSTROUTING";
/// Filter chain refusing VIP traffic that no Service rule rewrote.
const VIP_GUARD: &str = "KEEL-VIP-GUARD";

/// How running iptables failed (shared with `keel-proxy init`).
pub use keel_proxy::capture::CaptureError;

/// The nat table of a pod with a sidecar, in iptables-restore form: keel-proxy's capture
/// (what `keel-proxy init` applies in a Kubernetes pod), the proxy exempt by its group.
pub fn pod_capture_rules(inbound_ports: &[u16]) -> String {
    keel_proxy::capture::rules(&keel_proxy::capture::Capture {
        inbound_ports: inbound_ports.to_vec(),
        proxy_uid: None,
        proxy_gid: Some(PROXY_GID),
        outbound_port: OUTBOUND_CAPTURE_PORT,
        inbound_port: INBOUND_CAPTURE_PORT,
    })
}

/// One Service port's virtual address and the pod addresses behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualPort {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The host's Service chains, kube-proxy style: a connection to VIP:PORT is sent to one
/// endpoint at random (equal shares), and masqueraded when it comes from the pods' subnet so
/// the reply goes back through the host. The VIP range is routed to the bridge (so the host's
/// own connections, mixer's to fluentd say, get as far as the nat OUTPUT hook); a connection
/// no rule rewrote (a port without endpoints, an undeclared port) is refused by the guard
/// chain at once, from the host (OUTPUT) and from pods (FORWARD), and never reaches a link.
pub fn service_rules(ports: &[VirtualPort], subnet: (Ipv4Addr, u8), vip_range: &str) -> String {
    let (net, prefix) = subnet;
    let mut r = String::from("*nat\n");
    r.push_str(&format!(":{SERVICES_CHAIN} - [0:0]\n"));
    r.push_str(&format!(":{SERVICES_POSTROUTING} - [0:0]\n"));
    r.push_str(&format!("-F {SERVICES_CHAIN}\n-F {SERVICES_POSTROUTING}\n"));
    for vp in ports {
        let n = vp.endpoints.len();
        for (i, (ip, port)) in vp.endpoints.iter().enumerate() {
            let remaining = n - i;
            let pick = if remaining > 1 {
                format!(
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            r.push_str(&format!(
                "-A {SERVICES_CHAIN} -d {}/32 -p tcp --dport {}{pick} -j DNAT --to-destination {ip}:{port}\n",
                vp.vip, vp.port
            ));
        }
    }
    r.push_str(&format!(
        "-A {SERVICES_POSTROUTING} -s {net}/{prefix} -d {net}/{prefix} -m conntrack --ctstate DNAT -j MASQUERADE\n"
    ));
    r.push_str("COMMIT\n*filter\n");
    r.push_str(&format!(":{VIP_GUARD} - [0:0]\n-F {VIP_GUARD}\n"));
    r.push_str(&format!(
        "-A {VIP_GUARD} -d {vip_range} -j REJECT --reject-with icmp-host-unreachable\n"
    ));
    r.push_str("COMMIT\n");
    r
}

use keel_proxy::capture::run_command as run;

/// Installs the capture in a pod's namespace (`ip netns exec NS iptables-restore`).
/// Replaces the nat table there, so applying twice is the same as once.
pub fn apply_pod_capture(netns: &str, inbound_ports: &[u16]) -> Result<(), CaptureError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-restore"]);
    run(cmd, Some(&pod_capture_rules(inbound_ports)))
}

/// The jumps from the host's built-in chains into Keel's, each added once.
const HOST_JUMPS: &[(&str, &str, &str)] = &[
    ("nat", "PREROUTING", SERVICES_CHAIN),
    ("nat", "OUTPUT", SERVICES_CHAIN),
    ("nat", "POSTROUTING", SERVICES_POSTROUTING),
    ("filter", "OUTPUT", VIP_GUARD),
    ("filter", "FORWARD", VIP_GUARD),
];

/// Replaces the host's Service rules (chains created on first use, jumps added once).
pub fn apply_service_rules(rules: &str) -> Result<(), CaptureError> {
    let mut cmd = Command::new("iptables-restore");
    cmd.arg("--noflush");
    run(cmd, Some(rules))?;
    for (table, chain, target) in HOST_JUMPS {
        let mut check = Command::new("iptables");
        check.args(["-w", "-t", table, "-C", chain, "-j", target]);
        if run(check, None).is_err() {
            let mut add = Command::new("iptables");
            add.args(["-w", "-t", table, "-I", chain, "-j", target]);
            run(add, None)?;
        }
    }
    Ok(())
}

/// Removes every host rule and chain Keel made; what is already gone is fine.
pub fn remove_service_rules() {
    for (table, chain, target) in HOST_JUMPS {
        // A jump may have been added more than once by hand; remove all of them.
        for _ in 0..16 {
            let mut del = Command::new("iptables");
            del.args(["-w", "-t", table, "-D", chain, "-j", target]);
            if run(del, None).is_err() {
                break;
            }
        }
    }
    for (table, chain) in [
        ("nat", SERVICES_CHAIN),
        ("nat", SERVICES_POSTROUTING),
        ("filter", VIP_GUARD),
    ] {
        for op in ["-F", "-X"] {
            let mut cmd = Command::new("iptables");
            cmd.args(["-w", "-t", table, op, chain]);
            let _ = run(cmd, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_redirects_both_ways_and_exempts_the_proxy() {
        let r = pod_capture_rules(&[9080, 9443]);
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 9443 -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
        // The exemption comes before the catch-all redirect.
        let exempt = r.find("--gid-owner 1337 -j RETURN").unwrap();
        let redirect = r.find("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").unwrap();
        assert!(exempt < redirect);
    }

    #[test]
    fn services_spread_over_endpoints_and_empty_ones_are_refused() {
        let ports = [
            VirtualPort {
                vip: Ipv4Addr::new(240, 240, 0, 1),
                port: 9080,
                endpoints: vec![
                    (Ipv4Addr::new(10, 88, 0, 2), 9080),
                    (Ipv4Addr::new(10, 88, 0, 3), 9080),
                    (Ipv4Addr::new(10, 88, 0, 4), 9080),
                ],
            },
            VirtualPort {
                vip: Ipv4Addr::new(240, 240, 0, 2),
                port: 80,
                endpoints: vec![],
            },
        ];
        let r = service_rules(&ports, (Ipv4Addr::new(10, 88, 0, 0), 16), "240.240.0.0/16");
        let dnat: Vec<&str> = r.lines().filter(|l| l.contains("-j DNAT")).collect();
        assert_eq!(dnat.len(), 3);
        assert!(dnat[0].contains("--probability 0.33333") && dnat[0].ends_with("10.88.0.2:9080"));
        assert!(dnat[1].contains("--probability 0.50000"));
        assert!(!dnat[2].contains("probability"), "the last takes the rest");
        assert!(!r.contains("240.240.0.2"), "no endpoints, no rule");
        assert!(
            r.contains("-s 10.88.0.0/16 -d 10.88.0.0/16 -m conntrack --ctstate DNAT -j MASQUERADE")
        );
        // What no rule rewrote is refused, in the filter table (after nat OUTPUT/PREROUTING).
        let filter = &r[r.find("*filter\n").expect("a filter section")..];
        assert!(filter.contains(
            "-A KEEL-VIP-GUARD -d 240.240.0.0/16 -j REJECT --reject-with icmp-host-unreachable\n"
        ));
        assert!(filter.ends_with("COMMIT\n"));
    }
}
