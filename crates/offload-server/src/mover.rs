//! The move state machine of DESIGN.md §4, driven by the server.
//!
//! A move is a background task holding its container's lock. Before each step the step is
//! written to the store (I4), so a restarted server knows what may have happened; the
//! edge copy starts only after the cloud copy was confirmed stopped and the other way
//! round (I1); any failure leaves a working container, with the reason recorded (I5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use offload_core::agent::{Command, EdgeContainer, EdgeSpec, Reply, Timings};
use offload_core::api::MoveRequest;
use offload_core::{
    ContainerId, ContainerRecord, Location, MoveDirection, MoveRecord, MoveReport, MoveStep, State,
};
use offload_store::Principal;

use crate::controller::{Controller, now};
use crate::error::ActionError;
use crate::hub::AgentLink;

/// How long an agent may take to fetch an image and pre-copy a workspace.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the final delta and the start at the edge may take.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long stopping the edge copy and its last push may take.
const STOP_EDGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a restarted server waits for the agent of an interrupted move.
pub const AGENT_GRACE: Duration = Duration::from_secs(45);

fn ms(since: Instant) -> Option<u64> {
    Some(since.elapsed().as_millis() as u64)
}

impl Controller {
    /// `offload move`: checks, records the move, and runs it in the background.
    pub async fn request_move(
        self: &Arc<Self>,
        who: &Principal,
        id_or_name: &str,
        req: MoveRequest,
    ) -> Result<ContainerRecord, ActionError> {
        let found = self.find(who, id_or_name).await?;
        let guard = self.lock(&found.id).await;
        let mut record = self.reload(&found.id).await?;
        if record.state == State::Moving {
            return Err(ActionError::Conflict(format!(
                "container {} is already moving",
                record.id
            )));
        }
        if record.location == req.to {
            return Err(ActionError::Conflict(format!(
                "container {} is already at the {}",
                record.id,
                req.to.as_str()
            )));
        }
        let agent = self.hub.agent(&record.owner);
        match req.to {
            Location::Edge => {
                let agent = agent.ok_or_else(|| {
                    ActionError::Conflict(format!(
                        "{}'s agent is not connected; start `offload agent` on the edge machine first",
                        record.owner
                    ))
                })?;
                if !matches!(record.state, State::Running | State::Stopped) {
                    return Err(ActionError::Conflict(format!(
                        "container {} is {}; only a running or stopped container can move",
                        record.id,
                        record.state.as_str()
                    )));
                }
                let mv = self
                    .begin(&mut record, MoveDirection::ToEdge, MoveStep::Preparing)
                    .await?;
                let ctl = self.clone();
                let moving = record.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    ctl.move_to_edge(moving, mv, agent).await;
                });
            }
            Location::Cloud if req.force => {
                self.force_to_cloud(&mut record).await?;
                drop(guard);
            }
            Location::Cloud => {
                let agent = agent.ok_or_else(|| {
                    ActionError::Conflict(format!(
                        "{}'s agent is not connected; `offload move {} --to cloud --force` starts the cloud copy from the last synced files",
                        record.owner, record.id
                    ))
                })?;
                let mv = self
                    .begin(&mut record, MoveDirection::ToCloud, MoveStep::StoppingEdge)
                    .await?;
                let ctl = self.clone();
                let moving = record.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    ctl.move_to_cloud(moving, mv, agent).await;
                });
            }
        }
        Ok(record)
    }

    async fn begin(
        &self,
        record: &mut ContainerRecord,
        direction: MoveDirection,
        step: MoveStep,
    ) -> Result<MoveRecord, ActionError> {
        let mv = MoveRecord {
            container_id: record.id.clone(),
            direction,
            step,
            from_generation: record.generation,
            started_at: now(),
            timings: Timings::default(),
        };
        record.state = State::Moving;
        record.reason = None;
        record.updated_at = now();
        let (r, m) = (record.clone(), mv.clone());
        self.db(move |s| {
            s.begin_move(&r, &m)?;
            s.record_event(
                &r.id,
                r.updated_at,
                "move",
                &format!("move {} started", m.direction.as_str()),
            )
        })
        .await?;
        Ok(mv)
    }

    async fn step(&self, mv: &mut MoveRecord, step: MoveStep) -> Result<(), ActionError> {
        mv.step = step;
        let m = mv.clone();
        self.db(move |s| s.update_move(&m)).await
    }

    /// Ends a move: the record as it now is, the report, and the move row gone.
    async fn finish(
        &self,
        record: &mut ContainerRecord,
        mv: &MoveRecord,
        outcome: &str,
        reason: Option<String>,
        forced: bool,
    ) {
        record.updated_at = now();
        record.reason = reason.clone();
        record.last_move = Some(MoveReport {
            direction: mv.direction,
            outcome: outcome.to_owned(),
            forced,
            from_generation: mv.from_generation,
            to_generation: record.generation,
            started_at: mv.started_at,
            finished_at: record.updated_at,
            reason: reason.clone(),
            timings: mv.timings.clone(),
        });
        self.hub.clear_progress(&record.id);
        self.metrics
            .move_ended(mv.direction.as_str(), outcome, mv.timings.downtime_ms);
        let r = record.clone();
        let detail = match &reason {
            Some(why) => format!("move {} {outcome}: {why}", mv.direction.as_str()),
            None => format!("move {} {outcome}", mv.direction.as_str()),
        };
        let result = self
            .db(move |s| {
                s.finish_move(&r)?;
                s.record_event(&r.id, r.updated_at, "move", &detail)
            })
            .await;
        if let Err(e) = result {
            tracing::error!(id = %record.id, error = %e, "cannot record the end of a move");
        }
        tracing::info!(id = %record.id, direction = mv.direction.as_str(), outcome, ?reason, "move ended");
    }

    /// What the edge needs to run the container.
    async fn edge_spec(&self, record: &ContainerRecord) -> Result<EdgeSpec, ActionError> {
        let image = self
            .runtime()
            .image(record.image.as_str())
            .await?
            .ok_or_else(|| {
                ActionError::Conflict(format!(
                    "image {} is no longer on the cloud engine",
                    record.image
                ))
            })?;
        Ok(EdgeSpec {
            id: record.id.to_string(),
            name: record.name.to_string(),
            owner: record.owner.to_string(),
            image: record.image.to_string(),
            image_id: image.id,
            image_pullable: !image.repo_digests.is_empty(),
            command: record.command.clone(),
            cpus: record.cpus,
            memory_bytes: record.memory_bytes,
        })
    }

    async fn move_to_edge(
        self: Arc<Self>,
        mut record: ContainerRecord,
        mut mv: MoveRecord,
        agent: Arc<AgentLink>,
    ) {
        let started = Instant::now();
        let was_running = self.cloud_running(&record).await;
        let spec = match self.edge_spec(&record).await {
            Ok(spec) => spec,
            Err(e) => {
                return self
                    .roll_back_to_cloud(record, mv, e.to_string(), was_running, false)
                    .await;
            }
        };
        // 1. Image and pre-copy while the cloud copy runs.
        match self
            .hub
            .request(
                &agent.user,
                Command::Prepare { spec: spec.clone() },
                PREPARE_TIMEOUT,
            )
            .await
        {
            Ok(Reply::Prepared { timings }) => {
                mv.timings.image_ms = timings.image_ms;
                mv.timings.precopy_ms = timings.precopy_ms;
                mv.timings.image = timings.image;
                mv.timings.bytes = timings.bytes;
            }
            Ok(other) => {
                let why = format!("unexpected answer to prepare: {other:?}");
                return self
                    .roll_back_to_cloud(record, mv, why, was_running, false)
                    .await;
            }
            Err(e) => {
                let why = format!("preparing the edge failed: {e}");
                return self
                    .roll_back_to_cloud(record, mv, why, was_running, false)
                    .await;
            }
        }
        // 2. Stop the cloud copy.
        if let Err(e) = self.step(&mut mv, MoveStep::StoppingCloud).await {
            return self
                .roll_back_to_cloud(record, mv, e.to_string(), was_running, false)
                .await;
        }
        let stop_started = Instant::now();
        if let Some(runtime_id) = &record.runtime_id {
            match self.runtime().stop(runtime_id, self.grace()).await {
                Ok(()) | Err(offload_runtime::RuntimeError::NotFound { .. }) => {}
                Err(e) => {
                    let why = format!("stopping the cloud copy failed: {e}");
                    return self
                        .roll_back_to_cloud(record, mv, why, was_running, false)
                        .await;
                }
            }
        }
        mv.timings.stop_ms = ms(stop_started);
        // 3. Final delta and start at the edge, at the next generation.
        if let Err(e) = self.step(&mut mv, MoveStep::Finalizing).await {
            return self
                .roll_back_to_cloud(record, mv, e.to_string(), was_running, false)
                .await;
        }
        let generation = mv.from_generation + 1;
        let finalize = Command::Finalize { spec, generation };
        match self
            .hub
            .request(&agent.user, finalize, FINALIZE_TIMEOUT)
            .await
        {
            Ok(Reply::Started {
                runtime_id,
                timings,
            }) => {
                mv.timings.final_sync_ms = timings.final_sync_ms;
                mv.timings.start_ms = timings.start_ms;
                mv.timings.bytes += timings.bytes;
                mv.timings.total_ms = ms(started);
                mv.timings.downtime_ms = Some(
                    mv.timings.stop_ms.unwrap_or(0)
                        + mv.timings.final_sync_ms.unwrap_or(0)
                        + mv.timings.start_ms.unwrap_or(0),
                );
                if let Some(old) = record.runtime_id.take() {
                    let _ = self.runtime().remove(&old).await;
                }
                record.location = Location::Edge;
                record.state = State::Running;
                record.generation = generation;
                record.runtime_id = Some(runtime_id);
                self.finish(&mut record, &mv, "done", None, false).await;
            }
            Ok(other) => {
                let why = format!("unexpected answer to finalize: {other:?}");
                self.roll_back_to_cloud(record, mv, why, was_running, true)
                    .await;
            }
            Err(e) => {
                let ambiguous = e.is_ambiguous();
                let why = format!("starting at the edge failed: {e}");
                self.roll_back_to_cloud(record, mv, why, was_running, ambiguous)
                    .await;
            }
        }
    }

    async fn cloud_running(&self, record: &ContainerRecord) -> bool {
        match &record.runtime_id {
            Some(id) => matches!(self.runtime().inspect(id).await, Ok(Some(c)) if c.running),
            None => false,
        }
    }

    /// A move to the edge failed: the cloud copy runs again (I5). When the edge may have
    /// started its copy (`fence`), the generation moves past it so that copy is stopped
    /// as stale wherever it turns up (I1).
    async fn roll_back_to_cloud(
        &self,
        mut record: ContainerRecord,
        mv: MoveRecord,
        reason: String,
        was_running: bool,
        fence: bool,
    ) {
        tracing::warn!(id = %record.id, %reason, "rolling a move to the edge back");
        let _ = self
            .hub
            .request(
                &record.owner,
                Command::Abort {
                    container_id: record.id.to_string(),
                },
                Duration::from_secs(30),
            )
            .await;
        record.location = Location::Cloud;
        if fence {
            record.generation = mv.from_generation + 2;
        }
        let mut reason = reason;
        // The cloud copy is started again when it may have been stopped for the move, or
        // when the edge may run a copy (a new engine container carries the new generation).
        let restart = fence || (was_running && mv.step.source_may_be_stopped());
        if restart {
            match self.restart_cloud_copy(&mut record).await {
                Ok(()) => record.state = State::Running,
                Err(e) => {
                    reason = format!("{reason}; restarting the cloud copy failed too: {e}");
                    record.state = State::Stopped;
                }
            }
        } else {
            record.state = if self.cloud_running(&record).await {
                State::Running
            } else {
                State::Stopped
            };
        }
        self.finish(&mut record, &mv, "rolled_back", Some(reason), false)
            .await;
        if fence {
            self.fence_edge(&record).await;
        }
    }

    /// Starts the cloud copy on its workspace: a fresh engine container, labelled with the
    /// record's current generation.
    async fn restart_cloud_copy(&self, record: &mut ContainerRecord) -> Result<(), ActionError> {
        if let Some(old) = record.runtime_id.take() {
            self.runtime().remove(&old).await?;
        }
        for stale in self.engine_containers_of(&record.id).await? {
            self.runtime().remove(&stale.runtime_id).await?;
        }
        record.runtime_id = Some(self.runtime().run(&self.spec_for(record)).await?);
        Ok(())
    }

    /// Tells the owner's agent, if connected, that its copy is stale.
    async fn fence_edge(&self, record: &ContainerRecord) {
        let command = Command::Fence {
            container_id: record.id.to_string(),
            generation: record.generation,
        };
        if let Err(e) = self
            .hub
            .request(&record.owner, command, Duration::from_secs(120))
            .await
        {
            tracing::info!(id = %record.id, error = %e, "the edge copy will be fenced when its agent reports");
        }
    }

    async fn move_to_cloud(
        self: Arc<Self>,
        mut record: ContainerRecord,
        mut mv: MoveRecord,
        agent: Arc<AgentLink>,
    ) {
        let started = Instant::now();
        // 1. Stop at the edge and push the last changes.
        let stop = Command::StopForReturn {
            container_id: record.id.to_string(),
            generation: record.generation,
        };
        match self.hub.request(&agent.user, stop, STOP_EDGE_TIMEOUT).await {
            Ok(Reply::Stopped { timings }) => {
                mv.timings.stop_ms = timings.stop_ms;
                mv.timings.final_sync_ms = timings.final_sync_ms;
                mv.timings.bytes = timings.bytes;
            }
            other => {
                let why = match other {
                    Err(e) => format!("stopping at the edge failed: {e}"),
                    Ok(reply) => format!("unexpected answer to stop: {reply:?}"),
                };
                record.state = State::Running;
                return self
                    .finish(&mut record, &mv, "rolled_back", Some(why), false)
                    .await;
            }
        }
        // 2. Start in the cloud, at the next generation.
        if let Err(e) = self.step(&mut mv, MoveStep::StartingCloud).await {
            tracing::error!(id = %record.id, error = %e, "cannot record a move step");
        }
        let start_started = Instant::now();
        record.generation = mv.from_generation + 1;
        match self.restart_cloud_copy(&mut record).await {
            Ok(()) => {
                mv.timings.start_ms = ms(start_started);
                mv.timings.total_ms = ms(started);
                mv.timings.downtime_ms = Some(
                    mv.timings.stop_ms.unwrap_or(0)
                        + mv.timings.final_sync_ms.unwrap_or(0)
                        + mv.timings.start_ms.unwrap_or(0),
                );
                record.location = Location::Cloud;
                record.state = State::Running;
                self.finish(&mut record, &mv, "done", None, false).await;
                let release = Command::Release {
                    container_id: record.id.to_string(),
                };
                let _ = self
                    .hub
                    .request(&agent.user, release, Duration::from_secs(60))
                    .await;
            }
            Err(e) => {
                // The edge copy stopped cleanly with everything pushed: start it again there.
                let why = format!("starting in the cloud failed: {e}");
                record.generation = mv.from_generation;
                record.location = Location::Edge;
                let restarted = match self.edge_spec(&record).await {
                    Ok(spec) => self
                        .hub
                        .request(
                            &agent.user,
                            Command::Finalize {
                                spec,
                                generation: record.generation,
                            },
                            FINALIZE_TIMEOUT,
                        )
                        .await
                        .ok(),
                    Err(_) => None,
                };
                record.state = match restarted {
                    Some(Reply::Started { runtime_id, .. }) => {
                        record.runtime_id = Some(runtime_id);
                        State::Running
                    }
                    _ => State::Stopped,
                };
                self.finish(&mut record, &mv, "rolled_back", Some(why), false)
                    .await;
            }
        }
    }

    /// `move --to cloud --force`: the edge is not asked. The cloud copy starts from the
    /// last acknowledged files at a new generation, which fences the edge copy.
    async fn force_to_cloud(&self, record: &mut ContainerRecord) -> Result<(), ActionError> {
        if record.location != Location::Edge {
            return Err(ActionError::Conflict(format!(
                "container {} is not at the edge",
                record.id
            )));
        }
        let mv = MoveRecord {
            container_id: record.id.clone(),
            direction: MoveDirection::ToCloud,
            step: MoveStep::StartingCloud,
            from_generation: record.generation,
            started_at: now(),
            timings: Timings::default(),
        };
        let started = Instant::now();
        record.generation = mv.from_generation + 1;
        record.location = Location::Cloud;
        record.state = State::Moving;
        record.runtime_id = None;
        let (r, m) = (record.clone(), mv.clone());
        self.db(move |s| s.begin_move(&r, &m)).await?;
        let mut mv = mv;
        match self.restart_cloud_copy(record).await {
            Ok(()) => {
                mv.timings.start_ms = ms(started);
                mv.timings.total_ms = ms(started);
                record.state = State::Running;
                self.finish(record, &mv, "done", None, true).await;
            }
            Err(e) => {
                record.state = State::Stopped;
                let why = format!("starting in the cloud failed: {e}");
                self.finish(record, &mv, "failed", Some(why.clone()), true)
                    .await;
                return Err(ActionError::Internal(why));
            }
        }
        if self.hub.agent(&record.owner).is_some() {
            self.fence_edge(record).await;
        }
        Ok(())
    }

    /// An agent told us what it holds: fence stale copies, adopt the outcome of a move
    /// interrupted by a server restart, and keep `unreachable`/`running` current.
    pub async fn on_agent_report(
        self: &Arc<Self>,
        agent: Arc<AgentLink>,
        containers: Vec<EdgeContainer>,
    ) {
        for held in containers {
            let Ok(id) = ContainerId::parse(&held.id) else {
                continue;
            };
            let record = match self.reload(&id).await {
                Ok(r) if r.owner == agent.user => r,
                _ => {
                    // Unknown here (removed, or never ours): the agent drops it.
                    let release = Command::Release {
                        container_id: held.id.clone(),
                    };
                    let _ = self
                        .hub
                        .request(&agent.user, release, Duration::from_secs(60))
                        .await;
                    continue;
                }
            };
            if held.generation < record.generation {
                if held.running || !held.synced {
                    self.fence_edge(&record).await;
                } else {
                    let release = Command::Release {
                        container_id: held.id.clone(),
                    };
                    let _ = self
                        .hub
                        .request(&agent.user, release, Duration::from_secs(60))
                        .await;
                }
                continue;
            }
            if record.location == Location::Edge && held.generation == record.generation {
                let _guard = match self.locks_try(&id).await {
                    Some(g) => g,
                    None => continue,
                };
                let Ok(mut fresh) = self.reload(&id).await else {
                    continue;
                };
                if fresh.state == State::Moving || fresh.generation != held.generation {
                    continue;
                }
                let state = if held.running {
                    State::Running
                } else {
                    State::Stopped
                };
                if fresh.state != state || fresh.runtime_id != held.runtime_id {
                    fresh.state = state;
                    fresh.runtime_id = held.runtime_id.clone();
                    fresh.reason = None;
                    fresh.updated_at = now();
                    let _ = self
                        .save(&fresh, "edge", &format!("{} at the edge", state.as_str()))
                        .await;
                }
            }
        }
        self.resume_interrupted_moves(Some(agent)).await;
    }

    async fn locks_try(&self, id: &ContainerId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(Duration::from_millis(200), self.lock(id))
            .await
            .ok()
    }

    /// The owner's agent went away: its edge containers become `unreachable` (and keep
    /// running there; nothing else happens by itself).
    pub async fn on_agent_gone(&self, agent: &AgentLink) {
        let owner = agent.user.clone();
        let Ok(records) = self.db(move |s| s.containers(Some(&owner))).await else {
            return;
        };
        for record in records {
            if record.location != Location::Edge || record.state == State::Moving {
                continue;
            }
            let Some(_guard) = self.locks_try(&record.id).await else {
                continue;
            };
            let Ok(mut fresh) = self.reload(&record.id).await else {
                continue;
            };
            if fresh.location == Location::Edge && fresh.state == State::Running {
                fresh.state = State::Unreachable;
                fresh.updated_at = now();
                let _ = self.save(&fresh, "edge", "the agent disconnected").await;
            }
        }
    }

    /// Moves interrupted by a server restart. With the agent's report in hand the outcome
    /// is known; without it, after [`AGENT_GRACE`], the cloud copy runs again at a
    /// generation that fences whatever the edge may have started.
    pub async fn resume_interrupted_moves(self: &Arc<Self>, agent: Option<Arc<AgentLink>>) {
        let Ok(moves) = self.db(|s| s.moves()).await else {
            return;
        };
        for listed in moves {
            let Some(guard) = self.locks_try(&listed.container_id).await else {
                continue;
            };
            // The move may have ended while we waited for its lock.
            let id = listed.container_id.clone();
            let Ok(Some(mv)) = self.db(move |s| s.move_of(&id)).await else {
                continue;
            };
            let Ok(mut record) = self.reload(&mv.container_id).await else {
                continue;
            };
            let link = self.hub.agent(&record.owner);
            if agent.as_ref().is_some_and(|a| a.user != record.owner) {
                continue;
            }
            let held = link.as_ref().and_then(|l| {
                l.containers()
                    .into_iter()
                    .find(|c| c.id == record.id.as_str())
            });
            let waited_enough = now() - mv.started_at >= AGENT_GRACE.as_secs() as i64
                || self.started_at.elapsed() >= AGENT_GRACE;
            match (mv.direction, mv.step) {
                (MoveDirection::ToEdge, MoveStep::Finalizing) => match (&link, held) {
                    (Some(_), Some(h)) if h.generation == mv.from_generation + 1 && h.running => {
                        record.location = Location::Edge;
                        record.state = State::Running;
                        record.generation = h.generation;
                        if let Some(old) = record.runtime_id.take() {
                            let _ = self.runtime().remove(&old).await;
                        }
                        record.runtime_id = h.runtime_id.clone();
                        self.finish(
                            &mut record,
                            &mv,
                            "done",
                            Some("completed after a server restart".into()),
                            false,
                        )
                        .await;
                    }
                    (Some(_), _) => {
                        self.roll_back_to_cloud(
                            record,
                            mv,
                            "interrupted by a server restart".into(),
                            true,
                            true,
                        )
                        .await;
                    }
                    (None, _) if waited_enough => {
                        self.roll_back_to_cloud(
                            record,
                            mv,
                            "interrupted by a server restart; the agent did not return".into(),
                            true,
                            true,
                        )
                        .await;
                    }
                    (None, _) => {}
                },
                (MoveDirection::ToEdge, _) => {
                    let running =
                        self.cloud_running(&record).await || mv.step.source_may_be_stopped();
                    self.roll_back_to_cloud(
                        record,
                        mv,
                        "interrupted by a server restart".into(),
                        running,
                        false,
                    )
                    .await;
                }
                (MoveDirection::ToCloud, MoveStep::StartingCloud) => {
                    // The edge confirmed it stopped and pushed everything: start in the cloud.
                    record.generation = mv.from_generation + 1;
                    record.location = Location::Cloud;
                    match self.restart_cloud_copy(&mut record).await {
                        Ok(()) => {
                            record.state = State::Running;
                            self.finish(
                                &mut record,
                                &mv,
                                "done",
                                Some("completed after a server restart".into()),
                                false,
                            )
                            .await;
                        }
                        Err(e) => {
                            record.state = State::Stopped;
                            self.finish(
                                &mut record,
                                &mv,
                                "failed",
                                Some(format!("starting in the cloud failed: {e}")),
                                false,
                            )
                            .await;
                        }
                    }
                }
                (MoveDirection::ToCloud, _) => match (&link, held) {
                    (Some(l), Some(_)) => {
                        // Run the move again: stopping and pushing are idempotent.
                        let ctl = self.clone();
                        let l = l.clone();
                        tokio::spawn(async move {
                            let _guard = guard;
                            ctl.move_to_cloud(record, mv, l).await;
                        });
                    }
                    (Some(_), None) | (None, _) if waited_enough => {
                        // The agent lost it, or never came back: back to the edge state,
                        // unreachable, for the owner to decide (`--force`).
                        record.state = State::Unreachable;
                        record.location = Location::Edge;
                        self.finish(
                            &mut record,
                            &mv,
                            "rolled_back",
                            Some("interrupted by a server restart".into()),
                            false,
                        )
                        .await;
                    }
                    _ => {}
                },
            }
        }
    }
}
