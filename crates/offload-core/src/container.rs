//! The container record the server keeps, with its location, state and generation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::moves::{Generation, MoveReport};
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
    /// Wanted running and not running yet: the server keeps trying to start it (after a
    /// rollback or a forced move whose start failed, or while the engine is down).
    Starting,
    Running,
    Stopped,
    /// Between hosts; see the move record for the step.
    Moving,
    /// At the edge, and the edge's agent is not connected.
    Unreachable,
    /// The engine container disappeared outside offload's control.
    Missing,
    /// Its cluster node is down or out of reach and no other node has room for it yet:
    /// the server starts it on another node (at a new generation) as soon as one has, or
    /// adopts it again if its node comes back first.
    Lost,
    /// Creation failed; `reason` says why.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Moving => "moving",
            State::Unreachable => "unreachable",
            State::Missing => "missing",
            State::Lost => "lost",
            State::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "creating" => State::Creating,
            "starting" => State::Starting,
            "running" => State::Running,
            "stopped" => State::Stopped,
            "moving" => State::Moving,
            "unreachable" => State::Unreachable,
            "missing" => State::Missing,
            "lost" => State::Lost,
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
    /// Environment variables, `KEY=VALUE`, checked by [`crate::check_env`].
    pub env: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub location: Location,
    pub state: State,
    /// Fencing number; grows on every move.
    pub generation: Generation,
    /// The engine's id for the container where it runs now.
    pub runtime_id: Option<String>,
    /// Why the container is in its state, when that is not obvious (a failure, a loss).
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// How the last move ended.
    pub last_move: Option<MoveReport>,
    /// The cluster node (its engine ID) the cloud copy is placed on; `None` on a single
    /// engine.
    #[serde(default)]
    pub node: Option<String>,
    /// The owner's device (its agent's name) the container runs on at the edge, is moving
    /// to, or ran on last.
    #[serde(default)]
    pub device: Option<String>,
}

impl ContainerRecord {
    /// Commands can run in it now.
    pub fn can_exec(&self) -> bool {
        self.state == State::Running
    }

    /// `offload stop` applies.
    pub fn can_stop(&self) -> bool {
        matches!(
            self.state,
            State::Running | State::Creating | State::Starting
        )
    }

    /// `offload rm` applies: anything not in the middle of a move.
    pub fn can_remove(&self) -> bool {
        self.state != State::Moving
    }
}
