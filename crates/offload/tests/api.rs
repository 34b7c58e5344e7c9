//! End to end: what the HTTP API answers to bad input, over real TLS.

mod common;

use std::io::{Read, Write};

use common::Cloud;
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

fn client(cloud: &Cloud, user: &common::User) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(&user.config).expect("config")).expect("toml");
    let ca = config["ca_pem"].as_str().expect("ca").to_owned();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem")])
        .no_proxy()
        .build()
        .expect("client");
    Client {
        http,
        url: cloud.url.clone(),
        token: config["token"].as_str().expect("token").to_owned(),
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("JSON body for {status}: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
}

#[test]
fn bad_input_gets_a_json_4xx_and_the_server_keeps_answering() {
    let cloud = Cloud::start("c-api");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let id = alice.start_sleeper("a");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let a = client(&cloud, &alice);
    let b = client(&cloud, &bob);
    rt.block_on(async {
        let c = |path: &str| format!("{}{path}", a.url);
        // Authentication.
        let (s, body) = answer(a.http.get(c("/v1/containers"))).await;
        assert_error(s, &body, 401);
        let (s, body) = answer(a.http.get(c("/v1/containers")).bearer_auth("0".repeat(64))).await;
        assert_error(s, &body, 401);
        let (s, body) = answer(
            a.http
                .get(c("/v1/containers"))
                .header("authorization", "Basic x"),
        )
        .await;
        assert_error(s, &body, 401);

        // Unknown and foreign ids look the same.
        let (s, unknown) = answer(
            a.http
                .get(c("/v1/containers/ffffffffffff"))
                .bearer_auth(&a.token),
        )
        .await;
        assert_error(s, &unknown, 404);
        let (s, foreign) = answer(
            b.http
                .get(c(&format!("/v1/containers/{id}")))
                .bearer_auth(&b.token),
        )
        .await;
        assert_error(s, &foreign, 404);
        assert_eq!(unknown["code"], foreign["code"]);
        let (s, body) = answer(
            b.http
                .delete(c(&format!("/v1/containers/{id}")))
                .bearer_auth(&b.token),
        )
        .await;
        assert_error(s, &body, 404);
        let (s, body) = answer(
            b.http
                .post(c(&format!("/v1/containers/{id}/stop")))
                .bearer_auth(&b.token)
                .json(&json!({})),
        )
        .await;
        assert_error(s, &body, 404);

        let post = |body: reqwest::Body| {
            a.http
                .post(c("/v1/containers"))
                .bearer_auth(&a.token)
                .header("content-type", "application/json")
                .body(body)
        };
        let (s, body) = answer(post("{not json".into())).await;
        assert_error(s, &body, 400);
        let (s, body) = answer(post(
            json!({"image": common::IMAGE, "privileged": true})
                .to_string()
                .into(),
        ))
        .await;
        assert!(s == 400 || s == 422, "unknown field: {s} {body}");
        assert_error(s, &body, s);
        let (s, body) = answer(post(
            json!({"image": common::IMAGE, "binds": ["/:/host"]})
                .to_string()
                .into(),
        ))
        .await;
        assert!(s == 400 || s == 422, "{s} {body}");
        let (s, body) = answer(post(json!({"image": "UPPER/../x"}).to_string().into())).await;
        assert_error(s, &body, 400);
        let (s, body) = answer(post(
            json!({"image": common::IMAGE, "cpus": -1})
                .to_string()
                .into(),
        ))
        .await;
        assert_error(s, &body, 400);
        let huge = format!("{{\"image\": \"{}\"}}", "a".repeat(1 << 20));
        let (s, body) = answer(post(huge.into())).await;
        assert_error(s, &body, 413);
        let (s, body) = answer(
            a.http
                .post(c("/v1/containers"))
                .bearer_auth(&a.token)
                .body("x"),
        )
        .await;
        assert_error(s, &body, 415);
        let (s, body) = answer(a.http.get(c("/v1/nothing-here")).bearer_auth(&a.token)).await;
        assert_error(s, &body, 404);
        let (s, body) = answer(a.http.put(c("/v1/containers")).bearer_auth(&a.token)).await;
        assert_error(s, &body, 405);
        let (s, body) = answer(a.http.post(c("/v1/join")).json(&json!({"secret": "nope"}))).await;
        assert_error(s, &body, 401);
        let (s, body) = answer(
            a.http
                .get(c(&format!("/v1/containers/{id}/exec")))
                .bearer_auth(&a.token),
        )
        .await;
        assert_error(s, &body, 400);

        // The sync endpoints refuse stale generations and hostile input.
        let ws = |p: &str| c(&format!("/v1/containers/{id}/workspace/{p}"));
        let push = |body: Value| a.http.post(ws("push")).bearer_auth(&a.token).json(&body);
        let (s, body) = answer(push(json!({"generation": 1, "plan": 1}))).await;
        assert_error(s, &body, 409);
        assert_eq!(body["code"], "stale_generation");
        let (s, body) = answer(push(json!({"generation": 1, "plan": 1, "conflict": true}))).await;
        assert_error(s, &body, 400);
        let (s, body) = answer(push(
            json!({"generation": 0, "delta": {"upserts": [], "deletes": []}}),
        ))
        .await;
        assert_error(s, &body, 400);
        let plan = |query: &str, body: Vec<u8>| {
            a.http
                .post(ws(&format!("plan?{query}")))
                .bearer_auth(&a.token)
                .body(body)
        };
        for hostile in ["../escape", "/etc/passwd", "a/../../b", "x\u{0}y"] {
            let (s, body) = answer(plan(
                "generation=0&conflict=true",
                binary_delta_upserting_dir(hostile),
            ))
            .await;
            assert_error(s, &body, 400);
        }
        let (s, body) = answer(plan("generation=0&conflict=true", vec![7u8; 100])).await;
        assert_error(s, &body, 400);
        let (s, body) = answer(plan("generation=1", binary_delta_upserting_dir("fine"))).await;
        assert_error(s, &body, 409);
        assert_eq!(body["code"], "stale_generation");
        let (s, body) = answer(plan("generation=many", Vec::new())).await;
        assert_error(s, &body, 400);
        assert_eq!(body["code"], "invalid_query");
        let (s, body) = answer(
            a.http
                .post(ws("chunks?plan=1&batch=0"))
                .bearer_auth(&a.token)
                .body(vec![7u8; 100]),
        )
        .await;
        assert_error(s, &body, 409);
        let (s, body) = answer(
            a.http
                .post(ws("fetch"))
                .bearer_auth(&a.token)
                .body(b"OFSR\x01zz".to_vec()),
        )
        .await;
        assert_error(s, &body, 400);
        let (s, body) = answer(a.http.get(ws("manifest?base=zz")).bearer_auth(&a.token)).await;
        assert_error(s, &body, 400);
        let (s, body) = answer(b.http.get(ws("manifest")).bearer_auth(&b.token)).await;
        assert_error(s, &body, 404);
        let (s, body) = answer(
            b.http
                .get(c(&format!("/v1/containers/{id}/image")))
                .bearer_auth(&b.token),
        )
        .await;
        assert_error(s, &body, 404);
        let (s, body) = answer(
            a.http
                .post(c(&format!("/v1/containers/{id}/move")))
                .bearer_auth(&a.token)
                .json(&json!({"to": "edge"})),
        )
        .await;
        assert_error(s, &body, 409);
        assert!(
            body["error"].as_str().unwrap_or("").contains("agent"),
            "{body}"
        );

        // Metrics need no token and name no user.
        let response = a.http.get(c("/metrics")).send().await.expect("metrics");
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.expect("text");
        assert!(
            text.contains(r#"offload_containers{location="cloud",state="running"} 1"#),
            "{text}"
        );
        assert!(!text.contains("alice"), "{text}");

        // The OpenAPI document describes the API.
        let (s, doc) = answer(a.http.get(c("/v1/openapi.json"))).await;
        assert_eq!(s, 200);
        assert!(doc["paths"]["/v1/containers"].is_object(), "{doc}");
        assert!(doc["paths"]["/v1/containers/{id}"].is_object());
    });

    // Plain HTTP on the TLS port gets a JSON 400.
    let addr = cloud.url.trim_start_matches("https://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.write_all(b"GET /v1/containers HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut raw = String::new();
    let _ = tcp.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    let body = raw.split("\r\n\r\n").nth(1).expect("body");
    let json: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(json["code"], "https_required");

    // Nothing was written beside the workspace.
    let workspaces: Vec<_> = std::fs::read_dir(cloud.data_dir.join("workspaces"))
        .expect("workspaces")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(workspaces.len(), 1, "{workspaces:?}");
    assert!(!cloud.data_dir.join("escape").exists());

    // After all of that, the server still answers and nothing changed.
    let list = alice.ls();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "running");
    assert!(bob.ls().is_empty());
}

/// A binary delta (`offload_sync`'s wire form) that upserts one directory at `path`,
/// written by hand so that paths the library refuses to represent can be sent.
fn binary_delta_upserting_dir(path: &str) -> Vec<u8> {
    let mut out = b"OFSD\x01\x01".to_vec();
    out.push(path.len() as u8);
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&[0, 0xED, 0x03, 0, 0]);
    out
}
