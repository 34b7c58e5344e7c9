//! The offload agent on the user's machine (the edge): it keeps a connection to the
//! server, runs moved containers on the local engine with their workspaces on local disk,
//! and streams workspace changes back to the cloud, which keeps the durable copy.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod connection;
pub mod desktop;
pub mod edge;
mod files;
mod logs;
pub mod prompt;
pub mod sync;
pub mod tunnel;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use offload_runtime::{ContainerRuntime, DockerRuntime, NetworkMode};

pub use connection::Preferences;
pub use edge::{Edge, EdgeOptions, Offer};

/// Everything `offload agent` is started with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub docker_host: Option<String>,
    pub data_dir: PathBuf,
    pub network: String,
    pub stop_grace_secs: u32,
    /// This device's name (`--device`), unique among the user's devices.
    pub device: String,
    /// What of this machine offload may use.
    pub offer: edge::Offer,
    pub preferences: Preferences,
    /// The client config the agent runs with: the local socket is recorded beside it, so
    /// the CLI with the same config finds it.
    pub config_path: Option<PathBuf>,
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
            data_dir: options.data_dir.clone(),
            network,
            stop_grace_secs: options.stop_grace_secs,
            rescan: Duration::from_secs(2),
            sweep: Duration::from_secs(30),
            device: options.device.clone(),
            offer: options.offer,
        },
    );
    edge.restore().await?;
    serve_local_channels(&edge, &options);
    connection::run(edge, options.preferences).await;
    Ok(())
}

/// Listens on the local socket for channels from this machine's CLI and records where,
/// beside the client config. Without it the CLI goes through the server, so a failure
/// here is logged, not fatal.
fn serve_local_channels(edge: &Arc<Edge>, options: &AgentOptions) {
    let (listener, socket) = match tunnel::bind_local(&options.data_dir) {
        Ok(bound) => bound,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no local socket: this machine's port forwards go through the server");
            return;
        }
    };
    if let Some(config) = &options.config_path {
        let record = tunnel::LocalAgent {
            socket,
            server: edge.api.config.server.clone(),
            user: edge.api.config.user.clone(),
            pid: std::process::id(),
        };
        if let Err(e) = record.write(config) {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the local socket: this machine's port forwards go through the server");
        }
    }
    tokio::spawn(tunnel::serve_local(edge.clone(), listener));
}
