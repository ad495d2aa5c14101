//! Optional TLS for the Flight port (tonic's rustls, ring provider).
//!
//! `LONGBOW_TLS_CERT` and `LONGBOW_TLS_KEY` name PEM files; both or neither.
//! With `LONGBOW_TLS_CLIENT_CA` as well, clients must present a certificate
//! signed by that CA (mutual TLS). Everything is read and checked once, at
//! startup, before the WAL is replayed: a missing, unreadable or malformed
//! file, or a key that does not belong to the certificate, stops the process
//! with the file named. A renewed certificate takes effect on restart.
//!
//! The health service shares the Flight port, so it is behind TLS too; the
//! metrics endpoint stays plain HTTP on its own port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A client that connects and then stalls the handshake is dropped after
/// this long, so it cannot hold a connection slot forever.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Largest PEM file read (a certificate chain or key is a few KiB); a wrong
/// path pointing at a large file fails fast instead of filling memory.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert (LONGBOW_TLS_CERT) is set but --tls-key (LONGBOW_TLS_KEY) is not; TLS needs both")]
    CertWithoutKey,
    #[error("--tls-key (LONGBOW_TLS_KEY) is set but --tls-cert (LONGBOW_TLS_CERT) is not; TLS needs both")]
    KeyWithoutCert,
    #[error("--tls-client-ca (LONGBOW_TLS_CLIENT_CA) needs --tls-cert and --tls-key (the server's own identity)")]
    ClientCaWithoutTls,
    #[error("LONGBOW_PEERS names grpc+tls:// URLs: this node needs --tls-cert and --tls-key (it serves TLS to its peers too)")]
    PeersWithoutTls,
    #[error("reading {what} {path:?}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path:?}: {reason}")]
    Invalid { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS certificate {cert:?} with key {key:?} rejected: {reason}")]
    Rejected { cert: PathBuf, key: PathBuf, reason: String },
}

/// The TLS file paths from the configuration.
#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// A checked TLS setup, ready for `Server::tls_config`.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: ServerTlsConfig,
    /// Whether clients must present a certificate (mutual TLS).
    pub client_auth: bool,
    /// Certificates in the server's chain (for the startup log).
    pub chain_len: usize,
}

/// Reads and checks the files: `Ok(None)` when TLS is off.
pub fn load(paths: &TlsPaths) -> Result<Option<Tls>, TlsError> {
    install_crypto_provider();
    let (cert_path, key_path) = match (&paths.cert, &paths.key) {
        (None, None) if paths.client_ca.is_some() => return Err(TlsError::ClientCaWithoutTls),
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TlsError::CertWithoutKey),
        (None, Some(_)) => return Err(TlsError::KeyWithoutCert),
        (Some(c), Some(k)) => (c, k),
    };
    let cert_pem = read_pem("TLS certificate", cert_path)?;
    let chain_len = count_certificates("TLS certificate", cert_path, &cert_pem)?;
    let key_pem = read_pem("TLS private key", key_path)?;
    // Parsed only to check it: the error names the file, never the bytes.
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        what: "TLS private key",
        path: key_path.clone(),
        reason: format!("no PKCS#8, PKCS#1 or SEC1 private key in PEM form ({e})"),
    })?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS));
    if let Some(ca_path) = &paths.client_ca {
        let ca_pem = read_pem("TLS client CA", ca_path)?;
        count_certificates("TLS client CA", ca_path, &ca_pem)?;
        config = config.client_ca_root(Certificate::from_pem(ca_pem));
    }
    // rustls builds its config here: an unsupported key type, or a key that
    // does not match the certificate, fails now rather than on the first
    // connection.
    tonic::transport::Server::builder().tls_config(config.clone()).map_err(|e| TlsError::Rejected {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: error_chain(&e),
    })?;
    Ok(Some(Tls { config, client_auth: paths.client_ca.is_some(), chain_len }))
}

/// The TLS a node uses as a client of its peers (`grpc+tls://` in
/// LONGBOW_PEERS): it trusts `peer_ca`, else the client CA, else its own
/// certificate (nodes that share one), and presents its own certificate,
/// which peers that require client certificates check.
pub fn peer_client(paths: &TlsPaths, peer_ca: Option<&Path>) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let (Some(cert), Some(key)) = (&paths.cert, &paths.key) else { return Err(TlsError::PeersWithoutTls) };
    let roots = peer_ca.or(paths.client_ca.as_deref()).unwrap_or(cert);
    let roots_pem = read_pem("peer CA", roots)?;
    count_certificates("peer CA", roots, &roots_pem)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots_pem))
        .identity(Identity::from_pem(read_pem("TLS certificate", cert)?, read_pem("TLS private key", key)?)))
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: format!("{len} bytes; a PEM file is at most {PEM_FILE_BYTES_MAX}"),
        });
    }
    std::fs::read(path).map_err(read)
}

fn count_certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<usize, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no \"BEGIN CERTIFICATE\" section found".into()));
    }
    Ok(certs.len())
}

/// tonic's transport error says only "transport error"; the cause is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Makes ring the process's rustls provider. The object-store client the
/// snapshot store brings (reqwest, through deltalake) enables rustls's
/// aws-lc-rs feature too, and with both compiled in rustls picks neither
/// by itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> TlsPaths {
        TlsPaths { cert: cert.map(Into::into), key: key.map(Into::into), client_ca: ca.map(Into::into) }
    }

    #[test]
    fn both_or_neither() {
        assert!(matches!(load(&paths(None, None, None)), Ok(None)));
        assert!(matches!(load(&paths(Some("c.pem"), None, None)), Err(TlsError::CertWithoutKey)));
        assert!(matches!(load(&paths(None, Some("k.pem"), None)), Err(TlsError::KeyWithoutCert)));
        assert!(matches!(load(&paths(None, None, Some("ca.pem"))), Err(TlsError::ClientCaWithoutTls)));
    }

    #[test]
    fn missing_file_is_named() {
        let e = load(&paths(Some("/nonexistent/c.pem"), Some("/nonexistent/k.pem"), None)).unwrap_err();
        assert!(matches!(e, TlsError::Read { what: "TLS certificate", .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"not a certificate\n").unwrap();
        let e = load(&paths(garbage.to_str(), garbage.to_str(), None)).unwrap_err();
        assert!(matches!(e, TlsError::Invalid { what: "TLS certificate", .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");
    }

    #[test]
    fn matching_cert_and_key_load_and_a_foreign_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, other_key) = (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("o.pem"));
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        std::fs::write(&other_key, b.signing_key.serialize_pem()).unwrap();

        let tls = load(&paths(cert.to_str(), key.to_str(), None)).unwrap().unwrap();
        assert_eq!(tls.chain_len, 1);
        assert!(!tls.client_auth);
        let tls = load(&paths(cert.to_str(), key.to_str(), cert.to_str())).unwrap().unwrap();
        assert!(tls.client_auth);

        // A certificate where the key should be: no private key in it.
        let e = load(&paths(cert.to_str(), cert.to_str(), None)).unwrap_err();
        assert!(matches!(e, TlsError::Invalid { what: "TLS private key", .. }), "{e}");
        // A key of another certificate.
        let e = load(&paths(cert.to_str(), other_key.to_str(), None)).unwrap_err();
        assert!(matches!(e, TlsError::Rejected { .. }), "{e}");
        // The key's bytes never appear in an error.
        let key_body = a.signing_key.serialize_pem();
        let key_line = key_body.lines().nth(1).unwrap();
        assert!(!e.to_string().contains(key_line), "{e}");
    }
}
