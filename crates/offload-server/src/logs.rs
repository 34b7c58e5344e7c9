//! `offload logs`: a container's output (stdout and stderr, in order, as `docker logs`
//! prints it), wherever it runs, over a WebSocket; with `follow`, across moves.
//!
//! The server reads the copy that runs now: its own engine's container in the cloud, or,
//! at the edge, a `logs` channel the owner's agent dials back. Unlike the other channels
//! the server does not splice the agent's socket to the user's: it relays entry by entry,
//! so that when the copy it reads stops for a move it can wait for the move and go on with
//! the new copy's output (from its start: a new copy is a new engine container with a
//! log of its own). When it reads the same copy again (a move that rolled back, an agent
//! that reconnected) it asks only for entries after the last one it sent, so the user
//! sees no line twice.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use offload_core::agent::Channel;
use offload_core::api::{ApiError, ErrorCode, LogsControl};
use offload_core::logs::{LogFrame, LogsQuery, parse_tail, parse_unix_seconds};
use offload_core::{ContainerId, ContainerRecord, Location, State as ContainerState};
use offload_runtime::LogsSpec;
use offload_runtime::logs::{PumpEnd, failure_code, pump_entries};
use offload_runtime::relay::Frame;
use offload_store::Principal;
use serde::Deserialize;

use crate::controller::Controller;
use crate::error::ActionError;
use crate::http::{ApiQuery, AppState, Caller};
use crate::ws::{self, from_frame, to_frame};

/// How often a follow that waits for its container (a move, an agent away) looks again.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long a follow waits before reading the same copy again after its log ended while
/// the container is still meant to run (its program exited and is being restarted).
const REREAD_DELAY: Duration = Duration::from_secs(1);
/// How often a follow checks that the copy it reads is still the container's.
const SUPERSEDED_POLL: Duration = Duration::from_secs(1);
/// Pings keep a quiet follow's connection from looking idle to anything in between.
const PING_EVERY: Duration = Duration::from_secs(15);
/// Entries buffered between the reader and the user's socket.
const QUEUE: usize = 64;

/// The query string of the logs endpoint, as sent.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// `true` to keep printing what the container writes, following it across moves,
    /// until it stops.
    pub follow: Option<String>,
    /// The number of entries to start with, counted from the end, or `all` (the
    /// default).
    pub tail: Option<String>,
    /// Only entries written at or after this Unix time, in seconds with an optional
    /// fraction (`1714566896.5`).
    pub since: Option<String>,
    /// `true` to start each entry with its time, as `docker logs -t` does.
    pub timestamps: Option<String>,
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, ActionError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => {
            let shown: String = other.chars().take(16).collect();
            Err(ActionError::BadRequest(format!(
                "{name} must be true or false, not {shown:?}"
            )))
        }
    }
}

impl LogsParams {
    /// The query, checked: every bad value is a 400 that names it.
    pub fn parse(&self) -> Result<LogsQuery, ActionError> {
        let tail = match self.tail.as_deref() {
            None => None,
            Some(text) => parse_tail(text).map_err(|e| {
                ActionError::BadRequest(e.replacen("--tail takes", "tail must be", 1))
            })?,
        };
        let since_ns = match self.since.as_deref() {
            None => 0,
            Some(text) => parse_unix_seconds(text).ok_or_else(|| {
                let shown: String = text.chars().take(32).collect();
                ActionError::BadRequest(format!(
                    "since must be Unix seconds (1714566896 or 1714566896.5), not {shown:?}"
                ))
            })?,
        };
        Ok(LogsQuery {
            follow: flag("follow", self.follow.as_deref())?,
            tail,
            since_ns,
            timestamps: flag("timestamps", self.timestamps.as_deref())?,
        })
    }
}

/// The channel that reads `query` of an edge copy, asked for entries from `since_ns` on.
fn channel(query: &LogsQuery, spec: &LogsSpec) -> Channel {
    Channel::Logs {
        follow: spec.follow,
        tail: spec.tail,
        since_ns: spec.since_ns,
        timestamps: query.timestamps,
    }
}

/// The caller's container if it has output to show: an engine container somewhere, and
/// at the edge a connected agent.
async fn logs_target(
    ctl: &Controller,
    who: &Principal,
    id_or_name: &str,
) -> Result<ContainerRecord, ActionError> {
    let record = ctl.find(who, id_or_name).await?;
    if record.runtime_id.is_none() {
        return Err(ActionError::Conflict(format!(
            "container {} is {} and has no engine container, so it has no output to show",
            record.name,
            record.state.as_str()
        )));
    }
    if record.location == Location::Edge {
        ws::edge_agent(ctl, &record)?;
    }
    Ok(record)
}

/// The container's output, wherever it runs (WebSocket): stdout and stderr in the order
/// they were written, as `docker logs` prints them. Each binary frame is one entry: the
/// stream (1 stdout, 2 stderr), the entry's time as Unix nanoseconds in 8 big-endian
/// bytes, then its bytes (after its time and a space with `timestamps`). Text frames carry
/// `LogsControl`: `notice` (a move; the output goes on with the new copy's), `error`, and
/// `end` once everything was sent (with `follow`: once the container stopped), before the
/// close. A stopped container's output is what it wrote while it ran.
#[utoipa::path(get, path = "/v1/containers/{id}/logs", tag = "containers",
    params(("id" = String, Path, description = "container id or name"), LogsParams),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ApiError, description = "a bad query value, or `websocket_required`"),
        (status = 404, body = ApiError, description = "no such container (also another user's)"),
        (status = 409, body = ApiError, description = "the container has no engine container"),
        (status = 503, body = ApiError, description = "its agent is not connected")))]
pub async fn logs_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path(id): Path<String>,
    params: Result<ApiQuery<LogsParams>, Response>,
    upgrade: ws::Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let query = match params.map(|ApiQuery(p)| p.parse()) {
        Ok(Ok(query)) => query,
        Ok(Err(e)) => return e.into_response(),
        Err(rejection) => return rejection,
    };
    let record = match logs_target(&state.ctl, &who, &id).await {
        Ok(record) => record,
        Err(e) => return e.into_response(),
    };
    let upgrade = match ws::websocket(upgrade, "offload logs") {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    upgrade
        .max_message_size(64 << 10)
        .on_upgrade(move |socket| async move { serve(socket, &state.ctl, record, query).await })
}

/// Carries the output to the user's socket until it ends or the user leaves.
async fn serve(socket: WebSocket, ctl: &Controller, record: ContainerRecord, query: LogsQuery) {
    let (mut sink, mut user) = socket.split();
    // While following, the channel is registered, so a move tells it before it stops the
    // copy being read.
    let spec = LogsSpec {
        follow: query.follow,
        tail: query.tail,
        since_ns: query.since_ns,
    };
    let mut open = query
        .follow
        .then(|| ctl.channels.open(&record.id, channel(&query, &spec)));
    let (out, mut queued) = mpsc::channel::<Frame>(QUEUE);
    let read = follow(ctl, record, query, out);
    let forward = async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut notices_open = open.is_some();
        loop {
            let message = tokio::select! {
                frame = queued.next() => match frame {
                    Some(frame) => from_frame(frame),
                    None => break,
                },
                notice = async {
                    match open.as_mut() {
                        Some(open) => open.notices.recv().await,
                        None => None,
                    }
                }, if notices_open => match notice {
                    Some(text) => Message::Text(LogsControl::Notice { text }.to_text().into()),
                    None => {
                        notices_open = false;
                        continue;
                    }
                },
                _ = ping.tick() => Message::Ping(Vec::new().into()),
            };
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    };
    // The user sends nothing but its close; when it leaves, reading stops.
    let user_left = async {
        while let Some(Ok(message)) = user.next().await {
            if matches!(to_frame(message), Some(Frame::Close)) {
                break;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(read, forward) } => {}
        () = user_left => {}
    }
}

/// How reading one copy ended.
enum Read {
    /// Its log ended: all of it was sent, or (following) the copy stopped.
    Ended,
    /// It could not be read, or failed part way.
    Failed(ErrorCode, String),
    /// The user's socket is gone.
    Gone,
}

/// Where the container is once the copy being read stopped.
enum Next {
    /// The same copy is meant to run: read it again, after what was sent.
    Same(ContainerRecord),
    /// Another copy runs (a move, a fresh engine container).
    Moved(ContainerRecord),
    /// It stopped, or cannot run: the output is complete.
    Stopped,
    /// It was removed.
    Removed,
}

/// The whole output of `record` as `query` asks, sent to `out`; with `follow`, from copy
/// to copy until the container stops.
async fn follow(
    ctl: &Controller,
    mut record: ContainerRecord,
    query: LogsQuery,
    mut out: mpsc::Sender<Frame>,
) {
    // The copy read last (where, its engine id) and the time of the last entry sent from it.
    let mut source: Option<(Location, String)> = None;
    let mut last: Option<u64> = None;
    let mut told_failure = false;
    loop {
        let Some(runtime_id) = record.runtime_id.clone() else {
            return finish(&mut out, LogsControl::End).await;
        };
        let here = (record.location, runtime_id);
        let again = source.as_ref() == Some(&here);
        if !again {
            last = None;
        }
        let spec = LogsSpec {
            follow: query.follow,
            // The tail is of what the user asked first; a new copy prints from its start.
            tail: if source.is_none() { query.tail } else { None },
            since_ns: match last {
                Some(t) => query.since_ns.max(t + 1),
                None => query.since_ns,
            },
        };
        source = Some(here.clone());
        // The copy's log ends when it stops; should it not (an edge copy's stream held
        // open past its stop), the record showing another copy running ends it too.
        let end = tokio::select! {
            end = read_copy(ctl, &record, &here.1, &query, spec, &mut out, &mut last) => end,
            () = superseded(ctl, &record.id, &here) => Read::Ended,
        };
        match end {
            Read::Gone => return,
            Read::Ended if !query.follow => return finish(&mut out, LogsControl::End).await,
            Read::Failed(code, error) if !query.follow => {
                return finish(&mut out, LogsControl::Error { code, error }).await;
            }
            Read::Ended => told_failure = false,
            Read::Failed(_, error) => {
                // Following: a copy that cannot be read now (its agent reconnecting, the
                // engine restarting) is tried again; the user hears of it once.
                if !told_failure {
                    told_failure = true;
                    let text = format!(
                        "cannot read {}'s output now ({error}); trying again",
                        record.name
                    );
                    if !send(&mut out, LogsControl::Notice { text }).await {
                        return;
                    }
                }
                tokio::time::sleep(REREAD_DELAY).await;
            }
        }
        match next_copy(ctl, &record.id, &here).await {
            Next::Same(now) => {
                record = now;
                tokio::time::sleep(REREAD_DELAY).await;
            }
            Next::Moved(now) => {
                let text = match (here.0, now.location) {
                    (Location::Cloud, Location::Edge) => {
                        format!("{} moved to your machine; following the new copy", now.name)
                    }
                    (Location::Edge, Location::Cloud) => {
                        format!("{} moved to the cloud; following the new copy", now.name)
                    }
                    _ => format!("{} runs as a new copy; following it", now.name),
                };
                if !send(&mut out, LogsControl::Notice { text }).await {
                    return;
                }
                told_failure = false;
                record = now;
            }
            Next::Stopped => return finish(&mut out, LogsControl::End).await,
            Next::Removed => {
                let error = format!("container {} was removed", record.name);
                let control = LogsControl::Error {
                    code: ErrorCode::NotFound,
                    error,
                };
                return finish(&mut out, control).await;
            }
        }
    }
}

async fn send(out: &mut mpsc::Sender<Frame>, control: LogsControl) -> bool {
    out.send(Frame::Text(control.to_text())).await.is_ok()
}

async fn finish(out: &mut mpsc::Sender<Frame>, control: LogsControl) {
    if send(out, control).await {
        let _ = out.send(Frame::Close).await;
    }
}

/// Waits until the container runs a copy again, or will not.
async fn next_copy(ctl: &Controller, id: &ContainerId, read: &(Location, String)) -> Next {
    loop {
        let record = match ctl.reload(id).await {
            Ok(record) => record,
            Err(ActionError::NotFound(_)) => return Next::Removed,
            // The store is busy or failing: look again.
            Err(_) => {
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            }
        };
        match (record.state, record.runtime_id.as_deref()) {
            (ContainerState::Stopped | ContainerState::Failed | ContainerState::Missing, _) => {
                return Next::Stopped;
            }
            (ContainerState::Running, Some(runtime_id)) => {
                return if record.location == read.0 && runtime_id == read.1 {
                    Next::Same(record)
                } else {
                    Next::Moved(record)
                };
            }
            // Moving, starting, unreachable: the next copy is not there yet.
            _ => tokio::time::sleep(WAIT_POLL).await,
        }
    }
}

/// Completes once the record shows another copy than `read` running (or none at all).
async fn superseded(ctl: &Controller, id: &ContainerId, read: &(Location, String)) {
    loop {
        tokio::time::sleep(SUPERSEDED_POLL).await;
        match ctl.reload(id).await {
            Ok(record) => {
                let other = record.state == ContainerState::Running
                    && (record.location != read.0
                        || record.runtime_id.as_deref() != Some(read.1.as_str()));
                if other {
                    return;
                }
            }
            Err(ActionError::NotFound(_)) => return,
            Err(_) => {}
        }
    }
}

/// Sends the entries of one copy (`runtime_id` where `record` says it runs) to `out`.
async fn read_copy(
    ctl: &Controller,
    record: &ContainerRecord,
    runtime_id: &str,
    query: &LogsQuery,
    spec: LogsSpec,
    out: &mut mpsc::Sender<Frame>,
    last: &mut Option<u64>,
) -> Read {
    if record.location == Location::Cloud {
        let mut entries = match ctl.runtime().logs(runtime_id, &spec).await {
            Ok(entries) => entries,
            Err(offload_runtime::RuntimeError::NotFound { .. }) => {
                return Read::Failed(
                    ErrorCode::Conflict,
                    format!("container {} has no engine container now", record.name),
                );
            }
            Err(e) => return Read::Failed(failure_code(&e), e.to_string()),
        };
        return match pump_entries(&mut entries, out, query.timestamps, last).await {
            PumpEnd::Ended => Read::Ended,
            PumpEnd::PeerGone => Read::Gone,
            PumpEnd::Failed(e) => Read::Failed(
                ErrorCode::Unavailable,
                format!("reading the output of {} failed: {e}", record.name),
            ),
        };
    }
    let agent = match ctl
        .hub
        .open_channel(
            &record.owner,
            record.device.as_deref(),
            &record.id,
            channel(query, &spec),
        )
        .await
    {
        Ok(agent) => agent,
        Err(e) => {
            return Read::Failed(
                ErrorCode::Unavailable,
                format!("cannot reach {} at the edge: {e}", record.name),
            );
        }
    };
    let (mut to_agent, mut from_agent) = agent.split();
    let end = loop {
        let Some(Ok(message)) = from_agent.next().await else {
            break Read::Failed(
                ErrorCode::Unavailable,
                format!("the connection to {}'s agent ended", record.name),
            );
        };
        match to_frame(message) {
            Some(Frame::Binary(data)) => {
                // The agent is the owner's; still, only a well-formed entry is passed on.
                let Some(entry) = LogFrame::parse(&data) else {
                    continue;
                };
                let timestamp = entry.timestamp_ns;
                if out.send(Frame::Binary(data)).await.is_err() {
                    break Read::Gone;
                }
                *last = Some(timestamp);
            }
            Some(Frame::Text(text)) => match serde_json::from_str::<LogsControl>(&text) {
                Ok(LogsControl::End) => break Read::Ended,
                Ok(LogsControl::Error { code, error }) => break Read::Failed(code, error),
                Ok(LogsControl::Notice { .. }) | Err(_) => {}
            },
            Some(Frame::Close) => {
                break Read::Failed(
                    ErrorCode::Unavailable,
                    format!("{}'s agent closed the output before its end", record.name),
                );
            }
            Some(Frame::Ping) | None => {}
        }
    };
    let _ = to_agent.send(Message::Close(None)).await;
    end
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use offload_core::UserName;
    use offload_core::agent::{Reply, ServerMessage, Timings};
    use offload_core::api::StartRequest;
    use offload_core::logs::LogEntry;
    use offload_core::logs::OutputStream;
    use offload_runtime::ContainerRuntime;
    use offload_runtime::fake::Call;
    use offload_store::TokenKind;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;
    use crate::auth::{random_secret, token_hash};
    use crate::http::router;
    use crate::testing::{Answer, Rig, Script, rig};

    /// The real router on a loopback port over the fake engine, with tokens for alice
    /// (the rig's user) and bob.
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
            let user = UserName::parse(name).unwrap();
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

    /// What the user's socket delivered, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Out(OutputStream, String),
        Control(LogsControl),
    }

    impl Served {
        async fn start(&self, name: &str) -> ContainerRecord {
            let req = StartRequest {
                image: "busybox".into(),
                name: Some(name.into()),
                ..Default::default()
            };
            self.rig.ctl.start(&self.rig.who, req).await.unwrap()
        }

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

        fn logs_calls(&self) -> Vec<(String, LogsSpec)> {
            self.rig
                .fake
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Logs(id, spec) => Some((id, spec)),
                    _ => None,
                })
                .collect()
        }

        /// A scripted agent that answers moves as `script` says and serves every logs
        /// channel it is asked for with `entries`; records the channels it was asked for.
        fn agent(&self, script: &Script, entries: Vec<LogEntry>) -> Arc<Mutex<Vec<Channel>>> {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let (link, mut outbox) = self.rig.ctl.hub.register(
                self.rig.who.user.clone(),
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
            let (script, url, token, seen) = (
                script.clone(),
                self.url.clone(),
                self.alice.clone(),
                asked.clone(),
            );
            tokio::spawn(async move {
                while let Some(message) = outbox.recv().await {
                    match message {
                        ServerMessage::Request { request, command } => {
                            match script.answer(&command) {
                                Answer::Reply(reply) => link.complete(request, Ok(reply)),
                                Answer::Error(e) => link.complete(request, Err(e.to_owned())),
                                Answer::Vanish => break,
                            }
                        }
                        ServerMessage::OpenChannel {
                            session, channel, ..
                        } => {
                            seen.lock().unwrap().push(channel);
                            let Channel::Logs {
                                follow, timestamps, ..
                            } = channel
                            else {
                                continue;
                            };
                            let (url, token, entries) =
                                (url.clone(), token.clone(), entries.clone());
                            tokio::spawn(async move {
                                let mut request = format!("{url}/v1/agent/channel/{session}")
                                    .into_client_request()
                                    .unwrap();
                                request.headers_mut().insert(
                                    "authorization",
                                    format!("Bearer {token}").parse().unwrap(),
                                );
                                let (mut socket, _) =
                                    tokio_tungstenite::connect_async(request).await.unwrap();
                                for entry in &entries {
                                    let frame = entry.to_frame(timestamps);
                                    socket.send(WsMessage::Binary(frame.into())).await.unwrap();
                                }
                                if follow {
                                    // Followed: the edge copy runs on until the server goes.
                                    while let Some(Ok(_)) = socket.next().await {}
                                } else {
                                    let end = LogsControl::End.to_text();
                                    let _ = socket.send(WsMessage::Text(end.into())).await;
                                }
                            });
                        }
                        _ => {}
                    }
                }
            });
            asked
        }
    }

    /// Reads the user's socket until `n` things arrived (or it closed).
    async fn read(socket: &mut Socket, n: usize) -> Vec<Got> {
        let mut got = Vec::new();
        while got.len() < n {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .unwrap_or_else(|_| panic!("nothing after {got:?}"));
            match message {
                Some(Ok(WsMessage::Binary(data))) => {
                    let entry = LogFrame::parse(&data).expect("a log frame");
                    let text = String::from_utf8_lossy(entry.bytes).into_owned();
                    got.push(Got::Out(entry.stream, text));
                }
                Some(Ok(WsMessage::Text(text))) => {
                    got.push(Got::Control(serde_json::from_str(&text).unwrap()));
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
        got
    }

    async fn closes(socket: &mut Socket) {
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, WsMessage::Close(_)) {
                    return;
                }
                assert!(
                    !matches!(message, WsMessage::Binary(_)),
                    "no output after the end"
                );
            }
        });
        end.await.expect("the socket closes");
    }

    fn out(text: &str) -> Got {
        Got::Out(OutputStream::Stdout, text.to_owned())
    }

    fn err(text: &str) -> Got {
        Got::Out(OutputStream::Stderr, text.to_owned())
    }

    fn notice(got: &Got) -> &str {
        match got {
            Got::Control(LogsControl::Notice { text }) => text,
            other => panic!("not a notice: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_queries_are_refused_before_the_upgrade_and_read_nothing() {
        let s = served().await;
        let rec = s.start("box").await;
        for (query, says) in [
            ("tail=two", "tail must be a number of lines"),
            ("tail=-1", "tail must be a number of lines"),
            ("since=yesterday", "since must be Unix seconds"),
            ("since=10m", "since must be Unix seconds"),
            ("follow=maybe", "follow must be true or false"),
            ("timestamps=2", "timestamps must be true or false"),
        ] {
            let (status, body) = s
                .open(&format!("/v1/containers/{}/logs?{query}", rec.id), &s.alice)
                .await
                .err()
                .unwrap_or_else(|| panic!("{query} was upgraded"));
            assert_eq!(
                (status, body["code"].as_str()),
                (400, Some("bad_request")),
                "{query}"
            );
            assert!(
                body["error"].as_str().unwrap().contains(says),
                "{query}: {body}"
            );
        }
        let (status, body) = s
            .open("/v1/containers/box/logs?lines=2", &s.alice)
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_query")),
            "{body}"
        );
        assert!(s.logs_calls().is_empty(), "nothing reached the engine");
        // A plain request is told to speak WebSocket.
        let http = s.url.replacen("ws://", "http://", 1);
        let response = reqwest::Client::new()
            .get(format!("{http}/v1/containers/box/logs"))
            .bearer_auth(&s.alice)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "websocket_required");
    }

    #[tokio::test]
    async fn another_users_container_is_not_found_like_a_missing_one() {
        let s = served().await;
        let rec = s.start("box").await;
        let (status, missing) = s
            .open("/v1/containers/c0123456789abcdef/logs", &s.bob)
            .await
            .err()
            .unwrap();
        assert_eq!(status, 404);
        for path in [
            format!("/v1/containers/{}/logs", rec.id),
            "/v1/containers/box/logs?follow=true".to_owned(),
        ] {
            let (status, body) = s.open(&path, &s.bob).await.err().unwrap();
            assert_eq!(status, 404, "{body}");
            assert_eq!(body["code"], missing["code"]);
            assert_eq!(body["code"], "not_found");
        }
        let (status, body) = s
            .open("/v1/containers/box/logs", "nope")
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_token"))
        );
        assert!(s.logs_calls().is_empty(), "nothing of alice's was read");
    }

    #[tokio::test]
    async fn the_output_crosses_in_order_with_its_streams_and_the_tail_asked() {
        let s = served().await;
        let rec = s.start("box").await;
        let rid = rec.runtime_id.clone().unwrap();
        s.rig.fake.write_log(&rid, OutputStream::Stdout, b"one\n");
        let second = s.rig.fake.write_log(&rid, OutputStream::Stderr, b"two\n");
        s.rig.fake.write_log(&rid, OutputStream::Stdout, b"three\n");

        let mut all = s.open("/v1/containers/box/logs", &s.alice).await.unwrap();
        assert_eq!(
            read(&mut all, 4).await,
            vec![
                out("one\n"),
                err("two\n"),
                out("three\n"),
                Got::Control(LogsControl::End)
            ]
        );
        closes(&mut all).await;

        let mut tail = s
            .open("/v1/containers/box/logs?tail=2&timestamps=true", &s.alice)
            .await
            .unwrap();
        let got = read(&mut tail, 3).await;
        let stamp = offload_core::logs::format_timestamp(second);
        assert_eq!(got[0], err(&format!("{stamp} two\n")));
        let Got::Out(OutputStream::Stdout, three) = &got[1] else {
            panic!("{got:?}");
        };
        assert!(three.ends_with("Z three\n"), "{three}");
        assert_eq!(got[2], Got::Control(LogsControl::End));

        // `since` keeps what was written from then on, to the nanosecond.
        let since = offload_core::logs::unix_seconds_text(second);
        let mut since = s
            .open(&format!("/v1/containers/box/logs?since={since}"), &s.alice)
            .await
            .unwrap();
        assert_eq!(
            read(&mut since, 3).await,
            vec![err("two\n"), out("three\n"), Got::Control(LogsControl::End)]
        );
        assert_eq!(s.logs_calls()[1].1.tail, Some(2));
    }

    #[tokio::test]
    async fn a_stopped_container_prints_what_it_wrote_and_a_follow_of_it_ends() {
        let s = served().await;
        let rec = s.start("box").await;
        let rid = rec.runtime_id.clone().unwrap();
        s.rig
            .fake
            .write_log(&rid, OutputStream::Stdout, b"last words\n");
        s.rig.ctl.stop(&s.rig.who, "box").await.unwrap();
        for query in ["", "?follow=true"] {
            let mut socket = s
                .open(&format!("/v1/containers/box/logs{query}"), &s.alice)
                .await
                .unwrap();
            assert_eq!(
                read(&mut socket, 2).await,
                vec![out("last words\n"), Got::Control(LogsControl::End)],
                "{query}"
            );
            closes(&mut socket).await;
        }
    }

    #[tokio::test]
    async fn a_follow_goes_on_across_a_stop_of_the_same_copy_without_repeating_a_line() {
        let s = served().await;
        let rec = s.start("box").await;
        let rid = rec.runtime_id.clone().unwrap();
        let first = s.rig.fake.write_log(&rid, OutputStream::Stdout, b"a\n");
        let mut socket = s
            .open("/v1/containers/box/logs?follow=true&tail=5", &s.alice)
            .await
            .unwrap();
        assert_eq!(read(&mut socket, 1).await, vec![out("a\n")]);
        // The program exits behind offload's back and is started again in the same
        // engine container, whose log holds the old lines too.
        s.rig.fake.kill(&rid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.rig.fake.start(&rid).await.unwrap();
        s.rig.fake.write_log(&rid, OutputStream::Stdout, b"b\n");
        assert_eq!(read(&mut socket, 1).await, vec![out("b\n")]);
        let calls = s.logs_calls();
        assert!(calls.len() >= 2, "{calls:?}");
        let again = calls.last().unwrap().1;
        assert_eq!(again.tail, None, "the tail is only of the start");
        assert_eq!(
            again.since_ns,
            first + 1,
            "only what came after the last line sent"
        );
        // The owner stops it: the follow ends.
        s.rig.ctl.stop(&s.rig.who, "box").await.unwrap();
        assert_eq!(
            read(&mut socket, 1).await,
            vec![Got::Control(LogsControl::End)]
        );
        closes(&mut socket).await;
    }

    #[tokio::test]
    async fn a_follow_goes_on_with_the_new_copy_at_the_edge_and_back_in_the_cloud() {
        let s = served().await;
        let rec = s.start("box").await;
        let cloud = rec.runtime_id.clone().unwrap();
        s.rig
            .fake
            .write_log(&cloud, OutputStream::Stdout, b"cloud 1\n");
        let mut socket = s
            .open("/v1/containers/box/logs?follow=true&tail=1", &s.alice)
            .await
            .unwrap();
        assert_eq!(read(&mut socket, 1).await, vec![out("cloud 1\n")]);

        let script = Script::default();
        script
            .on(
                "prepare",
                Answer::Reply(Reply::Prepared {
                    timings: Timings::default(),
                }),
            )
            .on(
                "finalize",
                Answer::Reply(Reply::Started {
                    runtime_id: "edge-rid".into(),
                    timings: Timings::default(),
                }),
            )
            .on(
                "stop_for_return",
                Answer::Reply(Reply::Stopped {
                    timings: Timings::default(),
                }),
            );
        let edge_lines = vec![
            LogEntry {
                stream: OutputStream::Stdout,
                timestamp_ns: 1,
                bytes: b"edge 1\n".to_vec(),
            },
            LogEntry {
                stream: OutputStream::Stderr,
                timestamp_ns: 2,
                bytes: b"edge 2\n".to_vec(),
            },
        ];
        let asked = s.agent(&script, edge_lines);
        s.rig.move_to(&rec, Location::Edge, false).await;
        let got = read(&mut socket, 4).await;
        assert!(
            notice(&got[0]).starts_with("box moves to your machine: its output goes on here"),
            "{got:?}"
        );
        assert_eq!(
            notice(&got[1]),
            "box moved to your machine; following the new copy"
        );
        assert_eq!(got[2..], [out("edge 1\n"), err("edge 2\n")]);
        assert_eq!(
            asked.lock().unwrap().clone(),
            vec![Channel::Logs {
                follow: true,
                tail: None,
                since_ns: 0,
                timestamps: false
            }],
            "the new copy's output from its start"
        );

        // Back to the cloud: a fresh engine container, whose output follows.
        s.rig.move_to(&rec, Location::Cloud, false).await;
        let back = s.rig.settled(&rec.id).await;
        assert_eq!(
            (back.location, back.state),
            (Location::Cloud, ContainerState::Running)
        );
        let fresh = back.runtime_id.clone().unwrap();
        assert_ne!(fresh, cloud);
        s.rig
            .fake
            .write_log(&fresh, OutputStream::Stdout, b"cloud 2\n");
        let got = read(&mut socket, 3).await;
        assert!(
            notice(&got[0]).starts_with("box moves to the cloud"),
            "{got:?}"
        );
        assert_eq!(
            notice(&got[1]),
            "box moved to the cloud; following the new copy"
        );
        assert_eq!(got[2], out("cloud 2\n"), "no line of the old copies again");
    }

    #[tokio::test]
    async fn a_container_with_no_engine_container_or_an_absent_agent_is_refused() {
        let s = served().await;
        let rec = s.start("box").await;
        let mut at_edge = rec.clone();
        at_edge.location = Location::Edge;
        at_edge.runtime_id = Some("edge-rid".into());
        s.rig.ctl.save(&at_edge, "moved", "test").await.unwrap();
        let (status, body) = s
            .open("/v1/containers/box/logs", &s.alice)
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
        at_edge.runtime_id = None;
        at_edge.location = Location::Cloud;
        at_edge.state = ContainerState::Failed;
        s.rig.ctl.save(&at_edge, "failed", "test").await.unwrap();
        let (status, body) = s
            .open("/v1/containers/box/logs", &s.alice)
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no output to show"),
            "{body}"
        );
    }
}
