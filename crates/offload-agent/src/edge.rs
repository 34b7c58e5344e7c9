//! The edge: containers this agent runs for the server, their workspaces, their state on
//! disk, and the commands of a move.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use offload_core::agent::{
    AgentMessage, Command, EdgeCapacity, EdgeContainer, EdgeSpec, Reply, Timings, WorkspaceEstimate,
};
use offload_core::{ContainerId, ImageRef, Name, UserName, WORKSPACE_MOUNT, labels};
use offload_runtime::{ContainerRuntime, ContainerSpec, NetworkMode};
use offload_sync::Manifest;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::Api;
use crate::sync::{self, ProgressSink, PushError};

/// A container this agent holds, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub spec: EdgeSpec,
    pub generation: u64,
    pub runtime_id: Option<String>,
}

/// Settings of an agent.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    pub data_dir: PathBuf,
    pub network: NetworkMode,
    pub stop_grace_secs: u32,
    /// How often a workspace without a file watcher is rescanned for changes.
    pub rescan: Duration,
    /// How often a watched workspace is rescanned anyway, for what the watcher may miss
    /// (a file written into a new directory before its watch is in place).
    pub sweep: Duration,
    /// This device's name, as the server and the owner know it.
    pub device: String,
    /// What of this machine offload's containers may use, at most; `None` is all the
    /// engine reports.
    pub offer: Offer,
}

/// What a device offers offload (`offload agent --cpus --memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Offer {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
}

struct Running {
    held: Held,
    /// Stops the container's sync loop.
    stop: watch::Sender<bool>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

/// The edge's containers and how to reach the server and the local engine.
pub struct Edge {
    pub api: Api,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub options: EdgeOptions,
    held: Mutex<HashMap<ContainerId, Running>>,
    locks: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
    /// One push at a time per container: the sync loop and a final push never overlap.
    pushes: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
    /// What each workspace held after its last pull by this process.
    pulled: Mutex<HashMap<ContainerId, Arc<Manifest>>>,
    progress: Mutex<Option<ProgressSink>>,
    /// Copies found stopped behind the agent's back: how often each was started again,
    /// and when it may be next (a crash-loop back-off).
    restarts: Mutex<HashMap<ContainerId, (u32, Instant)>>,
    /// The channels open on the local socket, which a move tells before it stops the
    /// copy they reach (the server tells the ones it carries).
    pub local_channels: offload_runtime::channels::OpenChannels,
}

/// The copy of a container this agent runs (or is about to), as a channel needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    pub name: String,
    pub generation: u64,
    pub runtime_id: Option<String>,
}

/// The first wait before a copy that keeps stopping is started again; it doubles up to
/// [`RESTART_BACKOFF_MAX`].
const RESTART_BACKOFF: Duration = Duration::from_secs(2);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Creates `dir` and its missing parents with mode 0700, and narrows `dir` to 0700 if it
/// existed with a wider mode (one made by an older agent, or by hand): another local user
/// must not read or write the agent's state or a workspace.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes the agent's data directory and its `state` and `workspaces` directories private
/// (0700), creating what is missing, and every workspace already there open to its
/// container (see [`workspace_dir`]). Run on start.
pub fn secure_data_dir(data_dir: &Path) -> std::io::Result<()> {
    private_dir(data_dir)?;
    private_dir(&data_dir.join("state"))?;
    let workspaces = data_dir.join("workspaces");
    private_dir(&workspaces)?;
    for entry in std::fs::read_dir(&workspaces)? {
        let entry = entry?;
        // Only real directories: a symlink here is not ours to follow.
        if entry.file_type()?.is_dir() {
            workspace_dir(&entry.path())?;
        }
    }
    Ok(())
}

/// Creates a workspace (its missing parents 0700) with mode 0777, as the cloud does: it
/// is bind-mounted as the container's `/workspace`, which any user the image runs as must
/// be able to write. The private directories above it keep every other local user out.
pub fn workspace_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dir.parent() {
        private_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o7777 != 0o777 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("state path has no parent")?;
    private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The server is not trusted with what ends up in paths or run options: ids name
/// directories here, and the spec becomes a container.
pub fn check_command(command: &Command) -> anyhow::Result<()> {
    // Ids, names, owner and image reference are validated as the message is read.
    let spec = match command {
        Command::Estimate { spec } | Command::Prepare { spec } | Command::Finalize { spec, .. } => {
            spec
        }
        _ => return Ok(()),
    };
    if !spec.image_id.is_empty() {
        offload_core::ImageRef::parse(&spec.image_id)?;
    }
    if !(spec.cpus.is_finite() && spec.cpus >= 0.01 && spec.cpus <= 1024.0) {
        bail!("refusing a container with {} cpus", spec.cpus);
    }
    if spec.memory_bytes < 6 << 20 {
        bail!(
            "refusing a container with {} bytes of memory",
            spec.memory_bytes
        );
    }
    if spec.command.len() > 256 || spec.command.iter().any(|a| a.contains('\0')) {
        bail!("refusing a malformed command");
    }
    offload_core::check_env(&spec.env)?;
    Ok(())
}

/// What a labelled engine container is to this agent.
#[derive(Debug, Clone, PartialEq)]
enum Finding {
    /// Held as recorded: nothing to do.
    Known,
    /// Held under another engine id: a second copy.
    Duplicate,
    /// The held record was written before the start and has no engine id yet.
    Started(Held),
    /// Not held at all: adopted as found, for the server to judge.
    Stray(Held),
    /// Labelled as offload's but with an owner, name or image that does not parse: not
    /// made by an agent, so left alone.
    Unreadable,
}

/// What the engine container `c` is, given what this agent holds for its id.
fn classify(
    held: Option<&Held>,
    id: &ContainerId,
    c: &offload_runtime::RuntimeContainer,
) -> Finding {
    // A label that does not parse is older than any generation the server holds.
    let generation = c
        .labels
        .get(labels::GENERATION)
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0);
    match held {
        Some(h) if h.runtime_id.as_deref() == Some(c.runtime_id.as_str()) => Finding::Known,
        Some(h) if h.runtime_id.is_none() && h.generation == generation => {
            Finding::Started(h.clone())
        }
        Some(_) => Finding::Duplicate,
        None => {
            let owner = c.labels.get(labels::OWNER).map(|o| UserName::parse(o));
            let name = Name::parse(c.name.trim_start_matches('/'));
            let (Some(Ok(owner)), Ok(name), Ok(image)) = (owner, name, ImageRef::parse(&c.image))
            else {
                return Finding::Unreadable;
            };
            Finding::Stray(Held {
                spec: EdgeSpec {
                    id: id.clone(),
                    name,
                    owner,
                    image,
                    image_id: String::new(),
                    image_pullable: false,
                    command: Vec::new(),
                    env: Vec::new(),
                    cpus: 0.0,
                    memory_bytes: 0,
                },
                generation,
                runtime_id: Some(c.runtime_id.clone()),
            })
        }
    }
}

fn ms(since: Instant) -> Option<u64> {
    Some(since.elapsed().as_millis() as u64)
}

impl Edge {
    pub fn new(api: Api, runtime: Arc<dyn ContainerRuntime>, options: EdgeOptions) -> Arc<Self> {
        Arc::new(Edge {
            api,
            runtime,
            options,
            held: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            pushes: Mutex::new(HashMap::new()),
            pulled: Mutex::new(HashMap::new()),
            progress: Mutex::new(None),
            restarts: Mutex::new(HashMap::new()),
            local_channels: Default::default(),
        })
    }

    pub fn set_progress_sink(&self, sink: Option<ProgressSink>) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    fn report(&self, message: AgentMessage) {
        if let Some(sink) = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            sink(message);
        }
    }

    fn sink(&self) -> Option<ProgressSink> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn workspace(&self, id: &ContainerId) -> PathBuf {
        self.options.data_dir.join("workspaces").join(id.as_str())
    }

    /// Creates the workspace of `id` private (0700), or narrows an existing one.
    fn create_workspace(&self, id: &ContainerId) -> anyhow::Result<()> {
        let dir = self.workspace(id);
        workspace_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))
    }

    fn state_path(&self, id: &ContainerId) -> PathBuf {
        self.options
            .data_dir
            .join("state")
            .join(format!("{id}.json"))
    }

    fn acked_path(&self, id: &ContainerId) -> PathBuf {
        self.options
            .data_dir
            .join("state")
            .join(format!("{id}.acked.json"))
    }

    async fn lock(&self, id: &ContainerId) -> tokio::sync::OwnedMutexGuard<()> {
        Self::lock_in(&self.locks, id).await
    }

    async fn lock_in(
        map: &Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
        id: &ContainerId,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn save_held(&self, held: &Held) -> anyhow::Result<()> {
        write_atomic(
            &self.state_path(&held.spec.id),
            &serde_json::to_vec_pretty(held)?,
        )
    }

    fn save_acked(&self, id: &ContainerId, manifest: &Manifest) -> anyhow::Result<()> {
        write_atomic(&self.acked_path(id), &manifest.to_json()?)
    }

    fn load_acked(&self, id: &ContainerId) -> anyhow::Result<Manifest> {
        let bytes = std::fs::read(self.acked_path(id))
            .with_context(|| format!("no acknowledged manifest for {id}"))?;
        Ok(Manifest::from_json(
            &bytes,
            &offload_sync::Limits::default(),
        )?)
    }

    fn forget_state(&self, id: &ContainerId) {
        let _ = std::fs::remove_file(self.state_path(id));
        let _ = std::fs::remove_file(self.acked_path(id));
    }

    /// Loads the containers held before a restart and resumes their sync.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<()> {
        let dir = self.options.data_dir.join("state");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.ends_with(".acked.json") {
                continue;
            }
            let held: Held = match std::fs::read(entry.path())
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
            {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "ignoring unreadable state");
                    continue;
                }
            };
            tracing::info!(id = %held.spec.id, generation = held.generation, "resuming");
            self.track(held);
        }
        self.discover().await;
        Ok(())
    }

    /// Finds the engine's offload copies by their labels, not only through the state
    /// files, so no copy outlives this agent's record of it (an agent killed as it starts
    /// a container comes back without one). A copy of a container this agent holds under
    /// another engine id is a duplicate: it is stopped and removed. A copy of a container
    /// it does not hold is adopted under the generation of its label and reported like any
    /// other, so the server's fencing decides: it is released when the server no longer
    /// knows it, fenced (its late changes kept as a conflict set) when its generation is
    /// stale, and kept when the server places it here at that generation.
    pub async fn discover(self: &Arc<Self>) {
        let listed = match self.runtime.list_labelled(labels::EDGE).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the engine's offload containers");
                return;
            }
        };
        for container in listed {
            let Some(Ok(id)) = container
                .labels
                .get(labels::ID)
                .map(|id| ContainerId::parse(id))
            else {
                continue;
            };
            // Decided under the container's lock, so a copy a command is starting right
            // now is not mistaken for a stray; a busy container waits for the next round.
            let lock = self
                .locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.clone())
                .or_default()
                .clone();
            let Ok(_guard) = lock.try_lock_owned() else {
                continue;
            };
            let held = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .map(|r| r.held.clone());
            match classify(held.as_ref(), &id, &container) {
                Finding::Known if container.running => {
                    self.restarts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
                Finding::Known => self.start_again(&id, &container.runtime_id).await,
                Finding::Duplicate => {
                    tracing::warn!(%id, runtime_id = %container.runtime_id, "removing a second engine copy of a held container");
                    let _ = self
                        .runtime
                        .stop(&container.runtime_id, Duration::from_secs(1))
                        .await;
                    if let Err(e) = self.runtime.remove(&container.runtime_id).await {
                        tracing::warn!(%id, error = %e, "cannot remove a duplicate copy");
                    }
                }
                Finding::Started(mut held) => {
                    held.runtime_id = Some(container.runtime_id.clone());
                    if let Err(e) = self.save_held(&held) {
                        tracing::warn!(%id, error = %e, "cannot record the edge container");
                    }
                    self.track(held);
                }
                Finding::Stray(held) => {
                    tracing::warn!(%id, generation = held.generation, runtime_id = %container.runtime_id, "found an edge copy without a record; reporting it to the server");
                    if let Err(e) = self.save_held(&held) {
                        tracing::warn!(%id, error = %e, "cannot record the edge container");
                    }
                    self.track(held);
                }
                Finding::Unreadable => {
                    tracing::warn!(%id, runtime_id = %container.runtime_id, "leaving alone an engine container with offload's labels that no agent made");
                }
            }
        }
    }

    /// A held copy the agent did not stop is stopped (the engine restarted, the laptop
    /// rebooted): it is started again, as the cloud's reconciler does with its copies,
    /// unless it was stopped for a return or keeps dying (then it waits its back-off).
    async fn start_again(&self, id: &ContainerId, runtime_id: &str) {
        let wanted_running = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|r| !*r.stop.borrow());
        if !wanted_running {
            return;
        }
        let now = Instant::now();
        {
            let mut restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            let (count, next) = restarts.entry(id.to_owned()).or_insert((0, now));
            if now < *next {
                return;
            }
            let wait = RESTART_BACKOFF
                .saturating_mul(1 << (*count).min(16))
                .min(RESTART_BACKOFF_MAX);
            *count += 1;
            *next = now + wait;
        }
        tracing::warn!(%id, %runtime_id, "the edge copy stopped behind the agent's back; starting it again");
        if let Err(e) = self.runtime.start(runtime_id).await {
            tracing::warn!(%id, error = %e, "cannot start the edge copy again");
        }
    }

    /// What this edge offers, for the hello.
    pub async fn capacity(&self) -> EdgeCapacity {
        let info = self.runtime.host_info().await.ok();
        let free_disk_bytes = rustix::fs::statvfs(&self.options.data_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        let offer = self.options.offer;
        let cpus = info.as_ref().map_or(1.0, |i| i.cpus);
        let memory_bytes = info.as_ref().map_or(0, |i| i.memory_bytes);
        EdgeCapacity {
            cpus: offer.cpus.map_or(cpus, |c| c.min(cpus)),
            memory_bytes: offer
                .memory_bytes
                .map_or(memory_bytes, |m| m.min(memory_bytes)),
            free_disk_bytes,
            architecture: info
                .map_or_else(|| std::env::consts::ARCH.to_owned(), |i| i.architecture),
            hostname: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// The containers held, with what the engine says of them.
    pub async fn containers(&self) -> Vec<EdgeContainer> {
        let held: Vec<(Held, bool)> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| {
                (
                    r.held.clone(),
                    r.synced.load(std::sync::atomic::Ordering::SeqCst),
                )
            })
            .collect();
        // One listing answers for all of them: the status loop asks every 2 s, and an
        // inspect per container cost an idle agent with 100 of them 8% of a core.
        let listed: Option<HashMap<String, bool>> =
            match self.runtime.list_labelled(labels::EDGE).await {
                Ok(listed) => Some(
                    listed
                        .into_iter()
                        .map(|c| (c.runtime_id, c.running))
                        .collect(),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the engine's containers; asking each");
                    None
                }
            };
        let mut out = Vec::new();
        for (h, synced) in held {
            let running = match (&h.runtime_id, &listed) {
                (Some(id), Some(listed)) => listed.get(id).copied().unwrap_or(false),
                (Some(id), None) => {
                    matches!(self.runtime.inspect(id).await, Ok(Some(c)) if c.running)
                }
                (None, _) => false,
            };
            out.push(EdgeContainer {
                id: h.spec.id.clone(),
                generation: h.generation,
                runtime_id: h.runtime_id.clone(),
                running,
                synced,
            });
        }
        out
    }

    /// The engine id of a held container.
    pub fn runtime_id(&self, id: &ContainerId) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .and_then(|r| r.held.runtime_id.clone())
    }

    /// The copy of `id` this agent holds, if any.
    pub fn serving(&self, id: &ContainerId) -> Option<Serving> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|r| Serving {
                name: r.held.spec.name.to_string(),
                generation: r.held.generation,
                runtime_id: r.held.runtime_id.clone(),
            })
    }

    /// Carries out a command from the server.
    pub async fn execute(self: &Arc<Self>, command: Command) -> anyhow::Result<Reply> {
        check_command(&command)?;
        // Commands about one container run one at a time.
        let _guard = self.lock(command.container_id()).await;
        match command {
            Command::Estimate { spec } => self.estimate(&spec).await,
            Command::Prepare { spec } => self.prepare(&spec).await,
            Command::Finalize { spec, generation } => self.finalize(spec, generation).await,
            Command::Abort { container_id } => self.abort(&container_id).await,
            Command::StopForReturn {
                container_id,
                generation,
            } => self.stop_for_return(&container_id, generation).await,
            Command::Release { container_id } => self.release(&container_id).await,
            Command::Fence {
                container_id,
                generation,
            } => self.fence(&container_id, generation).await,
        }
    }

    fn last_pull(&self, id: &ContainerId) -> Option<Arc<Manifest>> {
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn remember_pull(&self, id: &ContainerId, manifest: &Manifest) {
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), Arc::new(manifest.clone()));
    }

    /// What a move here would bring: the workspace's diff against this machine's copy
    /// (kept from an earlier move, or none), and whether the image is here. Nothing is
    /// written.
    async fn estimate(&self, spec: &EdgeSpec) -> anyhow::Result<Reply> {
        let image_present = self
            .runtime
            .image(spec.image.as_str())
            .await?
            .is_some_and(|i| i.id == spec.image_id);
        let found = sync::estimate(
            &self.api,
            &spec.id,
            &self.workspace(&spec.id),
            self.last_pull(&spec.id),
        )
        .await
        .context("comparing the workspace with the cloud's failed")?;
        Ok(Reply::Estimated {
            estimate: WorkspaceEstimate {
                bytes: found.bytes.saturating_add(found.manifest_bytes),
                files: found.files,
                deletes: found.deletes,
                tree_bytes: found.tree_bytes,
                image_present,
            },
        })
    }

    /// Image present (by id), then the workspace pre-copied.
    async fn prepare(&self, spec: &EdgeSpec) -> anyhow::Result<Reply> {
        let mut timings = Timings::default();
        let image_started = Instant::now();
        timings.image = Some(self.ensure_image(spec).await?.to_owned());
        timings.image_ms = ms(image_started);
        let copy_started = Instant::now();
        let sink = self.sink();
        self.create_workspace(&spec.id)?;
        let pulled = sync::pull(
            &self.api,
            &spec.id,
            &self.workspace(&spec.id),
            self.last_pull(&spec.id),
            sink.as_ref().map(|s| (s, &spec.id)),
        )
        .await
        .context("pre-copy of the workspace failed")?;
        self.remember_pull(&spec.id, &pulled.manifest);
        timings.precopy_ms = ms(copy_started);
        timings.bytes = pulled.bytes;
        Ok(Reply::Prepared { timings })
    }

    /// Makes the engine hold the cloud's image: present, pulled, or streamed from the
    /// server when it has no registry to come from.
    async fn ensure_image(&self, spec: &EdgeSpec) -> anyhow::Result<&'static str> {
        let matches =
            |info: Option<offload_runtime::ImageInfo>| info.is_some_and(|i| i.id == spec.image_id);
        if matches(self.runtime.image(spec.image.as_str()).await?) {
            return Ok("present");
        }
        if spec.image_pullable {
            match self.runtime.pull(spec.image.as_str()).await {
                Ok(()) if matches(self.runtime.image(spec.image.as_str()).await?) => {
                    return Ok("pulled");
                }
                Ok(()) => {
                    tracing::info!(image = %spec.image, "the registry's image differs from the cloud's; streaming it")
                }
                Err(e) => {
                    tracing::info!(image = %spec.image, error = %e, "pull failed; streaming the image from the server")
                }
            }
        }
        let response = self
            .api
            .get_stream(&format!("/v1/containers/{}/image", spec.id))
            .await?;
        let total = response
            .headers()
            .get("x-offload-image-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        let sink = self.sink();
        let id = spec.id.clone();
        let mut done = 0u64;
        let mut last = Instant::now();
        let stream = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            done += chunk.len() as u64;
            if let Some(sink) = &sink
                && last.elapsed() > Duration::from_millis(200)
            {
                last = Instant::now();
                sink(AgentMessage::Progress {
                    container_id: id.clone(),
                    phase: "image".to_owned(),
                    done,
                    total,
                });
            }
            Ok(chunk)
        });
        self.runtime
            .load_image(Box::pin(stream))
            .await
            .context("loading the image streamed from the server failed")?;
        if !matches(self.runtime.image(spec.image.as_str()).await?) {
            bail!(
                "the image loaded from the server is not {} ({})",
                spec.image,
                spec.image_id
            );
        }
        Ok("streamed")
    }

    fn container_spec(&self, spec: &EdgeSpec, generation: u64) -> ContainerSpec {
        ContainerSpec {
            name: format!("offload-edge-{}", spec.id),
            image: spec.image.to_string(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            cpus: spec.cpus,
            memory_bytes: spec.memory_bytes,
            workspace: self.workspace(&spec.id),
            workspace_target: WORKSPACE_MOUNT.to_owned(),
            labels: BTreeMap::from([
                (labels::ID.to_owned(), spec.id.to_string()),
                (labels::OWNER.to_owned(), spec.owner.to_string()),
                (labels::GENERATION.to_owned(), generation.to_string()),
                (labels::EDGE.to_owned(), "true".to_owned()),
            ]),
            network: self.options.network.clone(),
            stop_grace_secs: self.options.stop_grace_secs,
            node: None,
        }
    }

    async fn remove_engine_containers(&self, id: &ContainerId) -> anyhow::Result<()> {
        for c in self.runtime.list_labelled(labels::EDGE).await? {
            if c.labels.get(labels::ID).map(String::as_str) == Some(id.as_str()) {
                self.runtime.remove(&c.runtime_id).await?;
            }
        }
        Ok(())
    }

    /// The cloud copy stopped: last delta, then start here at `generation`.
    async fn finalize(self: &Arc<Self>, spec: EdgeSpec, generation: u64) -> anyhow::Result<Reply> {
        let mut timings = Timings::default();
        self.stop_tracking(&spec.id);
        let sync_started = Instant::now();
        self.create_workspace(&spec.id)?;
        let pulled = sync::pull(
            &self.api,
            &spec.id,
            &self.workspace(&spec.id),
            self.last_pull(&spec.id),
            None,
        )
        .await
        .context("the final delta failed")?;
        self.remember_pull(&spec.id, &pulled.manifest);
        timings.final_sync_ms = ms(sync_started);
        timings.bytes = pulled.bytes;
        self.save_acked(&spec.id, &pulled.manifest)?;

        let start_started = Instant::now();
        self.remove_engine_containers(&spec.id).await?;
        // Recorded before the start: an agent killed in between finds the copy through
        // this record (and its labels) when it comes back.
        let mut held = Held {
            spec,
            generation,
            runtime_id: None,
        };
        self.save_held(&held)
            .context("cannot record the edge container")?;
        let runtime_id = match self
            .runtime
            .run(&self.container_spec(&held.spec, generation))
            .await
        {
            Ok(runtime_id) => runtime_id,
            Err(e) => {
                let _ = std::fs::remove_file(self.state_path(&held.spec.id));
                return Err(
                    anyhow::Error::from(e).context("starting the container at the edge failed")
                );
            }
        };
        timings.start_ms = ms(start_started);
        held.runtime_id = Some(runtime_id.clone());
        if let Err(e) = self.save_held(&held) {
            let _ = self.runtime.remove(&runtime_id).await;
            let _ = std::fs::remove_file(self.state_path(&held.spec.id));
            return Err(e.context("cannot record the edge container"));
        }
        self.track(held);
        Ok(Reply::Started {
            runtime_id,
            timings,
        })
    }

    async fn abort(&self, id: &ContainerId) -> anyhow::Result<Reply> {
        let known = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id);
        if !known {
            self.remove_engine_containers(id).await?;
        }
        Ok(Reply::Done)
    }

    /// Moving back: stop, push everything, confirm.
    async fn stop_for_return(
        self: &Arc<Self>,
        id: &ContainerId,
        generation: u64,
    ) -> anyhow::Result<Reply> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|r| r.held.clone())
            .with_context(|| format!("this agent does not hold container {id}"))?;
        if held.generation != generation {
            bail!(
                "this agent holds generation {} of {id}, not {generation}",
                held.generation
            );
        }
        self.stop_tracking(id);
        self.announce_return(&held);
        let mut timings = Timings::default();
        let stop_started = Instant::now();
        if let Some(runtime_id) = &held.runtime_id {
            self.runtime
                .stop(
                    runtime_id,
                    Duration::from_secs(u64::from(self.options.stop_grace_secs)),
                )
                .await?;
        }
        timings.stop_ms = ms(stop_started);
        let sync_started = Instant::now();
        match self.push_changes(&held).await {
            Ok(bytes) => timings.bytes = bytes,
            Err(e) => {
                // Leave the user a running container here, as before.
                if let Some(runtime_id) = &held.runtime_id {
                    let _ = self.runtime.start(runtime_id).await;
                }
                self.track(held);
                return Err(anyhow::anyhow!("the final push failed: {e}"));
            }
        }
        timings.final_sync_ms = ms(sync_started);
        // Stays held (stopped, synced) until the server releases it.
        self.track_stopped(held);
        Ok(Reply::Stopped { timings })
    }

    /// One push of everything that changed since the last acknowledgement.
    async fn push_changes(&self, held: &Held) -> Result<u64, PushError> {
        let id = &held.spec.id;
        let _pushing = Self::lock_in(&self.pushes, id).await;
        let acked = Arc::new(self.load_acked(id)?);
        let current = sync::scan(&self.workspace(id), Some(acked.clone())).await?;
        let delta = offload_sync::diff(&acked, &current);
        if delta.is_empty() {
            return Ok(0);
        }
        let (_, bytes) = sync::push(
            &self.api,
            id,
            &self.workspace(id),
            &current,
            delta,
            held.generation,
            false,
        )
        .await?;
        self.save_acked(id, &current)?;
        Ok(bytes)
    }

    async fn release(&self, id: &ContainerId) -> anyhow::Result<Reply> {
        self.stop_tracking(id);
        self.drop_container(id).await?;
        Ok(Reply::Done)
    }

    /// Forgets a container: its engine container and its state go, its workspace stays as
    /// a cache for the next offload.
    async fn drop_container(&self, id: &ContainerId) -> anyhow::Result<()> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.remove_engine_containers(id).await?;
        self.forget_state(id);
        Ok(())
    }

    /// This copy is stale: stop it and hand its late changes over as a conflict set.
    async fn fence(&self, id: &ContainerId, generation: u64) -> anyhow::Result<Reply> {
        self.stop_tracking(id);
        let _pushing = Self::lock_in(&self.pushes, id).await;
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|r| r.held.clone());
        let Some(held) = held else {
            self.remove_engine_containers(id).await?;
            return Ok(Reply::Done);
        };
        if held.generation >= generation {
            bail!("not stale: this copy runs generation {}", held.generation);
        }
        if let Some(runtime_id) = &held.runtime_id {
            let _ = self.runtime.stop(runtime_id, Duration::from_secs(1)).await;
        }
        // A copy found by its labels may have no acknowledged manifest: then everything in
        // its tree counts as late, which keeps too much rather than losing anything.
        let acked = Arc::new(self.load_acked(id).unwrap_or_else(|e| {
            tracing::warn!(%id, error = %e, "no acknowledged manifest; keeping the whole tree as the conflict set");
            Manifest::empty()
        }));
        let current = sync::scan(&self.workspace(id), Some(acked.clone())).await?;
        let late = sync::conflict_delta(&acked, &current);
        if !late.is_empty() {
            sync::push(
                &self.api,
                id,
                &self.workspace(id),
                &current,
                late,
                held.generation,
                true,
            )
            .await
            .map_err(|e| anyhow::anyhow!("keeping the late changes failed: {e}"))?;
            tracing::warn!(%id, "this copy was fenced; its late changes are under .offload-conflicts/ in the cloud workspace");
        }
        self.drop_container(id).await?;
        Ok(Reply::Done)
    }

    fn stop_tracking(&self, id: &ContainerId) {
        if let Some(running) = self.held.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            let _ = running.stop.send(true);
        }
    }

    /// Tells the channels open on the local socket that the copy stops for a move.
    fn announce_return(&self, held: &Held) {
        let id = &held.spec.id;
        let name = held.spec.name.as_str();
        self.local_channels.notify(id, |channel| {
            offload_runtime::channels::move_notice(channel, name, "the cloud")
        });
    }

    /// Holds a stopped container without a sync loop.
    fn track_stopped(&self, held: Held) {
        let (stop, _) = watch::channel(true);
        let id = held.spec.id.clone();
        let running = Running {
            held,
            stop,
            synced: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, running);
    }

    /// Holds a container and runs its sync loop.
    fn track(self: &Arc<Self>, held: Held) {
        let (stop, stopped) = watch::channel(false);
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = held.spec.id.clone();
        let previous = self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Running {
                held: held.clone(),
                stop,
                synced: synced.clone(),
            },
        );
        if let Some(previous) = previous {
            let _ = previous.stop.send(true);
        }
        let edge = self.clone();
        tokio::spawn(async move { edge.sync_loop(held, stopped, synced).await });
    }

    /// Pushes changes while the container runs here: on watcher events (debounced) and on
    /// a periodic rescan, retrying with backoff while the server is unreachable.
    async fn sync_loop(
        self: Arc<Self>,
        held: Held,
        mut stopped: watch::Receiver<bool>,
        synced: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        let id = held.spec.id.clone();
        let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = crate::watch::watch(&self.workspace(&id), tx);
        // With a watcher, edits arrive as events; the rescan is a slow sweep.
        let rescan = if watcher.is_some() {
            self.options.sweep
        } else {
            self.options.rescan
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            if *stopped.borrow() {
                return;
            }
            match self.push_changes(&held).await {
                Ok(bytes) => {
                    if !synced.swap(true, Ordering::SeqCst) || bytes > 0 {
                        tracing::debug!(%id, bytes, "workspace synced");
                    }
                    backoff = Duration::from_millis(500);
                }
                Err(PushError::Stale) => {
                    tracing::warn!(%id, "the server runs a newer generation of this container; waiting to be fenced");
                    synced.store(false, Ordering::SeqCst);
                    self.report(AgentMessage::Status {
                        containers: self.containers().await,
                    });
                    backoff = Duration::from_secs(5);
                }
                Err(PushError::Other(e)) => {
                    synced.store(false, Ordering::SeqCst);
                    tracing::debug!(%id, error = %e, "push failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
            let wait = if synced.load(Ordering::SeqCst) {
                rescan
            } else {
                backoff
            };
            tokio::select! {
                _ = stopped.changed() => {}
                _ = events.recv() => {
                    // Debounce: let a burst of writes settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while events.try_recv().is_ok() {}
                    synced.store(false, Ordering::SeqCst);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> EdgeSpec {
        EdgeSpec {
            id: ContainerId::parse(id).unwrap(),
            name: Name::parse("box").unwrap(),
            owner: UserName::parse("alice").unwrap(),
            image: ImageRef::parse("busybox").unwrap(),
            image_id: format!("sha256:{}", "a".repeat(64)),
            image_pullable: false,
            command: vec!["sleep".to_owned(), "1".to_owned()],
            env: vec!["COURSE=os101".to_owned()],
            cpus: 1.0,
            memory_bytes: 1 << 28,
        }
    }

    fn offline_edge(dir: &Path, runtime: &offload_runtime::fake::FakeRuntime) -> Arc<Edge> {
        let (ca_pem, _) = offload_server::tls::load_or_create_ca(&dir.join("tls")).unwrap();
        let api = Api::new(crate::client::ClientConfig {
            server: "https://127.0.0.1:1".to_owned(),
            user: "alice".to_owned(),
            admin: false,
            token: "t".to_owned(),
            ca_pem,
        })
        .unwrap();
        Edge::new(
            api,
            Arc::new(runtime.clone()),
            EdgeOptions {
                data_dir: dir.join("agent"),
                network: NetworkMode::None,
                stop_grace_secs: 1,
                rescan: Duration::from_secs(3600),
                sweep: Duration::from_secs(3600),
                device: "laptop".to_owned(),
                offer: Default::default(),
            },
        )
    }

    /// An engine container labelled as the agent labels its copies.
    async fn labelled_copy(
        runtime: &offload_runtime::fake::FakeRuntime,
        edge: &Edge,
        id: &str,
        generation: u64,
    ) -> String {
        runtime.add_image("busybox");
        runtime
            .run(&edge.container_spec(&spec(id), generation))
            .await
            .unwrap()
    }

    /// The edge engine restarted: the copy the agent holds is stopped, and the agent
    /// starts it again; a copy that keeps dying waits for its back-off.
    #[tokio::test]
    async fn a_held_copy_stopped_behind_the_agents_back_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = offload_runtime::fake::FakeRuntime::new();
        let edge = offline_edge(dir.path(), &runtime);
        let copy = labelled_copy(&runtime, &edge, "0123456789ab", 2).await;
        edge.discover().await;
        assert_eq!(edge.containers().await.len(), 1);
        runtime.kill(&copy);
        edge.discover().await;
        assert_eq!(runtime.running(), vec![copy.clone()], "started again");
        assert!(edge.containers().await[0].running);
        runtime.kill(&copy);
        edge.discover().await;
        assert!(
            runtime.running().is_empty(),
            "the back-off holds it a moment"
        );
    }

    #[tokio::test]
    async fn a_copy_without_a_record_is_reported_and_removed_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = offload_runtime::fake::FakeRuntime::new();
        let edge = offline_edge(dir.path(), &runtime);
        let stray = labelled_copy(&runtime, &edge, "0123456789ab", 3).await;
        assert!(edge.containers().await.is_empty(), "no state file names it");

        edge.discover().await;
        let reported = edge.containers().await;
        assert_eq!(
            reported,
            vec![EdgeContainer {
                id: ContainerId::parse("0123456789ab").unwrap(),
                generation: 3,
                runtime_id: Some(stray.clone()),
                running: true,
                synced: false,
            }],
            "reported under its label's generation, as not synced"
        );
        // Found again on the next round: not adopted twice.
        edge.discover().await;
        assert_eq!(edge.containers().await.len(), 1);

        // The server does not know it (removed): it goes.
        edge.execute(Command::Release {
            container_id: ContainerId::parse("0123456789ab").unwrap(),
        })
        .await
        .unwrap();
        assert!(runtime.running().is_empty());
        assert!(
            runtime
                .list_labelled(labels::EDGE)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(edge.containers().await.is_empty());
    }

    #[tokio::test]
    async fn a_second_copy_of_a_held_container_is_removed_and_a_half_started_one_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = offload_runtime::fake::FakeRuntime::new();
        let edge = offline_edge(dir.path(), &runtime);
        let kept = labelled_copy(&runtime, &edge, "0123456789ab", 2).await;
        edge.track_stopped(Held {
            spec: spec("0123456789ab"),
            generation: 2,
            runtime_id: Some(kept.clone()),
        });
        let second = labelled_copy(&runtime, &edge, "0123456789ab", 2).await;
        // Recorded before its start; the agent died before it learnt the engine id.
        let started = labelled_copy(&runtime, &edge, "ba9876543210", 4).await;
        edge.track_stopped(Held {
            spec: spec("ba9876543210"),
            generation: 4,
            runtime_id: None,
        });

        edge.discover().await;
        assert_eq!(runtime.running(), {
            let mut both = vec![kept.clone(), started.clone()];
            both.sort();
            both
        });
        assert!(
            runtime
                .calls()
                .contains(&offload_runtime::fake::Call::Remove(second))
        );
        let id = |s| ContainerId::parse(s).unwrap();
        assert_eq!(edge.runtime_id(&id("ba9876543210")), Some(started));
        assert_eq!(edge.runtime_id(&id("0123456789ab")), Some(kept));
    }

    #[test]
    fn commands_from_the_server_are_checked_before_anything_happens() {
        assert!(
            check_command(&Command::Prepare {
                spec: spec("0123456789ab")
            })
            .is_ok()
        );
        // Ids, names, owners and images that do not parse do not make a message at all.
        let valid = serde_json::to_value(Command::Prepare {
            spec: spec("0123456789ab"),
        })
        .unwrap();
        assert!(serde_json::from_value::<Command>(valid.clone()).is_ok());
        let hostile_fields = [
            ("id", "../../etc"),
            ("id", "/root"),
            ("id", "0123456789ab/.."),
            ("id", ""),
            ("name", "../x"),
            ("owner", "Root; rm"),
            ("image", "Bad Image; rm -rf /"),
        ];
        for (field, hostile) in hostile_fields {
            let mut message = valid.clone();
            message["spec"][field] = serde_json::json!(hostile);
            assert!(
                serde_json::from_value::<Command>(message).is_err(),
                "{field} = {hostile:?}"
            );
            let release = serde_json::json!({"kind": "release", "container_id": hostile});
            if field == "id" {
                assert!(
                    serde_json::from_value::<Command>(release).is_err(),
                    "{hostile:?}"
                );
            }
        }
        let mut bad = spec("0123456789ab");
        bad.cpus = f64::NAN;
        assert!(
            check_command(&Command::Finalize {
                spec: bad,
                generation: 2
            })
            .is_err()
        );
        let mut bad = spec("0123456789ab");
        bad.memory_bytes = 1;
        assert!(check_command(&Command::Prepare { spec: bad }).is_err());
        for env in [
            vec!["NOVALUE"],
            vec!["A=x\0y"],
            vec!["1A=x"],
            vec!["A=1", "A=2"],
        ] {
            let mut bad = spec("0123456789ab");
            bad.env = env.iter().map(|v| (*v).to_owned()).collect();
            assert!(
                check_command(&Command::Prepare { spec: bad }).is_err(),
                "{env:?}"
            );
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// The data directory and its state and workspaces directories are 0700 after start,
    /// both when they are new and when an older agent left them 0755; the workspaces
    /// inside are 0777 for whatever user the image runs as, reachable through those only.
    #[test]
    fn data_and_workspace_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh/offload");
        secure_data_dir(&fresh).unwrap();
        for dir in [&fresh, &fresh.join("state"), &fresh.join("workspaces")] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }

        let old = tmp.path().join("old");
        let ws = old.join("workspaces/0123456789ab");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(old.join("state")).unwrap();
        std::fs::write(ws.join("work.txt"), b"kept").unwrap();
        for (dir, m) in [
            (old.clone(), 0o755),
            (old.join("state"), 0o755),
            (old.join("workspaces"), 0o755),
            (ws.clone(), 0o700),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).unwrap();
        }
        secure_data_dir(&old).unwrap();
        for dir in [&old, &old.join("state"), &old.join("workspaces")] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        assert_eq!(mode(&ws), 0o777, "a workspace any image user can write");
        assert_eq!(std::fs::read(ws.join("work.txt")).unwrap(), b"kept");

        // A workspace made later opens to its container behind the private parents; the
        // state file writes keep theirs private.
        std::fs::set_permissions(
            old.join("workspaces"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let new_ws = old.join("workspaces/ba9876543210");
        workspace_dir(&new_ws).unwrap();
        assert_eq!(mode(&new_ws), 0o777);
        assert_eq!(mode(&old.join("workspaces")), 0o700);
        std::fs::set_permissions(old.join("state"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        write_atomic(&old.join("state/x.json"), b"{}").unwrap();
        assert_eq!(mode(&old.join("state")), 0o700);
    }
}
