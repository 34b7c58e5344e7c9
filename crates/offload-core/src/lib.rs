//! Domain types of offload: ids, names, sizes, the container record and the API types.
//!
//! This crate does no I/O, so everything in it can be tested without Docker, disks or
//! sockets. The HTTP server, the store and the CLI all speak these types.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod api;
pub mod container;
pub mod env;
pub mod events;
pub mod id;
pub mod logs;
pub mod moves;
pub mod session;
pub mod size;
pub mod token;

pub use container::{ContainerRecord, Location, State};
pub use env::{check_env, env_names};
pub use id::{ContainerId, ImageRef, Name, UserName, ValidationError};
pub use moves::{
    Generation, MoveDirection, MoveOutcome, MovePhase, MoveRecord, MoveReport, MoveStep,
};
pub use size::{parse_cpus, parse_memory};

/// Label keys every engine container created by offload carries (invariant I4).
pub mod labels {
    /// offload's own container id.
    pub const ID: &str = "offload.id";
    /// The owning user's name.
    pub const OWNER: &str = "offload.owner";
    /// The move generation (fencing number) the engine container was started for.
    pub const GENERATION: &str = "offload.generation";
    /// Marks a container an agent started, so an engine playing both sides keeps the
    /// cloud's and the edge's containers apart.
    pub const EDGE: &str = "offload.edge";
}

/// Where a container's workspace is mounted inside the container.
pub const WORKSPACE_MOUNT: &str = "/workspace";
