//! The HTTP layer in process: the real router over a fake engine and an in-memory store,
//! driven with `tower::ServiceExt::oneshot`. Every error is JSON with a stable code, and
//! nothing about another user's container leaks.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use offload_core::UserName;
use offload_runtime::fake::FakeRuntime;
use offload_server::ServerConfig;
use offload_server::auth::{random_secret, token_hash};
use offload_server::controller::Controller;
use offload_server::http::{AppState, MAX_JSON_BODY, router};
use offload_store::{Store, TokenKind};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    app: axum::Router,
    fake: FakeRuntime,
    alice: String,
    bob: String,
    /// An admin's token.
    ops: String,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let mut tokens = Vec::new();
    for name in ["alice", "bob", "ops"] {
        let user = UserName::parse(name).unwrap();
        store.upsert_user(&user, name == "ops", 0).unwrap();
        let token = random_secret();
        store
            .insert_token(&token_hash(&token), &user, TokenKind::Api, 0, None)
            .unwrap();
        tokens.push(token);
    }
    let fake = FakeRuntime::new();
    fake.add_image("busybox");
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let ctl = Arc::new(Controller::new(store, Arc::new(fake.clone()), config).unwrap());
    let app = router(AppState {
        ctl,
        ca_pem: Arc::from(""),
    });
    let ops = tokens.pop().unwrap();
    let bob = tokens.pop().unwrap();
    let alice = tokens.pop().unwrap();
    Api {
        _dir: dir,
        app,
        fake,
        alice,
        bob,
        ops,
    }
}

impl Api {
    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{status}: the body is not JSON: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, body)
    }

    fn get(&self, path: &str, token: Option<&str>) -> Request<Body> {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Body::empty()).unwrap()
    }

    fn post(&self, path: &str, token: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap()
    }
}

/// An API error: the status, a sentence, and the code.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    let sentence = got.1["error"].as_str().unwrap();
    assert!(
        !sentence.is_empty() && !sentence.ends_with('.'),
        "{sentence}"
    );
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused_with_json() {
    let api = api();
    let got = api.call(api.get("/v1/containers", None)).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthenticated");
    let got = api.call(api.get("/v1/containers", Some("nonsense"))).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "invalid_token");
    let got = api
        .call(api.get("/v1/containers", Some(&random_secret())))
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn unknown_routes_methods_and_bodies_get_json_errors() {
    let api = api();
    let got = api
        .call(api.get("/v1/nothing-here", Some(&api.alice)))
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "no_route");
    let request = Request::delete("/v1/containers")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.alice))
        .body(Body::empty())
        .unwrap();
    let got = api.call(request).await;
    assert_error(&got, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    for bad in [
        "{".to_owned(),
        json!({"image": "busybox", "privileged": true}).to_string(),
        json!({"image": "busybox", "cpus": "two"}).to_string(),
        json!({"image": "../../etc"}).to_string(),
        json!({"image": "busybox", "cpus": -1.0}).to_string(),
        json!({"image": "busybox", "memory": "lots"}).to_string(),
    ] {
        let got = api
            .call(api.post("/v1/containers", &api.alice, bad.clone()))
            .await;
        assert!(
            got.0 == StatusCode::BAD_REQUEST || got.0 == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {} {}",
            got.0,
            got.1
        );
        assert!(got.1["code"].is_string(), "{bad}: {}", got.1);
    }
    let huge = format!(
        "{{\"image\": \"busybox\", \"name\": \"{}\"}}",
        "x".repeat(MAX_JSON_BODY + 1)
    );
    let got = api.call(api.post("/v1/containers", &api.alice, huge)).await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
    // Nothing was created by any of it.
    assert!(api.fake.calls().is_empty(), "{:?}", api.fake.calls());
    let (status, list) = api.call(api.get("/v1/containers", Some(&api.alice))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn another_users_container_looks_exactly_like_a_missing_one() {
    let api = api();
    let (status, created) = api
        .call(api.post(
            "/v1/containers",
            &api.alice,
            json!({"image": "busybox", "name": "box"}).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, shown) = api
        .call(api.get(&format!("/v1/containers/{id}"), Some(&api.alice)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["location"], "cloud");
    assert_eq!(shown["generation"], 1);

    let missing = api
        .call(api.get("/v1/containers/c0123456789abcdef", Some(&api.bob)))
        .await;
    for path in [
        format!("/v1/containers/{id}"),
        "/v1/containers/box".to_owned(),
    ] {
        let theirs = api.call(api.get(&path, Some(&api.bob))).await;
        assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(theirs.1["code"], missing.1["code"]);
    }
    for action in ["stop", "start", "move"] {
        let body = if action == "move" {
            json!({"to": "edge"}).to_string()
        } else {
            String::new()
        };
        let got = api
            .call(api.post(&format!("/v1/containers/{id}/{action}"), &api.bob, body))
            .await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");
    }
    // The owner's own move without an agent is a conflict with a way forward.
    let got = api
        .call(api.post(
            &format!("/v1/containers/{id}/move"),
            &api.alice,
            json!({"to": "edge"}).to_string(),
        ))
        .await;
    assert_error(&got, StatusCode::CONFLICT, "conflict");
    assert!(got.1["error"].as_str().unwrap().contains("offload agent"));
}

#[tokio::test]
async fn the_sftp_socket_is_refused_before_the_upgrade_for_missing_stopped_or_others_containers() {
    let api = api();
    let (status, created) = api
        .call(api.post(
            "/v1/containers",
            &api.alice,
            json!({"image": "busybox", "name": "box"}).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/containers/{id}/sftp");
    // Another user's container and a missing one: the same 404.
    let theirs = api.call(api.get(&path, Some(&api.bob))).await;
    assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
    let missing = api
        .call(api.get("/v1/containers/c0123456789abcdef/sftp", Some(&api.alice)))
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let unauthenticated = api.call(api.get(&path, None)).await;
    assert_error(
        &unauthenticated,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // The owner's running container, asked without a WebSocket upgrade.
    let plain = api.call(api.get(&path, Some(&api.alice))).await;
    assert_error(&plain, StatusCode::BAD_REQUEST, "websocket_required");
    // A stopped container: 409.
    let (status, _) = api
        .call(api.post(&format!("/v1/containers/{id}/stop"), &api.alice, ""))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stopped = api.call(api.get(&path, Some(&api.alice))).await;
    assert_error(&stopped, StatusCode::CONFLICT, "conflict");
    assert!(api.fake.running().is_empty());
}

impl Api {
    /// The body of a `follow=false` event stream, as text.
    async fn events_text(&self, query: &str, token: &str, last_id: Option<&str>) -> String {
        let mut request = Request::get(format!("/v1/events?follow=false{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

/// The `data:` lines of a server-sent event stream, parsed.
fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn the_event_stream_carries_each_users_own_events_and_resumes_after_an_id() {
    let api = api();
    let start = json!({"image": "busybox", "name": "box", "command": ["sleep", "1000"]});
    let (status, alices) = api
        .call(api.post("/v1/containers", &api.alice, start.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alices}");
    let id = alices["id"].as_str().unwrap();
    let stop = api.post(&format!("/v1/containers/{id}/stop"), &api.alice, "");
    assert_eq!(api.call(stop).await.0, StatusCode::OK);
    let (status, _) = api
        .call(api.post("/v1/containers", &api.bob, start.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let text = api.events_text("", &api.alice, None).await;
    assert!(text.contains("event: container_created"), "{text}");
    let events = sse_data(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["container_created", "container_stopped"], "{text}");
    assert!(
        events
            .iter()
            .all(|e| e["user"] == "alice" && e["container_id"] == id)
    );
    let first = events[0]["id"].as_u64().unwrap();

    // After the first: only the second, by header or by query.
    let after = first.to_string();
    let by_header = sse_data(&api.events_text("", &api.alice, Some(&after)).await);
    let by_query = sse_data(
        &api.events_text(&format!("&after={after}"), &api.alice, None)
            .await,
    );
    for resumed in [by_header, by_query] {
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0]["kind"], "container_stopped");
    }
    let bobs = sse_data(&api.events_text("", &api.bob, None).await);
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["user"], "bob");
}

#[tokio::test]
async fn the_event_stream_refuses_another_users_or_an_unknown_last_event_id() {
    let api = api();
    let start = json!({"image": "busybox", "name": "box", "command": ["sleep", "1000"]});
    api.call(api.post("/v1/containers", &api.alice, start.to_string()))
        .await;
    let alices = sse_data(&api.events_text("", &api.alice, None).await);
    let theirs = alices[0]["id"].as_u64().unwrap().to_string();
    for last_id in [theirs.as_str(), "999999", "not-a-number"] {
        let request = Request::get("/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {}", api.bob))
            .header("last-event-id", last_id)
            .body(Body::empty())
            .unwrap();
        let got = api.call(request).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    let got = api.call(api.get("/v1/events", None)).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthenticated");
    let got = api
        .call(api.get("/v1/events?tail=many", Some(&api.alice)))
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_query");
}

#[tokio::test]
async fn the_audit_log_records_each_action_and_denial_with_the_right_user() {
    let api = api();
    let start = json!({"image": "busybox", "name": "box", "command": ["sleep", "1000"]});
    let (_, view) = api
        .call(api.post("/v1/containers", &api.alice, start.to_string()))
        .await;
    let id = view["id"].as_str().unwrap().to_owned();
    api.call(api.post(&format!("/v1/containers/{id}/stop"), &api.alice, ""))
        .await;
    // Bob tries alice's container: to him it is missing; the log says what it was.
    let got = api
        .call(api.post(&format!("/v1/containers/{id}/stop"), &api.bob, ""))
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
    let got = api
        .call(api.get(&format!("/v1/containers/{id}"), Some(&api.bob)))
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
    api.call(api.get("/v1/containers", Some("forged"))).await;
    let got = api.call(api.get("/v1/admin/audit", Some(&api.bob))).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
    // Reads that succeed are not actions.
    api.call(api.get("/v1/containers", Some(&api.alice))).await;

    // The log is written after each answer: poll until the last denial is in.
    let mut entries = Vec::new();
    for _ in 0..100 {
        let (status, body) = api.call(api.get("/v1/admin/audit", Some(&api.ops))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        entries = body.as_array().unwrap().clone();
        if entries.len() >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rows: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or("-").to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap_or("-").to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |user: &str, action: &str, target: &str, outcome: &str| {
        (user.into(), action.into(), target.into(), outcome.into())
    };
    let expected = [
        row("alice", "start", "-", "ok"),
        row("alice", "stop", &id, "ok"),
        row("bob", "stop", &id, "denied"),
        row("bob", "read", &id, "denied"),
        row("-", "read", "-", "denied"),
        row("bob", "read", "-", "denied"),
    ];
    for want in &expected {
        assert!(rows.contains(want), "{want:?} not in {rows:?}");
    }
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    let bobs = entries
        .iter()
        .find(|e| e["user"] == "bob" && e["action"] == "stop")
        .unwrap();
    assert!(
        bobs["detail"]
            .as_str()
            .unwrap()
            .contains("another user's container (of alice)"),
        "{bobs}"
    );

    // Filtered by user; a bad user name is a clear error.
    let (_, body) = api
        .call(api.get("/v1/admin/audit?user=alice", Some(&api.ops)))
        .await;
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    let got = api
        .call(api.get("/v1/admin/audit?user=../x", Some(&api.ops)))
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}
