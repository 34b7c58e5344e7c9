//! The resource monitor at work: every interval it samples the host (or the pool of
//! managed containers), reads each container's use from the engine, lets the policy of
//! `offload-monitor` decide, and carries the decision out: queries to owners, pressure
//! warnings, expiries, and returns to the cloud. Queries are persisted; answers arrive
//! through the API (`offload accept`/`decline`, the agent's prompt or its auto-accept).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload_core::agent::ServerMessage;
use offload_core::api::{MonitorView, MoveRequest, QueryView, ResourceView, UsageView};
use offload_core::{ContainerId, ContainerRecord, Location, State, UserName};
use offload_monitor::{
    AgentReport, Answer, ContainerUsage, CpuReading, DefaultAction, Expiry, HostSample,
    HostSampler, MoveNeeds, Observation, Policy, PolicyConfig, PoolCapacity, ProcHostSampler,
    SamplerSource, Status, container_cpu_cores,
};
use offload_runtime::UsageReading;
use offload_store::{Principal, QueryRecord};
use offload_sync::{DiskUsage, UsageBudget};

use crate::controller::{Clock, Controller};
use crate::error::ActionError;

/// How often a container's workspace size is measured for the move-cost estimate.
const SIZE_REFRESH: Duration = Duration::from_secs(30);
/// Longest one workspace's measurement may take; one that takes longer keeps its last
/// size (and is logged), so one huge tree cannot hold a blocking thread for long.
const SIZE_DEADLINE: Duration = Duration::from_secs(5);
/// Most entries one workspace's measurement walks.
const SIZE_MAX_ENTRIES: u64 = 1_000_000;

/// Measures a workspace on disk: the seam the monitor's sizing runs behind. Called on a
/// blocking thread, never on the monitor's loop.
pub trait WorkspaceSizer: Send + Sync + 'static {
    fn size(&self, dir: &Path) -> Result<DiskUsage, String>;
}

/// Sizes a workspace from its files' allocated blocks (metadata only, no file is read),
/// within a deadline and an entry budget.
pub struct DiskSizer {
    pub deadline: Duration,
    pub max_entries: u64,
}

impl Default for DiskSizer {
    fn default() -> Self {
        DiskSizer {
            deadline: SIZE_DEADLINE,
            max_entries: SIZE_MAX_ENTRIES,
        }
    }
}

impl WorkspaceSizer for DiskSizer {
    fn size(&self, dir: &Path) -> Result<DiskUsage, String> {
        let budget = UsageBudget {
            deadline: Some(Instant::now() + self.deadline),
            max_entries: self.max_entries,
        };
        offload_sync::disk_usage(dir, &budget).map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct SizeState {
    /// The last complete measurement.
    bytes: Option<u64>,
    /// When the last measurement (complete or not) ended.
    measured: Option<Instant>,
    running: bool,
}

/// Workspace sizes for the move-cost estimate, measured in the background and cached:
/// the monitor reads the last one and never waits for a measurement.
pub struct WorkspaceSizes {
    sizer: Arc<dyn WorkspaceSizer>,
    state: Arc<Mutex<HashMap<ContainerId, SizeState>>>,
}

impl WorkspaceSizes {
    pub fn new(sizer: Arc<dyn WorkspaceSizer>) -> Self {
        WorkspaceSizes {
            sizer,
            state: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The last size measured for `id`, if any.
    pub fn last(&self, id: &ContainerId) -> Option<u64> {
        lock(&self.state).get(id).and_then(|s| s.bytes)
    }

    /// The last size of `id` (0 before the first measurement), starting a measurement of
    /// `dir` on a blocking thread when the last is older than [`SIZE_REFRESH`] and none
    /// runs. Must be called within a tokio runtime.
    pub fn get(&self, id: &ContainerId, dir: PathBuf) -> u64 {
        let mut all = lock(&self.state);
        let state = all.entry(id.clone()).or_default();
        let stale = state.measured.is_none_or(|at| at.elapsed() > SIZE_REFRESH);
        if stale && !state.running {
            state.running = true;
            let (sizer, shared, id) = (self.sizer.clone(), self.state.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = sizer.size(&dir);
                let mut all = lock(&shared);
                // Forgotten meanwhile (the container is gone): nothing to record.
                let Some(state) = all.get_mut(&id) else {
                    return;
                };
                state.running = false;
                state.measured = Some(Instant::now());
                match result {
                    Ok(usage) if usage.complete => state.bytes = Some(usage.allocated_bytes),
                    Ok(usage) => {
                        tracing::warn!(
                            %id,
                            entries = usage.entries,
                            secs = started.elapsed().as_secs_f64(),
                            "workspace too large to size within the budget; keeping its last size"
                        );
                        // What was seen is a lower bound, better than nothing at all.
                        if state.bytes.is_none() {
                            state.bytes = Some(usage.allocated_bytes);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%id, %error, "cannot size the workspace; keeping its last size");
                    }
                }
            });
        }
        state.bytes.unwrap_or(0)
    }

    /// Forgets every workspace but those of `live`.
    fn retain(&self, live: &HashSet<&ContainerId>) {
        lock(&self.state).retain(|id, _| live.contains(id));
    }
}

/// The monitor's shared state: the policy and what it last saw.
pub struct Monitor {
    policy: Mutex<Policy>,
    config: PolicyConfig,
    clock: Clock,
    last: Mutex<Option<(Status, Vec<UsageView>)>>,
    pub(crate) sizes: WorkspaceSizes,
}

struct Tracker {
    readings: HashMap<String, UsageReading>,
    cores: HashMap<ContainerId, f64>,
    memory: HashMap<ContainerId, u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    pub fn new(config: PolicyConfig, clock: Clock) -> Result<Self, ActionError> {
        Self::with_sizer(config, clock, Arc::new(DiskSizer::default()))
    }

    /// A monitor whose workspace sizes come from `sizer`.
    pub fn with_sizer(
        config: PolicyConfig,
        clock: Clock,
        sizer: Arc<dyn WorkspaceSizer>,
    ) -> Result<Self, ActionError> {
        let policy =
            Policy::new(config.clone()).map_err(|e| ActionError::BadRequest(e.to_string()))?;
        Ok(Monitor {
            policy: Mutex::new(policy),
            config,
            clock,
            last: Mutex::new(None),
            sizes: WorkspaceSizes::new(sizer),
        })
    }

    /// The policy's time: the server clock's, so query deadlines in the store and the
    /// policy's expiries are the same instants.
    fn now(&self) -> Duration {
        self.clock.since_epoch()
    }

    /// What `offload top` shows.
    pub fn view(&self, pending: usize) -> MonitorView {
        let last = lock(&self.last).clone();
        let source = match self.config.source {
            SamplerSource::Host => "host",
            SamplerSource::Pool => "pool",
        };
        match last {
            Some((status, containers)) => MonitorView {
                source: source.to_owned(),
                under_pressure: status.under_pressure,
                reason: status.reason.clone(),
                resources: status
                    .resources
                    .iter()
                    .map(|r| ResourceView {
                        resource: r.resource.to_string(),
                        usage: r.usage,
                        forecast: r.forecast,
                        low: r.watermark.low,
                        high: r.watermark.high,
                        pressure: r.pressure,
                    })
                    .collect(),
                pending_queries: pending,
                containers,
            },
            None => MonitorView {
                source: source.to_owned(),
                under_pressure: false,
                reason: "no sample yet".to_owned(),
                resources: Vec::new(),
                pending_queries: pending,
                containers: Vec::new(),
            },
        }
    }
}

fn query_view(q: &QueryRecord, name: &str) -> QueryView {
    QueryView {
        id: q.id.clone(),
        container_id: q.container_id.to_string(),
        container_name: name.to_owned(),
        owner: q.owner.to_string(),
        reason: q.reason.clone(),
        created_at: q.created_at,
        deadline_at: q.deadline_at,
        state: q.state.clone(),
        answered_at: q.answered_at,
        move_bytes: q.move_bytes,
    }
}

impl Controller {
    /// Runs the monitor loop forever.
    pub async fn run_monitor(self: Arc<Self>) {
        let config = self.monitor.config.clone();
        let mut host: Box<dyn HostSampler + Send> = match config.source {
            SamplerSource::Host => match ProcHostSampler::new() {
                Ok(s) => Box::new(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot sample the host; the monitor is off");
                    return;
                }
            },
            // Pool samples are computed from the containers below.
            SamplerSource::Pool => Box::new(NoSampler),
        };
        let pool = match config.pool_capacity() {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "invalid pool; the monitor is off");
                return;
            }
        };
        let mut tracker = Tracker {
            readings: HashMap::new(),
            cores: HashMap::new(),
            memory: HashMap::new(),
        };
        // Queries persisted before a restart keep their deadlines.
        match self.db(|s| s.pending_queries()).await {
            Ok(pending) => pending.iter().for_each(|q| self.remember_query(q, true)),
            Err(e) => tracing::warn!(error = %e, "cannot read the pending queries"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs_f64(config.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self
                .monitor_tick(host.as_mut(), pool.as_ref(), &mut tracker)
                .await
            {
                tracing::warn!(error = %e, "monitor tick failed");
            }
        }
    }

    async fn monitor_tick(
        self: &Arc<Self>,
        host: &mut (dyn HostSampler + Send),
        pool: Option<&PoolCapacity>,
        tracker: &mut Tracker,
    ) -> Result<(), ActionError> {
        let records = self.db(|s| s.containers(None)).await?;
        self.monitor
            .sizes
            .retain(&records.iter().map(|r| &r.id).collect());
        let mut sizes = HashMap::new();
        let mut usage = Vec::new();
        for record in &records {
            let in_cloud = record.location == Location::Cloud && record.state == State::Running;
            if in_cloud && let Some(runtime_id) = &record.runtime_id {
                if let Ok(reading) = self.runtime().usage(runtime_id).await {
                    if let Some(previous) = tracker.readings.get(runtime_id) {
                        let cores = container_cpu_cores(
                            &CpuReading {
                                total_usage: previous.cpu_total_ns,
                                system_cpu_usage: previous.system_total_ns,
                                online_cpus: previous.online_cpus,
                            },
                            &CpuReading {
                                total_usage: reading.cpu_total_ns,
                                system_cpu_usage: reading.system_total_ns,
                                online_cpus: reading.online_cpus,
                            },
                        );
                        if let Some(cores) = cores {
                            tracker.cores.insert(record.id.clone(), cores);
                        }
                    }
                    tracker
                        .memory
                        .insert(record.id.clone(), reading.memory_bytes);
                    tracker.readings.insert(runtime_id.clone(), reading);
                }
                // Measured in the background; this reads the last size and starts a
                // new measurement when it is due.
                sizes.insert(
                    record.id.clone(),
                    self.monitor
                        .sizes
                        .get(&record.id, self.sync.dir(&record.id)),
                );
            }
            let running_somewhere = matches!(
                record.state,
                State::Running | State::Unreachable | State::Moving
            );
            if !running_somewhere {
                continue;
            }
            usage.push(ContainerUsage {
                id: record.id.to_string(),
                owner: record.owner.to_string(),
                // At the edge the last use measured in the cloud stands for what a return
                // would bring back.
                cpu: tracker.cores.get(&record.id).copied().unwrap_or(0.0),
                mem_bytes: tracker.memory.get(&record.id).copied().unwrap_or(0),
                running_in_cloud: in_cloud,
            });
        }
        let sample = match pool {
            Some(pool) => pool.sample(&usage),
            None => host
                .sample()
                .map_err(|e| ActionError::Internal(format!("cannot sample the host: {e}")))?,
        };
        let needs = records
            .iter()
            .filter(|r| r.location == Location::Cloud && r.state == State::Running)
            .map(|r| MoveNeeds {
                id: r.id.to_string(),
                cpus: r.cpus,
                mem_bytes: r.memory_bytes,
                missing_bytes: sizes.get(&r.id).copied().unwrap_or(0),
            })
            .collect();
        let agents = self
            .hub
            .agents()
            .iter()
            .map(|a| AgentReport {
                owner: a.user.to_string(),
                cpus: a.capacity.cpus,
                mem_bytes: a.capacity.memory_bytes,
                free_disk_bytes: a.capacity.free_disk_bytes,
                auto_accept: a.auto_accept,
                auto_return: a.auto_return,
            })
            .collect();
        let observation = Observation {
            host: sample,
            containers: usage,
            needs,
            agents,
        };
        let decision = {
            let mut policy = lock(&self.monitor.policy);
            policy.evaluate(self.monitor.now(), &observation)
        };
        let views = observation
            .containers
            .iter()
            .filter_map(|u| {
                let record = records.iter().find(|r| r.id.as_str() == u.id)?;
                Some(UsageView {
                    id: u.id.clone(),
                    owner: u.owner.clone(),
                    location: record.location,
                    cpu_cores: u.cpu,
                    memory_bytes: u.mem_bytes,
                })
            })
            .collect();
        for r in &decision.status.resources {
            self.metrics
                .monitor(&r.resource.to_string(), r.usage, r.forecast, r.pressure);
        }
        *lock(&self.monitor.last) = Some((decision.status.clone(), views));

        for event in &decision.pressure_started {
            tracing::warn!(resource = %event.resource, reason = %event.reason, "pressure started");
            self.broadcast(format!("the cloud is under pressure: {}", event.reason));
        }
        for resource in &decision.pressure_ended {
            tracing::info!(%resource, "pressure ended");
            self.broadcast(format!("{resource} pressure in the cloud is over"));
        }
        let pending = self.db(|s| s.pending_queries()).await.unwrap_or_default();
        for ask in &decision.ask {
            let Some(record) = records.iter().find(|r| r.id.as_str() == ask.container_id) else {
                continue;
            };
            if pending.iter().any(|q| q.container_id == record.id) {
                continue;
            }
            let deadline = Duration::from_secs_f64(self.monitor.config.query_deadline_secs);
            if let Err(e) = self
                .ask(record, &ask.reason, deadline, ask.move_bytes, false)
                .await
            {
                tracing::warn!(id = %record.id, error = %e, "cannot send a query");
            }
        }
        for id in &decision.withdrawn {
            self.withdraw(id).await;
        }
        self.apply_expiries(&decision.expired).await;
        for ret in &decision.return_moves {
            self.auto_return(ret.container_id.as_str(), &ret.reason)
                .await;
        }
        for ret in &decision.return_notices {
            if let Ok(owner) = UserName::parse(&ret.owner) {
                self.notify(
                    &owner,
                    format!(
                        "the cloud has room again: `offload move {} --to cloud` brings your container back",
                        ret.container_id
                    ),
                );
            }
        }
        Ok(())
    }

    fn broadcast(&self, text: String) {
        for agent in self.hub.agents() {
            agent.send(ServerMessage::Notice { text: text.clone() });
        }
    }

    fn notify(&self, user: &UserName, text: String) {
        if let Some(agent) = self.hub.agent(user) {
            agent.send(ServerMessage::Notice { text });
        }
    }

    /// Records a query and sends it to the owner's agent.
    async fn ask(
        &self,
        record: &ContainerRecord,
        reason: &str,
        deadline: Duration,
        move_bytes: u64,
        standing: bool,
    ) -> Result<QueryView, ActionError> {
        let at = self.clock.unix();
        let query = QueryRecord {
            id: format!("q{}", &crate::auth::random_secret()[..10]),
            container_id: record.id.clone(),
            owner: record.owner.clone(),
            reason: reason.to_owned(),
            created_at: at,
            deadline_at: at + deadline.as_secs().max(1) as i64,
            state: "pending".to_owned(),
            answered_at: None,
            move_bytes,
        };
        let stored = query.clone();
        self.db(move |s| s.insert_query(&stored)).await?;
        self.remember_query(&query, standing);
        self.metrics.query("asked");
        let view = query_view(&query, record.name.as_str());
        tracing::info!(id = %record.id, query = %query.id, %reason, "asking the owner to move");
        if let Some(agent) = self.hub.agent(&record.owner) {
            agent.send(ServerMessage::Query {
                query: view.clone(),
                deadline_secs: deadline.as_secs(),
            });
        }
        let _ = self
            .save(record, "query", &format!("asked to move: {reason}"))
            .await;
        Ok(view)
    }

    /// Tells the policy of a stored query, dated so that the policy expires it at the
    /// deadline the store shows: one rule for both. `standing`: see
    /// [`offload_monitor::Policy::record_ask`].
    fn remember_query(&self, query: &QueryRecord, standing: bool) {
        let deadline = u64::try_from(query.deadline_at).unwrap_or(0) as f64;
        let asked_at = (deadline - self.monitor.config.query_deadline_secs).max(0.0);
        lock(&self.monitor.policy).record_ask(
            query.container_id.as_str(),
            query.owner.as_str(),
            Duration::from_secs_f64(asked_at),
            standing,
        );
    }

    async fn close(&self, query: &QueryRecord, state: &'static str) -> bool {
        let id = query.id.clone();
        let at = self.clock.unix();
        let closed = self
            .db(move |s| s.close_query(&id, state, at))
            .await
            .unwrap_or(false);
        if closed {
            self.metrics.query(state);
        }
        if closed && let Some(agent) = self.hub.agent(&query.owner) {
            agent.send(ServerMessage::QueryClosed {
                id: query.id.clone(),
                state: state.to_owned(),
            });
        }
        closed
    }

    async fn withdraw(&self, container_id: &str) {
        let Ok(pending) = self.db(|s| s.pending_queries()).await else {
            return;
        };
        for q in pending
            .iter()
            .filter(|q| q.container_id.as_str() == container_id)
        {
            self.close(q, "withdrawn").await;
        }
    }

    /// Queries the policy found past their deadline take the action it chose for them:
    /// the policy alone decides expiries, by the deadline the query was stored with.
    async fn apply_expiries(self: &Arc<Self>, expired: &[Expiry]) {
        if expired.is_empty() {
            return;
        }
        let Ok(pending) = self.db(|s| s.pending_queries()).await else {
            return;
        };
        for expiry in expired {
            for q in pending
                .iter()
                .filter(|q| q.container_id.as_str() == expiry.container_id)
            {
                if !self.close(q, "expired").await {
                    continue;
                }
                let accept = expiry.action == DefaultAction::Accept;
                tracing::info!(query = %q.id, accept, "query expired");
                if accept {
                    self.start_accepted_move(q).await;
                }
            }
        }
    }

    async fn start_accepted_move(self: &Arc<Self>, q: &QueryRecord) {
        let owner = Principal {
            user: q.owner.clone(),
            admin: false,
        };
        let request = MoveRequest {
            to: Location::Edge,
            force: false,
        };
        if let Err(e) = self
            .request_move(&owner, q.container_id.as_str(), request)
            .await
        {
            tracing::warn!(query = %q.id, error = %e, "cannot start the accepted move");
        }
    }

    async fn auto_return(self: &Arc<Self>, container_id: &str, reason: &str) {
        let Ok(id) = ContainerId::parse(container_id) else {
            return;
        };
        let Ok(record) = self.reload(&id).await else {
            return;
        };
        let owner = Principal {
            user: record.owner.clone(),
            admin: false,
        };
        tracing::info!(%id, %reason, "returning to the cloud");
        self.notify(
            &record.owner,
            format!("the cloud has room again; moving {id} back ({reason})"),
        );
        let request = MoveRequest {
            to: Location::Cloud,
            force: false,
        };
        if let Err(e) = self.request_move(&owner, id.as_str(), request).await {
            tracing::warn!(%id, error = %e, "cannot start the return");
        }
    }

    /// The caller's queries, newest first.
    pub async fn queries(&self, who: &Principal) -> Result<Vec<QueryView>, ActionError> {
        let owner = who.user.clone();
        let queries = self.db(move |s| s.queries_of(&owner)).await?;
        let records = self.list(who).await?;
        Ok(queries
            .iter()
            .map(|q| {
                let name = records
                    .iter()
                    .find(|r| r.id == q.container_id)
                    .map_or("", |r| r.name.as_str());
                query_view(q, name)
            })
            .collect())
    }

    /// `offload accept` / `offload decline`.
    pub async fn answer(
        self: &Arc<Self>,
        who: &Principal,
        query_id: &str,
        answer: Answer,
    ) -> Result<QueryView, ActionError> {
        let key = query_id.to_owned();
        let query = self
            .db(move |s| s.query(&key))
            .await?
            .filter(|q| q.owner == who.user)
            .ok_or_else(|| ActionError::NotFound(format!("query {query_id}")))?;
        if query.state != "pending" {
            return Err(ActionError::Conflict(format!(
                "query {query_id} is already {}; it can no longer be answered",
                query.state
            )));
        }
        if query.deadline_at <= self.clock.unix() {
            // The next round of the monitor applies the default action.
            return Err(ActionError::Conflict(format!(
                "query {query_id} expired before the answer came"
            )));
        }
        let state = match answer {
            Answer::Accept => "accepted",
            Answer::Decline => "declined",
        };
        if !self.close(&query, state).await {
            return Err(ActionError::Conflict(format!(
                "query {query_id} was answered already"
            )));
        }
        lock(&self.monitor.policy).record_answer(
            query.container_id.as_str(),
            answer,
            self.monitor.now(),
        );
        if answer == Answer::Accept {
            self.start_accepted_move(&query).await;
        }
        let key = query.id.clone();
        let closed = self
            .db(move |s| s.query(&key))
            .await?
            .ok_or_else(|| ActionError::NotFound(format!("query {query_id}")))?;
        let name = self
            .reload(&closed.container_id)
            .await
            .map(|r| r.name.to_string())
            .unwrap_or_default();
        Ok(query_view(&closed, &name))
    }

    /// `offload admin pressure`: ask now, as if pressure were seen, every running cloud
    /// container whose owner has a connected agent and no pending query.
    pub async fn ask_now(
        &self,
        who: &Principal,
        user: Option<UserName>,
    ) -> Result<Vec<QueryView>, ActionError> {
        crate::controller::require_admin(who)?;
        let records = self.db(|s| s.containers(None)).await?;
        let pending = self.db(|s| s.pending_queries()).await?;
        let cooldown = self.monitor.config.decline_cooldown_secs as i64;
        let mut asked = Vec::new();
        for record in records {
            let owner = record.owner.clone();
            let history = self.db(move |s| s.queries_of(&owner)).await?;
            // As the policy would: a recent decline is respected.
            let declined_recently = history.iter().any(|q| {
                q.container_id == record.id
                    && q.state == "declined"
                    && q.answered_at
                        .is_some_and(|at| self.clock.unix() - at < cooldown)
            });
            let eligible = record.location == Location::Cloud
                && record.state == State::Running
                && self.hub.agent(&record.owner).is_some()
                && user.as_ref().is_none_or(|u| *u == record.owner)
                && !declined_recently
                && !pending.iter().any(|q| q.container_id == record.id);
            if !eligible {
                continue;
            }
            let deadline = Duration::from_secs_f64(self.monitor.config.query_deadline_secs);
            let bytes = self
                .monitor
                .sizes
                .last(&record.id)
                .or_else(|| self.sync.cached_bytes(&record.id))
                .unwrap_or(0);
            asked.push(
                self.ask(
                    &record,
                    "the operator asked for room on the cloud host now",
                    deadline,
                    bytes,
                    true,
                )
                .await?,
            );
        }
        Ok(asked)
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
        Ok(self.metrics.render(&counts, self.hub.agents().len()))
    }

    /// The monitor's last view, for `offload top`.
    pub async fn monitor_view(&self) -> Result<MonitorView, ActionError> {
        let pending = self.db(|s| s.pending_queries()).await?.len();
        Ok(self.monitor.view(pending))
    }
}

/// Stands in for the host sampler in pool mode, where samples come from the containers.
struct NoSampler;

impl HostSampler for NoSampler {
    fn sample(&mut self) -> Result<HostSample, offload_monitor::MonitorError> {
        Ok(HostSample::default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use offload_core::api::StartRequest;

    fn setup() -> (tempfile::TempDir, Controller, Principal) {
        let (dir, ctl, _, who) = crate::testing::controller();
        (dir, ctl, who)
    }

    fn tracker() -> Tracker {
        Tracker {
            readings: HashMap::new(),
            cores: HashMap::new(),
            memory: HashMap::new(),
        }
    }

    async fn start(ctl: &Controller, who: &Principal) -> ContainerRecord {
        let request = StartRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        ctl.start(who, request).await.unwrap()
    }

    async fn tick(ctl: &Arc<Controller>, tracker: &mut Tracker) {
        tokio::time::timeout(
            Duration::from_secs(5),
            ctl.monitor_tick(&mut NoSampler, None, tracker),
        )
        .await
        .expect("the tick waited on workspace sizing")
        .unwrap();
    }

    async fn size_of(ctl: &Controller, id: &ContainerId) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(bytes) = ctl.monitor.sizes.last(id) {
                return bytes;
            }
            assert!(Instant::now() < deadline, "the workspace was never sized");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A sparse 16 GiB file in one workspace does not hold up the shared monitor: the
    /// tick returns at once, and the workspace is sized quickly from its allocated
    /// blocks, not its length.
    #[tokio::test]
    async fn a_sparse_workspace_does_not_stall_the_monitor() {
        use std::io::{Seek, SeekFrom, Write};
        let (_dir, ctl, who) = setup();
        let ctl = Arc::new(ctl);
        let rec = start(&ctl, &who).await;
        let mut file = std::fs::File::create(ctl.workspace_dir(&rec.id).join("sparse")).unwrap();
        file.seek(SeekFrom::Start(1 << 30)).unwrap();
        file.write_all(&vec![1u8; 1 << 20]).unwrap();
        file.set_len(16 << 30).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let started = Instant::now();
        tick(&ctl, &mut tracker()).await;
        let bytes = size_of(&ctl, &rec.id).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!((1 << 20..16 << 20).contains(&bytes), "{bytes} bytes");
    }

    /// Stands in for sizing that takes as long as the test wants.
    struct BlockedSizer {
        calls: AtomicUsize,
        release: Mutex<std::sync::mpsc::Receiver<u64>>,
    }

    impl WorkspaceSizer for BlockedSizer {
        fn size(&self, _dir: &Path) -> Result<DiskUsage, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let bytes = lock(&self.release)
                .recv_timeout(Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            Ok(DiskUsage {
                allocated_bytes: bytes,
                entries: 1,
                complete: bytes != 0,
            })
        }
    }

    /// The monitor never waits for a measurement: ticks run while sizing is stuck, start
    /// no second measurement of the same workspace, and pick the size up once it is in.
    /// An incomplete measurement keeps the last size.
    #[tokio::test]
    async fn the_tick_does_not_wait_for_sizing() {
        let (_dir, mut ctl, who) = setup();
        let (release, rx) = std::sync::mpsc::channel();
        let sizer = Arc::new(BlockedSizer {
            calls: AtomicUsize::new(0),
            release: Mutex::new(rx),
        });
        ctl.monitor =
            Monitor::with_sizer(ctl.monitor.config.clone(), ctl.clock, sizer.clone()).unwrap();
        let ctl = Arc::new(ctl);
        let rec = start(&ctl, &who).await;
        let mut tracker = tracker();
        tick(&ctl, &mut tracker).await;
        tick(&ctl, &mut tracker).await;
        assert_eq!(ctl.monitor.sizes.last(&rec.id), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sizer.calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no measurement started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 1);
        release.send(4096).unwrap();
        assert_eq!(size_of(&ctl, &rec.id).await, 4096);
        tick(&ctl, &mut tracker).await;
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 1, "the size is fresh");

        // Due again: a measurement that runs out of budget keeps the last size.
        lock(&ctl.monitor.sizes.state)
            .get_mut(&rec.id)
            .unwrap()
            .measured = None;
        tick(&ctl, &mut tracker).await;
        release.send(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&ctl.monitor.sizes.state)[&rec.id].measured.is_none() {
            assert!(Instant::now() < deadline, "the measurement never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sizer.calls.load(Ordering::SeqCst), 2);
        assert_eq!(ctl.monitor.sizes.last(&rec.id), Some(4096));
    }

    async fn query_state(ctl: &Controller, id: &str) -> String {
        let key = id.to_owned();
        ctl.db(move |s| s.query(&key)).await.unwrap().unwrap().state
    }

    /// One expiry rule on one clock: the stored deadline is the instant the policy
    /// expires the query at and the instant after which an answer is refused, and the
    /// default action then applies (decline here, accept for an auto-accepting agent).
    #[tokio::test(start_paused = true)]
    async fn queries_expire_at_their_stored_deadline_under_a_paused_clock() {
        use crate::testing::{Answer as Scripted, Script, rig};
        use offload_core::agent::{Reply, Timings};
        let rig = rig();
        let admin = Principal {
            user: rig.who.user.clone(),
            admin: true,
        };
        let deadline = rig.ctl.monitor.config.query_deadline_secs as i64;
        let mut tracker = tracker();

        // Declined by default: the deadline passes with no answer.
        let first = rig.start().await;
        let script = Script::default();
        let link = rig.connect(&script, Vec::new());
        let asked = rig.ctl.ask_now(&admin, None).await.unwrap();
        assert_eq!(asked.len(), 1);
        let q = asked[0].clone();
        assert_eq!(q.deadline_at - q.created_at, deadline);
        tokio::time::advance(Duration::from_secs(deadline as u64 - 1)).await;
        tick(&rig.ctl, &mut tracker).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "pending", "not yet due");
        tokio::time::advance(Duration::from_secs(2)).await;
        // Past the deadline an answer is refused, by the same rule the policy applies.
        let late = rig.ctl.answer(&rig.who, &q.id, Answer::Accept).await;
        assert!(
            matches!(&late, Err(ActionError::Conflict(m)) if m.contains("expired")),
            "{late:?}"
        );
        tick(&rig.ctl, &mut tracker).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "expired");
        assert!(
            !script.seen().contains(&"prepare"),
            "declined: nothing moves"
        );
        assert_eq!(rig.record(&first.id).await.location, Location::Cloud);
        rig.ctl.hub.unregister(&link);

        // An auto-accepting agent's query expires as accepted, and the move starts.
        let second = rig.start().await;
        let script = Script::default();
        script.on(
            "prepare",
            Scripted::Reply(Reply::Prepared {
                timings: Timings::default(),
            }),
        );
        let (link, mut outbox) = rig.ctl.hub.register(
            rig.who.user.clone(),
            crate::hub::Hello {
                capacity: offload_core::agent::EdgeCapacity {
                    cpus: 4.0,
                    memory_bytes: 8 << 30,
                    free_disk_bytes: 100 << 30,
                    architecture: "amd64".into(),
                    hostname: "laptop".into(),
                },
                images: Vec::new(),
                containers: Vec::new(),
                auto_accept: true,
                auto_return: false,
            },
        );
        let asked = rig.ctl.ask_now(&admin, None).await.unwrap();
        let q = asked
            .iter()
            .find(|q| q.container_id == second.id.as_str())
            .unwrap()
            .clone();
        tokio::time::advance(Duration::from_secs(deadline as u64 + 1)).await;
        tick(&rig.ctl, &mut tracker).await;
        assert_eq!(query_state(&rig.ctl, &q.id).await, "expired");
        // The accepted move asks the agent to prepare (the first container, asked again,
        // expires as accepted too).
        let prepare = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match outbox.recv().await {
                    Some(ServerMessage::Request { command, .. })
                        if *command.container_id() == second.id =>
                    {
                        return command;
                    }
                    Some(_) => continue,
                    None => panic!("the agent's link closed"),
                }
            }
        })
        .await
        .unwrap();
        match prepare {
            offload_core::agent::Command::Prepare { spec } => {
                assert_eq!(spec.id, second.id)
            }
            other => panic!("{other:?}"),
        }
        drop((link, script));
    }
}
