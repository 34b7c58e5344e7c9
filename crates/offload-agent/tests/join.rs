//! The join flow against TLS stubs on loopback: the CA pin holds even when the `/v1/ca`
//! answer carries a second CA beside the real one.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use offload_agent::client::{Api, ClientConfig, join, pinned_ca};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn fingerprint(&self) -> String {
        let der = CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap();
        hex::encode(Sha256::digest(der.as_ref()))
    }

    /// A serving certificate for the loopback address, signed by this CA.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Secrets a stub received on `/v1/join`.
type Received = Arc<Mutex<Vec<String>>>;

/// An offload-like server: `/v1/ca` answers `ca_answer`, `/v1/join` records the secret
/// and hands out a token, `/v1/whoami` answers anyone.
async fn stub(ca_answer: String, tls: Arc<rustls::ServerConfig>) -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new()
        .route("/v1/ca", get(move || async move { ca_answer }))
        .route(
            "/v1/join",
            post(
                move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    seen.lock()
                        .unwrap()
                        .push(body["secret"].as_str().unwrap_or_default().to_owned());
                    axum::Json(serde_json::json!({"user": "alice", "admin": false, "token": "t"}))
                },
            ),
        )
        .route(
            "/v1/whoami",
            get(|| async { axum::Json(serde_json::json!({"user": "alice", "admin": false})) }),
        );
    let tcp = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let addr = tcp.local_addr().unwrap();
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let server = axum_server::from_tcp_rustls(tcp, config).unwrap();
    tokio::spawn(server.serve(app.into_make_service()));
    (format!("https://{addr}"), received)
}

fn token_for(ca: &Ca) -> String {
    format!("ofl1.{}.{SECRET}", ca.fingerprint())
}

fn provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn cert_count(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes()).count()
}

#[tokio::test]
async fn a_man_in_the_middle_adding_his_ca_to_the_answer_gets_no_secret() {
    provider();
    let real = Ca::new("offload CA");
    let attacker = Ca::new("attacker CA");
    // The attacker answers with the real CA, so the fingerprint matches, plus his own,
    // which signed the certificate he serves.
    let answer = format!("{}{}", real.pem, attacker.pem);
    let (url, received) = stub(answer, attacker.server_config()).await;

    let err = join(&url, &token_for(&real)).await.unwrap_err();

    assert!(
        received.lock().unwrap().is_empty(),
        "the secret reached the attacker"
    );
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");
}

#[tokio::test]
async fn a_join_stores_only_the_pinned_ca_and_later_calls_refuse_other_cas() {
    provider();
    let real = Ca::new("offload CA");
    let attacker = Ca::new("attacker CA");
    let answer = format!("{}{}", attacker.pem, real.pem);
    let (url, received) = stub(answer, real.server_config()).await;

    let config = join(&url, &token_for(&real)).await.unwrap();

    assert_eq!(received.lock().unwrap().as_slice(), [SECRET]);
    assert_eq!(cert_count(&config.ca_pem), 1);
    assert_eq!(
        CertificateDer::from_pem_slice(config.ca_pem.as_bytes()).unwrap(),
        CertificateDer::from_pem_slice(real.pem.as_bytes()).unwrap()
    );
    // The stored credentials reach the real server and nobody the attacker's CA signed.
    let api = Api::new(config.clone()).unwrap();
    api.get::<serde_json::Value>("/v1/whoami").await.unwrap();
    let (evil_url, _) = stub(String::new(), attacker.server_config()).await;
    let evil = Api::new(ClientConfig {
        server: evil_url,
        ..config
    })
    .unwrap();
    let err = evil
        .get::<serde_json::Value>("/v1/whoami")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

#[test]
fn the_pin_picks_the_named_certificate_and_nothing_else() {
    let real = Ca::new("offload CA");
    let attacker = Ca::new("attacker CA");
    for answer in [
        format!("{}{}", real.pem, attacker.pem),
        format!("{}\n{}", attacker.pem, real.pem),
        format!("junk before\n{}", real.pem),
    ] {
        let pem = pinned_ca(&answer, &real.fingerprint()).unwrap();
        assert_eq!(cert_count(&pem), 1, "{pem}");
        assert_eq!(
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
            CertificateDer::from_pem_slice(real.pem.as_bytes()).unwrap()
        );
    }
    let err = pinned_ca(&attacker.pem, &real.fingerprint()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = pinned_ca("not a certificate", &real.fingerprint()).unwrap_err();
    assert!(err.to_string().contains("no CA certificate"), "{err}");
}

#[test]
fn credentials_trusting_two_cas_are_refused() {
    provider();
    let real = Ca::new("offload CA");
    let attacker = Ca::new("attacker CA");
    let config = ClientConfig {
        server: "https://127.0.0.1:1".into(),
        user: "alice".into(),
        admin: false,
        token: "t".into(),
        ca_pem: format!("{}{}", real.pem, attacker.pem),
    };
    let err = Api::new(config).err().unwrap();
    assert!(err.to_string().contains("run `offload join"), "{err}");
}
