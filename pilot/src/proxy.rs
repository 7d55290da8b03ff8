//! Who is asking: Envoy node ids in Istio's form, `TYPE~IP~ID~DOMAIN`, e.g.
//! `sidecar~10.10.0.5~reviews-v1-a.default~default.svc.cluster.local` or
//! `router~10.10.0.2~istio-ingressgateway-x.istio-system~istio-system.svc.cluster.local`.

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Sidecar,
    /// A gateway (Istio calls it a router).
    Router,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub ip: IpAddr,
    /// `POD.NAMESPACE`
    pub id: String,
    pub namespace: String,
    pub domain: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node id \"{id}\" is not of the form sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local (or router~...): {reason}"
)]
pub struct ProxyIdError {
    pub id: String,
    pub reason: &'static str,
}

impl Proxy {
    pub fn parse(node_id: &str) -> Result<Proxy, ProxyIdError> {
        let err = |reason| ProxyIdError {
            id: node_id.to_owned(),
            reason,
        };
        let parts: Vec<&str> = node_id.split('~').collect();
        let [kind, ip, id, domain] = parts.as_slice() else {
            return Err(err("expected four parts separated by '~'"));
        };
        let kind = match *kind {
            "sidecar" => ProxyKind::Sidecar,
            "router" | "ingress" => ProxyKind::Router,
            _ => return Err(err("the type must be sidecar or router")),
        };
        let ip = ip
            .parse()
            .map_err(|_| err("the second part must be an IP address"))?;
        let namespace = id
            .split_once('.')
            .map(|(_, ns)| ns.to_owned())
            .or_else(|| domain.split('.').next().map(str::to_owned))
            .filter(|ns| !ns.is_empty())
            .ok_or_else(|| err("no namespace in the id or domain"))?;
        Ok(Proxy {
            kind,
            ip,
            id: (*id).to_owned(),
            namespace,
            domain: (*domain).to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node_ids() {
        let p = Proxy::parse("sidecar~10.10.0.5~reviews-v1-a.default~default.svc.cluster.local")
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.ip.to_string(), "10.10.0.5");
        assert_eq!(p.namespace, "default");
        let g = Proxy::parse(
            "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
        )
        .unwrap();
        assert_eq!(
            (g.kind, g.namespace.as_str()),
            (ProxyKind::Router, "istio-system")
        );
        assert!(Proxy::parse("sidecar~nope~a.b~c").is_err());
        assert!(Proxy::parse("envoy").is_err());
    }
}
