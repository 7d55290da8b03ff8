//! Choosing a listener's filter chain, and the TLS inspector that reads what the choice
//! needs from a connection's first bytes (the ClientHello's server name and ALPN), without
//! consuming them: the chain's own TLS termination, or the upstream for a passthrough,
//! sees the handshake untouched.

use crate::model::{ChainMatch, FilterChain};

/// What the TLS inspector learned about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub tls: bool,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

/// The outcome of reading a connection's first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// Not a TLS handshake.
    NotTls,
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
}

/// The largest ClientHello read (Envoy's inspector reads at most 64 KiB too).
pub const MAX_HELLO: usize = 64 * 1024;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Reads a ClientHello from the start of a connection. The handshake message may span
/// several records; a malformed one is `NotTls` (the connection then matches as plain).
pub fn client_hello(buf: &[u8]) -> Hello {
    // Gather the handshake bytes from the records present.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Hello::NeedMore;
        }
        if rest[0] != 0x16 {
            return if handshake.is_empty() {
                Hello::NotTls
            } else {
                parse_hello(&handshake).unwrap_or(Hello::NotTls)
            };
        }
        if rest.len() < 5 {
            return Hello::NeedMore;
        }
        if rest[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        if rest.len() < 5 + len {
            return Hello::NeedMore;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Hello::NotTls;
            }
            let want = 4
                + ((usize::from(handshake[1]) << 16)
                    | (usize::from(handshake[2]) << 8)
                    | usize::from(handshake[3]));
            if want > MAX_HELLO {
                return Hello::NotTls;
            }
            if handshake.len() >= want {
                return parse_hello(&handshake[..want]).unwrap_or(Hello::NotTls);
            }
        }
    }
}

fn parse_hello(hs: &[u8]) -> Option<Hello> {
    let mut r = Reader { buf: hs };
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut r = Reader { buf: r.take(len)? };
    r.take(2 + 32)?; // client_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let (mut server_name, mut alpn) = (None, Vec::new());
    if r.buf.is_empty() {
        // No extensions: still TLS.
        return Some(Hello::Tls { server_name, alpn });
    }
    let mut exts = Reader { buf: r.vec16()? };
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let mut data = Reader { buf: exts.vec16()? };
        match kind {
            0 => {
                let mut list = Reader { buf: data.vec16()? };
                while !list.buf.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 && server_name.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        server_name = Some(name.to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = Reader { buf: data.vec16()? };
                while !list.buf.is_empty() {
                    let p = list.vec8()?;
                    alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(Hello::Tls { server_name, alpn })
}

/// Keeps the candidates that match specifically, or else those that do not care; Envoy
/// narrows criterion by criterion this way.
fn narrow(
    candidates: Vec<&FilterChain>,
    specific: impl Fn(&ChainMatch) -> bool,
    any: impl Fn(&ChainMatch) -> bool,
) -> Vec<&FilterChain> {
    let hit: Vec<&FilterChain> = candidates
        .iter()
        .copied()
        .filter(|c| specific(&c.matcher))
        .collect();
    if !hit.is_empty() {
        return hit;
    }
    candidates.into_iter().filter(|c| any(&c.matcher)).collect()
}

/// The chain a connection to `port` with what the inspector `seen` takes, in Envoy's order:
/// destination port, server name (exact, then the longest `*.suffix`), transport protocol,
/// application protocols. `None`: no chain matches (the connection is closed).
pub fn choose<'a>(chains: &'a [FilterChain], port: u16, seen: &Seen) -> Option<&'a FilterChain> {
    let all: Vec<&FilterChain> = chains.iter().collect();
    let by_port = narrow(
        all,
        |m| m.destination_port == Some(port),
        |m| m.destination_port.is_none(),
    );
    let by_name = match &seen.server_name {
        Some(sni) => {
            let exact = narrow(
                by_port.clone(),
                |m| m.server_names.iter().any(|n| n == sni),
                |_| false,
            );
            if !exact.is_empty() {
                exact
            } else {
                // The longest wildcard suffix that covers the name.
                let suffix_len = |m: &ChainMatch| {
                    m.server_names
                        .iter()
                        .filter_map(|n| n.strip_prefix('*'))
                        .filter(|suffix| sni.ends_with(suffix) && sni.len() > suffix.len())
                        .map(str::len)
                        .max()
                };
                let best = by_port.iter().filter_map(|c| suffix_len(&c.matcher)).max();
                match best {
                    Some(best) => by_port
                        .into_iter()
                        .filter(|c| suffix_len(&c.matcher) == Some(best))
                        .collect(),
                    None => by_port
                        .into_iter()
                        .filter(|c| c.matcher.server_names.is_empty())
                        .collect(),
                }
            }
        }
        None => by_port
            .into_iter()
            .filter(|c| c.matcher.server_names.is_empty())
            .collect(),
    };
    let transport = if seen.tls { "tls" } else { "raw_buffer" };
    let by_transport = narrow(
        by_name,
        |m| m.transport_protocol.as_deref() == Some(transport),
        |m| m.transport_protocol.is_none(),
    );
    let by_alpn = narrow(
        by_transport,
        |m| {
            m.application_protocols
                .iter()
                .any(|p| seen.alpn.iter().any(|a| a == p))
        },
        |m| m.application_protocols.is_empty(),
    );
    by_alpn.into_iter().next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use crate::model::{NetworkFilter, TcpProxy};

    /// A ClientHello as rustls writes it, for `name` with `alpn`.
    fn real_hello(name: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        config.enable_sni = name.is_some();
        let server = rustls_pki_types::ServerName::try_from(name.unwrap_or("127.0.0.1"))
            .unwrap()
            .to_owned();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_inspector_reads_name_and_alpn_from_a_real_client_hello() {
        let hello = real_hello(Some("Nginx.Example.com"), &["h2", "http/1.1"]);
        assert_eq!(
            client_hello(&hello),
            Hello::Tls {
                server_name: Some("nginx.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            }
        );
        // Without SNI (an IP address) the hello is still TLS.
        assert_eq!(
            client_hello(&real_hello(None, &[])),
            Hello::Tls {
                server_name: None,
                alpn: vec![],
            }
        );
        // Cut anywhere, it asks for more; plain text is not TLS.
        for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
            assert_eq!(client_hello(&hello[..cut]), Hello::NeedMore, "cut at {cut}");
        }
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        // The same hello split over two records reads the same.
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(client_hello(&split), client_hello(&hello));
    }

    fn chain(m: ChainMatch, cluster: &str) -> FilterChain {
        FilterChain {
            matcher: m,
            tls: None,
            filter: NetworkFilter::Tcp(TcpProxy {
                stat_prefix: String::new(),
                clusters: vec![(cluster.into(), 1)],
                idle_timeout: None,
                access_log: Default::default(),
            }),
        }
    }

    fn names(n: &[&str]) -> ChainMatch {
        ChainMatch {
            server_names: n.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn picked(chains: &[FilterChain], port: u16, seen: &Seen) -> Option<String> {
        choose(chains, port, seen).map(|c| match &c.filter {
            NetworkFilter::Tcp(t) => t.clusters[0].0.clone(),
            NetworkFilter::Http(_) => "http".into(),
        })
    }

    #[test]
    fn chains_are_chosen_in_envoys_order() {
        let chains = vec![
            chain(names(&["a.example.com"]), "exact"),
            chain(names(&["*.example.com"]), "wild"),
            chain(names(&["*.b.example.com"]), "longer-wild"),
            chain(ChainMatch::default(), "default"),
            chain(
                ChainMatch {
                    destination_port: Some(8443),
                    ..Default::default()
                },
                "port",
            ),
        ];
        let tls = |n: &str| Seen {
            tls: true,
            server_name: Some(n.into()),
            alpn: vec![],
        };
        assert_eq!(
            picked(&chains, 443, &tls("a.example.com")).as_deref(),
            Some("exact")
        );
        assert_eq!(
            picked(&chains, 443, &tls("c.example.com")).as_deref(),
            Some("wild")
        );
        assert_eq!(
            picked(&chains, 443, &tls("x.b.example.com")).as_deref(),
            Some("longer-wild")
        );
        // `*.example.com` does not cover `example.com` itself.
        assert_eq!(
            picked(&chains, 443, &tls("example.com")).as_deref(),
            Some("default")
        );
        assert_eq!(
            picked(&chains, 443, &Seen::default()).as_deref(),
            Some("default")
        );
        // The destination port is narrowed first: on 8443 only the port chain is left.
        assert_eq!(
            picked(&chains, 8443, &tls("a.example.com")).as_deref(),
            Some("port")
        );
        // Without a catch-all, an unknown name matches nothing.
        let strict = vec![chain(names(&["a.example.com"]), "exact")];
        assert_eq!(picked(&strict, 443, &tls("z.example.com")), None);
        // Transport protocol and ALPN come after the name.
        let by_proto = vec![
            chain(
                ChainMatch {
                    transport_protocol: Some("tls".into()),
                    application_protocols: vec!["istio".into()],
                    ..Default::default()
                },
                "mtls",
            ),
            chain(
                ChainMatch {
                    transport_protocol: Some("raw_buffer".into()),
                    ..Default::default()
                },
                "plain",
            ),
        ];
        let istio = Seen {
            tls: true,
            server_name: None,
            alpn: vec!["istio".into()],
        };
        assert_eq!(picked(&by_proto, 80, &istio).as_deref(), Some("mtls"));
        assert_eq!(
            picked(&by_proto, 80, &Seen::default()).as_deref(),
            Some("plain")
        );
        let other = Seen {
            tls: true,
            server_name: None,
            alpn: vec!["h2".into()],
        };
        assert_eq!(picked(&by_proto, 80, &other), None);
    }
}
