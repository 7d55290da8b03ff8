//! TLS termination with rustls: a listener's certificate and key (files or inline PEM) become
//! an acceptor, built once per distinct setting and rebuilt when the files change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::model::{Pem, ServerTls};

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
