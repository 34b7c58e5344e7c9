//! The committed OpenAPI document (docs/openapi.json) is the one the server generates:
//! a change to the API that is not recorded there fails here. `OFFLOAD_WRITE_OPENAPI=1`
//! rewrites the file after an intended change.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = serde_json::to_string_pretty(&offload_server::http::openapi()).unwrap() + "\n";
    let path = committed();
    if std::env::var_os("OFFLOAD_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi.json is out of date: run `OFFLOAD_WRITE_OPENAPI=1 cargo test -p offload-server --test openapi` and commit it"
    );
}

#[test]
fn the_document_covers_the_sync_endpoints_and_the_websockets() {
    let doc = serde_json::to_value(offload_server::http::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/containers",
        "/v1/containers/{id}/move",
        "/v1/containers/{id}/workspace/manifest",
        "/v1/containers/{id}/workspace/fetch",
        "/v1/containers/{id}/workspace/plan",
        "/v1/containers/{id}/workspace/chunks",
        "/v1/containers/{id}/workspace/push",
        "/v1/containers/{id}/exec",
        "/v1/agent",
        "/v1/agent/channel/{session}",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "ApiError",
        "ErrorCode",
        "AgentMessage",
        "ServerMessage",
        "Command",
        "Reply",
        "ExecRequest",
        "ExecControl",
    ] {
        assert!(schemas.contains_key(schema), "{schema} is not described");
    }
    let codes = serde_json::to_string(&schemas["ErrorCode"]).unwrap();
    assert!(codes.contains("stale_generation"), "{codes}");
}
