//! offload's resource monitor: samplers for host and pool usage, and the pressure policy
//! that decides which containers to ask to move to their owner's edge and which to offer
//! a return to the cloud.
//!
//! The server owns the loop. Each interval it takes a [`HostSample`] from a
//! [`HostSampler`] ([`ProcHostSampler`] for the whole host, [`PoolSampler`] for managed
//! containers only), gathers per-container usage from the engine and the agents' reports
//! into an [`Observation`], and calls [`Policy::evaluate`] with the time since start. The
//! returned [`Decision`] lists the queries to send, the returns to make or announce, on a
//! cluster (an observation with [`NodeReport`]s) the moves between nodes that relieve a
//! busy one, and a [`Status`] for display. Answers go back through [`Policy::record_answer`]. Nothing here
//! does I/O except the host sampler, and nothing reads a clock.

// Tests unwrap: a panic there is the failure report. Library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod error;
mod forecast;
mod host;
mod policy;
mod pressure;
mod resource;
mod sample;
mod select;

pub use config::{DefaultAction, PolicyConfig, SamplerSource};
pub use error::{ConfigError, MonitorError};
pub use host::ProcHostSampler;
pub use policy::{
    AgentReport, Answer, Ask, Decision, Expiry, MoveNeeds, NodeReport, NodeStatus, Observation,
    Policy, PressureEvent, Relocation, ResourceStatus, Return, Status,
};
pub use pressure::Trigger;
pub use resource::{Resource, Watermark};
pub use sample::{
    ContainerUsage, CpuReading, HostSample, HostSampler, PoolCapacity, PoolSampler,
    container_cpu_cores,
};
