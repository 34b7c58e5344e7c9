//! End to end: webhooks of a real server. A local receiver gets each event once, in order,
//! with a valid signature, through a spell of 500s and a 10 s outage; a webhook that names
//! kinds gets only those; the server answers as usual while its receivers are down.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::{Cloud, eventually, stderr};
use hmac::{Hmac, Mac};
use offload_testkit::{Engine, free_loopback_port};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "a-test-secret-of-some-length";

/// One delivery answered 200: path, signature header, event header, body.
type Delivery = (String, String, String, Bytes);

#[derive(Clone, Default)]
struct Received {
    ok: Arc<Mutex<Vec<Delivery>>>,
    /// Attempts answered 500.
    failed: Arc<Mutex<usize>>,
    /// Answer 500 while set.
    erroring: Arc<Mutex<bool>>,
}

async fn hook(
    State(received): State<Received>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if *received.erroring.lock().expect("lock") {
        *received.failed.lock().expect("lock") += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    received.ok.lock().expect("lock").push((
        path,
        header("x-offload-signature"),
        header("x-offload-event"),
        body,
    ));
    StatusCode::OK
}

/// The receiver, listening on `port` until dropped.
struct Receiver {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    fn listen(port: u16, received: &Received) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(hook))
            .with_state(received.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("receiver binds");
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            runtime,
            stop: Some(stop),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let runtime = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        );
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

fn valid(signature: &str, body: &[u8]) -> bool {
    let Some(hex_mac) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(mac_bytes) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&mac_bytes).is_ok()
}

#[test]
fn each_event_reaches_the_receiver_once_signed_after_errors_and_a_ten_second_outage() {
    let port = free_loopback_port().expect("port");
    let config = format!(
        "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/all\"\nsecret = \"{SECRET}\"\n\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/removed\"\nsecret = \"{SECRET}\"\n\
         events = [\"container_removed\"]\n"
    );
    let engine = Engine::start("hooks").expect("engine");
    engine.import_busybox(common::IMAGE).expect("image");
    let cloud = Cloud::with_config(engine, &config);
    let root = cloud.admin("root");
    let alice = cloud.user("alice");
    let received = Received::default();
    let receiver = Receiver::listen(port, &received);
    let delivered = |path: &str| -> Vec<Value> {
        received
            .ok
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, ..)| p == path)
            .map(|(.., body)| serde_json::from_slice(body).expect("a JSON event"))
            .collect()
    };

    let a = alice.start_sleeper("a");
    eventually(20, "the first event delivered", || {
        delivered("all")
            .iter()
            .any(|e| e["kind"] == "container_created")
    });

    // The receiver answers 500 for a while: the event comes once it answers 200.
    *received.erroring.lock().expect("lock") = true;
    alice.ok(&["stop", &a]);
    eventually(20, "a failed attempt", || {
        *received.failed.lock().expect("lock") > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    *received.erroring.lock().expect("lock") = false;
    eventually(30, "the stop delivered after the errors", || {
        delivered("all")
            .iter()
            .any(|e| e["kind"] == "container_stopped")
    });

    // Ten seconds with nothing listening, while things happen; the server keeps answering.
    drop(receiver);
    let down = Instant::now();
    let b = alice.start_sleeper("b");
    alice.ok(&["rm", &b]);
    alice.ok(&["rm", &a]);
    let started = Instant::now();
    let out = alice.run(&["ls"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the server answers while its receivers are down"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    let _receiver = Receiver::listen(port, &received);

    let all: Vec<Value> = root
        .ok(&["events", "--tail", "1000", "-o", "json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event per line"))
        .collect();
    let ids: Vec<u64> = all.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.len() >= 5, "{all:?}");
    eventually(90, "every event delivered after the outage", || {
        delivered("all").len() >= ids.len()
    });
    std::thread::sleep(Duration::from_secs(2));

    let got = delivered("all");
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for event in &got {
        *times.entry(event["id"].as_u64().expect("id")).or_default() += 1;
    }
    assert_eq!(
        times.keys().copied().collect::<Vec<_>>(),
        ids,
        "the stream's events, in order"
    );
    assert!(times.values().all(|n| *n == 1), "each once: {times:?}");
    let order: Vec<u64> = got.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
    for (path, signature, kind, body) in received.ok.lock().expect("lock").iter() {
        assert!(valid(signature, body), "{path}: bad signature {signature}");
        let event: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(event["kind"], kind.as_str(), "the kind header");
        assert!(!valid(signature, b"{}"), "the signature covers the body");
    }

    let removed = delivered("removed");
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|e| e["kind"] == "container_removed"));
}
