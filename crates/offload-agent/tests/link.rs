//! The agent's link through a silent partition: a loopback proxy between the agent and an
//! in-process server stops forwarding bytes while keeping every socket open (packets
//! dropped, no reset), then heals. Connections that lived through the partition stay dead,
//! as they do when a NAT or a firewall forgot them; new ones work again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload_agent::client::{Api, ClientConfig, Timeouts};
use offload_agent::connection::{self, LinkTimings};
use offload_agent::{Edge, EdgeOptions, Preferences};
use offload_runtime::NetworkMode;
use offload_runtime::fake::FakeRuntime;
use offload_server::ServerConfig;
use offload_store::{Store, TokenKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One connection through the proxy, as the test sees it.
struct Conn {
    id: u64,
    accepted: Instant,
    /// Last time bytes went from the server to the client.
    last_down: Option<Instant>,
    open: bool,
}

#[derive(Default)]
struct ProxyState {
    /// While set, nothing is forwarded on any connection.
    holed: AtomicBool,
    /// Connections below this id lived through a partition: dead for good.
    dead_below: AtomicU64,
    next: AtomicU64,
    conns: Mutex<Vec<Conn>>,
}

impl ProxyState {
    fn dead(&self, id: u64) -> bool {
        self.holed.load(Ordering::SeqCst) || id < self.dead_below.load(Ordering::SeqCst)
    }

    fn with_conn(&self, id: u64, f: impl FnOnce(&mut Conn)) {
        if let Some(c) = self.conns.lock().unwrap().iter_mut().find(|c| c.id == id) {
            f(c);
        }
    }
}

struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = shared.next.fetch_add(1, Ordering::SeqCst);
                shared.conns.lock().unwrap().push(Conn {
                    id,
                    accepted: Instant::now(),
                    last_down: None,
                    open: true,
                });
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = forward(state.clone(), id, client_read, server_write, false);
                    let down = forward(state.clone(), id, server_read, client_write, true);
                    tokio::join!(up, down);
                    state.with_conn(id, |c| c.open = false);
                });
            }
        });
        Proxy { port, state, task }
    }

    /// Packets are dropped from now on; sockets stay open.
    fn black_hole(&self) {
        self.state.holed.store(true, Ordering::SeqCst);
    }

    /// New connections work again; those opened before stay dead. Returns the first id
    /// of the connections after the heal.
    fn heal(&self) -> u64 {
        let first = self.state.next.load(Ordering::SeqCst);
        self.state.dead_below.store(first, Ordering::SeqCst);
        self.state.holed.store(false, Ordering::SeqCst);
        first
    }

    fn accepted(&self) -> u64 {
        self.state.next.load(Ordering::SeqCst)
    }

    /// Whether a connection opened at or after `first` carries a live WebSocket: open,
    /// past its handshakes, and still getting frames from the server.
    fn live_session_since(&self, first: u64) -> bool {
        self.state.conns.lock().unwrap().iter().any(|c| {
            c.id >= first
                && c.open
                && c.accepted.elapsed() > Duration::from_secs(2)
                && c.last_down
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(800))
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes one way until either side closes; on a dead connection it swallows what
/// it reads and sends nothing, holding both sockets open.
async fn forward(
    state: Arc<ProxyState>,
    id: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    down: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.dead(id) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if down {
            state.with_conn(id, |c| c.last_down = Some(Instant::now()));
        }
    }
    // A dead connection never closes cleanly: the peer would learn nothing.
    while state.dead(id) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = to.shutdown().await;
}

struct Server {
    port: u16,
    config: ClientConfig,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real server's router over TLS with a fake engine, and an API token for alice.
async fn server() -> Server {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    offload_server::tls::ensure_private_dir(&data_dir).unwrap();
    let pki = offload_server::tls::Pki::load(&data_dir.join("tls"), &[]).unwrap();
    let store = Arc::new(Store::open(&data_dir.join("state.db")).unwrap());
    let alice = offload_core::UserName::parse("alice").unwrap();
    store.upsert_user(&alice, false, 0).unwrap();
    let token = offload_server::auth::random_secret();
    store
        .insert_token(
            &offload_server::auth::token_hash(&token),
            &alice,
            TokenKind::Api,
            0,
            None,
        )
        .unwrap();
    let config = ServerConfig {
        data_dir,
        ..ServerConfig::default()
    };
    let ctl = Arc::new(
        offload_server::controller::Controller::new(store, Arc::new(FakeRuntime::new()), config)
            .unwrap(),
    );
    let app = offload_server::http::router(offload_server::http::AppState {
        ctl,
        ca_pem: Arc::from(pki.ca_pem.as_str()),
    });
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(pki.server_config().unwrap());
    let serving = axum_server::from_tcp_rustls(tcp, tls).unwrap();
    let task = tokio::spawn(async move {
        let _ = serving.serve(app.into_make_service()).await;
    });
    Server {
        port,
        config: ClientConfig {
            server: String::new(),
            user: "alice".to_owned(),
            admin: false,
            token,
            ca_pem: pki.ca_pem.clone(),
        },
        _dir: dir,
        task,
    }
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(2),
        min_rate: 1 << 20,
        read_idle: Duration::from_secs(2),
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(500),
    }
}

fn api_through(server: &Server, proxy: &Proxy) -> Api {
    let config = ClientConfig {
        server: format!("https://127.0.0.1:{}", proxy.port),
        ..server.config.clone()
    };
    Api::with_timeouts(config, short_timeouts()).unwrap()
}

async fn list(api: &Api) -> Result<serde_json::Value, offload_agent::client::CallError> {
    api.get::<serde_json::Value>("/v1/containers").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_within_their_deadline_in_a_partition_and_work_after_it() {
    let server = server().await;
    let proxy = Proxy::start(server.port).await;
    let api = api_through(&server, &proxy);
    list(&api)
        .await
        .expect("the link works before the partition");

    proxy.black_hole();
    let started = Instant::now();
    let during = tokio::time::timeout(Duration::from_secs(30), list(&api))
        .await
        .expect("a request in a partition must not hang");
    assert!(during.is_err(), "nothing can answer in a partition");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed after {:?}, not within its 2 s deadline",
        started.elapsed()
    );
    // Long enough for the keepalive to find the pooled connection dead.
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.heal();
    let started = Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(30), list(&api))
        .await
        .expect("a request after the heal must not hang on the dead connection");
    after.expect("the first request after the heal succeeds on a fresh connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_notices_a_dead_websocket_and_reconnects_after_the_heal() {
    let server = server().await;
    let proxy = Proxy::start(server.port).await;
    let api = api_through(&server, &proxy);
    let data = tempfile::tempdir().unwrap();
    let edge = Edge::new(
        api,
        Arc::new(FakeRuntime::new()),
        EdgeOptions {
            data_dir: data.path().to_owned(),
            network: NetworkMode::None,
            stop_grace_secs: 1,
            rescan: Duration::from_secs(2),
            sweep: Duration::from_secs(2),
            device: "laptop".to_owned(),
            offer: Default::default(),
        },
    );
    let timings = LinkTimings {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_secs(1),
    };
    let agent = tokio::spawn(connection::run_with(edge, Preferences::default(), timings));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.live_session_since(0) {
        assert!(Instant::now() < deadline, "the agent never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = proxy.accepted();
    proxy.black_hole();
    let holed = Instant::now();
    // Noticing takes at most the silence limit (1.5 s), then a reconnect after a short
    // backoff: a new connection attempt shows the agent gave up on the dead one.
    while proxy.accepted() == before {
        assert!(
            holed.elapsed() < Duration::from_secs(6),
            "the agent kept waiting on a dead link"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = proxy.heal();
    let healed = Instant::now();
    while !proxy.live_session_since(first) {
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "no working link {:?} after the heal",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.abort();
}
