//! The agent protocol: JSON text messages on the agent's WebSocket (`/v1/agent`).
//!
//! The agent opens with [`AgentMessage::Hello`]; the server sends [`ServerMessage`]s, and
//! commands that need an answer carry a request number the agent's
//! [`AgentMessage::Reply`] repeats. Bulk data (workspace chunks, images) does not travel
//! here but over HTTPS endpoints, so a large transfer never delays a command.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ContainerId, ImageRef, Name, UserName};

/// What an edge can offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeCapacity {
    pub cpus: f64,
    pub memory_bytes: u64,
    pub free_disk_bytes: u64,
    /// Architecture as the engine names it (`amd64`, `arm64`).
    pub architecture: String,
    pub hostname: String,
}

/// One offload container the agent holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeContainer {
    #[schema(value_type = String)]
    pub id: ContainerId,
    pub generation: u64,
    pub runtime_id: Option<String>,
    pub running: bool,
    /// Every change under its workspace is acknowledged by the server.
    pub synced: bool,
}

/// Agent to server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    Hello {
        /// The device's name (`offload agent --device`): one connection per device, so
        /// a user's laptop and desktop are both connected. An agent that names none is
        /// its host name.
        #[serde(default)]
        device: String,
        capacity: EdgeCapacity,
        /// Image references the edge engine has.
        images: Vec<String>,
        containers: Vec<EdgeContainer>,
        auto_accept: bool,
        auto_return: bool,
    },
    /// The answer to a [`ServerMessage::Request`].
    Reply {
        request: u64,
        /// What came of the command: `{"Ok": reply}` or `{"Err": {"code", "message"}}`.
        #[schema(value_type = Object)]
        result: Result<Reply, AgentError>,
    },
    /// A step of a long command advanced.
    Progress {
        #[schema(value_type = String)]
        container_id: ContainerId,
        phase: String,
        done: u64,
        total: u64,
    },
    /// The current state of the agent's containers, sent when it changes.
    Status { containers: Vec<EdgeContainer> },
}

/// Server to agent.
/// Why an agent did not carry out a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    pub code: AgentErrorCode,
    /// One sentence for the move's reason.
    pub message: String,
}

/// What an agent's refusal or failure means for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorCode {
    /// The command failed the agent's own checks (an invalid id, image or limit): it did
    /// nothing.
    Refused,
    /// It was tried and failed; the agent left its side as it was before the command (a
    /// failed start leaves no copy; a failed final push starts the copy again).
    Failed,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// A command to carry out and answer.
    Request { request: u64, command: Command },
    /// Open a channel to one of the agent's containers: dial `/v1/agent/channel/{session}`
    /// and carry `channel` there (the frames are those of the matching user endpoint).
    OpenChannel {
        session: String,
        #[schema(value_type = String)]
        container_id: ContainerId,
        channel: Channel,
    },
    /// Something for the user to read (shown by the agent).
    Notice { text: String },
    /// The cloud asks to move a container here; the agent asks its user (or answers
    /// itself with `--auto-accept`) through the queries API.
    Query {
        query: crate::api::QueryView,
        /// Seconds left to answer.
        deadline_secs: u64,
    },
    /// A query was answered, expired or withdrawn: stop asking.
    QueryClosed { id: String, state: String },
}

/// What a dial-back socket carries, as the user's endpoint of the same name would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// `/v1/containers/{id}/exec`: a command or a shell.
    Exec,
    /// `/v1/containers/{id}/sftp`: an SFTP session on the container's filesystem.
    Sftp,
    /// `/v1/containers/{id}/ports/{port}`: a TCP connection to `127.0.0.1:port` inside the
    /// container's network namespace. The agent checks the port itself (1–65535).
    Port { port: u16 },
    /// `/v1/containers/{id}/logs`: the container's output, as the logs endpoint's frames
    /// (without the following across moves, which the server does).
    Logs {
        follow: bool,
        /// The last N entries only; absent for all.
        #[serde(default)]
        tail: Option<u64>,
        /// Entries written at or after this Unix time, nanoseconds (0: all).
        #[serde(default)]
        since_ns: u64,
        #[serde(default)]
        timestamps: bool,
    },
}

impl Channel {
    /// How logs and errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Exec => "exec",
            Channel::Sftp => "sftp",
            Channel::Port { .. } => "port",
            Channel::Logs { .. } => "logs",
        }
    }
}

/// What a container needs to run at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    #[schema(value_type = String)]
    pub id: ContainerId,
    #[schema(value_type = String)]
    pub name: Name,
    #[schema(value_type = String)]
    pub owner: UserName,
    #[schema(value_type = String)]
    pub image: ImageRef,
    /// The cloud engine's image id: the edge must run the same image.
    pub image_id: String,
    /// Whether the image came from a registry (has a repo digest), so the edge can pull it.
    pub image_pullable: bool,
    pub command: Vec<String>,
    /// Environment variables, `KEY=VALUE`; the agent checks them as the server did.
    #[serde(default)]
    pub env: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
}

/// Commands the server gives an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Say what a move to the edge would bring, changing nothing.
    Estimate { spec: EdgeSpec },
    /// Make the image present and pre-copy the workspace while the cloud copy runs.
    Prepare { spec: EdgeSpec },
    /// The cloud copy has stopped: fetch the final delta and start at `generation`.
    Finalize { spec: EdgeSpec, generation: u64 },
    /// A move down failed: remove whatever was started for it.
    Abort {
        #[schema(value_type = String)]
        container_id: ContainerId,
    },
    /// Moving back: stop the edge copy and push every last change.
    StopForReturn {
        #[schema(value_type = String)]
        container_id: ContainerId,
        generation: u64,
    },
    /// The cloud runs the container now: drop the edge copy (the workspace stays as a
    /// cache for the next offload).
    Release {
        #[schema(value_type = String)]
        container_id: ContainerId,
    },
    /// The edge copy is stale (`generation` is newer): stop it, keep its late changes as
    /// a conflict set.
    Fence {
        #[schema(value_type = String)]
        container_id: ContainerId,
        generation: u64,
    },
}

impl Command {
    /// The container the command is about.
    pub fn container_id(&self) -> &ContainerId {
        match self {
            Command::Estimate { spec }
            | Command::Prepare { spec }
            | Command::Finalize { spec, .. } => &spec.id,
            Command::Abort { container_id }
            | Command::StopForReturn { container_id, .. }
            | Command::Release { container_id }
            | Command::Fence { container_id, .. } => container_id,
        }
    }
}

/// Durations of the steps of a move, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precopy_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sync_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// What the user waited: stop + final sync + start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Workspace bytes that crossed during the move.
    #[serde(default)]
    pub bytes: u64,
    /// How the image got there: `present`, `pulled` or `streamed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the server predicted when the move began, to set beside what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Box<Prediction>>,
}

/// A move's bytes and times foretold, from the workspace's diff and the link rate of
/// recent moves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Workspace bytes that would cross.
    pub bytes: u64,
    /// Image bytes the server would stream (0 when the edge holds the image or pulls it).
    #[serde(default)]
    pub image_bytes: u64,
    /// The link's rate in bytes per second, measured on recent moves to the same machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_sec: Option<u64>,
    /// The time the image and the pre-copy would take, the container still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precopy_ms: Option<u64>,
    /// What the user would wait: the stop, the final sync and the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// How many recent moves the rate and the downtime come from.
    #[serde(default)]
    pub samples: u32,
}

/// What the agent finds a move to the edge would bring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceEstimate {
    /// Chunk bytes the edge's copy of the workspace lacks.
    pub bytes: u64,
    /// Files that would be written, and paths removed.
    pub files: u64,
    pub deletes: u64,
    /// Bytes of every file of the cloud's workspace.
    pub tree_bytes: u64,
    /// Whether the edge's engine already holds the cloud's image.
    pub image_present: bool,
}

/// Answers to commands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Estimated {
        estimate: WorkspaceEstimate,
    },
    Prepared {
        timings: Timings,
    },
    Started {
        runtime_id: String,
        timings: Timings,
    },
    Stopped {
        timings: Timings,
    },
    Done,
}

impl Reply {
    /// How logs and reasons name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Estimated { .. } => "estimated",
            Reply::Prepared { .. } => "prepared",
            Reply::Started { .. } => "started",
            Reply::Stopped { .. } => "stopped",
            Reply::Done => "done",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_a_result_with_a_typed_error() {
        let failed = AgentMessage::Reply {
            request: 7,
            result: Err(AgentError {
                code: AgentErrorCode::Refused,
                message: "invalid container id".into(),
            }),
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "reply", "request": 7,
                "result": {"Err": {"code": "refused", "message": "invalid container id"}}})
        );
        let done: AgentMessage = serde_json::from_value(serde_json::json!({
            "type": "reply", "request": 8, "result": {"Ok": {"kind": "done"}}
        }))
        .unwrap();
        assert!(matches!(
            done,
            AgentMessage::Reply {
                request: 8,
                result: Ok(Reply::Done)
            }
        ));
        // A reply that is neither, or both, is refused.
        for bad in [
            serde_json::json!({"type": "reply", "request": 1}),
            serde_json::json!({"type": "reply", "request": 1, "ok": {"kind": "done"}}),
            serde_json::json!({"type": "reply", "request": 1,
                "result": {"Ok": {"kind": "done"}, "Err": {"code": "failed", "message": ""}}}),
        ] {
            assert!(
                serde_json::from_value::<AgentMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
