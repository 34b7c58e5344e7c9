//! The controller: every action on containers, checked against the caller, written to
//! the store before the engine is touched (I4), and the start-up reconciliation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload_core::MoveRecord;
use offload_core::api::{
    CloudDrainReport, ContainerView, DrainStay, MonitorView, MoveRequest, MoveStatus, QueryView,
    StartRequest,
};
use offload_core::events::EventBody;
use offload_core::{
    ContainerId, ContainerRecord, ImageRef, Location, Name, State, UserName, WORKSPACE_MOUNT,
    labels, parse_memory,
};
use offload_monitor::Answer;
use offload_runtime::{ContainerRuntime, ContainerSpec, NetworkMode, RuntimeContainer};
use offload_store::{Principal, Store, StoreError, TokenKind};
use offload_sync::protocol::{PushReport, PushRequest};

pub use crate::clock::{Clock, now};
use crate::config::{Limits, MIN_MEMORY, ServerConfig};
use crate::error::ActionError;
use crate::events::EventLog;
use crate::hub::AgentHub;
use crate::metrics::Metrics;
use crate::monitor::{MonitorLoop, MonitorParts, MonitorStatus, MoveStarter};
use crate::queries::Queries;
use crate::sizes::{DiskSizer, WorkspaceSizes};
use crate::workspace::Workspaces;

/// Executes actions against the store and the cloud engine.
pub struct Controller {
    store: Arc<Store>,
    runtime: Arc<dyn ContainerRuntime>,
    config: ServerConfig,
    limits: Limits,
    network: NetworkMode,
    workspaces: PathBuf,
    /// One lock per container, so actions on the same container do not interleave.
    locks: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) hub: Arc<AgentHub>,
    /// The user channels (exec, ports) open to each container, which a move tells
    /// before it cuts them.
    pub(crate) channels: offload_runtime::channels::OpenChannels,
    pub(crate) sync: Arc<Workspaces>,
    pub(crate) queries: Arc<Queries>,
    /// The event stream of `GET /v1/events`.
    pub(crate) events: Arc<EventLog>,
    /// When each user was last noted as seen in the store.
    seen: Mutex<HashMap<UserName, i64>>,
    /// What the monitor last saw.
    pub(crate) monitor: Arc<MonitorStatus>,
    pub(crate) sizes: Arc<WorkspaceSizes>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) restarts: crate::reconciler::RestartBackoff,
    /// Lost cluster nodes and the containers the node-loss step holds.
    pub(crate) node_watch: crate::node_loss::NodeWatch,
    /// Workspaces set aside from copies on lost nodes.
    pub(crate) fences: crate::fenced::FencedWorkspaces,
    pub(crate) started_at: tokio::time::Instant,
    pub(crate) clock: Clock,
}

impl Controller {
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<dyn ContainerRuntime>,
        config: ServerConfig,
    ) -> Result<Self, ActionError> {
        let limits = config
            .validate()
            .map_err(|e| ActionError::BadRequest(e.to_string()))?;
        let network = NetworkMode::parse(&config.network)
            .ok_or_else(|| ActionError::BadRequest("invalid network setting".into()))?;
        let workspaces = config.workspace_dir();
        let sync = Arc::new(Workspaces::new(
            workspaces.clone(),
            config.data_dir.join("staging"),
        ));
        std::fs::create_dir_all(&workspaces).map_err(|e| {
            ActionError::Internal(format!("cannot create {}: {e}", workspaces.display()))
        })?;
        let clock = Clock::new();
        let hub = Arc::new(AgentHub::new());
        let metrics = Arc::new(Metrics::new());
        let events = Arc::new(EventLog::new(store.clone(), clock));
        let queries = Arc::new(Queries::new(
            store.clone(),
            hub.clone(),
            events.clone(),
            metrics.clone(),
            clock,
            Duration::from_secs_f64(config.monitor.query_deadline_secs),
        ));
        let draining = store
            .setting(CLOUD_DRAIN)
            .map_err(|e| ActionError::Internal(e.to_string()))?
            .and_then(|since| since.parse::<i64>().ok());
        let monitor = Arc::new(MonitorStatus::new(config.monitor.source, draining));
        let node_watch = crate::node_loss::NodeWatch::new(Duration::from_secs_f64(
            config.swarm.node_lost_grace_secs,
        ));
        let fences = crate::fenced::FencedWorkspaces::new(workspaces.clone());
        Ok(Controller {
            store,
            runtime,
            config,
            limits,
            network,
            workspaces,
            locks: Mutex::new(HashMap::new()),
            hub,
            channels: Default::default(),
            sync,
            queries,
            events,
            seen: Mutex::new(HashMap::new()),
            monitor,
            sizes: Arc::new(WorkspaceSizes::new(Arc::new(DiskSizer::default()))),
            metrics,
            restarts: Default::default(),
            node_watch,
            fences,
            started_at: tokio::time::Instant::now(),
            clock,
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Runs a store operation on a blocking thread.
    pub async fn db<T, F>(&self, f: F) -> Result<T, ActionError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        crate::db::call(&self.store, f).await
    }

    /// The monitor loop over this controller's store, engine and agents; its moves
    /// start here.
    pub fn monitor_loop(self: &Arc<Self>) -> Result<MonitorLoop, ActionError> {
        MonitorLoop::new(
            self.config.monitor.clone(),
            MonitorParts {
                store: self.store.clone(),
                runtime: self.runtime.clone(),
                workspaces: self.sync.clone(),
                hub: self.hub.clone(),
                metrics: self.metrics.clone(),
                queries: self.queries.clone(),
                sizes: self.sizes.clone(),
                status: self.monitor.clone(),
                moves: Arc::new(self.clone()),
                clock: self.clock,
                cloud_moves: self.config.cloud_moves,
                events: self.events.clone(),
                recovery_warn_secs: self.config.recovery_point_warn_secs,
            },
        )
    }

    /// The caller's queries, newest first.
    pub async fn queries(&self, who: &Principal) -> Result<Vec<QueryView>, ActionError> {
        let records = self.list(who).await?;
        self.queries.of(who, &records).await
    }

    /// `offload accept` / `offload decline`: an accepted query's move starts at once.
    pub async fn answer(
        self: &Arc<Self>,
        who: &Principal,
        query_id: &str,
        answer: Answer,
    ) -> Result<QueryView, ActionError> {
        let query = self.queries.answer(who, query_id, answer).await?;
        if answer == Answer::Accept
            && let Some(to_node) = &query.to_node
        {
            if let Err(e) = self
                .relocate(&query.container_id, Some(to_node), &query.reason)
                .await
            {
                tracing::warn!(query = %query.id, error = %e, "cannot start the accepted move to another node");
            }
        } else if answer == Answer::Accept {
            let request = MoveRequest {
                to: Location::Edge,
                force: false,
                device: query.device.clone(),
            };
            let owner = Principal {
                user: query.owner.clone(),
                admin: false,
            };
            if let Err(e) = self
                .request_move(&owner, query.container_id.as_str(), request)
                .await
            {
                tracing::warn!(query = %query.id, error = %e, "cannot start the accepted move");
            }
        }
        let name = self
            .reload(&query.container_id)
            .await
            .map(|r| r.name.to_string())
            .unwrap_or_default();
        Ok(crate::queries::view(&query, &name))
    }

    /// `offload admin pressure`: ask now, as if pressure were seen, every running cloud
    /// container whose owner has a connected agent, no pending query and no recent
    /// decline (as the policy would).
    pub async fn ask_now(
        &self,
        who: &Principal,
        user: Option<UserName>,
    ) -> Result<Vec<QueryView>, ActionError> {
        require_admin(who)?;
        let reason = "the operator asked for room on the cloud host now";
        Ok(self.ask_owners(user, reason).await?.0)
    }

    /// Drains the whole cloud (admin only): from now on nothing new starts there and
    /// nothing returns to it, and every owner whose agent is connected is asked now to
    /// take their running containers. Until [`Controller::end_cloud_drain`]; a repeated
    /// drain asks again whoever was not asked.
    pub async fn drain_cloud(&self, who: &Principal) -> Result<CloudDrainReport, ActionError> {
        require_admin(who)?;
        let since = match self.monitor.draining() {
            Some(since) => since,
            None => {
                let since = now();
                let value = since.to_string();
                self.db(move |s| s.set_setting(CLOUD_DRAIN, Some(&value)))
                    .await?;
                self.monitor.set_draining(Some(since));
                since
            }
        };
        tracing::warn!(by = %who.user, "the cloud is draining: nothing new starts");
        self.hub.notice_all(
            "the operator is draining the cloud: no new containers start there for now",
        );
        let reason =
            "the operator is draining the cloud: please take this container to your machine";
        let (asked, not_asked) = self.ask_owners(None, reason).await?;
        Ok(CloudDrainReport {
            since,
            asked,
            not_asked,
        })
    }

    /// Ends a drain of the cloud (admin only); `false` if there was none.
    pub async fn end_cloud_drain(&self, who: &Principal) -> Result<bool, ActionError> {
        require_admin(who)?;
        let was = self.monitor.draining().is_some();
        self.db(|s| s.set_setting(CLOUD_DRAIN, None)).await?;
        self.monitor.set_draining(None);
        if was {
            tracing::info!(by = %who.user, "the cloud drain ended");
        }
        Ok(was)
    }

    /// Makes a new API token for `user`, valid until `expires_at` (for good when `None`),
    /// and returns it; the store keeps only its hash.
    pub async fn issue_api_token(
        &self,
        user: &UserName,
        expires_at: Option<i64>,
    ) -> Result<String, ActionError> {
        let token = crate::auth::random_secret();
        let stored = crate::auth::token_hash(&token);
        let user = user.clone();
        self.db(move |s| s.insert_token(&stored, &user, TokenKind::Api, now(), expires_at))
            .await?;
        Ok(token)
    }

    /// Refuses what would add to a drained cloud.
    pub(crate) fn refuse_while_draining(&self, what: &str) -> Result<(), ActionError> {
        match self.monitor.draining() {
            None => Ok(()),
            Some(_) => Err(ActionError::Conflict(format!(
                "the operator is draining the cloud: {what} until the drain ends"
            ))),
        }
    }

    /// Asks the owners of running cloud containers (of `user`, or everyone's) whose agent
    /// is connected; the queries asked, and the containers not asked with why.
    async fn ask_owners(
        &self,
        user: Option<UserName>,
        reason: &str,
    ) -> Result<(Vec<QueryView>, Vec<DrainStay>), ActionError> {
        let records = self.db(|s| s.containers(None)).await?;
        let pending = self.queries.pending().await?;
        let cooldown = Duration::from_secs_f64(self.config.monitor.decline_cooldown_secs);
        let mut asked = Vec::new();
        let mut not_asked = Vec::new();
        for record in records {
            if record.location != Location::Cloud
                || user.as_ref().is_some_and(|u| *u != record.owner)
            {
                continue;
            }
            let why = if record.state != State::Running {
                Some(format!("it is {}", record.state.as_str()))
            } else if !self.hub.connected(&record.owner) {
                Some(format!("{}'s agent is not connected", record.owner))
            } else if pending.iter().any(|q| q.container_id == record.id) {
                Some("a query about it is open".to_owned())
            } else if self.queries.declined_recently(&record, cooldown).await? {
                Some(format!("{} declined a move recently", record.owner))
            } else {
                None
            };
            if let Some(reason) = why {
                not_asked.push(DrainStay {
                    id: record.id.to_string(),
                    reason,
                });
                continue;
            }
            let bytes = self
                .sizes
                .last(&record.id)
                .or_else(|| self.sync.cached_bytes(&record.id))
                .unwrap_or(0);
            let device = match self.choose_device(&record, None).await {
                Ok(device) => device,
                Err(e) => {
                    not_asked.push(DrainStay {
                        id: record.id.to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let query = self
                .queries
                .ask(&record, reason, bytes, None, Some(&device))
                .await?;
            asked.push(crate::queries::view(&query, record.name.as_str()));
        }
        Ok((asked, not_asked))
    }

    /// The Prometheus exposition.
    pub async fn metrics_text(&self) -> Result<String, ActionError> {
        let records = self.db(|s| s.containers(None)).await?;
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        for r in &records {
            *counts
                .entry((r.location.as_str().to_owned(), r.state.as_str().to_owned()))
                .or_default() += 1;
        }
        let counts: Vec<(String, String, i64)> =
            counts.into_iter().map(|((l, s), n)| (l, s, n)).collect();
        let points: Vec<(String, String, u64)> = records
            .iter()
            .filter_map(|r| {
                self.recovery_point(r)
                    .map(|secs| (r.id.to_string(), r.owner.to_string(), secs))
            })
            .collect();
        self.metrics.set_recovery_points(&points);
        Ok(self.metrics.render(&counts, self.hub.agents().len()))
    }

    /// The monitor's last view, for `offload top`.
    pub async fn monitor_view(&self) -> Result<MonitorView, ActionError> {
        let pending = self.queries.pending().await?.len();
        Ok(self.monitor.view(pending))
    }

    fn lock_of(&self, id: &ContainerId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.clone()).or_default().clone()
    }

    pub(crate) async fn lock(&self, id: &ContainerId) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock_of(id).lock_owned().await
    }

    /// The container's lock if nobody holds it now (a move, an action).
    pub(crate) fn try_lock(&self, id: &ContainerId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.lock_of(id).try_lock_owned().ok()
    }

    /// The host directory holding a container's workspace.
    pub fn workspace_dir(&self, id: &ContainerId) -> PathBuf {
        self.workspaces.join(id.as_str())
    }

    /// Finds one of the caller's containers by id or name. Another user's container is
    /// reported exactly as a missing one (I3).
    pub async fn find(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<ContainerRecord, ActionError> {
        let owner = who.user.clone();
        let key = id_or_name.to_owned();
        self.db(move |s| s.find_container(&owner, &key))
            .await?
            .ok_or_else(|| ActionError::NotFound(id_or_name.to_owned()))
    }

    pub async fn list(&self, who: &Principal) -> Result<Vec<ContainerRecord>, ActionError> {
        let owner = who.user.clone();
        self.db(move |s| s.containers(Some(&owner))).await
    }

    fn validate_start(
        &self,
        who: &Principal,
        req: &StartRequest,
    ) -> Result<(ImageRef, Name, f64, u64), ActionError> {
        let bad = |m: String| ActionError::BadRequest(m);
        let image = ImageRef::parse(&req.image).map_err(|e| bad(e.to_string()))?;
        let name = match &req.name {
            Some(n) => Name::parse(n).map_err(|e| bad(e.to_string()))?,
            None => Name::parse(&format!(
                "{}-{}",
                who.user,
                &ContainerId::random().as_str()[..6]
            ))
            .map_err(|e| bad(e.to_string()))?,
        };
        let cpus = req.cpus.unwrap_or(self.limits.default_cpus);
        if !(cpus.is_finite() && cpus >= 0.01 && cpus <= self.limits.max_cpus) {
            return Err(bad(format!(
                "invalid cpus {cpus}: use a number from 0.01 to {}",
                self.limits.max_cpus
            )));
        }
        let memory = match &req.memory {
            Some(m) => parse_memory(m).map_err(|e| bad(e.to_string()))?,
            None => self.limits.default_memory,
        };
        if !(MIN_MEMORY..=self.limits.max_memory).contains(&memory) {
            return Err(bad(format!(
                "invalid memory {}: use from 6m to {}",
                offload_core::size::format_bytes(memory),
                self.config.max_memory
            )));
        }
        if req.command.len() > 256 || req.command.iter().map(String::len).sum::<usize>() > 64 << 10
        {
            return Err(bad("the command is too long".into()));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(bad("the command contains a NUL byte".into()));
        }
        offload_core::check_env(&req.env).map_err(|e| bad(e.to_string()))?;
        Ok((image, name, cpus, memory))
    }

    /// The engine-side spec of a container, from its record. The allow-list of run
    /// options is exactly what this function sets.
    pub fn spec_for(&self, record: &ContainerRecord) -> ContainerSpec {
        ContainerSpec {
            name: format!("offload-{}", record.id),
            image: record.image.to_string(),
            command: record.command.clone(),
            env: record.env.clone(),
            cpus: record.cpus,
            memory_bytes: record.memory_bytes,
            workspace: self.workspace_dir(&record.id),
            workspace_target: WORKSPACE_MOUNT.to_owned(),
            labels: BTreeMap::from([
                (labels::ID.to_owned(), record.id.to_string()),
                (labels::OWNER.to_owned(), record.owner.to_string()),
                (labels::GENERATION.to_owned(), record.generation.to_string()),
            ]),
            network: self.network.clone(),
            stop_grace_secs: self.config.stop_grace_secs,
            node: record.node.clone(),
        }
    }

    /// The cluster node a cloud copy of `record` goes to: of the ready, active nodes
    /// offload reaches, the one with the most memory left by what offload placed there
    /// (then the most CPU). `None` on a single engine.
    pub(crate) async fn place(
        &self,
        record: &ContainerRecord,
    ) -> Result<Option<String>, ActionError> {
        self.place_except(record, None).await
    }

    /// As [`Controller::place`], never on node `except` (the one a container leaves).
    pub(crate) async fn place_except(
        &self,
        record: &ContainerRecord,
        except: Option<&str>,
    ) -> Result<Option<String>, ActionError> {
        let nodes = self.runtime.nodes().await?;
        if nodes.is_empty() {
            return Ok(None);
        }
        let records = self.db(|s| s.containers(None)).await?;
        let placed = records.iter().filter(|r| {
            r.id != record.id
                && r.location == Location::Cloud
                && !matches!(r.state, State::Stopped | State::Missing | State::Failed)
        });
        let mut load: HashMap<&str, (u64, f64)> = HashMap::new();
        for r in placed {
            if let Some(node) = r.node.as_deref() {
                let entry = load.entry(node).or_default();
                entry.0 = entry.0.saturating_add(r.memory_bytes);
                entry.1 += r.cpus;
            }
        }
        let best = nodes
            .iter()
            .filter(|n| n.schedulable() && Some(n.id.as_str()) != except)
            .map(|n| {
                let (memory, cpus) = load.get(n.id.as_str()).copied().unwrap_or_default();
                let free_memory = i128::from(n.memory_bytes) - i128::from(memory);
                (n, free_memory, n.cpus - cpus)
            })
            .max_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
        match best {
            Some((node, _, _)) => Ok(Some(node.id.clone())),
            None => Err(ActionError::Unavailable(format!(
                "no {}node of the swarm can take container {} now: {}",
                if except.is_some() { "other " } else { "" },
                record.id,
                nodes
                    .iter()
                    .map(|n| format!(
                        "{} is {}/{}{}",
                        n.name,
                        n.state,
                        n.availability,
                        if n.reachable {
                            ""
                        } else {
                            ", its engine unreachable"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }

    /// Makes sure the cloud engine has `image`, pulling it if it can.
    async fn ensure_image(&self, image: &ImageRef) -> Result<(), ActionError> {
        if self.runtime.image(image.as_str()).await?.is_some() {
            return Ok(());
        }
        self.runtime.pull(image.as_str()).await.map_err(|e| {
            ActionError::BadRequest(format!(
                "image {image} is not on the cloud engine and could not be pulled: {e}"
            ))
        })
    }

    /// Creates a container in the cloud and starts it.
    pub async fn start(
        &self,
        who: &Principal,
        req: StartRequest,
    ) -> Result<ContainerRecord, ActionError> {
        let (image, name, cpus, memory_bytes) = self.validate_start(who, &req)?;
        self.refuse_while_draining("no new containers start")?;
        let owner = who.user.clone();
        let theirs = self.db(move |s| s.containers(Some(&owner))).await?;
        self.check_quota(&theirs, cpus, memory_bytes)?;
        self.ensure_image(&image).await?;

        let at = now();
        let mut record = ContainerRecord {
            id: ContainerId::random(),
            name,
            owner: who.user.clone(),
            image,
            command: req.command,
            env: req.env,
            cpus,
            memory_bytes,
            location: Location::Cloud,
            state: State::Creating,
            generation: offload_core::Generation::FIRST,
            runtime_id: None,
            reason: None,
            created_at: at,
            updated_at: at,
            last_move: None,
            node: None,
            device: None,
        };
        record.node = self.place(&record).await?;
        let _guard = self.lock(&record.id).await;
        let inserted = record.clone();
        self.db(move |s| s.insert_container(&inserted)).await?;

        let workspace = self.workspace_dir(&record.id);
        if let Err(e) = create_workspace(&workspace) {
            self.forget(&record.id).await;
            return Err(ActionError::Internal(format!(
                "cannot create workspace {}: {e}",
                workspace.display()
            )));
        }
        match self.runtime.run(&self.spec_for(&record)).await {
            Ok(runtime_id) => {
                record.runtime_id = Some(runtime_id);
                record.state = State::Running;
                record.updated_at = now();
                self.save(&record, "started", "running in the cloud")
                    .await?;
                self.publish(
                    &record,
                    EventBody::ContainerCreated {
                        container_id: record.id.clone(),
                        name: record.name.clone(),
                        image: record.image.to_string(),
                        node: record.node.clone(),
                    },
                )
                .await;
                Ok(record)
            }
            Err(e) => {
                // Nothing was created: leave no record and no workspace behind.
                self.forget(&record.id).await;
                let _ = std::fs::remove_dir_all(&workspace);
                Err(e.into())
            }
        }
    }

    async fn forget(&self, id: &ContainerId) {
        let id = id.clone();
        if let Err(e) = self.db(move |s| s.delete_container(&id)).await {
            tracing::error!(error = %e, "cannot delete a record after a failed start");
        }
    }

    /// Writes a record and a history entry.
    pub async fn save(
        &self,
        record: &ContainerRecord,
        kind: &'static str,
        detail: &str,
    ) -> Result<(), ActionError> {
        let record = record.clone();
        let detail = detail.to_owned();
        self.db(move |s| {
            s.update_container(&record)?;
            s.record_event(&record.id, record.updated_at, kind, &detail)
        })
        .await
    }

    /// Stops a running cloud container; its workspace stays.
    pub async fn stop(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<ContainerRecord, ActionError> {
        let found = self.find(who, id_or_name).await?;
        let _guard = self.lock(&found.id).await;
        let mut record = self.reload(&found.id).await?;
        if record.state == State::Stopped {
            return Ok(record);
        }
        if record.location != Location::Cloud || !record.can_stop() {
            return Err(ActionError::Conflict(format!(
                "container {} is {} at the {}; it cannot be stopped now",
                record.id,
                record.state.as_str(),
                record.location.as_str()
            )));
        }
        if let Some(runtime_id) = &record.runtime_id {
            match self.runtime.stop(runtime_id, self.grace()).await {
                Ok(()) | Err(offload_runtime::RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        record.state = State::Stopped;
        record.updated_at = now();
        self.save(&record, "stopped", "stopped by its owner")
            .await?;
        self.publish(
            &record,
            EventBody::ContainerStopped {
                container_id: record.id.clone(),
                name: record.name.clone(),
                detail: "stopped by its owner".to_owned(),
            },
        )
        .await;
        Ok(record)
    }

    /// Starts a stopped cloud container again.
    pub async fn restart(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<ContainerRecord, ActionError> {
        let found = self.find(who, id_or_name).await?;
        let _guard = self.lock(&found.id).await;
        let mut record = self.reload(&found.id).await?;
        if record.state == State::Running {
            return Ok(record);
        }
        if record.location == Location::Cloud {
            self.refuse_while_draining("stopped containers do not start in the cloud")?;
        }
        if record.location != Location::Cloud
            || !matches!(record.state, State::Stopped | State::Missing)
        {
            return Err(ActionError::Conflict(format!(
                "container {} is {}; it cannot be started now",
                record.id,
                record.state.as_str()
            )));
        }
        let started = match &record.runtime_id {
            Some(id) if record.state == State::Stopped => self.runtime.start(id).await.is_ok(),
            _ => false,
        };
        if !started {
            // The engine container is gone: create a fresh one on the same workspace.
            if let Some(old) = record.runtime_id.take() {
                let _ = self.runtime.remove(&old).await;
            }
            create_workspace(&self.workspace_dir(&record.id))
                .map_err(|e| ActionError::Internal(format!("cannot create workspace: {e}")))?;
            record.node = self.place(&record).await?;
            record.runtime_id = Some(self.runtime.run(&self.spec_for(&record)).await?);
        }
        record.state = State::Running;
        record.reason = None;
        record.updated_at = now();
        self.save(&record, "started", "started by its owner")
            .await?;
        self.publish(
            &record,
            EventBody::ContainerStarted {
                container_id: record.id.clone(),
                name: record.name.clone(),
                location: record.location,
                detail: "started by its owner".to_owned(),
            },
        )
        .await;
        Ok(record)
    }

    /// Removes a container, its engine container and its workspace.
    pub async fn remove(&self, who: &Principal, id_or_name: &str) -> Result<(), ActionError> {
        let found = self.find(who, id_or_name).await?;
        let _guard = self.lock(&found.id).await;
        let record = self.reload(&found.id).await?;
        if !record.can_remove() || record.location != Location::Cloud {
            return Err(ActionError::Conflict(format!(
                "container {} is {} at the {}; move it to the cloud first",
                record.id,
                record.state.as_str(),
                record.location.as_str()
            )));
        }
        if let Some(runtime_id) = &record.runtime_id {
            self.runtime.remove(runtime_id).await?;
        }
        // Containers that carry the id label but are not the recorded one (a crash
        // between create and record) go too.
        for extra in self.engine_containers_of(&record.id).await? {
            self.runtime.remove(&extra.runtime_id).await?;
        }
        let id = record.id.clone();
        self.db(move |s| s.delete_container(&id)).await?;
        self.sync.forget(&record.id);
        let workspace = self.workspace_dir(&record.id);
        if let Err(e) = std::fs::remove_dir_all(&workspace)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %workspace.display(), error = %e, "cannot remove workspace");
        }
        self.publish(
            &record,
            EventBody::ContainerRemoved {
                container_id: record.id.clone(),
                name: record.name.clone(),
            },
        )
        .await;
        Ok(())
    }

    /// Refuses a start that would take a user with containers `theirs` over a quota.
    fn check_quota(
        &self,
        theirs: &[ContainerRecord],
        cpus: f64,
        memory: u64,
    ) -> Result<(), ActionError> {
        let count = theirs.len();
        if count >= self.config.max_containers_per_user {
            return Err(ActionError::Quota(format!(
                "you have {count} containers, the most this server allows; remove one first"
            )));
        }
        let used_cpus: f64 = theirs.iter().map(|r| r.cpus).sum();
        if used_cpus + cpus > self.limits.user_cpus + 1e-9 {
            return Err(ActionError::Quota(format!(
                "your containers ask for {used_cpus} CPUs; {cpus} more would pass your quota of {} \
                 (ask for fewer with --cpus, or remove a container)",
                self.limits.user_cpus
            )));
        }
        let used_memory: u64 = theirs.iter().map(|r| r.memory_bytes).sum();
        if used_memory.saturating_add(memory) > self.limits.user_memory {
            let fmt = offload_core::size::format_bytes;
            return Err(ActionError::Quota(format!(
                "your containers ask for {} of memory; {} more would pass your quota of {} \
                 (ask for less with --memory, or remove a container)",
                fmt(used_memory),
                fmt(memory),
                fmt(self.limits.user_memory)
            )));
        }
        Ok(())
    }

    /// Notes that `user` was seen, in the store at most once a minute.
    pub(crate) async fn seen(&self, user: &UserName) {
        let at = now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            match seen.get(user) {
                Some(last) if at - *last < 60 => return,
                _ => seen.insert(user.clone(), at),
            };
        }
        let who = user.clone();
        if let Err(e) = self.db(move |s| s.touch_user(&who, at)).await {
            tracing::warn!(error = %e, "cannot note when a user was seen");
        }
    }

    /// Puts an event about `record` on its owner's stream.
    pub(crate) async fn publish(&self, record: &ContainerRecord, body: EventBody) {
        self.events.publish(Some(&record.owner), body).await;
    }

    pub(crate) async fn reload(&self, id: &ContainerId) -> Result<ContainerRecord, ActionError> {
        let key = id.clone();
        self.db(move |s| s.container(&key))
            .await?
            .ok_or_else(|| ActionError::NotFound(id.to_string()))
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.stop_grace_secs))
    }

    pub(crate) async fn engine_containers_of(
        &self,
        id: &ContainerId,
    ) -> Result<Vec<RuntimeContainer>, ActionError> {
        Ok(self
            .runtime
            .list_labelled(labels::ID)
            .await?
            .into_iter()
            .filter(|c| {
                c.labels.get(labels::ID).map(String::as_str) == Some(id.as_str())
                    && !c.labels.contains_key(labels::EDGE)
            })
            .collect())
    }

    /// The engine id of a container that can run commands now.
    pub async fn exec_target(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<(ContainerRecord, String), ActionError> {
        self.running_target(who, id_or_name, "commands run only in a running container")
            .await
    }

    /// The engine id of a container whose files can be reached now.
    pub async fn files_target(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<(ContainerRecord, String), ActionError> {
        self.running_target(
            who,
            id_or_name,
            "its files are reachable only while it runs (`offload restart` starts it)",
        )
        .await
    }

    async fn running_target(
        &self,
        who: &Principal,
        id_or_name: &str,
        why: &str,
    ) -> Result<(ContainerRecord, String), ActionError> {
        let record = self.find(who, id_or_name).await?;
        if !record.can_exec() {
            return Err(ActionError::Conflict(format!(
                "container {} is {}; {why}",
                record.id,
                record.state.as_str()
            )));
        }
        match &record.runtime_id {
            Some(id) => {
                let id = id.clone();
                Ok((record, id))
            }
            None => Err(ActionError::Conflict(format!(
                "container {} has no engine container",
                record.id
            ))),
        }
    }

    /// The API view of a container, with the move in flight if any.
    pub async fn view(&self, record: &ContainerRecord) -> Result<ContainerView, ActionError> {
        let id = record.id.clone();
        let mv = self.db(move |s| s.move_of(&id)).await?;
        Ok(self.view_with(record, mv.as_ref()))
    }

    /// Views of several containers.
    pub async fn views(
        &self,
        records: &[ContainerRecord],
    ) -> Result<Vec<ContainerView>, ActionError> {
        let moves = self.db(|s| s.moves()).await?;
        Ok(records
            .iter()
            .map(|r| self.view_with(r, moves.iter().find(|m| m.container_id == r.id)))
            .collect())
    }

    fn view_with(&self, record: &ContainerRecord, mv: Option<&MoveRecord>) -> ContainerView {
        let mut view = ContainerView::from(record);
        view.sync_lag_secs = self.recovery_point(record);
        view.moving = mv.map(|m| MoveStatus {
            direction: m.direction(),
            step: m.phase.step(),
            started_at: m.started_at,
            progress: self.hub.progress(&record.id),
        });
        view
    }

    /// Whether a copy at `generation` may push: a current edge copy its changes, a stale
    /// (fenced) one only a conflict set, which lands under `.offload-conflicts/`.
    fn check_pusher(
        record: &ContainerRecord,
        generation: u64,
        conflict: bool,
    ) -> Result<(), ActionError> {
        let generation = offload_core::Generation::new(generation);
        if conflict {
            if generation >= record.generation {
                return Err(ActionError::BadRequest(
                    "a conflict set comes only from a stale generation".into(),
                ));
            }
            return Ok(());
        }
        if record.location != Location::Edge || generation != record.generation {
            return Err(ActionError::StaleGeneration {
                pushed: generation.get(),
                current: record.generation.get(),
            });
        }
        Ok(())
    }

    /// Takes the delta of a push and answers the chunks the server needs for it
    /// (`offload_sync::protocol::encode_plan`).
    pub async fn plan_push(
        &self,
        who: &Principal,
        id_or_name: &str,
        generation: u64,
        conflict: bool,
        delta: Vec<u8>,
    ) -> Result<Vec<u8>, ActionError> {
        let record = self.find(who, id_or_name).await?;
        Self::check_pusher(&record, generation, conflict)?;
        self.sync.plan(&record.id, delta).await
    }

    /// Keeps the pusher's answer to one chunk request of its plan.
    pub async fn upload_chunks(
        &self,
        who: &Principal,
        id_or_name: &str,
        plan: u64,
        batch: usize,
        body: Vec<u8>,
    ) -> Result<usize, ActionError> {
        // Chunks are verified against their names and only used by a push that passes
        // the generation check, so an upload needs no more than ownership.
        let record = self.find(who, id_or_name).await?;
        self.sync.upload(&record.id, plan, batch, body).await
    }

    /// Applies a planned push from the edge copy (I2: answered only once durable). A push
    /// from a copy whose generation is no longer current is refused, unless it is a
    /// fenced copy's conflict set, which lands under `.offload-conflicts/`.
    pub async fn push(
        &self,
        who: &Principal,
        id_or_name: &str,
        req: PushRequest,
    ) -> Result<PushReport, ActionError> {
        let record = self.find(who, id_or_name).await?;
        Self::check_pusher(&record, req.generation, req.conflict)?;
        if req.conflict {
            let name = format!(
                "{}/edge-generation-{}-{}",
                offload_sync::CONFLICTS_DIR,
                req.generation,
                now()
            );
            let prefix = offload_sync::RelPath::new(name)
                .map_err(|e| ActionError::Internal(e.to_string()))?;
            let report = self.sync.apply(&record.id, req.plan, Some(prefix)).await?;
            let detail = format!(
                "late changes of generation {} kept in {}",
                req.generation,
                report.conflict_dir.as_deref().unwrap_or("?")
            );
            let _ = self.save(&record, "conflict", &detail).await;
            return Ok(report);
        }
        let applied = self.sync.apply(&record.id, req.plan, None).await?;
        self.hub.note_synced(&record.id, self.clock.unix());
        Ok(applied)
    }

    /// For a container at the edge, how many seconds of its work the cloud may not have
    /// (see [`AgentHub::recovery_point`]); `None` elsewhere.
    pub fn recovery_point(&self, record: &ContainerRecord) -> Option<u64> {
        (record.location == Location::Edge && record.state != State::Moving).then(|| {
            self.hub.recovery_point(
                &record.owner,
                record.device.as_deref(),
                &record.id,
                record.updated_at,
                self.clock.unix(),
            )
        })
    }
}

/// The monitor's moves are the owner's: the same checks, the same move.
#[async_trait::async_trait]
impl MoveStarter for Arc<Controller> {
    async fn start_move(
        &self,
        owner: &UserName,
        id: &ContainerId,
        to: Location,
        device: Option<&str>,
    ) -> Result<(), ActionError> {
        let owner = Principal {
            user: owner.clone(),
            admin: false,
        };
        let request = MoveRequest {
            to,
            force: false,
            device: device.map(str::to_owned),
        };
        self.request_move(&owner, id.as_str(), request)
            .await
            .map(|_| ())
    }

    async fn device_for(&self, record: &ContainerRecord) -> Result<String, ActionError> {
        self.choose_device(record, None).await
    }

    async fn relocate(
        &self,
        id: &ContainerId,
        to_node: &str,
        reason: &str,
    ) -> Result<(), ActionError> {
        Controller::relocate(self, id, Some(to_node), reason)
            .await
            .map(|_| ())
    }
}

pub(crate) fn create_workspace(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    // The data directory above is 0700, so only root on the host can reach this; inside
    // the container any user the image runs as must be able to write its workspace.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
}

/// The setting that holds since when the cloud drains.
const CLOUD_DRAIN: &str = "cloud_drain_since";

/// Whether `principal` is allowed admin actions.
pub fn require_admin(principal: &Principal) -> Result<(), ActionError> {
    if principal.admin {
        Ok(())
    } else {
        Err(ActionError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offload_core::UserName;
    use offload_runtime::fake::FakeRuntime;

    fn setup() -> (tempfile::TempDir, Controller, FakeRuntime, Principal) {
        crate::testing::controller()
    }

    fn req(image: &str) -> StartRequest {
        StartRequest {
            image: image.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn start_records_and_runs_with_labels() {
        let (_dir, ctl, fake, who) = setup();
        let rec = ctl.start(&who, req("busybox")).await.unwrap();
        assert_eq!(rec.state, State::Running);
        assert_eq!(fake.running(), vec![rec.runtime_id.clone().unwrap()]);
        assert!(ctl.workspace_dir(&rec.id).is_dir());
        let spec = ctl.spec_for(&rec);
        assert_eq!(spec.labels[labels::OWNER], "alice");
        assert_eq!(spec.labels[labels::GENERATION], "1");
    }

    #[tokio::test]
    async fn failed_start_leaves_nothing() {
        let (_dir, ctl, fake, who) = setup();
        fake.fail_runs(true);
        assert!(ctl.start(&who, req("busybox")).await.is_err());
        assert!(ctl.list(&who).await.unwrap().is_empty());
        let entries = std::fs::read_dir(ctl.workspaces.clone()).unwrap().count();
        assert_eq!(entries, 0);
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_happens() {
        let (_dir, ctl, fake, who) = setup();
        for bad in [
            StartRequest {
                cpus: Some(100.0),
                ..req("busybox")
            },
            StartRequest {
                memory: Some("1k".into()),
                ..req("busybox")
            },
            req("Not An Image"),
            StartRequest {
                env: vec!["NOVALUE".into()],
                ..req("busybox")
            },
            StartRequest {
                env: vec!["A=1".into(), "A=2".into()],
                ..req("busybox")
            },
            StartRequest {
                env: vec!["BAD KEY=1".into()],
                ..req("busybox")
            },
        ] {
            assert!(matches!(
                ctl.start(&who, bad).await,
                Err(ActionError::BadRequest(_))
            ));
        }
        assert!(fake.calls().is_empty());
        assert!(ctl.list(&who).await.unwrap().is_empty());
    }

    /// A container's environment is stored with it and given to the engine.
    #[tokio::test]
    async fn the_environment_is_kept_and_run_with() {
        let (_dir, ctl, _fake, who) = setup();
        let request = StartRequest {
            env: vec!["COURSE=os101".into(), "TOKEN=s3cret".into()],
            ..req("busybox")
        };
        let rec = ctl.start(&who, request).await.unwrap();
        let stored = ctl.reload(&rec.id).await.unwrap();
        assert_eq!(stored.env, ["COURSE=os101", "TOKEN=s3cret"]);
        assert_eq!(ctl.spec_for(&stored).env, stored.env);
        let view = ContainerView::from(&stored);
        assert_eq!(
            view.env,
            ["COURSE", "TOKEN"],
            "names only: values may be secrets"
        );
    }

    #[tokio::test]
    async fn other_users_containers_look_missing() {
        let (_dir, ctl, _fake, who) = setup();
        let rec = ctl.start(&who, req("busybox")).await.unwrap();
        let bob = Principal {
            user: UserName::parse("bob").unwrap(),
            admin: false,
        };
        assert!(matches!(
            ctl.stop(&bob, rec.id.as_str()).await,
            Err(ActionError::NotFound(_))
        ));
        assert!(matches!(
            ctl.remove(&bob, rec.name.as_str()).await,
            Err(ActionError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn reconcile_adopts_and_marks_missing_without_duplicates() {
        let (_dir, ctl, fake, who) = setup();
        let a = ctl.start(&who, req("busybox")).await.unwrap();
        let b = ctl.start(&who, req("busybox")).await.unwrap();
        fake.forget(b.runtime_id.as_deref().unwrap());
        let report = ctl.reconcile().await.unwrap();
        assert_eq!(report.adopted, 1);
        assert_eq!(report.missing, 1);
        let runs = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, offload_runtime::fake::Call::Run(_)))
            .count();
        assert_eq!(runs, 2, "reconcile must not create containers");
        let a2 = ctl.find(&who, a.id.as_str()).await.unwrap();
        assert_eq!(a2.state, State::Running);
        assert_eq!(a2.runtime_id, a.runtime_id);
        let b2 = ctl.find(&who, b.id.as_str()).await.unwrap();
        assert_eq!(b2.state, State::Missing);
        assert!(b2.reason.unwrap().contains("not found"));
    }
}
