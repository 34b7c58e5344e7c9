//! The resource monitor at work: every interval it samples the host (or the pool of
//! managed containers), reads each container's use from the engine, lets the policy of
//! `offload-monitor` decide, and carries the decision out: queries to owners, pressure
//! warnings, expiries, and returns to the cloud. Queries are persisted; answers arrive
//! through the API (`offload accept`/`decline`, the agent's prompt or its auto-accept).

use std::collections::HashMap;
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

use crate::controller::{Clock, Controller};
use crate::error::ActionError;

/// How often a container's workspace size is measured for the move-cost estimate.
const SIZE_REFRESH: Duration = Duration::from_secs(30);

/// The monitor's shared state: the policy and what it last saw.
pub struct Monitor {
    policy: Mutex<Policy>,
    config: PolicyConfig,
    clock: Clock,
    last: Mutex<Option<(Status, Vec<UsageView>)>>,
}

struct Tracker {
    readings: HashMap<String, UsageReading>,
    cores: HashMap<ContainerId, f64>,
    memory: HashMap<ContainerId, u64>,
    sizes: HashMap<ContainerId, (u64, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    pub fn new(config: PolicyConfig, clock: Clock) -> Result<Self, ActionError> {
        let policy =
            Policy::new(config.clone()).map_err(|e| ActionError::BadRequest(e.to_string()))?;
        Ok(Monitor {
            policy: Mutex::new(policy),
            config,
            clock,
            last: Mutex::new(None),
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
            sizes: HashMap::new(),
        };
        // Queries persisted before a restart keep their deadlines.
        match self.db(|s| s.pending_queries()).await {
            Ok(pending) => pending.iter().for_each(|q| self.remember_query(q)),
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
                let stale = tracker
                    .sizes
                    .get(&record.id)
                    .is_none_or(|(_, at)| at.elapsed() > SIZE_REFRESH);
                if stale && let Ok(manifest) = self.sync.manifest(&record.id).await {
                    tracker.sizes.insert(
                        record.id.clone(),
                        (manifest.total_file_bytes(), Instant::now()),
                    );
                }
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
                missing_bytes: tracker.sizes.get(&r.id).map_or(0, |(b, _)| *b),
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
                .ask(record, &ask.reason, deadline, ask.move_bytes)
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
        self.remember_query(&query);
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
    /// deadline the store shows: one rule for both.
    fn remember_query(&self, query: &QueryRecord) {
        let deadline = u64::try_from(query.deadline_at).unwrap_or(0) as f64;
        let asked_at = (deadline - self.monitor.config.query_deadline_secs).max(0.0);
        lock(&self.monitor.policy).record_ask(
            query.container_id.as_str(),
            query.owner.as_str(),
            Duration::from_secs_f64(asked_at),
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
            let bytes = self.sync.cached_bytes(&record.id).unwrap_or(0);
            asked.push(
                self.ask(
                    &record,
                    "the operator asked for room on the cloud host now",
                    deadline,
                    bytes,
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
