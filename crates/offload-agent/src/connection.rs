//! The agent's link to the server: one WebSocket, reconnected with backoff and jitter,
//! carrying the hello, commands and their replies, progress, and exec relays.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use offload_core::ContainerId;
use offload_core::agent::{AgentError, AgentErrorCode, AgentMessage, Channel, ServerMessage};
use offload_core::api::ErrorCode;
use offload_runtime::relay::{Frame, relay_exec};
use rand::RngExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::edge::Edge;
use crate::prompt::Prompter;
use crate::sync::ProgressSink;

/// How the agent keeps its WebSocket honest. A link can die without a reset (a partition
/// drops packets): then nothing arrives and nothing fails, so the agent pings and gives up
/// on a link that sends no frame at all, pongs included, within a ping and a pong deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkTimings {
    pub ping_interval: Duration,
    /// How long after a ping's due time the link may stay silent.
    pub pong_timeout: Duration,
}

impl Default for LinkTimings {
    fn default() -> Self {
        LinkTimings {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(10),
        }
    }
}

impl LinkTimings {
    /// The longest silence of a live link: the server pings too, and every ping of ours
    /// is answered.
    fn silence_limit(&self) -> Duration {
        self.ping_interval + self.pong_timeout
    }
}

/// What the user chose when starting the agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preferences {
    pub auto_accept: bool,
    pub auto_return: bool,
}

fn to_frame(message: Message) -> Option<Frame> {
    match message {
        Message::Text(text) => Some(Frame::Text(text.to_string())),
        Message::Binary(data) => Some(Frame::Binary(data)),
        Message::Close(_) => Some(Frame::Close),
        _ => None,
    }
}

fn from_frame(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping => Message::Ping(Default::default()),
        Frame::Close => Message::Close(None),
    }
}

/// Keeps the link up forever. Containers keep running and syncing (when possible)
/// while the server is unreachable.
pub async fn run(edge: Arc<Edge>, preferences: Preferences) {
    run_with(edge, preferences, LinkTimings::default()).await
}

/// [`run`] with explicit ping timings (tests use short ones).
pub async fn run_with(edge: Arc<Edge>, preferences: Preferences, timings: LinkTimings) {
    let desktop = crate::desktop::Desktop::connect().await;
    let prompter = Prompter::new(edge.api.clone(), preferences.auto_accept, desktop);
    let mut backoff = Duration::from_millis(500);
    let mut told = None;
    loop {
        let started = std::time::Instant::now();
        match session(&edge, preferences, &prompter, timings).await {
            Ok(()) => tracing::info!("the server closed the connection"),
            Err(e) => {
                tracing::warn!(error = %e, "connection to the server failed");
                // A refusal of the credentials will not pass by retrying soon: say so
                // once, and keep trying slowly (an operator may enable the user again).
                let refused = e
                    .downcast_ref::<crate::client::CallError>()
                    .and_then(|c| c.code());
                if let Some(code @ (ErrorCode::UserDisabled | ErrorCode::InvalidToken)) = refused {
                    if told != Some(code) {
                        eprintln!(
                            "offload agent: the server refuses this machine's credentials: {e}"
                        );
                    }
                    told = Some(code);
                    backoff = Duration::from_secs(10);
                } else {
                    told = None;
                }
            }
        }
        edge.set_progress_sink(None);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        tracing::info!(seconds = wait.as_secs_f64(), "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    edge: &Arc<Edge>,
    preferences: Preferences,
    prompter: &Arc<Prompter>,
    timings: LinkTimings,
) -> anyhow::Result<()> {
    let socket = edge.api.websocket("/v1/agent").await?;
    let (mut sink, mut stream) = socket.split();
    // The engine's copies, found by label, are in every report, so the server fences
    // the ones it does not place here.
    edge.discover().await;
    let hello = AgentMessage::Hello {
        device: edge.options.device.clone(),
        capacity: edge.capacity().await,
        images: edge.runtime.images().await.unwrap_or_default(),
        containers: edge.containers().await,
        auto_accept: preferences.auto_accept,
        auto_return: preferences.auto_return,
    };
    sink.send(Message::Text(serde_json::to_string(&hello)?.into()))
        .await?;
    tracing::info!(server = %edge.api.config.server, "connected");
    eprintln!("offload agent: connected to {}", edge.api.config.server);

    let (tx, mut outbox) = mpsc::unbounded_channel::<AgentMessage>();
    let progress_tx = tx.clone();
    let sink_fn: ProgressSink = Arc::new(move |m| {
        let _ = progress_tx.send(m);
    });
    edge.set_progress_sink(Some(sink_fn));

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(timings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                message = outbox.recv() => {
                    let Some(message) = message else { break };
                    let Ok(text) = serde_json::to_string(&message) else { continue };
                    Message::Text(text.into())
                }
                _ = ping.tick() => Message::Ping(Vec::new().into()),
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });

    // Report container state changes (a container that stopped, a push that caught up).
    let status_edge = edge.clone();
    let status_tx = tx.clone();
    let status = tokio::spawn(async move {
        let mut last = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            status_edge.discover().await;
            let now = status_edge.containers().await;
            if now != last {
                if status_tx
                    .send(AgentMessage::Status {
                        containers: now.clone(),
                    })
                    .is_err()
                {
                    break;
                }
                last = now;
            }
        }
    });

    let result = loop {
        let silence = timings.silence_limit();
        let message = match tokio::time::timeout(silence, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => break Err(e.into()),
            Ok(None) => break Ok(()),
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "no word from the server for {} s, not even a pong; the link is dead",
                    silence.as_secs_f64()
                ));
            }
        };
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<ServerMessage>(&text) {
            Ok(ServerMessage::Request { request, command }) => {
                let edge = edge.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = match crate::edge::check_command(&command) {
                        Err(e) => Err(AgentError {
                            code: AgentErrorCode::Refused,
                            message: format!("{e:#}"),
                        }),
                        Ok(()) => edge.execute(command).await.map_err(|e| AgentError {
                            code: AgentErrorCode::Failed,
                            message: format!("{e:#}"),
                        }),
                    };
                    if let Err(e) = &result {
                        tracing::warn!(code = ?e.code, error = %e.message, "command failed");
                    }
                    let reply = AgentMessage::Reply { request, result };
                    let _ = tx.send(reply);
                });
            }
            Ok(ServerMessage::OpenChannel {
                session,
                container_id,
                channel,
            }) => {
                let edge = edge.clone();
                tokio::spawn(async move {
                    if let Err(e) = open_channel(&edge, &session, &container_id, channel).await {
                        tracing::warn!(channel = channel.name(), error = %e, "channel failed");
                    }
                });
            }
            Ok(ServerMessage::Notice { text }) => {
                eprintln!("offload: {text}");
                prompter.notice(&text);
            }
            Ok(ServerMessage::Query {
                query,
                deadline_secs,
            }) => {
                let prompter = prompter.clone();
                tokio::spawn(async move { prompter.ask(query, deadline_secs).await });
            }
            Ok(ServerMessage::QueryClosed { id, state }) => prompter.closed(&id, &state),
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed message from the server"),
        }
    };
    status.abort();
    writer.abort();
    result
}

/// Dials back the channel the server asked for and carries it to the container.
async fn open_channel(
    edge: &Arc<Edge>,
    session: &str,
    container_id: &ContainerId,
    channel: Channel,
) -> anyhow::Result<()> {
    if session.is_empty() || !session.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("refusing a malformed channel session from the server");
    }
    let socket = edge
        .api
        .websocket(&format!("/v1/agent/channel/{session}"))
        .await?;
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|m| async move { m.ok().and_then(to_frame) });
    let mut sink = Box::pin(sink.with(|f: Frame| async move {
        Ok::<_, tokio_tungstenite::tungstenite::Error>(from_frame(f))
    }));
    match channel {
        Channel::Exec => {
            let Some(runtime_id) = edge.runtime_id(container_id) else {
                let error = offload_core::api::ExecControl::Error {
                    error: format!("this edge does not run container {container_id}"),
                    code: offload_core::api::ErrorCode::NotFound,
                };
                sink.send(Frame::Text(serde_json::to_string(&error)?))
                    .await?;
                return Ok(());
            };
            relay_exec(Box::pin(stream), sink, edge.runtime.clone(), runtime_id).await;
        }
        Channel::Sftp => {
            crate::files::carry_sftp(edge, container_id, Box::pin(stream), sink).await;
        }
        Channel::Port { port } => {
            crate::tunnel::carry_port(edge, container_id, port, Box::pin(stream), sink).await;
        }
        Channel::Logs {
            follow,
            tail,
            since_ns,
            timestamps,
        } => {
            let spec = offload_runtime::LogsSpec {
                follow,
                tail,
                since_ns,
            };
            let stream = Box::pin(stream);
            crate::logs::carry_logs(edge, container_id, spec, timestamps, stream, sink).await;
        }
    }
    Ok(())
}
