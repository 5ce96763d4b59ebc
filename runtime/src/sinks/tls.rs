//! TLS material for the stream (server, mutual) and its clients, on rustls with the ring
//! provider: PEM files in, configurations out, errors that name the file.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[supervisor.tls]`: the stream over TLS, readable only with a client certificate.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamTls {
    /// The stream's certificate chain (PEM), naming the address supervisors connect to.
    pub cert_file: PathBuf,
    /// Its private key (PEM); refused when others may read it.
    pub key_file: PathBuf,
    /// The CA (PEM) that signs the supervisors' client certificates.
    pub client_ca_file: PathBuf,
}

/// The crypto provider every configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A root store of the CA certificates in a PEM file.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The stream's server side: its certificate and key, and only clients whose certificate
/// `client_ca` signed. Errors name the key of `[supervisor.tls]` at fault.
pub fn stream_server(t: &StreamTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certs(&t.cert_file).map_err(|e| format!("supervisor.tls.cert_file: {e}"))?;
    let key = key(&t.key_file).map_err(|e| format!("supervisor.tls.key_file: {e}"))?;
    let roots =
        roots(&t.client_ca_file).map_err(|e| format!("supervisor.tls.client_ca_file: {e}"))?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("supervisor.tls.client_ca_file: {e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("supervisor.tls.key_file: does not fit cert_file: {e}"))?;
    Ok(Arc::new(cfg))
}

/// A client side: trust `ca`, and present `cert`/`key` when given.
pub fn client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let cfg = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| format!("{}: does not fit {}: {e}", k.display(), cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}
