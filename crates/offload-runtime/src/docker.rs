//! [`ContainerRuntime`] over the Docker Engine API (Docker, or Podman's compatible socket).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListImagesOptions, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::netns::{NetNs, NsError};
use crate::{
    ByteStream, CONFINEMENT, CONNECT_TIMEOUT, ContainerRuntime, ContainerSpec, ExecOutput,
    ExecSession, ExecSpec, HostInfo, ImageInfo, LogEntry, LogStream, LogsSpec, NetworkMode,
    OutputStream, Result, RuntimeContainer, RuntimeError, UsageReading,
};

/// Which engine answers on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFlavor {
    Docker,
    /// Podman's Docker-compatible service.
    Podman,
}

/// A Docker Engine API endpoint.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    flavor: EngineFlavor,
    /// Limits every user container gets, where the engine's defaults may not start on
    /// this host (Podman's).
    ulimits: Option<Vec<ResourcesUlimits>>,
    /// Network namespaces opened for [`ContainerRuntime::connect`], by engine id, so a
    /// connection costs no engine call while the container's init process lives.
    namespaces: Arc<Mutex<HashMap<String, Arc<NetNs>>>>,
}

/// Namespaces kept open at most before the ones whose container is gone are dropped.
const MAX_NAMESPACES: usize = 64;

impl DockerRuntime {
    /// Connects to `host` (`unix:///...`, `tcp://...`), or to `DOCKER_HOST` and then the
    /// local default socket when `host` is `None`, and negotiates the API version so older
    /// engines (Debian's Docker 20.10, Podman) accept the calls.
    pub async fn connect(host: Option<&str>) -> Result<Self> {
        let env_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let chosen = host.map(str::to_owned).or(env_host);
        let shown = chosen
            .clone()
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let connect_err = |source: bollard::errors::Error| RuntimeError::Connect {
            host: shown.clone(),
            source: Box::new(source),
        };
        let docker = match &chosen {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(connect_err)?
        // Image loads and stops with a grace period can take longer than the default.
        .with_timeout(Duration::from_secs(600));
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        let flavor = match docker.version().await {
            Ok(version)
                if version
                    .components
                    .iter()
                    .flatten()
                    .any(|c| c.name.starts_with("Podman")) =>
            {
                EngineFlavor::Podman
            }
            _ => EngineFlavor::Docker,
        };
        Ok(DockerRuntime {
            docker,
            host: shown,
            flavor,
            // Podman gives containers a million open files and processes unless told
            // otherwise, and runc cannot set that above the host's own hard limits: the
            // container would not start. Docker's containers inherit its daemon's.
            ulimits: (flavor == EngineFlavor::Podman).then(own_ulimits),
            namespaces: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The host PID of a running container's init process and the container's `User`.
    async fn init_process(&self, runtime_id: &str) -> Result<(u32, String)> {
        let inspect = match self
            .docker
            .inspect_container(runtime_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => {
                return Err(RuntimeError::NotFound {
                    id: runtime_id.to_owned(),
                });
            }
            Err(e) => return Err(engine_err("container inspect")(e)),
        };
        let state = inspect.state.unwrap_or_default();
        let pid = state
            .pid
            .filter(|p| *p > 0 && state.running == Some(true))
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| RuntimeError::NotRunning {
                id: runtime_id.to_owned(),
            })?;
        let user = inspect.config.and_then(|c| c.user).unwrap_or_default();
        Ok((pid, user))
    }

    /// The network namespace of a running container: the one opened before while its
    /// init process still lives in it, else opened through the PID the engine reports.
    async fn namespace(&self, runtime_id: &str) -> Result<Arc<NetNs>> {
        let cached = self.namespaces_lock().get(runtime_id).cloned();
        if let Some(ns) = cached.filter(|ns| ns.is_current()) {
            return Ok(ns);
        }
        let (pid, _) = self.init_process(runtime_id).await?;
        let ns = Arc::new(NetNs::open(pid).map_err(|e| RuntimeError::Engine {
            action: "open the container's network namespace",
            message: format!(
                "/proc/{pid}/ns/net: {e} (the engine's PIDs must be this host's: run offload on the engine's host)"
            ),
        })?);
        let mut namespaces = self.namespaces_lock();
        if namespaces.len() >= MAX_NAMESPACES {
            namespaces.retain(|_, ns| ns.is_current());
        }
        namespaces.insert(runtime_id.to_owned(), ns.clone());
        Ok(ns)
    }

    fn namespaces_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<NetNs>>> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint this runtime talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Which engine it is.
    pub fn flavor(&self) -> EngineFlavor {
        self.flavor
    }

    /// The bollard client, for the cluster backend in this crate.
    pub(crate) fn client(&self) -> &Docker {
        &self.docker
    }
}

pub(crate) fn engine_err(action: &'static str) -> impl Fn(bollard::errors::Error) -> RuntimeError {
    move |e| RuntimeError::Engine {
        action,
        message: describe(&e),
    }
}

pub(crate) fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// This process's hard limits on open files and processes, for containers of an engine
/// that does not bring its own within them. Processes are also held to the kernel's
/// `pid_max`: no more can exist, and Podman's service, whose limits its containers
/// cannot exceed, runs with no more than that.
fn own_ulimits() -> Vec<ResourcesUlimits> {
    use rustix::process::{Resource, getrlimit};
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    [
        ("nofile", Resource::Nofile, None),
        ("nproc", Resource::Nproc, pid_max),
    ]
    .into_iter()
    .filter_map(|(name, resource, cap)| {
        let hard = getrlimit(resource).maximum?;
        let hard = i64::try_from(cap.map_or(hard, |cap| hard.min(cap))).ok()?;
        Some(ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(hard),
            hard: Some(hard),
        })
    })
    .collect()
}

/// What a failed create or start means, with what to do where the engine's own words
/// do not say it: Podman without `catatonit` cannot run a container with an init, and
/// every user container has one.
fn create_failure(action: &'static str, e: &bollard::errors::Error) -> RuntimeError {
    let message = describe(e);
    if message.contains("container-init binary not found") {
        return RuntimeError::Engine {
            action,
            message: format!(
                "{message}: Podman runs a container's init from the catatonit package, \
                 which offload needs (every container runs under an init); install it with \
                 `apt-get install catatonit`"
            ),
        };
    }
    RuntimeError::Engine { action, message }
}

/// The HostConfig of a user container: limits, the workspace mount, the
/// [`CONFINEMENT`] and nothing else.
fn host_config(spec: &ContainerSpec, ulimits: Option<&[ResourcesUlimits]>) -> HostConfig {
    let network_mode = match &spec.network {
        NetworkMode::Default => None,
        NetworkMode::None => Some("none".to_owned()),
        NetworkMode::Named(name) => Some(name.clone()),
    };
    let rules = CONFINEMENT;
    HostConfig {
        nano_cpus: Some((spec.cpus * 1e9).round() as i64),
        memory: Some(spec.memory_bytes as i64),
        // No swap beyond the memory limit, so the limit means what it says.
        memory_swap: Some(spec.memory_bytes as i64),
        pids_limit: Some(rules.pids_limit),
        init: Some(rules.init),
        privileged: Some(rules.privileged),
        readonly_rootfs: Some(false),
        security_opt: rules
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_owned()]),
        cap_drop: Some(rules.cap_drop.iter().map(|c| (*c).to_owned()).collect()),
        network_mode,
        ulimits: ulimits.map(<[ResourcesUlimits]>::to_vec),
        mounts: Some(vec![Mount {
            target: Some(spec.workspace_target.clone()),
            source: Some(spec.workspace.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn summary_to_container(s: bollard::models::ContainerSummary) -> Option<RuntimeContainer> {
    let status = s
        .state
        .map(|st| format!("{st:?}").to_lowercase())
        .unwrap_or_default();
    Some(RuntimeContainer {
        runtime_id: s.id?,
        name: s
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: s.image.unwrap_or_default(),
        labels: s.labels.unwrap_or_default().into_iter().collect(),
        running: status == "running",
        status,
        node: None,
    })
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<()> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Connect {
                host: self.host.clone(),
                source: Box::new(e),
            })
    }

    async fn image(&self, image: &str) -> Result<Option<ImageInfo>> {
        match self.docker.inspect_image(image).await {
            Ok(info) => Ok(Some(ImageInfo {
                id: info.id.unwrap_or_default(),
                architecture: info.architecture,
                repo_digests: info.repo_digests.unwrap_or_default(),
                size: info.size.unwrap_or(0).max(0) as u64,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(engine_err("image inspect")(e)),
        }
    }

    async fn host_info(&self) -> Result<HostInfo> {
        let info = self.docker.info().await.map_err(engine_err("info"))?;
        Ok(HostInfo {
            cpus: info.ncpu.unwrap_or(1).max(1) as f64,
            memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
            architecture: match info.architecture.as_deref() {
                Some("x86_64") => "amd64".to_owned(),
                Some("aarch64") => "arm64".to_owned(),
                Some(other) => other.to_owned(),
                None => std::env::consts::ARCH.to_owned(),
            },
        })
    }

    async fn images(&self) -> Result<Vec<String>> {
        let list = self
            .docker
            .list_images(None::<ListImagesOptions>)
            .await
            .map_err(engine_err("image list"))?;
        Ok(list
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t != "<none>:<none>")
            .collect())
    }

    async fn export_image(&self, image: &str) -> Result<ByteStream> {
        // Fail early and clearly for a missing image instead of mid-stream.
        if self.image(image).await?.is_none() {
            return Err(RuntimeError::ImageUnavailable {
                image: image.to_owned(),
                message: "not on this engine".to_owned(),
            });
        }
        let stream = self
            .docker
            .export_image(image)
            .map(|chunk| chunk.map_err(|e| std::io::Error::other(describe(&e))));
        Ok(Box::pin(stream))
    }

    async fn load_image(&self, archive: ByteStream) -> Result<()> {
        let options = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut progress = self.docker.import_image_stream(options, archive, None);
        while let Some(step) = progress.next().await {
            step.map_err(engine_err("image load"))?;
        }
        Ok(())
    }

    async fn usage(&self, runtime_id: &str) -> Result<UsageReading> {
        // One reading, without the engine waiting a second for a second one: the monitor
        // computes rates between its own ticks.
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(runtime_id, Some(options));
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(e)) if is_not_found(&e) => {
                return Err(RuntimeError::NotFound {
                    id: runtime_id.to_owned(),
                });
            }
            Some(Err(e)) => return Err(engine_err("stats")(e)),
            None => {
                return Err(RuntimeError::Engine {
                    action: "stats",
                    message: "no reading".to_owned(),
                });
            }
        };
        let cpu = stats.cpu_stats.unwrap_or_default();
        let memory = stats.memory_stats.unwrap_or_default();
        // Page cache counts in `usage`; what the container needs is usage minus cache.
        let cache = memory
            .stats
            .as_ref()
            .and_then(|s| {
                s.get("total_inactive_file")
                    .or_else(|| s.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Ok(UsageReading {
            cpu_total_ns: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
            system_total_ns: cpu.system_cpu_usage.unwrap_or(0),
            online_cpus: cpu.online_cpus.unwrap_or(1),
            memory_bytes: memory.usage.unwrap_or(0).saturating_sub(cache),
        })
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| RuntimeError::ImageUnavailable {
                image: image.to_owned(),
                message: describe(&e),
            })?;
        }
        Ok(())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<String> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect::<HashMap<_, _>>()),
            stop_timeout: Some(i64::from(spec.stop_grace_secs)),
            working_dir: Some(spec.workspace_target.clone()),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config(spec, self.ulimits.as_deref())),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    RuntimeError::ImageUnavailable {
                        image: spec.image.clone(),
                        message: describe(&e),
                    }
                } else {
                    create_failure("container create", &e)
                }
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(create_failure("container start", &e));
        }
        Ok(created.id)
    }

    async fn start(&self, runtime_id: &str) -> Result<()> {
        match self.docker.start_container(runtime_id, None).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_modified(&e) => Ok(()),
            Err(e) if is_not_found(&e) => Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            }),
            Err(e) => Err(create_failure("container start", &e)),
        }
    }

    async fn stop(&self, runtime_id: &str, grace: Duration) -> Result<()> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        match self.docker.stop_container(runtime_id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_modified(&e) => Ok(()),
            Err(e) if is_not_found(&e) => Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            }),
            Err(e) => Err(engine_err("container stop")(e)),
        }
    }

    async fn remove(&self, runtime_id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self
            .docker
            .remove_container(runtime_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_err("container remove")(e)),
        }
    }

    async fn inspect(&self, runtime_id: &str) -> Result<Option<RuntimeContainer>> {
        match self
            .docker
            .inspect_container(runtime_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let config = c.config.unwrap_or_default();
                Ok(Some(RuntimeContainer {
                    runtime_id: c.id.unwrap_or_default(),
                    name: c
                        .name
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    image: config.image.unwrap_or_default(),
                    labels: config
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .collect::<BTreeMap<_, _>>(),
                    running: state.running.unwrap_or(false),
                    status: state
                        .status
                        .map(|s| format!("{s:?}").to_lowercase())
                        .unwrap_or_default(),
                    node: None,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(engine_err("container inspect")(e)),
        }
    }

    async fn list_labelled(&self, key: &str) -> Result<Vec<RuntimeContainer>> {
        let filters = HashMap::from([("label", vec![key])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_err("container list"))?;
        Ok(list.into_iter().filter_map(summary_to_container).collect())
    }

    async fn exec(&self, runtime_id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        let options = CreateExecOptions {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.tty),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            cmd: Some(spec.command.clone()),
            working_dir: spec.working_dir.clone(),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(runtime_id, options)
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    RuntimeError::NotFound {
                        id: runtime_id.to_owned(),
                    }
                } else {
                    engine_err("exec create")(e)
                }
            })?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: spec.tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(engine_err("exec start"))?;
        match started {
            StartExecResults::Attached { output, input } => {
                let output = output.filter_map(|item| async move {
                    match item {
                        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                            Some(Ok(ExecOutput::Stdout(message.to_vec())))
                        }
                        Ok(LogOutput::StdErr { message }) => {
                            Some(Ok(ExecOutput::Stderr(message.to_vec())))
                        }
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(engine_err("exec output")(e))),
                    }
                });
                Ok(ExecSession {
                    exec_id: created.id,
                    output: Box::pin(output),
                    input,
                })
            }
            StartExecResults::Detached => Err(RuntimeError::Engine {
                action: "exec start",
                message: "the engine did not attach to the command".to_owned(),
            }),
        }
    }

    async fn exec_resize(&self, exec_id: &str, cols: u16, rows: u16) -> Result<()> {
        self.docker
            .resize_exec(
                exec_id,
                ResizeExecOptions {
                    height: rows,
                    width: cols,
                },
            )
            .await
            .map_err(engine_err("exec resize"))
    }

    async fn filesystem(&self, runtime_id: &str) -> Result<crate::sftp::ContainerFs> {
        let (pid, user) = self.init_process(runtime_id).await?;
        let (pidfd, root) = open_process_root(pid).map_err(|e| RuntimeError::Engine {
            action: "open the container's filesystem",
            message: format!(
                "/proc/{pid}/root: {e} (offload reaches a container's files through its init \
                 process: run it as root on the engine's host)"
            ),
        })?;
        // The PID was the init's when the engine answered; it still is now, so the root
        // opened in between is the container's and not a process's that took the PID over.
        let (again, _) = self.init_process(runtime_id).await?;
        if again != pid {
            return Err(RuntimeError::NotRunning {
                id: runtime_id.to_owned(),
            });
        }
        Ok(crate::sftp::ContainerFs {
            root,
            user,
            stopped: process_exit(pidfd),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let inspect = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(engine_err("exec inspect"))?;
        if inspect.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(inspect.exit_code)
    }

    async fn logs(&self, runtime_id: &str, spec: &LogsSpec) -> Result<LogStream> {
        // The engine takes whole seconds; the entries' own times cut to the nanosecond.
        let since_secs = spec.since_ns / 1_000_000_000;
        let tail = spec
            .tail
            .map_or_else(|| "all".to_owned(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(spec.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(since_secs).unwrap_or(i32::MAX))
            .tail(&tail)
            .build();
        // A missing container is told apart before the stream starts: a stream that
        // follows a silent container yields nothing for as long as it is silent.
        if self.inspect(runtime_id).await?.is_none() {
            return Err(RuntimeError::NotFound {
                id: runtime_id.to_owned(),
            });
        }
        let id = runtime_id.to_owned();
        let map = move |item: std::result::Result<LogOutput, bollard::errors::Error>| {
            let (kind, message) = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    (OutputStream::Stdout, message)
                }
                Ok(LogOutput::StdErr { message }) => (OutputStream::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => return None,
                Err(e) if is_not_found(&e) => {
                    return Some(Err(RuntimeError::NotFound { id: id.clone() }));
                }
                Err(e) => return Some(Err(engine_err("container logs")(e))),
            };
            log_entry(kind, &message).map(Ok)
        };
        let since = spec.since_ns;
        let entries = self
            .docker
            .logs(runtime_id, Some(options))
            .filter_map(move |item| futures::future::ready(map(item)))
            .filter(move |entry| {
                let keep = entry.as_ref().map_or(true, |e| e.timestamp_ns >= since);
                futures::future::ready(keep)
            });
        Ok(Box::pin(entries))
    }

    async fn exec_signal(&self, exec_id: &str, signal: i32) -> Result<()> {
        let refused = |message: String| RuntimeError::Engine {
            action: "exec signal",
            message,
        };
        let signal = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| refused(format!("{signal} is not a signal")))?;
        let running_pid = |inspect: &bollard::models::ExecInspectResponse| {
            inspect
                .pid
                .filter(|pid| *pid > 0 && inspect.running.unwrap_or(false))
                .and_then(|pid| i32::try_from(pid).ok())
                .and_then(rustix::process::Pid::from_raw)
        };
        // An exec the engine has started but whose process is not running yet has neither
        // a PID nor an exit code: a signal sent right after the command started waits for
        // it (up to 5 s) rather than being lost.
        let mut pid = None;
        for _ in 0..100 {
            let inspect = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(engine_err("exec inspect"))?;
            pid = running_pid(&inspect);
            let starting = pid.is_none() && inspect.exit_code.is_none();
            if !starting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(pid) = pid else {
            return Ok(());
        };
        // The engine reports the host PID of the exec's process. A pidfd pins the
        // process; the exec still running with the same PID after it was opened means
        // the pidfd is that process and not one that took the PID over since.
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(()),
            Err(e) => {
                return Err(refused(format!(
                    "cannot reach the exec's process {}: {e} (offload signals it through the engine's host PIDs: run it as root on the engine's host)",
                    pid.as_raw_nonzero()
                )));
            }
        };
        let again = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(engine_err("exec inspect"))?;
        if running_pid(&again) != Some(pid) {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&pidfd, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(refused(format!("cannot signal the exec's process: {e}"))),
        }
    }

    async fn connect(&self, runtime_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let ns = self.namespace(runtime_id).await?;
        match ns.connect(port, CONNECT_TIMEOUT).await {
            Ok(stream) => Ok(stream),
            Err(NsError::Connect(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(RuntimeError::NothingListens { port })
            }
            Err(NsError::Connect(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(RuntimeError::Port {
                    port,
                    message: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                })
            }
            Err(NsError::Connect(e)) => Err(RuntimeError::Port {
                port,
                message: e.to_string(),
            }),
            Err(NsError::Enter(e)) => Err(RuntimeError::Port {
                port,
                message: format!(
                    "entering the container's network namespace failed ({e}); offload needs CAP_SYS_ADMIN for it (run it as root)"
                ),
            }),
        }
    }
}

/// One message of the engine's log stream (asked with timestamps) as a [`LogEntry`]:
/// the engine puts the entry's RFC 3339 time and a space before its bytes.
fn log_entry(stream: OutputStream, message: &[u8]) -> Option<LogEntry> {
    let space = message.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&message[..space]).ok()?;
    let timestamp_ns = offload_core::logs::parse_timestamp(stamp)?;
    Some(LogEntry {
        stream,
        timestamp_ns,
        bytes: message[space + 1..].to_vec(),
    })
}

/// A pidfd of process `pid` and a handle on its root directory (`/proc/PID/root`, the
/// one path opened on the host: the kernel's own view of the process).
fn open_process_root(pid: u32) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("PID out of range"))?;
    let pid_handle =
        rustix::process::Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("PID 0"))?;
    let pidfd = rustix::process::pidfd_open(pid_handle, rustix::process::PidfdFlags::empty())?;
    let root = rustix::fs::open(
        format!("/proc/{pid}/root").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((pidfd, root))
}

/// Completes when the process of `pidfd` has exited (a pidfd turns readable then). It is
/// checked four times a second without blocking, which is prompt enough to end a file
/// transfer and needs neither a thread nor an unsafe registration with the reactor.
fn process_exit(pidfd: std::os::fd::OwnedFd) -> futures::future::BoxFuture<'static, ()> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    Box::pin(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&zero)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) | Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "offload-x".into(),
            image: "busybox".into(),
            command: vec![],
            env: vec![],
            cpus: 1.5,
            memory_bytes: 1 << 28,
            workspace: "/srv/offload/workspaces/x".into(),
            workspace_target: "/workspace".into(),
            labels: Default::default(),
            network: NetworkMode::None,
            stop_grace_secs: 3,
            node: None,
        }
    }

    /// The engine's log lines carry their time in front; an entry keeps its bytes
    /// (spaces, an empty line) exactly.
    #[test]
    fn log_messages_split_into_their_time_and_bytes() {
        let entry = log_entry(
            OutputStream::Stderr,
            b"2024-05-01T12:34:56.123456789Z  two spaces\n",
        )
        .unwrap();
        assert_eq!(entry.stream, OutputStream::Stderr);
        assert_eq!(entry.timestamp_ns, 1_714_566_896_123_456_789);
        assert_eq!(entry.bytes, b" two spaces\n");
        let empty = log_entry(OutputStream::Stdout, b"2024-05-01T12:34:56Z \n").unwrap();
        assert_eq!(empty.bytes, b"\n");
        assert!(log_entry(OutputStream::Stdout, b"no time here\n").is_none());
        assert!(log_entry(OutputStream::Stdout, b"").is_none());
    }

    /// Every user container loses CAP_MKNOD (no device nodes in the workspace the host
    /// reads), is never privileged, gains no privileges and mounts only its workspace.
    #[test]
    fn user_containers_are_confined() {
        let config = host_config(&spec(), None);
        assert!(
            config.ulimits.is_none(),
            "Docker's containers keep its limits"
        );
        assert_eq!(config.cap_drop, Some(vec!["MKNOD".to_owned()]));
        assert_eq!(config.privileged, Some(false));
        assert_eq!(
            config.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(config.init, Some(true));
        assert_eq!(config.pids_limit, Some(4096));
        assert!(config.cap_add.is_none());
        assert!(config.binds.is_none() && config.devices.is_none());
        let mounts = config.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/srv/offload/workspaces/x")
        );
        assert_eq!(mounts[0].target.as_deref(), Some("/workspace"));
        assert_eq!(config.network_mode.as_deref(), Some("none"));
    }

    /// On Podman, a user container's open files and processes are limited to what this
    /// host lets its own processes have, so runc can set them.
    #[test]
    fn podman_containers_get_limits_the_host_allows() {
        let limits = own_ulimits();
        let config = host_config(&spec(), Some(&limits));
        let set = config.ulimits.unwrap();
        let limit = |name: &str| set.iter().find(|u| u.name.as_deref() == Some(name));
        let own = |resource| rustix::process::getrlimit(resource).maximum;
        if let Some(hard) = own(rustix::process::Resource::Nofile) {
            let nofile = limit("nofile").unwrap();
            assert_eq!(
                (nofile.soft, nofile.hard),
                (Some(hard as i64), Some(hard as i64))
            );
        }
        if let Some(hard) = own(rustix::process::Resource::Nproc) {
            let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let nproc = limit("nproc").unwrap();
            assert_eq!(nproc.hard, Some((hard as i64).min(pid_max)));
            assert_eq!(nproc.soft, nproc.hard);
        }
    }

    /// Podman without catatonit: the error says what to install.
    #[test]
    fn a_missing_catatonit_says_what_to_install() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "container-init binary not found on the host: stat /usr/libexec/podman/catatonit: no such file or directory".into(),
        };
        let message = create_failure("container create", &e).to_string();
        assert!(message.contains("apt-get install catatonit"), "{message}");
        let other = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "no space left on device".into(),
        };
        assert_eq!(
            create_failure("container create", &other).to_string(),
            "container engine refused container create: no space left on device"
        );
    }
}
