//! The JSON types of the HTTP API under `/v1`, shared by the server and the CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent::Prediction;
use crate::{ContainerRecord, Location, MoveDirection, MoveReport, MoveStep, State};

/// Every error the API returns: one sentence and a stable machine-readable code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub error: String,
    pub code: ErrorCode,
}

/// The machine-readable codes of [`ApiError`]: the server, the agent and the CLI decide
/// on these, never on the sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or asks for something not allowed.
    BadRequest,
    /// The JSON body does not parse or has the wrong shape.
    InvalidJson,
    /// The query string does not parse.
    InvalidQuery,
    /// The body (or its declared length) is over the endpoint's limit.
    BodyTooLarge,
    UnsupportedMediaType,
    /// No token was sent.
    Unauthenticated,
    /// The token is unknown, expired or revoked.
    InvalidToken,
    /// The caller may not do this (an admin action).
    Forbidden,
    /// No such container or query (also another user's: I3).
    NotFound,
    /// No such endpoint.
    NoRoute,
    MethodNotAllowed,
    /// The container's state does not allow it now; the sentence says what would.
    Conflict,
    /// A push from a copy whose generation is not the container's current one.
    StaleGeneration,
    /// A dependency (the engine, the agent) cannot be reached now; trying later may work.
    Unavailable,
    Internal,
    /// Plain HTTP on the TLS port.
    HttpsRequired,
    /// An endpoint that speaks WebSocket got a plain request.
    WebsocketRequired,
    /// A command in a container could not run.
    ExecFailed,
    /// Nothing listens on the port inside the container (the connection was refused).
    NothingListens,
    /// The token is real but its user is disabled by the operator.
    UserDisabled,
    /// The request would take the user over a quota (containers, CPUs, memory).
    QuotaExceeded,
    /// A code this build does not know: a newer server's.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleGeneration => "stale_generation",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::HttpsRequired => "https_required",
            ErrorCode::WebsocketRequired => "websocket_required",
            ErrorCode::ExecFailed => "exec_failed",
            ErrorCode::NothingListens => "nothing_listens",
            ErrorCode::UserDisabled => "user_disabled",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /v1/containers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Image reference, e.g. `debian:12` or a local image id.
    pub image: String,
    /// Optional name, unique among the caller's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// CPU limit in cores; the server's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit (`512m`, `1g`); the server's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Command to run instead of the image's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables, `KEY=VALUE`, carried wherever the container runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// A container as `ls` and `show` print it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub image: String,
    pub owner: String,
    pub location: Location,
    pub state: State,
    pub generation: u64,
    /// The engine's id for the container where it runs now.
    pub runtime_id: Option<String>,
    pub command: Vec<String>,
    /// The names of its environment variables (values may be secrets: not shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The move in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<MoveStatus>,
    /// How the last move ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_move: Option<MoveReport>,
    /// On a cluster: the node (its ID) the cloud copy is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The owner's device it runs on at the edge, or ran on last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// At the edge, the recovery point: how many seconds of its work the cloud may not
    /// have yet (0 while its agent reports every change synced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_lag_secs: Option<u64>,
}

/// A move in flight, as `show` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveStatus {
    pub direction: MoveDirection,
    pub step: MoveStep,
    pub started_at: i64,
    /// The agent's latest progress report: phase, bytes done and total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Progress of a long step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

/// Body of `POST /v1/containers/{id}/move`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub to: Location,
    /// Move to the cloud even though the edge's agent is unreachable; the edge copy is
    /// fenced and its late changes kept as a conflict set when it returns.
    #[serde(default)]
    pub force: bool,
    /// A move to the edge: the owner's device (its agent's `--device` name) to move to.
    /// Without one, the connected device that can run it with the most room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Answer of `POST /v1/containers/{id}/move/estimate`: what `offload move --to edge`
/// would do now, with nothing moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveEstimate {
    pub container_id: String,
    pub direction: MoveDirection,
    /// The owner's device the move would go to.
    #[serde(default)]
    pub device: String,
    /// Files the edge would write, and paths it would remove.
    pub files: u64,
    pub deletes: u64,
    /// Bytes of every file of the workspace.
    pub tree_bytes: u64,
    /// How the image would get there: `present`, `pull` (from its registry) or `stream`
    /// (from the server).
    pub image: String,
    pub prediction: Prediction,
}

impl From<&ContainerRecord> for ContainerView {
    fn from(r: &ContainerRecord) -> Self {
        ContainerView {
            id: r.id.to_string(),
            name: r.name.to_string(),
            image: r.image.to_string(),
            owner: r.owner.to_string(),
            location: r.location,
            state: r.state,
            generation: r.generation.get(),
            runtime_id: r.runtime_id.clone(),
            command: r.command.clone(),
            env: crate::env_names(&r.env),
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            reason: r.reason.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            moving: None,
            last_move: r.last_move.clone(),
            node: r.node.clone(),
            device: r.device.clone(),
            sync_lag_secs: None,
        }
    }
}

/// Body of `POST /v1/join`: the secret half of a join token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub secret: String,
}

/// Answer to a join: the credential to use from now on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub user: String,
    pub admin: bool,
    /// Bearer token for every later call. The server keeps only its hash.
    pub token: String,
}

/// A one-time dashboard sign-in link (`POST /v1/dashboard/link`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardLink {
    /// The secret the link carries after `#link=`; it works once, until `expires_at`.
    pub code: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/dashboard/session`: a link's secret, exchanged for a session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardSessionRequest {
    pub link: String,
}

/// A dashboard session: an API token that stops working at `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardSession {
    pub user: String,
    pub admin: bool,
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Who the caller is (`GET /v1/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
}

/// The first message on an exec WebSocket (`/v1/containers/{id}/exec`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Command and arguments; empty means an interactive shell (`/bin/sh`).
    #[serde(default)]
    pub command: Vec<String>,
    /// Allocate a terminal (interactive use).
    #[serde(default)]
    pub tty: bool,
    /// Terminal size in columns and rows, when `tty` is set.
    #[serde(default)]
    pub size: Option<(u16, u16)>,
    /// `TERM` for the command, when `tty` is set.
    #[serde(default)]
    pub term: Option<String>,
    /// `NAME=VALUE` variables the session sets for the command: only the locale, the time
    /// zone and colour hints (`crate::session::session_var_allowed`); anything else fails
    /// the request. Left out when empty, so a server that predates it reads the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// Control messages on an exec WebSocket, sent as text frames. Data travels in binary
/// frames whose first byte names the stream (see [`exec_stream`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecControl {
    /// Client to server: the terminal was resized.
    Resize { cols: u16, rows: u16 },
    /// Client to server: no more input.
    CloseStdin,
    /// Client to server: send this signal (`TERM`, `INT`, ... without `SIG`) to the
    /// command's process. A signal that is not one of `crate::session::SIGNALS` is
    /// ignored, as is one sent after the command ended.
    Signal { signal: String },
    /// Server to client: the command ended.
    Exit { code: i64 },
    /// Server to client: the command could not run.
    Error { error: String, code: ErrorCode },
    /// Server to client: something for the user to read while the command runs (a move
    /// is about to end the session); clients print it on stderr.
    Notice { text: String },
}

/// Control messages on a port WebSocket (`/v1/containers/{id}/ports/{port}`), sent as
/// text frames; binary frames carry the raw TCP bytes, both ways. A receiver ignores a
/// text frame it does not understand.
///
/// The server sends `connected` once the connection to `127.0.0.1:PORT` inside the
/// container is open, or `error` and then closes the socket. Either side sends `eof` when
/// its direction ends (a TCP half-close); once both directions ended, the server closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PortControl {
    /// Server to client: the connection inside the container is open; bytes may flow.
    Connected,
    /// Either way: the sender will send no more bytes; the other direction goes on.
    Eof,
    /// Server to client: for the user to read (a move is about to end this connection).
    Notice { text: String },
    /// Server to client: the connection could not be made, or failed; the socket closes
    /// next.
    Error { code: ErrorCode, error: String },
}

impl PortControl {
    /// The control as the text of a frame.
    pub fn to_text(&self) -> String {
        // An enum of strings and unit variants always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Text frames on a file-transfer WebSocket (`/v1/containers/{id}/sftp`), whose binary
/// frames carry the raw SFTP byte stream both ways, exactly what an SSH `sftp` subsystem
/// channel carries (the client sends `SSH_FXP_INIT` first). An `error` ends the socket:
/// sent before the stream starts when the session cannot start, or when the container
/// stops under it. A receiver ignores a text frame it does not understand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SftpControl {
    Error {
        code: ErrorCode,
        error: String,
    },
    /// Something for the user to read; the session goes on.
    Notice {
        text: String,
    },
}

/// Text frames on a logs WebSocket (`/v1/containers/{id}/logs`), server to client. Binary
/// frames carry one log entry each ([`crate::logs`]: the stream tag, 8 bytes of Unix
/// nanoseconds, the bytes). A receiver ignores a text frame it does not understand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogsControl {
    /// For the user to read (a move is about to stop the copy whose output this is; the
    /// output goes on with the new copy's); clients print it on stderr.
    Notice { text: String },
    /// The output cannot be read, or stopped being readable; the socket closes next.
    Error { code: ErrorCode, error: String },
    /// All of the output was sent: without `follow`, everything written so far; with it,
    /// the container stopped. The socket closes next.
    End,
}

impl LogsControl {
    /// The control as the text of a frame.
    pub fn to_text(&self) -> String {
        // An enum of strings and unit variants always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// First byte of a binary frame on an exec WebSocket.
pub mod exec_stream {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
}

/// A request to move a container to its owner's machine (or, on a cluster whose
/// operator asks before moves inside the cloud, to another node), and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryView {
    pub id: String,
    pub container_id: String,
    pub container_name: String,
    pub owner: String,
    /// Why the server asks: the pressure and this container's share of it.
    pub reason: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; no answer by then means the configured default.
    pub deadline_at: i64,
    /// `pending`, `accepted`, `declined`, `expired` or `withdrawn`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<i64>,
    /// Workspace bytes the move would copy.
    pub move_bytes: u64,
    /// A move inside the cloud: the node (its ID) the container would move to. Absent for
    /// a move to the owner's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node: Option<String>,
    /// A move to the owner's machine: the device that would take it (the one asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One of a user's devices, as `offload devices` lists it (`GET /v1/devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Its agent's `--device` name.
    pub name: String,
    pub hostname: String,
    /// Architecture as the engine names it (`amd64`, `arm64`).
    pub architecture: String,
    /// What the device offers offload: cores, memory and free disk.
    pub cpus: f64,
    pub memory_bytes: u64,
    pub free_disk_bytes: u64,
    /// Ids of the user's containers that run there now.
    pub containers: Vec<String>,
    pub auto_accept: bool,
    pub auto_return: bool,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The node to empty: its name or its ID.
    pub node: String,
}

/// What `POST /v1/admin/drain` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DrainReport {
    /// The drained node's ID.
    pub node: String,
    /// Its name.
    pub name: String,
    /// Containers whose move to another node started.
    pub moving: Vec<String>,
    /// Containers still on the node, each with why (no other node has room, a move
    /// already in flight); the reconciler tries them again every round.
    pub staying: Vec<DrainStay>,
}

/// What `POST /v1/admin/cloud/drain` did: the cloud starts nothing new until the drain
/// ends, and every owner whose agent is connected was asked to take their containers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CloudDrainReport {
    /// Unix seconds since when the cloud drains.
    pub since: i64,
    /// The queries asked now.
    pub asked: Vec<QueryView>,
    /// Containers still in the cloud that were not asked, each with why.
    pub not_asked: Vec<DrainStay>,
}

/// A container a drain could not move yet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainStay {
    pub id: String,
    pub reason: String,
}

/// Body of `POST /v1/admin/pressure`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PressureRequest {
    /// Ask only this user's containers.
    #[serde(default)]
    pub user: Option<String>,
}

/// The monitor as `offload top` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MonitorView {
    /// Set while the operator drains the cloud (Unix seconds since): nothing new starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<i64>,
    /// `host` or `pool`; `nodes` on a cluster, where each node is measured on its own and
    /// `resources` are the cloud's as a whole (the least busy node's use, or a node's that
    /// no move between nodes can relieve).
    pub source: String,
    pub under_pressure: bool,
    pub reason: String,
    pub resources: Vec<ResourceView>,
    pub pending_queries: usize,
    pub containers: Vec<UsageView>,
    /// On a cluster: each node's load, from offload's containers on it against its
    /// capacity, and its own pressure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeView>,
}

/// One node of a cluster, as the monitor last saw it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The engine's node ID.
    pub id: String,
    pub name: String,
    /// Whether containers may be placed there (ready, active, its engine reachable).
    pub schedulable: bool,
    /// Cores the fractions are relative to (the operator's setting, else the node's).
    pub cpus: f64,
    /// Bytes the memory fraction is relative to.
    pub memory_bytes: u64,
    /// CPU in use by offload's containers there, as a fraction of `cpus`.
    pub cpu: f64,
    /// Memory in use by offload's containers there, as a fraction of `memory_bytes`.
    pub mem: f64,
    /// Whether the node itself is under pressure.
    pub under_pressure: bool,
    /// Under pressure and no move inside the cloud can relieve it.
    pub stuck: bool,
}

/// One resource of the monitor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResourceView {
    pub resource: String,
    pub usage: f64,
    pub forecast: f64,
    pub low: f64,
    pub high: f64,
    pub pressure: bool,
}

/// One container's use, as the monitor last measured it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub id: String,
    pub owner: String,
    pub location: Location,
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// On a cluster: the node (its ID) the cloud copy runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One entry of the audit log (`GET /v1/admin/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: u64,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// Who; none when the request carried no valid credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What: `start`, `stop`, `restart`, `remove`, `move`, `shell`, `sftp`, `port`, `logs`,
    /// `accept`, `decline`, `join`, `agent`, `admin_*`, `token_create`, or `read` for a
    /// refused read.
    pub action: String,
    /// On what, as the request named it: a container, a query or a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, `denied` (no or a bad token, not an admin, another user's container) or
    /// `failed`.
    pub outcome: String,
    /// The HTTP status of the answer; 0 for actions taken on the server host.
    pub status: u16,
    pub detail: String,
}

/// A user as an admin sees them (`GET /v1/admin/users`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    /// Unix seconds; set while the operator has the user disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<i64>,
    /// Unix seconds of the last authenticated request, to the minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    /// API tokens that work (or would, once enabled).
    pub tokens: usize,
    pub containers: usize,
    /// Of those, how many run at the edge.
    pub at_edge: usize,
    /// The machine the user's agent is connected from, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// `POST /v1/admin/tokens/revoke`: every token of a user, or one token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    pub revoked: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_spelled_as_on_the_wire_and_unknown_ones_still_parse() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::StaleGeneration,
            ErrorCode::HttpsRequired,
            ErrorCode::WebsocketRequired,
            ErrorCode::BodyTooLarge,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let newer: ApiError =
            serde_json::from_str(r#"{"error":"x","code":"lease_expired"}"#).unwrap();
        assert_eq!(newer.code, ErrorCode::Unknown);
    }
}
