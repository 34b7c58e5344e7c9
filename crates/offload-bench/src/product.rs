//! offload's side through the product path: an offload server in this process (its real
//! HTTP API, TLS and HTTP/2, over a fake engine: only the workspace endpoints are used) on
//! loopback, and the agent's HTTPS client pulling through the same sync session as the
//! in-process run. What differs from `offload` is exactly what a user's pull adds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use offload_agent::client::{Api, join};
use offload_agent::sync::ServerTransport;
use offload_core::UserName;
use offload_core::api::{ContainerView, StartRequest};
use offload_runtime::fake::FakeRuntime;
use offload_server::ServerConfig;
use offload_sync::Manifest;
use offload_sync::session::{self, Pull};

use crate::offload::OffloadRun;

const IMAGE: &str = "offload-bench:latest";

/// A running server with one container whose workspace is the sender's tree.
pub struct Product {
    runtime: tokio::runtime::Runtime,
    api: Api,
    id: offload_core::ContainerId,
    workspace: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Product {
    /// Starts a server with its data directory in `dir` and a container on it.
    pub fn start(dir: &Path) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let data_dir = dir.join("server");
        let config = ServerConfig {
            data_dir: data_dir.clone(),
            ..ServerConfig::default()
        };
        let token =
            offload_server::create_join_token(&data_dir, &UserName::parse("bench")?, false, 600)?;
        let engine = FakeRuntime::new();
        engine.add_image(IMAGE);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
        let url = format!("https://{}", tcp.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) =
                offload_server::serve(config, Arc::new(engine), tcp, false, shutdown).await
            {
                eprintln!("the benchmark's server failed: {e:#}");
            }
        });
        let api = runtime.block_on(async {
            // The server binds before it is spawned; it accepts once it has its certificates.
            let mut tries = 0;
            let client = loop {
                match join(&url, &token).await {
                    Ok(client) => break client,
                    Err(_) if tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            Api::new(client)
        })?;
        let view: ContainerView = runtime
            .block_on(api.post(
                "/v1/containers",
                &StartRequest {
                    image: IMAGE.to_owned(),
                    name: None,
                    cpus: None,
                    memory: None,
                    command: Vec::new(),
                    env: Vec::new(),
                },
            ))
            .context("cannot start the benchmark's container")?;
        let workspace = data_dir.join("workspaces").join(&view.id);
        Ok(Product {
            runtime,
            api,
            id: offload_core::ContainerId::parse(&view.id)
                .context("the server named an invalid container id")?,
            workspace,
            stop: Some(stop),
        })
    }

    /// The container's workspace on the server: the sender's tree.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// One pull of the workspace into `root`, as the agent runs it.
    pub fn pull(&self, root: &Path, previous: Option<&Manifest>) -> Result<(OffloadRun, Manifest)> {
        let transport =
            ServerTransport::with_runtime(&self.api, &self.id, self.runtime.handle().clone());
        let started = Instant::now();
        let pulled = session::pull(
            &transport,
            &Pull {
                root,
                previous,
                base: previous,
                progress: None,
            },
        )
        .context("the pull through the server failed")?;
        let mut run = OffloadRun::from_stats(&pulled.stats, Default::default(), 0);
        run.wall = started.elapsed();
        Ok((run, pulled.manifest))
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
