//! The offload server: HTTPS API, authentication, the controller over the cloud engine,
//! and the durable store.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent_ws;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod controller;
mod dashboard;
mod db;
mod devices;
pub mod error;
mod estimate;
pub mod events;
mod exec;
mod fenced;
mod files;
pub mod http;
pub mod hub;
pub mod listener;
mod logs;
pub mod metrics;
mod monitor;
mod mover;
mod node_loss;
mod nodes;
mod queries;
pub mod reconciler;
mod sizes;
#[cfg(test)]
mod testing;
pub mod tls;
mod tunnel;
pub mod users;
pub mod webhooks;
pub mod workspace;
mod ws;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use offload_core::UserName;
use offload_runtime::{ContainerRuntime, DockerRuntime, SwarmNodeEngine, SwarmRuntime};
use offload_store::{Store, TokenKind};

pub use config::ServerConfig;
use controller::{Controller, now};

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    config.validate()?;
    let runtime = connect_engine(&config).await?;
    let listen = config.listen;
    let tcp = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve(config, runtime, tcp, true, wait_for_signal()).await
}

/// The cloud's engine as configured: one Docker engine, or a swarm's manager and nodes.
async fn connect_engine(config: &ServerConfig) -> anyhow::Result<Arc<dyn ContainerRuntime>> {
    match config.engine {
        config::EngineKind::Docker => {
            let runtime = DockerRuntime::connect(config.docker_host.as_deref()).await?;
            runtime.ping().await?;
            Ok(Arc::new(runtime))
        }
        config::EngineKind::Swarm => {
            let manager = config
                .swarm_manager()
                .context("engine = \"swarm\" needs swarm.manager")?;
            let nodes: Vec<SwarmNodeEngine> = config
                .swarm
                .nodes
                .iter()
                .map(|n| SwarmNodeEngine {
                    name: n.name.clone(),
                    docker_host: n.docker_host.clone(),
                })
                .collect();
            let mut runtime = SwarmRuntime::connect(manager, &nodes)
                .await
                .with_context(|| format!("cannot use the swarm whose manager is {manager}"))?;
            for node in &config.swarm.nodes {
                runtime = runtime.with_capacity(&node.name, node.capacity()?);
            }
            let listed = runtime.nodes().await?;
            tracing::info!(
                nodes = listed.len(),
                schedulable = listed.iter().filter(|n| n.schedulable()).count(),
                "connected to the swarm"
            );
            Ok(Arc::new(runtime))
        }
    }
}

/// Serves the API on `tcp` over `runtime` until `shutdown` completes; `announce` prints
/// the address and the CA's fingerprint on stdout. `run` serves the Docker engine; the
/// sync benchmark serves a fake one (only the workspace endpoints matter there).
pub async fn serve(
    config: ServerConfig,
    runtime: Arc<dyn ContainerRuntime>,
    tcp: std::net::TcpListener,
    announce: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    tls::ensure_private_dir(&config.data_dir)?;
    let pki = tls::Pki::load(&config.data_dir.join("tls"), &config.tls_sans)
        .context("cannot set up the server's certificates")?;
    let store = Arc::new(Store::open(&config.data_dir.join("state.db"))?);
    let limits = config.connection_limits();
    let ctl = Arc::new(Controller::new(store, runtime, config)?);

    let report = ctl.reconcile().await?;
    tracing::info!(?report, "reconciled the store with the engine");
    // From here on, level-triggered: cloud containers, interrupted moves, edge states.
    tokio::spawn(ctl.clone().run_reconciler());
    ctl.events.prune_every(std::time::Duration::from_secs(
        ctl.config().events_retention_hours.saturating_mul(3600),
    ));
    tokio::spawn(ctl.monitor_loop()?.run());
    webhooks::start(&ctl.events, ctl.store(), &ctl.config().webhooks);

    let state = http::AppState {
        ctl,
        ca_pem: Arc::from(pki.ca_pem.as_str()),
    };
    let app = http::router(state);
    tcp.set_nonblocking(true)?;
    let local = tcp.local_addr()?;
    let handle = axum_server::Handle::new();
    let graceful = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        graceful.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    if announce {
        // Printed on stdout so scripts and tests know the port when they asked for port 0.
        println!("offload server listening on https://{local}");
        println!("ca fingerprint {}", pki.ca_fingerprint());
    }
    tracing::info!(%local, fingerprint = %pki.ca_fingerprint(), "listening");
    listener::serve(tcp, pki.server_config()?, app, handle, limits).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Creates a join token for `user` (creating the user if needed) and returns it.
/// Runs on the server host against the data directory, beside a running server.
pub fn create_join_token(
    data_dir: &Path,
    user: &UserName,
    admin: bool,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    tls::ensure_private_dir(data_dir)?;
    let (ca_pem, _) = tls::load_or_create_ca(&data_dir.join("tls"))?;
    let ca_der = tls::first_cert_der(&ca_pem, &data_dir.join("tls/ca.crt"))?;
    let store = Store::open(&data_dir.join("state.db"))?;
    let at = now();
    store.upsert_user(user, admin, at)?;
    let token = auth::JoinToken {
        ca_fingerprint: tls::fingerprint(&ca_der),
        secret: auth::random_secret(),
    };
    store.insert_token(
        &auth::token_hash(&token.secret),
        user,
        TokenKind::Join,
        at,
        Some(at.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX))),
    )?;
    audit::record_local(
        &store,
        "token_create",
        user.as_str(),
        &format!(
            "join token for {user}{} on the server host, valid {ttl_secs} s",
            if admin { " (admin)" } else { "" }
        ),
    );
    Ok(token.to_string())
}
