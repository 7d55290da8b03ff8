//! TLS termination with rustls: a listener's certificate and key (files or inline PEM) become
//! an acceptor, built once per distinct setting and rebuilt when the files change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::model::{ClientTls, Pem, ServerTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Load { what: String, reason: String },
}

fn read(p: &Pem, what: &str) -> Result<Vec<u8>, TlsError> {
    match p {
        Pem::Inline(b) => Ok(b.clone()),
        Pem::File(f) => std::fs::read(f).map_err(|e| TlsError::Load {
            what: format!("{what} {f}"),
            reason: e.to_string(),
        }),
    }
}

fn modified(p: &Pem) -> Option<SystemTime> {
    match p {
        Pem::Inline(_) => None,
        Pem::File(f) => std::fs::metadata(f).and_then(|m| m.modified()).ok(),
    }
}

pub fn acceptor(tls: &ServerTls) -> Result<TlsAcceptor, TlsError> {
    let err = |what: &str, reason: String| TlsError::Load {
        what: what.to_owned(),
        reason,
    };
    let chain_pem = read(&tls.certificate_chain, "certificate chain")?;
    let key_pem = read(&tls.private_key, "private key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate chain", e.to_string()))?;
    if chain.is_empty() {
        return Err(err("certificate chain", "no certificate in the PEM".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err("private key", e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("TLS versions", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| err("certificate and key", e.to_string()))?;
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Acceptors by setting; a file whose modification time changed is loaded again (a
/// rotated certificate takes effect for new connections).
#[derive(Default)]
pub struct Acceptors {
    built: Mutex<HashMap<ServerTls, (Option<SystemTime>, TlsAcceptor)>>,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptors")
    }
}

impl Acceptors {
    pub fn get(&self, tls: &ServerTls) -> Result<TlsAcceptor, TlsError> {
        let stamp = modified(&tls.certificate_chain).max(modified(&tls.private_key));
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((when, a)) = built.get(tls)
            && *when == stamp
        {
            return Ok(a.clone());
        }
        let a = acceptor(tls)?;
        built.insert(tls.clone(), (stamp, a.clone()));
        Ok(a)
    }
}

/// A cluster's TLS client settings as a rustls configuration.
pub fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let err = |what: &str, reason: String| TlsError::Load {
        what: what.to_owned(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &tls.trusted_ca {
        None => Arc::new(AnyServer(provider.clone())),
        Some(ca) => {
            let pem = read(ca, "trusted CA")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err("trusted CA", e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| err("trusted CA", e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("trusted CA", "no certificate in the PEM".into()));
            }
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| err("trusted CA", e.to_string()))?;
            Arc::new(SanVerifier {
                chain,
                names: tls
                    .subject_alt_names
                    .iter()
                    .filter_map(|n| rustls_pki_types::ServerName::try_from(n.clone()).ok())
                    .collect(),
            })
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain_pem = read(chain, "client certificate chain")?;
            let key_pem = read(key, "client private key")?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| err("client certificate chain", e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| err("client private key", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("client certificate and key", e.to_string()))?
        }
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Envoy sends a server name only when the cluster names one.
    config.enable_sni = !tls.sni.is_empty();
    Ok(Arc::new(config))
}

/// Envoy without a validation context: any server certificate is accepted (the handshake's
/// signatures are still checked, so the peer holds the key it presents).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Envoy's validation context: the chain must lead to the trusted CA and, when names are
/// given, the certificate must carry one of them. The name dialled is not checked otherwise
/// (endpoints are addresses; Envoy checks the configured names only).
#[derive(Debug)]
struct SanVerifier {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    names: Vec<rustls_pki_types::ServerName<'static>>,
}

fn name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl rustls::client::danger::ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verify = |name: &rustls_pki_types::ServerName<'_>| {
            self.chain
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
        };
        if self.names.is_empty() {
            // The chain is checked before the name: a name mismatch means the chain is good.
            return match verify(server_name) {
                Err(e) if name_mismatch(&e) => {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                }
                other => other,
            };
        }
        let mut last = None;
        for name in &self.names {
            match verify(name) {
                Ok(v) => return Ok(v),
                Err(e) if name_mismatch(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Something built from files, with the newest modification time among them.
type Stamped<T> = (Option<SystemTime>, T);

/// Client configurations by setting, reloaded when a file changes (like [`Acceptors`]).
#[derive(Default)]
pub struct ClientConfigs {
    built: Mutex<HashMap<ClientTls, Stamped<Arc<rustls::ClientConfig>>>>,
}

impl std::fmt::Debug for ClientConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientConfigs")
    }
}

impl ClientConfigs {
    pub fn get(&self, tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let files = [
            tls.trusted_ca.as_ref(),
            tls.client_certificate.as_ref().map(|c| &c.0),
            tls.client_certificate.as_ref().map(|c| &c.1),
        ];
        let stamp = files.into_iter().flatten().filter_map(modified).max();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((when, c)) = built.get(tls)
            && *when == stamp
        {
            return Ok(c.clone());
        }
        let c = client_config(tls)?;
        built.insert(tls.clone(), (stamp, c.clone()));
        Ok(c)
    }
}
