//! The container record the server keeps, with its location, state and generation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ContainerId, ImageRef, Name, UserName};

/// Which host runs (or last ran) a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Cloud,
    Edge,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Cloud => "cloud",
            Location::Edge => "edge",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "cloud" => Some(Location::Cloud),
            "edge" => Some(Location::Edge),
            _ => None,
        }
    }
}

/// The lifecycle state of a container, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, engine container not yet confirmed running.
    Creating,
    Running,
    Stopped,
    /// Between hosts; see the move record for the step.
    Moving,
    /// At the edge, and the edge's agent is not connected.
    Unreachable,
    /// The engine container disappeared outside offload's control.
    Missing,
    /// Creation failed; `reason` says why.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Moving => "moving",
            State::Unreachable => "unreachable",
            State::Missing => "missing",
            State::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "creating" => State::Creating,
            "running" => State::Running,
            "stopped" => State::Stopped,
            "moving" => State::Moving,
            "unreachable" => State::Unreachable,
            "missing" => State::Missing,
            "failed" => State::Failed,
            _ => return None,
        })
    }
}

/// Everything the server knows about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: ContainerId,
    pub name: Name,
    pub owner: UserName,
    pub image: ImageRef,
    pub command: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub location: Location,
    pub state: State,
    /// Fencing number; grows by one on every move.
    pub generation: u64,
    /// The engine's id for the container where it runs now.
    pub runtime_id: Option<String>,
    /// Why the container is in its state, when that is not obvious (a failure, a loss).
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// How the last move ended.
    pub last_move: Option<MoveReport>,
}

impl ContainerRecord {
    /// Commands can run in it now.
    pub fn can_exec(&self) -> bool {
        self.state == State::Running
    }

    /// `offload stop` applies.
    pub fn can_stop(&self) -> bool {
        matches!(self.state, State::Running | State::Creating)
    }

    /// `offload rm` applies: anything not in the middle of a move.
    pub fn can_remove(&self) -> bool {
        self.state != State::Moving
    }
}

/// Which way a move goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveDirection {
    ToEdge,
    ToCloud,
}

impl MoveDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveDirection::ToEdge => "to_edge",
            MoveDirection::ToCloud => "to_cloud",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "to_edge" => Some(MoveDirection::ToEdge),
            "to_cloud" => Some(MoveDirection::ToCloud),
            _ => None,
        }
    }

    pub fn target(self) -> Location {
        match self {
            MoveDirection::ToEdge => Location::Edge,
            MoveDirection::ToCloud => Location::Cloud,
        }
    }
}

/// The persisted step of a move in flight (DESIGN.md §4). Each is written before the
/// action it names, so a restarted server knows what may have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveStep {
    /// To edge: image ensured and workspace pre-copied while the cloud copy runs.
    Preparing,
    /// To edge: the cloud copy is being stopped.
    StoppingCloud,
    /// To edge: final delta and start at the edge; the edge may run the new generation.
    Finalizing,
    /// To cloud: the edge copy is being stopped and its last changes pushed.
    StoppingEdge,
    /// To cloud: the edge confirmed stopped and synced; the cloud copy is being started.
    StartingCloud,
}

impl MoveStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStep::Preparing => "preparing",
            MoveStep::StoppingCloud => "stopping_cloud",
            MoveStep::Finalizing => "finalizing",
            MoveStep::StoppingEdge => "stopping_edge",
            MoveStep::StartingCloud => "starting_cloud",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "preparing" => MoveStep::Preparing,
            "stopping_cloud" => MoveStep::StoppingCloud,
            "finalizing" => MoveStep::Finalizing,
            "stopping_edge" => MoveStep::StoppingEdge,
            "starting_cloud" => MoveStep::StartingCloud,
            _ => return None,
        })
    }

    /// The step that follows, if the move goes on.
    pub fn next(self) -> Option<Self> {
        match self {
            MoveStep::Preparing => Some(MoveStep::StoppingCloud),
            MoveStep::StoppingCloud => Some(MoveStep::Finalizing),
            MoveStep::StoppingEdge => Some(MoveStep::StartingCloud),
            MoveStep::Finalizing | MoveStep::StartingCloud => None,
        }
    }

    /// Whether the old holder may already have stopped: a rollback must restart it.
    pub fn source_may_be_stopped(self) -> bool {
        !matches!(self, MoveStep::Preparing)
    }
}

/// A move in flight, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub container_id: ContainerId,
    pub direction: MoveDirection,
    pub step: MoveStep,
    pub from_generation: u64,
    pub started_at: i64,
    pub timings: crate::agent::Timings,
}

/// How the last move of a container ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveReport {
    pub direction: MoveDirection,
    /// `done` or `rolled_back`.
    pub outcome: String,
    pub forced: bool,
    pub from_generation: u64,
    pub to_generation: u64,
    pub started_at: i64,
    pub finished_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub timings: crate::agent::Timings,
}
