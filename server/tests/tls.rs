//! TLS on the Flight port: the real binary with generated certificates, the
//! Rust Flight client over TLS (and mutual TLS), plaintext refused, and the
//! startup errors for incomplete or bad PEM files.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_flight::FlightClient;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA and the PEM files it signed, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `ca.pem`; `server.pem` + `server.key` (SAN localhost, 127.0.0.1);
    /// `client.pem` + `client.key`; and `other-ca.pem`, `stranger.pem` +
    /// `stranger.key`: a client certificate from a CA the server does not
    /// trust.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (new_ca("longbow test CA"), new_ca("some other CA"));
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.0);
        write("other-ca.pem", other.0);
        let (cert, key) = leaf(&["localhost", "127.0.0.1"], &ca.1);
        write("server.pem", cert);
        write("server.key", key);
        let (cert, key) = leaf(&["client-1"], &ca.1);
        write("client.pem", cert);
        write("client.key", key);
        let (cert, key) = leaf(&["stranger"], &other.1);
        write("stranger.pem", cert);
        write("stranger.key", key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// A TLS channel that trusts `ca.pem`, optionally with a client identity.
    async fn channel(&self, server: &Server, domain: Option<&str>, identity: Option<&str>) -> Channel {
        longbow_server::tls::install_crypto_provider();
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.pem")));
        if let Some(domain) = domain {
            tls = tls.domain_name(domain);
        }
        if let Some(name) = identity {
            tls =
                tls.identity(Identity::from_pem(self.read(&format!("{name}.pem")), self.read(&format!("{name}.key"))));
        }
        Endpoint::from_shared(format!("https://{}", server.flight))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("TLS connect")
    }
}

/// A self-signed CA: (cert PEM, issuer).
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for `names` signed by `issuer`: (cert PEM, key PEM).
fn leaf(names: &[&str], issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn round_trip(client: &mut FlightClient, dataset: &str) {
    let batches = vec![vector_batch(0, 100, 8), vector_batch(100, 50, 8)];
    let acks = put(client, dataset, batches.clone()).await.expect("DoPut over TLS");
    assert_eq!(acks.len(), 2);
    let got = get(client, dataset).await.expect("DoGet over TLS");
    assert_eq!(concat(&got), concat(&batches));
}

/// The log without its ANSI colour codes.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn data_dir(root: &Path) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_over_tls_round_trip_and_plaintext_is_refused() {
    let pki = Pki::new();
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    // Through the environment, as the Helm chart sets them.
    let server = Server::try_start_env(
        &data_dir(root.path()),
        2,
        &[],
        &[("LONGBOW_TLS_CERT", &cert), ("LONGBOW_TLS_KEY", &key)],
    )
    .unwrap_or_else(|log| panic!("longbow did not start:\n{log}"));
    assert!(server.log().contains("TLS on"), "{}", server.log());

    // By name (SAN localhost) and by address (SAN 127.0.0.1).
    let mut client = FlightClient::new(pki.channel(&server, Some("localhost"), None).await);
    round_trip(&mut client, "secure").await;
    let mut client = FlightClient::new(pki.channel(&server, None, None).await);
    assert_eq!(rows(&get(&mut client, "secure").await.unwrap()), 150);

    // Health is on the same port, behind the same TLS.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(pki.channel(&server, Some("localhost"), None).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health over TLS")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // A plaintext HTTP/2 client gets nothing from the TLS port.
    let plaintext = tokio::time::timeout(Duration::from_secs(20), async {
        let channel = Endpoint::from_shared(format!("http://{}", server.flight))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        get(&mut FlightClient::new(channel), "secure").await.map(|b| rows(&b)).map_err(|e| e.to_string())
    })
    .await
    .expect("a plaintext client must fail, not hang");
    assert!(plaintext.is_err(), "plaintext client read {plaintext:?} rows from the TLS port");

    // A TLS client that does not trust the server's CA fails the handshake.
    longbow_server::tls::install_crypto_provider();
    let untrusted = Endpoint::from_shared(format!("https://{}", server.flight))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.read("other-ca.pem")))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await;
    let refused = format!("{:?}", untrusted.expect_err("a client trusting another CA connected"));
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // Metrics stay plain HTTP.
    assert!(server.metrics_text().await.contains("200 OK"));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(
        &data_dir(root.path()),
        1,
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--tls-client-ca",
            &pki.arg("ca.pem"),
        ],
    );
    assert!(without_colours(&server.log()).contains("client_auth=true"), "{}", server.log());

    let mut client = FlightClient::new(pki.channel(&server, Some("localhost"), Some("client")).await);
    round_trip(&mut client, "mtls").await;

    // TLS 1.3 finishes the client's side of the handshake before the server
    // checks its certificate, so the refusal may only show on the first call.
    for identity in [None, Some("stranger")] {
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            let channel = Endpoint::from_shared(format!("https://{}", server.flight))
                .unwrap()
                .tls_config({
                    let tls = ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
                        .domain_name("localhost");
                    match identity {
                        Some(n) => tls
                            .identity(Identity::from_pem(pki.read(&format!("{n}.pem")), pki.read(&format!("{n}.key")))),
                        None => tls,
                    }
                })
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            get(&mut FlightClient::new(channel), "mtls").await.map(|b| rows(&b)).map_err(|e| e.to_string())
        })
        .await
        .expect("a refused client must fail, not hang");
        assert!(outcome.is_err(), "client with identity {identity:?} read {outcome:?} rows");
    }
    server.terminate();
}

/// The server exits with status 1 (an error, not a panic) and `needle` in
/// its log.
fn assert_refuses_to_start(extra: &[&str], needles: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let log = match Server::try_start(&data_dir(root.path()), 1, extra) {
        Ok(server) => panic!("longbow started with {extra:?}:\n{}", server.log()),
        Err(log) => log,
    };
    assert!(log.starts_with("exit exit status: 1\n"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    for needle in needles {
        assert!(log.contains(needle), "expected {needle:?} in:\n{log}");
    }
}

#[test]
fn incomplete_or_bad_tls_files_stop_startup_with_the_file_named() {
    let pki = Pki::new();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    assert_refuses_to_start(&["--tls-key", &key], &["LONGBOW_TLS_CERT", "TLS needs both"]);
    assert_refuses_to_start(&["--tls-cert", &cert], &["LONGBOW_TLS_KEY", "TLS needs both"]);
    assert_refuses_to_start(&["--tls-client-ca", &pki.arg("ca.pem")], &["LONGBOW_TLS_CLIENT_CA"]);

    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    assert_refuses_to_start(&["--tls-cert", garbage, "--tls-key", &key], &["TLS certificate", "garbage.pem"]);
    assert_refuses_to_start(&["--tls-cert", &cert, "--tls-key", garbage], &["TLS private key", "garbage.pem"]);
    assert_refuses_to_start(
        &["--tls-cert", &cert, "--tls-key", &pki.arg("missing.key")],
        &["reading TLS private key", "missing.key"],
    );
    // The key of another certificate: rejected at startup, not on the first
    // connection.
    assert_refuses_to_start(&["--tls-cert", &cert, "--tls-key", &pki.arg("client.key")], &["rejected", "server.pem"]);
    assert_refuses_to_start(
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", garbage],
        &["TLS client CA", "garbage.pem"],
    );
}
