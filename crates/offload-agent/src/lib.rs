//! The offload agent on the user's machine (the edge): it keeps a connection to the
//! server, runs moved containers on the local engine with their workspaces on local disk,
//! and streams workspace changes back to the cloud, which keeps the durable copy.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod connection;
pub mod edge;
mod files;
pub mod prompt;
pub mod sync;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use offload_runtime::{ContainerRuntime, DockerRuntime, NetworkMode};

pub use connection::Preferences;
pub use edge::{Edge, EdgeOptions};

/// Everything `offload agent` is started with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub docker_host: Option<String>,
    pub data_dir: PathBuf,
    pub network: String,
    pub stop_grace_secs: u32,
    pub preferences: Preferences,
}

/// The agent's data directory when none is given: `$XDG_DATA_HOME/offload`, else
/// `~/.local/share/offload`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("offload"));
    }
    let home =
        std::env::var_os("HOME").context("cannot find a data directory: set HOME or --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/offload"))
}

/// Runs the agent until the process is stopped.
pub async fn run(config: client::ClientConfig, options: AgentOptions) -> anyhow::Result<()> {
    let network = NetworkMode::parse(&options.network).with_context(|| {
        format!(
            "invalid --network {:?}: use default, none or an engine network name",
            options.network
        )
    })?;
    edge::secure_data_dir(&options.data_dir)
        .with_context(|| format!("cannot create {}", options.data_dir.display()))?;
    let runtime: Arc<dyn ContainerRuntime> =
        Arc::new(DockerRuntime::connect(options.docker_host.as_deref()).await?);
    runtime.ping().await?;
    let api = client::Api::new(config)?;
    let edge = Edge::new(
        api,
        runtime,
        EdgeOptions {
            data_dir: options.data_dir,
            network,
            stop_grace_secs: options.stop_grace_secs,
            rescan: Duration::from_secs(2),
        },
    );
    edge.restore().await?;
    connection::run(edge, options.preferences).await;
    Ok(())
}
