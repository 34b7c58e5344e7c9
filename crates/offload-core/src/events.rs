//! The event stream (`GET /v1/events`): what happened to containers, queries, agents and
//! the cloud's resources, in the order the server saw it, each with an id a watcher resumes
//! after.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent::Timings;
use crate::{ContainerId, Location, MoveDirection, MoveStep, Name, UserName};

/// One entry of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing, never reused; `Last-Event-ID` resumes after it.
    pub id: u64,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// The user whose container, query or agent this is about; none for the cloud's own
    /// events (pressure), which every user sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub user: Option<UserName>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A container was started for the first time.
    ContainerCreated {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// A stopped container was started again, or one the engine lost was restarted.
    ContainerStarted {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        location: Location,
        detail: String,
    },
    ContainerStopped {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        detail: String,
    },
    ContainerRemoved {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
    },
    /// A move entered a phase (the first one when it starts).
    MovePhase {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        direction: MoveDirection,
        phase: MoveStep,
        /// Since the move started.
        elapsed_ms: u64,
    },
    /// A move ended: `done`, `rolled_back` or `failed`.
    MoveEnded {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        direction: MoveDirection,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Phase durations and the workspace bytes that crossed.
        timings: Timings,
    },
    QueryAsked {
        query_id: String,
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        reason: String,
        /// Unix time in seconds.
        deadline_at: i64,
    },
    /// Answered `accepted` or `declined`, or `expired`, or `withdrawn` by the server.
    QueryClosed {
        query_id: String,
        #[schema(value_type = String)]
        container_id: ContainerId,
        state: String,
    },
    /// A resource crossed its high watermark (and stayed there for the sustain window), or
    /// its forecast did; `node` on a cluster.
    PressureStarted {
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// Usage as a fraction of capacity when it started.
        usage: f64,
    },
    PressureEnded {
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        usage: f64,
    },
    /// One of the user's agents connected, as the device it names, from the machine it
    /// names.
    AgentConnected {
        hostname: String,
        #[serde(default)]
        device: String,
    },
    /// That device's agent went away.
    AgentGone {
        #[serde(default)]
        device: String,
    },
    /// A container at the edge has work the cloud does not have, for longer than the
    /// operator's threshold (its recovery point is that far behind).
    RecoveryPointBehind {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
        lag_secs: u64,
        threshold_secs: u64,
    },
    /// It caught up again: the cloud has all of its work.
    RecoveryPointCaughtUp {
        #[schema(value_type = String)]
        container_id: ContainerId,
        #[schema(value_type = String)]
        name: Name,
    },
}

impl EventBody {
    /// Every `kind` there is, for filters that name kinds (webhooks).
    pub const KINDS: &'static [&'static str] = &[
        "container_created",
        "container_started",
        "container_stopped",
        "container_removed",
        "move_phase",
        "move_ended",
        "query_asked",
        "query_closed",
        "pressure_started",
        "pressure_ended",
        "agent_connected",
        "agent_gone",
        "recovery_point_behind",
        "recovery_point_caught_up",
    ];

    /// The `kind` tag, which is also the SSE `event:` field.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::ContainerCreated { .. } => "container_created",
            EventBody::ContainerStarted { .. } => "container_started",
            EventBody::ContainerStopped { .. } => "container_stopped",
            EventBody::ContainerRemoved { .. } => "container_removed",
            EventBody::MovePhase { .. } => "move_phase",
            EventBody::MoveEnded { .. } => "move_ended",
            EventBody::QueryAsked { .. } => "query_asked",
            EventBody::QueryClosed { .. } => "query_closed",
            EventBody::PressureStarted { .. } => "pressure_started",
            EventBody::PressureEnded { .. } => "pressure_ended",
            EventBody::AgentConnected { .. } => "agent_connected",
            EventBody::AgentGone { .. } => "agent_gone",
            EventBody::RecoveryPointBehind { .. } => "recovery_point_behind",
            EventBody::RecoveryPointCaughtUp { .. } => "recovery_point_caught_up",
        }
    }

    /// The container the event is about, if any.
    pub fn container_id(&self) -> Option<&ContainerId> {
        match self {
            EventBody::ContainerCreated { container_id, .. }
            | EventBody::ContainerStarted { container_id, .. }
            | EventBody::ContainerStopped { container_id, .. }
            | EventBody::ContainerRemoved { container_id, .. }
            | EventBody::MovePhase { container_id, .. }
            | EventBody::MoveEnded { container_id, .. }
            | EventBody::QueryAsked { container_id, .. }
            | EventBody::QueryClosed { container_id, .. }
            | EventBody::RecoveryPointBehind { container_id, .. }
            | EventBody::RecoveryPointCaughtUp { container_id, .. } => Some(container_id),
            EventBody::PressureStarted { .. }
            | EventBody::PressureEnded { .. }
            | EventBody::AgentConnected { .. }
            | EventBody::AgentGone { .. } => None,
        }
    }
}

impl Event {
    /// One line for a terminal: time, kind and what it is about.
    pub fn summary(&self) -> String {
        let what = match &self.body {
            EventBody::ContainerCreated {
                name, image, node, ..
            } => match node {
                Some(node) => format!("{name} created from {image} on node {node}"),
                None => format!("{name} created from {image}"),
            },
            EventBody::ContainerStarted {
                name,
                location,
                detail,
                ..
            } => format!("{name} started in the {}: {detail}", location.as_str()),
            EventBody::ContainerStopped { name, detail, .. } => {
                format!("{name} stopped: {detail}")
            }
            EventBody::ContainerRemoved { name, .. } => format!("{name} removed"),
            EventBody::MovePhase {
                name,
                direction,
                phase,
                elapsed_ms,
                ..
            } => format!(
                "{name} move {}: {} (+{:.1} s)",
                direction.as_str(),
                phase.as_str(),
                *elapsed_ms as f64 / 1000.0
            ),
            EventBody::MoveEnded {
                name,
                direction,
                outcome,
                reason,
                timings,
                ..
            } => {
                let mut line = format!("{name} move {} {outcome}", direction.as_str());
                if let Some(ms) = timings.downtime_ms {
                    line.push_str(&format!(", downtime {:.2} s", ms as f64 / 1000.0));
                }
                if timings.bytes > 0 {
                    line.push_str(&format!(", {} bytes", timings.bytes));
                }
                if let Some(why) = reason {
                    line.push_str(&format!(": {why}"));
                }
                line
            }
            EventBody::QueryAsked {
                query_id,
                name,
                reason,
                ..
            } => format!("query {query_id} asks to move {name}: {reason}"),
            EventBody::QueryClosed {
                query_id, state, ..
            } => format!("query {query_id} {state}"),
            EventBody::RecoveryPointBehind {
                name,
                lag_secs,
                threshold_secs,
                ..
            } => format!(
                "{name}: the cloud lacks its last {lag_secs} s of work (warning past {threshold_secs} s)"
            ),
            EventBody::RecoveryPointCaughtUp { name, .. } => {
                format!("{name}: the cloud has all of its work again")
            }
            EventBody::PressureStarted {
                resource,
                node,
                usage,
            } => format!(
                "{resource} pressure started{} at {:.0}%",
                on_node(node),
                usage * 100.0
            ),
            EventBody::PressureEnded {
                resource,
                node,
                usage,
            } => format!(
                "{resource} pressure ended{} at {:.0}%",
                on_node(node),
                usage * 100.0
            ),
            EventBody::AgentConnected { hostname, device } if device.is_empty() => {
                format!("agent connected from {hostname}")
            }
            EventBody::AgentConnected { hostname, device } => {
                format!("agent of device {device} connected from {hostname}")
            }
            EventBody::AgentGone { device } if device.is_empty() => "agent gone".to_owned(),
            EventBody::AgentGone { device } => format!("agent of device {device} gone"),
        };
        match &self.user {
            Some(user) if self.body.container_id().is_none() => format!("{user}: {what}"),
            _ => what,
        }
    }
}

fn on_node(node: &Option<String>) -> String {
    node.as_deref()
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_flat_json_tagged_by_kind() {
        let event = Event {
            id: 7,
            at_ms: 1_700_000_000_000,
            user: Some(UserName::parse("alice").expect("valid")),
            body: EventBody::QueryClosed {
                query_id: "q1".into(),
                container_id: ContainerId::parse("c0123456789a").expect("valid"),
                state: "accepted".into(),
            },
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["kind"], "query_closed");
        assert_eq!(json["user"], "alice");
        assert_eq!(json["state"], "accepted");
        assert_eq!(event.body.kind(), "query_closed");
        let back: Event = serde_json::from_value(json).expect("parses");
        assert_eq!(back, event);
    }

    #[test]
    fn cloud_events_have_no_user() {
        let event = Event {
            id: 1,
            at_ms: 0,
            user: None,
            body: EventBody::PressureStarted {
                resource: "cpu".into(),
                node: None,
                usage: 0.93,
            },
        };
        let json = serde_json::to_string(&event).expect("serializes");
        assert!(!json.contains("user"), "{json}");
        assert_eq!(event.summary(), "cpu pressure started at 93%");
    }
}
