//! The real listener and router on loopback: header and idle timeouts, the connection
//! caps, bodies declared too large, and start requests with unusable CPU limits.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offload_core::UserName;
use offload_runtime::fake::FakeRuntime;
use offload_server::controller::Controller;
use offload_server::listener::ConnectionLimits;
use offload_server::{ServerConfig, auth, http, listener, tls};
use offload_store::{Store, TokenKind};

const TOKEN: &str = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";

struct Server {
    addr: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
    _handle: axum_server::Handle<SocketAddr>,
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        max_connections: 100,
        max_connections_per_address: 100,
    }
}

async fn start(limits: ConnectionLimits) -> Server {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::Pki::load(&dir.path().join("tls"), &[]).unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let alice = UserName::parse("alice").unwrap();
    store.upsert_user(&alice, false, 0).unwrap();
    store
        .insert_token(&auth::token_hash(TOKEN), &alice, TokenKind::Api, 0, None)
        .unwrap();
    let fake = FakeRuntime::new();
    fake.add_image("busybox");
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let ctl = Arc::new(Controller::new(store, Arc::new(fake), config).unwrap());
    let app = http::router(http::AppState {
        ctl,
        ca_pem: Arc::from(pki.ca_pem.as_str()),
    });
    let tcp = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let addr = tcp.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let tls_config = pki.server_config().unwrap();
    tokio::spawn(listener::serve(
        tcp,
        tls_config,
        app,
        handle.clone(),
        limits,
    ));
    Server {
        addr,
        ca_pem: pki.ca_pem.clone(),
        _dir: dir,
        _handle: handle,
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A raw HTTP/1.1-over-TLS connection, handshake done.
fn connect(server: &Server) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(server.addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

use rustls_pki_types::pem::PemObject;

/// Reads what arrives within `limit`: the bytes, and whether the server closed.
fn read_for(tls: &mut Tls, limit: Duration) -> (String, bool) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match tls.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

fn get_ca(tls: &mut Tls) -> String {
    tls.write_all(b"GET /v1/ca HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("END CERTIFICATE") {
        assert!(start.elapsed() < Duration::from_secs(10), "no answer");
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closes the connection within `limit` while `feed` keeps writing.
fn closed_within(tls: &mut Tls, limit: Duration, mut feed: impl FnMut(&mut Tls)) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        feed(tls);
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowly_sent_header_is_cut_off_at_the_header_timeout() {
    let server = start(ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut tls = connect(&server).unwrap();
        tls.write_all(b"GET /v1/ca HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        let mut n = 0;
        // A header line every 100 ms, for up to 10 s.
        closed_within(&mut tls, Duration::from_secs(10), |tls| {
            n += 1;
            let _ = tls.write_all(format!("x-slow-{n}: 1\r\n").as_bytes());
        })
    })
    .await
    .unwrap();
    assert!(closed, "the connection stayed open");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let server = start(ConnectionLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut tls = connect(&server).unwrap();
        // One request, then silence on the kept-alive connection.
        assert!(get_ca(&mut tls).starts_with("HTTP/1.1 200"));
        closed_within(&mut tls, Duration::from_secs(10), |_| {})
    })
    .await
    .unwrap();
    assert!(closed, "the idle connection stayed open");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_address_cap_are_refused_and_earlier_ones_work() {
    let server = start(ConnectionLimits {
        max_connections_per_address: 2,
        ..limits()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let mut first = connect(&server).unwrap();
        let mut second = connect(&server).unwrap();
        let third = connect(&server);
        assert!(third.is_err(), "a third connection was accepted");
        assert!(get_ca(&mut first).starts_with("HTTP/1.1 200"));
        assert!(get_ca(&mut second).starts_with("HTTP/1.1 200"));
        // A closed connection gives its slot back.
        drop(first);
        let start = Instant::now();
        let mut again = loop {
            if let Ok(tls) = connect(&server) {
                break tls;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the slot never came back"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(get_ca(&mut again).starts_with("HTTP/1.1 200"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_declared_too_large_is_refused_before_it_is_sent() {
    let server = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        for (path, length, expected) in [
            ("/v1/join", 10u64 << 30, "HTTP/1.1 413"),
            ("/v1/containers", 10 << 30, "HTTP/1.1 413"),
            ("/v1/containers/x/workspace/chunks", 10 << 30, "HTTP/1.1 413"),
            ("/v1/containers/x/workspace/fetch", 20 << 20, "HTTP/1.1 413"),
            // Within the push delta limit: refused for want of a token, not for its size.
            ("/v1/containers/x/workspace/plan?generation=1", 20 << 20, "HTTP/1.1 401"),
        ] {
            let mut tls = connect(&server).unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
            );
            tls.write_all(head.as_bytes()).unwrap();
            let (answer, _) = read_for(&mut tls, Duration::from_secs(5));
            assert!(answer.starts_with(expected), "{path}: {answer:?}");
            if expected.ends_with("413") {
                assert!(answer.contains("body_too_large"), "{path}: {answer:?}");
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_requests_with_unusable_cpu_limits_are_refused() {
    let server = start(limits()).await;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server.ca_pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://{}/v1/containers", server.addr);
    for cpus in ["1e999", "-1e999", "-1", "0", "\"NaN\"", "\"inf\""] {
        let body = format!(r#"{{"image": "busybox", "cpus": {cpus}}}"#);
        let response = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "cpus {cpus}");
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("cpus"), "cpus {cpus}: {message}");
    }
    let containers: serde_json::Value = http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(containers, serde_json::json!([]));
}
