//! TCP connections into a container, wherever it runs: the WebSocket at
//! `/v1/containers/{id}/ports/{port}` that `offload port-forward` and ssh's `direct-tcpip`
//! use, and the notices a move sends to the channels it is about to cut.
//!
//! In the cloud the server connects to `127.0.0.1:PORT` inside the container's network
//! namespace through its runtime; at the edge it asks the owner's agent to dial back a
//! `port` channel and splices the two sockets. Either way the user's frames are the same:
//! binary frames carry the TCP bytes, text frames `PortControl`.

use axum::extract::ws::Message;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::agent::Channel;
use offload_core::api::{ApiError, ErrorCode, PortControl};
use offload_core::moves::{ToCloud, ToEdge, ToNode};
use offload_core::{ContainerRecord, Location, MovePhase, State as ContainerState};
use offload_runtime::RuntimeError;
use offload_runtime::channels::move_notice;
use offload_runtime::relay::{Frame, port_error, relay_port};
use offload_store::Principal;

use crate::controller::Controller;
use crate::error::ActionError;
use crate::http::{AppState, Caller};
use crate::ws::{self, from_frame, to_frame};

/// Parses the port of the path: a number in 1–65535, nothing else.
pub fn parse_port(text: &str) -> Result<u16, ActionError> {
    let shown: String = text.chars().take(16).collect();
    let refuse =
        || ActionError::BadRequest(format!("port must be a number in 1-65535, not {shown:?}"));
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(refuse()),
    }
}

/// The caller's container if a connection into it can be made now.
async fn port_target(
    ctl: &Controller,
    who: &Principal,
    id_or_name: &str,
) -> Result<ContainerRecord, ActionError> {
    let record = ctl.find(who, id_or_name).await?;
    match record.state {
        ContainerState::Running if record.runtime_id.is_some() => Ok(record),
        // The cloud copy runs on while the edge prepares (image, pre-copy): connections
        // reach it until the move stops it, and are told first.
        ContainerState::Moving if preparing(ctl, &record).await? => Ok(record),
        ContainerState::Moving => Err(ActionError::Conflict(format!(
            "container {} is moving; connect again once it runs",
            record.name
        ))),
        ContainerState::Unreachable => Err(ActionError::Unavailable(format!(
            "container {} runs at the edge and its agent is not connected",
            record.name
        ))),
        ContainerState::Stopped => Err(ActionError::Conflict(format!(
            "container {} is stopped; `offload restart {}` starts it",
            record.name, record.name
        ))),
        state => Err(ActionError::Conflict(format!(
            "container {} is {}; connections need a running container",
            record.name,
            state.as_str()
        ))),
    }
}

/// Whether `record` is moving to the edge and still in its first phase, with the cloud
/// copy running.
async fn preparing(ctl: &Controller, record: &ContainerRecord) -> Result<bool, ActionError> {
    if record.location != Location::Cloud || record.runtime_id.is_none() {
        return Ok(false);
    }
    let id = record.id.clone();
    let mv = ctl.db(move |s| s.move_of(&id)).await?;
    Ok(mv.is_some_and(|mv| mv.phase == MovePhase::ToEdge(ToEdge::Preparing)))
}

/// What a failed connection inside a container is, for the user.
pub fn connect_failure(e: &RuntimeError, port: u16, name: &str) -> (ErrorCode, String) {
    match e {
        RuntimeError::NothingListens { .. } => (
            ErrorCode::NothingListens,
            format!("nothing listens on port {port} in {name}"),
        ),
        RuntimeError::NotRunning { .. } | RuntimeError::NotFound { .. } => (
            ErrorCode::Conflict,
            format!("container {name} is not running; connect again once it runs"),
        ),
        RuntimeError::Connect { .. } => (ErrorCode::Unavailable, e.to_string()),
        other => (
            ErrorCode::Unavailable,
            format!("cannot connect to port {port} in {name}: {other}"),
        ),
    }
}

/// A TCP connection to `127.0.0.1:PORT` inside the container, wherever it runs
/// (WebSocket), even when the container has no network. Binary frames carry the raw TCP
/// bytes both ways; text frames carry `PortControl`: the server sends `connected` once the
/// connection inside the container is open (or `error`, then closes), either side sends
/// `eof` when its direction ends, the server may send a `notice` (a move is about to end
/// the connection), and closes once both directions ended.
#[utoipa::path(get, path = "/v1/containers/{id}/ports/{port}", tag = "containers",
    params(("id" = String, Path, description = "container id or name"),
        ("port" = u16, Path, description = "TCP port inside the container, 1-65535")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ApiError, description = "a port outside 1-65535, or `websocket_required`"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "the container is stopped or moving"),
        (status = 503, body = ApiError, description = "its agent is not connected")))]
pub async fn port_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path((id, port)): Path<(String, String)>,
    upgrade: ws::Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let port = match parse_port(&port) {
        Ok(port) => port,
        Err(e) => return e.into_response(),
    };
    let record = match port_target(&state.ctl, &who, &id).await {
        Ok(record) => record,
        Err(e) => return e.into_response(),
    };
    let upgrade = match ws::websocket(upgrade, "offload port-forward") {
        Ok(upgrade) => upgrade.max_message_size(4 << 20),
        Err(response) => return response,
    };
    let channel = Channel::Port { port };
    let name = record.name.to_string();
    if record.location == Location::Edge {
        if let Err(e) = ws::edge_agent(&state.ctl, &record) {
            return e.into_response();
        }
        return ws::splice_to_agent(upgrade, &state.ctl, record, channel, move |e| {
            let error = PortControl::Error {
                code: ErrorCode::Unavailable,
                error: format!("cannot reach {name} at the edge: {e}"),
            };
            Message::Text(error.to_text().into())
        });
    }
    let Some(runtime_id) = record.runtime_id.clone() else {
        return ActionError::Conflict(format!("container {name} has no engine container"))
            .into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        let mut open = state.ctl.channels.open(&record.id, channel);
        let (sink, stream) = socket.split();
        let stream = stream.filter_map(|m| async move { m.ok().and_then(to_frame) });
        let sink = sink.with(|f: Frame| async move { Ok::<_, axum::Error>(from_frame(f)) });
        match state.ctl.runtime().connect(&runtime_id, port).await {
            Ok(tcp) => {
                let what = format!("port {port} in {name}");
                relay_port(
                    Box::pin(stream),
                    Box::pin(sink),
                    tcp,
                    open.notice_stream(),
                    &what,
                )
                .await
            }
            Err(e) => {
                let (code, error) = connect_failure(&e, port, &name);
                port_error(&mut Box::pin(sink), code, error).await;
            }
        }
    })
}

impl Controller {
    /// Before a move's phase stops the copy the channels reach (the cloud copy on the
    /// way to the edge, the edge copy on the way back), tells every channel open to the
    /// container. Other phases tell nothing.
    pub(crate) fn announce_move(&self, record: &ContainerRecord, phase: MovePhase) {
        let whereto = match phase {
            MovePhase::ToEdge(ToEdge::StoppingCloud) => "your machine",
            MovePhase::ToCloud(ToCloud::StoppingEdge) => "the cloud",
            MovePhase::ToNode(ToNode::StoppingNode) => "another node of the cloud",
            _ => return,
        };
        let name = record.name.as_str();
        let told = self
            .channels
            .notify(&record.id, |channel| move_notice(channel, name, whereto));
        if told > 0 {
            tracing::info!(id = %record.id, channels = told, "told the open channels of the move");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::{SinkExt, StreamExt};
    use offload_core::agent::{Reply, Timings};
    use offload_core::api::{ErrorCode, PortControl, StartRequest};
    use offload_core::{ContainerRecord, Location, State as ContainerState};
    use offload_store::TokenKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;
    use crate::auth::{random_secret, token_hash};
    use crate::http::{AppState, router};
    use crate::testing::{Answer, Rig, Script, rig};
    use axum::http::StatusCode;

    #[test]
    fn a_port_is_a_number_in_1_to_65535() {
        assert_eq!(parse_port("1").unwrap(), 1);
        assert_eq!(parse_port("8080").unwrap(), 8080);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        for bad in [
            "0",
            "00000",
            "65536",
            "70000",
            "-1",
            "+80",
            " 80",
            "80 ",
            "0x50",
            "",
            "8080808080",
            "1e3",
        ] {
            let err = parse_port(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert!(err.to_string().contains("1-65535"), "{bad}: {err}");
        }
    }

    /// The real router on a loopback port (plain HTTP) over the fake engine, with tokens
    /// for alice (the rig's user) and bob.
    struct Served {
        rig: Rig,
        url: String,
        alice: String,
        bob: String,
    }

    async fn served() -> Served {
        let rig = rig();
        let mut tokens = Vec::new();
        for name in ["alice", "bob"] {
            let user = offload_core::UserName::parse(name).unwrap();
            rig.ctl.store().upsert_user(&user, false, 0).unwrap();
            let token = random_secret();
            rig.ctl
                .store()
                .insert_token(&token_hash(&token), &user, TokenKind::Api, 0, None)
                .unwrap();
            tokens.push(token);
        }
        let app = router(AppState {
            ctl: rig.ctl.clone(),
            ca_pem: Arc::from(""),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let bob = tokens.pop().unwrap();
        let alice = tokens.pop().unwrap();
        Served {
            rig,
            url,
            alice,
            bob,
        }
    }

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    impl Served {
        async fn start(&self, name: &str) -> ContainerRecord {
            let req = StartRequest {
                image: "busybox".into(),
                name: Some(name.into()),
                ..Default::default()
            };
            self.rig.ctl.start(&self.rig.who, req).await.unwrap()
        }

        /// Opens the port socket; an HTTP refusal is its status and JSON body.
        async fn open(&self, path: &str, token: &str) -> Result<Socket, (u16, serde_json::Value)> {
            let mut request = format!("{}{path}", self.url).into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Ok((socket, _)) => Ok(socket),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    let body = response.body().clone().unwrap_or_default();
                    Err((
                        response.status().as_u16(),
                        serde_json::from_slice(&body).unwrap(),
                    ))
                }
                Err(e) => panic!("{path}: {e}"),
            }
        }
    }

    async fn next_control(socket: &mut Socket) -> PortControl {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    async fn closes(socket: &mut Socket) {
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, Message::Close(_)) {
                    return;
                }
                assert!(
                    !matches!(message, Message::Binary(_)),
                    "no bytes after the end"
                );
            }
        });
        end.await.expect("the socket closes");
    }

    /// An echo server on loopback that stands for a program listening in the container.
    async fn echo() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn bad_ports_are_refused_before_the_upgrade_and_touch_nothing() {
        let s = served().await;
        let rec = s.start("box").await;
        let calls = s.rig.fake.calls().len();
        for port in ["0", "70000", "65536", "-1", "http", "80x"] {
            let (status, body) = s
                .open(&format!("/v1/containers/{}/ports/{port}", rec.id), &s.alice)
                .await
                .err()
                .unwrap_or_else(|| panic!("port {port} was upgraded"));
            assert_eq!(status, 400, "{port}: {body}");
            assert_eq!(body["code"], "bad_request", "{port}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("1-65535"),
                "{body}"
            );
        }
        assert_eq!(
            s.rig.fake.calls().len(),
            calls,
            "nothing reached the engine"
        );
        assert!(s.rig.ctl.channels.open_to(&rec.id).is_empty());
    }

    #[tokio::test]
    async fn another_users_container_is_not_found_like_a_missing_one() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.fake.map_port(rec.id.as_str(), 8080, echo().await);
        let missing = s
            .open("/v1/containers/c0123456789abcdef/ports/8080", &s.bob)
            .await
            .err()
            .unwrap();
        for path in [
            format!("/v1/containers/{}/ports/8080", rec.id),
            "/v1/containers/box/ports/8080".to_owned(),
        ] {
            let (status, body) = s.open(&path, &s.bob).await.err().unwrap();
            assert_eq!(status, 404, "{body}");
            assert_eq!(body["code"], "not_found");
            assert_eq!(body["code"], missing.1["code"]);
        }
        let (status, body) = s
            .open("/v1/containers/box/ports/8080", "not-a-token")
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_token"))
        );
    }

    #[tokio::test]
    async fn a_stopped_container_is_a_conflict_with_a_way_forward() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.ctl.stop(&s.rig.who, "box").await.unwrap();
        let (status, body) = s
            .open(&format!("/v1/containers/{}/ports/8080", rec.id), &s.alice)
            .await
            .err()
            .unwrap();
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "conflict");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("offload restart box"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_plain_request_is_told_to_speak_websocket() {
        let s = served().await;
        s.start("box").await;
        let http = s.url.replacen("ws://", "http://", 1);
        let response = reqwest::Client::new()
            .get(format!("{http}/v1/containers/box/ports/8080"))
            .bearer_auth(&s.alice)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "websocket_required");
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_each_side_ends_its_direction() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.fake.map_port(rec.id.as_str(), 8080, echo().await);
        let mut socket = s
            .open("/v1/containers/box/ports/8080", &s.alice)
            .await
            .unwrap();
        assert_eq!(next_control(&mut socket).await, PortControl::Connected);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in payload.chunks(30_000) {
            socket
                .send(Message::Binary(chunk.to_vec().into()))
                .await
                .unwrap();
        }
        socket
            .send(Message::Text(PortControl::Eof.to_text().into()))
            .await
            .unwrap();
        let mut echoed = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match message {
                Message::Binary(data) => echoed.extend_from_slice(&data),
                Message::Text(text) => {
                    assert_eq!(
                        serde_json::from_str::<PortControl>(&text).unwrap(),
                        PortControl::Eof
                    );
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, payload, "every byte came back, in order");
        closes(&mut socket).await;
        // The channel was registered while it lived, and is gone now.
        for _ in 0..100 {
            if s.rig.ctl.channels.open_to(&rec.id).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the closed channel is still registered");
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error_frame_and_a_close_without_hanging() {
        let s = served().await;
        let rec = s.start("box").await;
        // A port mapped to a closed loopback port is refused, as is an unmapped one.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        s.rig.fake.map_port(rec.id.as_str(), 9000, closed);
        for port in [9000, 9001] {
            let mut socket = s
                .open(&format!("/v1/containers/box/ports/{port}"), &s.alice)
                .await
                .unwrap();
            let control = next_control(&mut socket).await;
            assert_eq!(
                control,
                PortControl::Error {
                    code: ErrorCode::NothingListens,
                    error: format!("nothing listens on port {port} in box"),
                }
            );
            closes(&mut socket).await;
        }
    }

    #[tokio::test]
    async fn the_error_frame_has_the_documented_shape() {
        let text = PortControl::Error {
            code: ErrorCode::NothingListens,
            error: "nothing listens on port 1 in box".into(),
        }
        .to_text();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"kind": "error", "code": "nothing_listens",
                "error": "nothing listens on port 1 in box"})
        );
        assert_eq!(PortControl::Connected.to_text(), r#"{"kind":"connected"}"#);
        assert_eq!(PortControl::Eof.to_text(), r#"{"kind":"eof"}"#);
    }

    fn prepared() -> Answer {
        Answer::Reply(Reply::Prepared {
            timings: Timings::default(),
        })
    }

    #[tokio::test]
    async fn a_move_to_the_edge_tells_the_open_connection_it_ends() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.fake.map_port(rec.id.as_str(), 8080, echo().await);
        let mut socket = s
            .open("/v1/containers/box/ports/8080", &s.alice)
            .await
            .unwrap();
        assert_eq!(next_control(&mut socket).await, PortControl::Connected);
        let script = Script::default();
        script.on("prepare", prepared()).on(
            "finalize",
            Answer::Reply(Reply::Started {
                runtime_id: "edge-rid".into(),
                timings: Timings::default(),
            }),
        );
        s.rig.connect(&script, Vec::new());
        s.rig.move_to(&rec, Location::Edge, false).await;
        let PortControl::Notice { text } = next_control(&mut socket).await else {
            panic!("no notice");
        };
        assert!(
            text.starts_with("box moves to your machine: connections to port 8080 end"),
            "{text}"
        );
        let done = s.rig.settled(&rec.id).await;
        assert_eq!(
            (done.location, done.state),
            (Location::Edge, ContainerState::Running)
        );
    }

    #[tokio::test]
    async fn a_move_that_fails_before_the_stop_tells_nobody() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.fake.map_port(rec.id.as_str(), 8080, echo().await);
        let mut open = s
            .rig
            .ctl
            .channels
            .open(&rec.id, Channel::Port { port: 8080 });
        let script = Script::default();
        script.on("prepare", Answer::Error("no disk space"));
        s.rig.connect(&script, Vec::new());
        s.rig.move_to(&rec, Location::Edge, false).await;
        let back = s.rig.settled(&rec.id).await;
        assert_eq!(back.state, ContainerState::Running);
        assert!(
            open.notices.try_recv().is_err(),
            "nothing was stopped, nobody was told"
        );
    }

    #[tokio::test]
    async fn connections_reach_the_cloud_copy_while_the_edge_prepares() {
        let s = served().await;
        let rec = s.start("box").await;
        s.rig.fake.map_port(rec.id.as_str(), 8080, echo().await);
        // The agent never answers the preparation: the move stays in its first phase.
        let (link, _outbox) = s.rig.ctl.hub.register(
            s.rig.who.user.clone(),
            crate::hub::Hello {
                device: "laptop".to_owned(),
                capacity: offload_core::agent::EdgeCapacity {
                    cpus: 4.0,
                    memory_bytes: 8 << 30,
                    free_disk_bytes: 1 << 40,
                    architecture: "amd64".into(),
                    hostname: "laptop".into(),
                },
                images: Vec::new(),
                containers: Vec::new(),
                auto_accept: false,
                auto_return: false,
            },
        );
        s.rig.move_to(&rec, Location::Edge, false).await;
        let moving = s.rig.record(&rec.id).await;
        assert_eq!(moving.state, ContainerState::Moving);
        let mut socket = s
            .open("/v1/containers/box/ports/8080", &s.alice)
            .await
            .unwrap();
        assert_eq!(next_control(&mut socket).await, PortControl::Connected);
        drop(link);
    }
}
