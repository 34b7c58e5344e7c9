//! Carries out the move state machine of `offload_core::moves` (DESIGN.md §4).
//!
//! A move is a background task holding its container's lock. It enters each phase by
//! writing it to the store (I4), takes the phase's action, and asks [`advance`] what
//! follows from what happened. A move whose outcome is in doubt (the agent vanished while
//! the edge may have started its copy) stays recorded and is picked up by the
//! level-triggered [`Controller::settle_moves`], which asks [`settle`] with what the
//! agent reports; no copy starts while another may run (I1), and every move that fails
//! leaves a working container, or one the reconciler keeps trying to start (I5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use offload_core::agent::{Command, EdgeSpec, Reply};
use offload_core::api::MoveRequest;
use offload_core::events::EventBody;
use offload_core::moves::{
    Decision, EdgeView, PhaseEvent, Rollback, ToCloud, ToEdge, ToNode, World, advance, settle,
};
use offload_core::{
    ContainerId, ContainerRecord, Generation, Location, MoveDirection, MoveOutcome, MovePhase,
    MoveRecord, MoveReport, MoveStep, State,
};
use offload_store::Principal;

use crate::controller::{Controller, now};
use crate::error::ActionError;
use crate::hub::HubError;

/// How long an agent may take to fetch an image and pre-copy a workspace.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the final delta and the start at the edge may take.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long stopping the edge copy and its last push may take.
const STOP_EDGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the agent may take to answer a command that only tidies up.
const TIDY_TIMEOUT: Duration = Duration::from_secs(60);

fn ms(since: Instant) -> Option<u64> {
    Some(since.elapsed().as_millis() as u64)
}

/// What a phase's action learned on its way, for the phases after it.
struct Run {
    record: ContainerRecord,
    mv: MoveRecord,
    started: Instant,
    /// Whether the cloud copy ran when the move began: a rollback restarts only then.
    was_running: bool,
    spec: Option<EdgeSpec>,
    /// The engine id of the copy the target now runs.
    target_runtime_id: Option<String>,
    /// A move between cluster nodes: the node it goes to (`None`: the one with the most
    /// room when it starts).
    target_node: Option<String>,
}

/// A move to the edge starts only from a running or stopped container.
pub(crate) fn require_movable(record: &ContainerRecord) -> Result<(), ActionError> {
    if matches!(record.state, State::Running | State::Stopped) {
        return Ok(());
    }
    Err(ActionError::Conflict(format!(
        "container {} is {}; only a running or stopped container can move",
        record.id,
        record.state.as_str()
    )))
}

/// How an agent's answer bears on the phase that asked.
fn event_of(result: Result<Reply, HubError>, accept: impl FnOnce(Reply) -> bool) -> PhaseEvent {
    match result {
        Ok(reply) => {
            let kind = reply.kind();
            if accept(reply) {
                PhaseEvent::Succeeded
            } else {
                PhaseEvent::Lost(format!("unexpected answer from the agent: {kind}"))
            }
        }
        Err(e) if e.is_ambiguous() => PhaseEvent::Lost(e.to_string()),
        Err(e) => PhaseEvent::Failed(e.to_string()),
    }
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
        if req.to == Location::Cloud && !req.force {
            self.refuse_while_draining(
                "containers do not move back (`--force` does, for a machine that is gone)",
            )?;
        }
        let Some(guard) = self.try_lock(&found.id) else {
            return Err(ActionError::Conflict(format!(
                "container {} is busy (a move or another action is in progress)",
                found.id
            )));
        };
        let mut record = self.reload(&found.id).await?;
        if record.location == req.to && record.state != State::Moving {
            return Err(ActionError::Conflict(format!(
                "container {} is already at the {}",
                record.id,
                req.to.as_str()
            )));
        }
        let in_flight = self.move_of(&record.id).await?;
        if req.to == Location::Cloud && req.force {
            // Forcing is how an owner ends a move whose edge never came back.
            if in_flight
                .as_ref()
                .is_some_and(|mv| mv.phase == MovePhase::ToCloud(ToCloud::StartingCloud))
            {
                return Err(ActionError::Conflict(format!(
                    "container {} is already starting in the cloud",
                    record.id
                )));
            }
            self.force_to_cloud(&mut record, in_flight).await?;
            drop(guard);
            return Ok(record);
        }
        if record.state == State::Moving || in_flight.is_some() {
            return Err(ActionError::Conflict(format!(
                "container {} is already moving{}",
                record.id,
                match record.reason.as_deref() {
                    Some(why) => format!(" ({why})"),
                    None => String::new(),
                }
            )));
        }
        self.require_agent(&record, req.to)?;
        let direction = match req.to {
            Location::Edge => {
                require_movable(&record)?;
                record.device = Some(self.choose_device(&record, req.device.as_deref()).await?);
                MoveDirection::ToEdge
            }
            Location::Cloud if req.device.is_some() => {
                return Err(ActionError::BadRequest(
                    "a device names where a move to the edge goes; a move to the cloud comes from the device the container is on".into(),
                ));
            }
            Location::Cloud => MoveDirection::ToCloud,
        };
        let was_running = direction == MoveDirection::ToEdge && self.cloud_running(&record).await;
        let mv = self.begin(&mut record, direction, false).await?;
        let run = Run {
            record: record.clone(),
            mv,
            started: Instant::now(),
            was_running,
            spec: None,
            target_runtime_id: None,
            target_node: None,
        };
        let ctl = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            ctl.drive(run).await;
        });
        Ok(record)
    }

    /// Refuses a move of `record` to `to` while its owner's agent is not connected.
    pub(crate) fn require_agent(
        &self,
        record: &ContainerRecord,
        to: Location,
    ) -> Result<(), ActionError> {
        let connected = match to {
            Location::Edge => self.hub.connected(&record.owner),
            Location::Cloud => self
                .hub
                .agent(&record.owner, record.device.as_deref())
                .is_some(),
        };
        if connected {
            return Ok(());
        }
        Err(ActionError::Conflict(match to {
            Location::Edge => format!(
                "{}'s agent is not connected; start `offload agent` on the edge machine first",
                record.owner
            ),
            Location::Cloud => format!(
                "{} is not connected; `offload move {} --to cloud --force` starts the cloud copy from the last synced files",
                crate::hub::agent_name(&record.owner, record.device.as_deref()),
                record.id
            ),
        }))
    }

    /// Records a new move and the record as `moving`, in one transaction.
    pub(crate) async fn begin(
        &self,
        record: &mut ContainerRecord,
        direction: MoveDirection,
        forced: bool,
    ) -> Result<MoveRecord, ActionError> {
        let mut mv = MoveRecord::new(record.id.clone(), direction, record.generation);
        mv.forced = forced;
        mv.started_at = now();
        record.state = State::Moving;
        record.reason = None;
        record.updated_at = mv.started_at;
        let (r, m) = (record.clone(), mv.clone());
        self.db(move |s| {
            s.begin_move(&r, &m)?;
            s.record_event(
                &r.id,
                r.updated_at,
                "move",
                &format!(
                    "move {} started{}",
                    m.direction().as_str(),
                    if m.forced { " (forced)" } else { "" }
                ),
            )
        })
        .await?;
        self.hub
            .move_started(&record.id, &record.owner, record.device.as_deref());
        Ok(mv)
    }

    async fn move_of(&self, id: &ContainerId) -> Result<Option<MoveRecord>, ActionError> {
        let id = id.clone();
        self.db(move |s| s.move_of(&id)).await
    }

    /// Starts running a move between nodes that [`Controller::begin`] recorded, holding
    /// the container's lock until it ends.
    pub(crate) fn drive_to_node(
        self: &Arc<Self>,
        guard: tokio::sync::OwnedMutexGuard<()>,
        record: ContainerRecord,
        mv: MoveRecord,
        target_node: String,
    ) {
        let run = Run {
            record,
            mv,
            started: Instant::now(),
            // Moves between nodes are of containers that should run.
            was_running: true,
            spec: None,
            target_runtime_id: None,
            target_node: Some(target_node),
        };
        let ctl = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            ctl.drive(run).await;
        });
    }

    /// Runs a move from its recorded phase until it ends or its outcome is in doubt.
    async fn drive(&self, mut run: Run) {
        loop {
            let phase = run.mv.phase;
            let event = match self.enter(&run.mv).await {
                Ok(()) => {
                    self.announce_move(&run.record, phase);
                    self.publish_phase(&run).await;
                    self.take_phase(&mut run).await
                }
                Err(e) => PhaseEvent::Failed(format!("cannot record the move: {e}")),
            };
            tracing::debug!(id = %run.record.id, ?phase, ?event, "move phase ended");
            match advance(phase, event) {
                Decision::Enter(next) => run.mv.phase = next,
                decision => return self.conclude(run, decision).await,
            }
        }
    }

    async fn conclude(&self, run: Run, decision: Decision) {
        match decision {
            Decision::Enter(phase) => {
                tracing::error!(id = %run.record.id, ?phase, "a move cannot end by entering a phase");
            }
            Decision::Complete => self.complete(run).await,
            Decision::RollBack(rollback) => self.roll_back(run, rollback).await,
            Decision::AwaitEdge(reason) => self.await_edge(run, reason).await,
        }
    }

    async fn publish_phase(&self, run: &Run) {
        let started_ms = run.mv.started_at.saturating_mul(1000);
        let now_ms = i64::try_from(self.clock.since_epoch().as_millis()).unwrap_or(i64::MAX);
        self.publish(
            &run.record,
            EventBody::MovePhase {
                container_id: run.record.id.clone(),
                name: run.record.name.clone(),
                direction: run.mv.direction(),
                phase: run.mv.phase.step(),
                elapsed_ms: u64::try_from(now_ms - started_ms).unwrap_or(0),
            },
        )
        .await;
        // The owner's agent shows it (on the desktop too); a move between nodes has its
        // own notice.
        let name = &run.record.name;
        let notice = match run.mv.phase.step() {
            MoveStep::Preparing => Some(format!("{name} is moving to this machine")),
            MoveStep::StoppingEdge => Some(format!("{name} is moving back to the cloud")),
            _ => None,
        };
        if let Some(text) = notice {
            self.hub.notice(&run.record.owner, text);
        }
    }

    async fn enter(&self, mv: &MoveRecord) -> Result<(), ActionError> {
        let m = mv.clone();
        self.db(move |s| s.update_move(&m)).await
    }

    /// The action of the run's current phase.
    async fn take_phase(&self, run: &mut Run) -> PhaseEvent {
        let owner = run.record.owner.clone();
        let device = run.record.device.clone();
        match run.mv.phase {
            MovePhase::ToEdge(ToEdge::Preparing) => {
                let spec = match self.edge_spec(&run.record).await {
                    Ok(spec) => spec,
                    Err(e) => return PhaseEvent::Failed(e.to_string()),
                };
                run.spec = Some(spec.clone());
                // What the move should cost, to set beside what it did.
                match self.forecast(&run.record, &spec).await {
                    Ok((_, _, prediction)) => run.mv.timings.predicted = Some(Box::new(prediction)),
                    Err(e) => {
                        tracing::info!(id = %run.record.id, error = %e, "no prediction for this move")
                    }
                }
                let result = self
                    .hub
                    .request(
                        &owner,
                        device.as_deref(),
                        Command::Prepare { spec },
                        PREPARE_TIMEOUT,
                    )
                    .await;
                let timings = &mut run.mv.timings;
                match event_of(result, |reply| match reply {
                    Reply::Prepared { timings: t } => {
                        timings.image_ms = t.image_ms;
                        timings.precopy_ms = t.precopy_ms;
                        timings.image = t.image;
                        timings.bytes = t.bytes;
                        true
                    }
                    _ => false,
                }) {
                    PhaseEvent::Failed(why) | PhaseEvent::Lost(why) => {
                        PhaseEvent::Failed(format!("preparing the edge failed: {why}"))
                    }
                    ok => ok,
                }
            }
            MovePhase::ToEdge(ToEdge::StoppingCloud) => {
                let stop_started = Instant::now();
                if let Some(runtime_id) = &run.record.runtime_id {
                    match self.runtime().stop(runtime_id, self.grace()).await {
                        Ok(()) | Err(offload_runtime::RuntimeError::NotFound { .. }) => {}
                        Err(e) => {
                            return PhaseEvent::Failed(format!(
                                "stopping the cloud copy failed: {e}"
                            ));
                        }
                    }
                }
                run.mv.timings.stop_ms = ms(stop_started);
                PhaseEvent::Succeeded
            }
            MovePhase::ToEdge(ToEdge::Finalizing) => {
                let spec = match &run.spec {
                    Some(spec) => spec.clone(),
                    None => match self.edge_spec(&run.record).await {
                        Ok(spec) => spec,
                        Err(e) => return PhaseEvent::Failed(e.to_string()),
                    },
                };
                let finalize = Command::Finalize {
                    spec,
                    generation: run.mv.to().get(),
                };
                let result = self
                    .hub
                    .request(&owner, device.as_deref(), finalize, FINALIZE_TIMEOUT)
                    .await;
                let (timings, target) = (&mut run.mv.timings, &mut run.target_runtime_id);
                match event_of(result, |reply| match reply {
                    Reply::Started {
                        runtime_id,
                        timings: t,
                    } => {
                        timings.final_sync_ms = t.final_sync_ms;
                        timings.start_ms = t.start_ms;
                        timings.bytes += t.bytes;
                        *target = Some(runtime_id);
                        true
                    }
                    _ => false,
                }) {
                    PhaseEvent::Failed(why) => {
                        PhaseEvent::Failed(format!("starting at the edge failed: {why}"))
                    }
                    PhaseEvent::Lost(why) => {
                        PhaseEvent::Lost(format!("starting at the edge was interrupted: {why}"))
                    }
                    ok => ok,
                }
            }
            MovePhase::ToCloud(ToCloud::StoppingEdge) => {
                let stop = Command::StopForReturn {
                    container_id: run.record.id.clone(),
                    generation: run.mv.from.get(),
                };
                let result = self
                    .hub
                    .request(&owner, device.as_deref(), stop, STOP_EDGE_TIMEOUT)
                    .await;
                let timings = &mut run.mv.timings;
                match event_of(result, |reply| match reply {
                    Reply::Stopped { timings: t } => {
                        timings.stop_ms = t.stop_ms;
                        timings.final_sync_ms = t.final_sync_ms;
                        timings.bytes = t.bytes;
                        true
                    }
                    _ => false,
                }) {
                    PhaseEvent::Failed(why) => {
                        PhaseEvent::Failed(format!("stopping at the edge failed: {why}"))
                    }
                    PhaseEvent::Lost(why) => {
                        PhaseEvent::Lost(format!("stopping at the edge was interrupted: {why}"))
                    }
                    ok => ok,
                }
            }
            MovePhase::ToCloud(ToCloud::StartingCloud) => {
                let start_started = Instant::now();
                let mut starting = run.record.clone();
                starting.generation = run.mv.to();
                match self.restart_cloud_copy(&mut starting).await {
                    Ok(()) => {
                        run.mv.timings.start_ms = ms(start_started);
                        run.target_runtime_id = starting.runtime_id;
                        // On a cluster the return lands on the node with the most room.
                        run.record.node = starting.node;
                        PhaseEvent::Succeeded
                    }
                    Err(e) => PhaseEvent::Failed(format!("starting in the cloud failed: {e}")),
                }
            }
            MovePhase::ToNode(ToNode::StoppingNode) => {
                let stop_started = Instant::now();
                if let Some(runtime_id) = &run.record.runtime_id {
                    match self.runtime().stop(runtime_id, self.grace()).await {
                        Ok(()) | Err(offload_runtime::RuntimeError::NotFound { .. }) => {}
                        Err(e) => {
                            return PhaseEvent::Failed(format!(
                                "stopping the copy on its node failed: {e}"
                            ));
                        }
                    }
                }
                run.mv.timings.stop_ms = ms(stop_started);
                PhaseEvent::Succeeded
            }
            MovePhase::ToNode(ToNode::StartingNode) => {
                let start_started = Instant::now();
                let target = match run.target_node.clone() {
                    Some(node) => node,
                    None => match self.place(&run.record).await {
                        Ok(Some(node)) => node,
                        Ok(None) => return PhaseEvent::Failed("the engine has no nodes".into()),
                        Err(e) => return PhaseEvent::Failed(e.to_string()),
                    },
                };
                // The target is written before the copy starts there (I4): a restart of
                // the server in this phase starts it on the same node.
                let mut starting = run.record.clone();
                starting.node = Some(target.clone());
                starting.updated_at = now();
                let r = starting.clone();
                if let Err(e) = self.db(move |s| s.update_container(&r)).await {
                    return PhaseEvent::Failed(format!("cannot record the move: {e}"));
                }
                starting.generation = run.mv.to();
                match self.start_cloud_copy_on(&mut starting, &target).await {
                    Ok(()) => {
                        run.mv.timings.start_ms = ms(start_started);
                        run.target_runtime_id = starting.runtime_id;
                        run.record.node = Some(target);
                        PhaseEvent::Succeeded
                    }
                    Err(e) => PhaseEvent::Failed(format!(
                        "starting on node {} failed: {e}",
                        self.node_name(&target).await
                    )),
                }
            }
        }
    }

    /// The target copy runs at the move's next generation.
    async fn complete(&self, mut run: Run) {
        let timings = &mut run.mv.timings;
        timings.total_ms = ms(run.started);
        timings.downtime_ms = Some(
            timings.stop_ms.unwrap_or(0)
                + timings.final_sync_ms.unwrap_or(0)
                + timings.start_ms.unwrap_or(0),
        );
        let record = &mut run.record;
        let direction = run.mv.direction();
        if direction == MoveDirection::ToEdge
            && let Some(old) = record.runtime_id.take()
            && let Err(e) = self.runtime().remove(&old).await
        {
            tracing::warn!(id = %record.id, error = %e, "cannot remove the stopped cloud copy");
        }
        record.location = direction.target();
        record.state = State::Running;
        record.generation = run.mv.to();
        record.runtime_id = run.target_runtime_id.take();
        self.finish(record, &run.mv, MoveOutcome::Done).await;
        if direction == MoveDirection::ToCloud {
            let release = Command::Release {
                container_id: record.id.clone(),
            };
            if let Err(e) = self
                .hub
                .request(
                    &record.owner,
                    record.device.as_deref(),
                    release,
                    TIDY_TIMEOUT,
                )
                .await
            {
                tracing::info!(id = %record.id, error = %e, "the agent releases its stopped copy when it reports next");
            }
        }
    }

    /// The move ends without happening: the container runs where it was (I5).
    async fn roll_back(&self, mut run: Run, rollback: Rollback) {
        tracing::warn!(id = %run.record.id, reason = %rollback.reason, "rolling a move back");
        let record = &mut run.record;
        let mut reason = rollback.reason;
        record.location = rollback.to;
        match rollback.to {
            Location::Cloud => {
                let abort = Command::Abort {
                    container_id: record.id.clone(),
                };
                if run.mv.direction() != MoveDirection::ToNode
                    && self
                        .hub
                        .agent(&record.owner, record.device.as_deref())
                        .is_some()
                    && let Err(e) = self
                        .hub
                        .request(&record.owner, record.device.as_deref(), abort, TIDY_TIMEOUT)
                        .await
                {
                    tracing::info!(id = %record.id, error = %e, "the edge did not confirm the abort");
                }
                if rollback.fence {
                    record.generation = run.mv.from.fence();
                }
                // A fenced copy is a new engine container carrying the new generation.
                if rollback.fence || (rollback.restart && run.was_running) {
                    // A move between nodes starts the copy again on its own node if that
                    // still takes containers (it is not the one being drained).
                    // The record's node changes only once the copy on the target runs.
                    let home = match (run.mv.direction(), record.node.clone()) {
                        (MoveDirection::ToNode, Some(node)) if self.schedulable(&node).await => {
                            Some(node)
                        }
                        _ => None,
                    };
                    // A stop that was not confirmed may leave the copy running on a node
                    // offload cannot reach now: no copy starts anywhere else (I1); the
                    // reconciler tries again.
                    let unconfirmed_stop = run.mv.phase == MovePhase::ToNode(ToNode::StoppingNode);
                    let restarted = match home {
                        Some(node) => self.start_cloud_copy_on(record, &node).await,
                        None if unconfirmed_stop => Err(ActionError::Unavailable(format!(
                            "its copy on node {} was not seen to stop and that node takes no containers, so no copy starts elsewhere",
                            self.node_name(record.node.as_deref().unwrap_or("?")).await
                        ))),
                        None => self.restart_cloud_copy(record).await,
                    };
                    match restarted {
                        Ok(()) => record.state = State::Running,
                        Err(e) => {
                            reason = format!(
                                "{reason}; starting the cloud copy again failed ({e}), offload keeps trying"
                            );
                            record.state = State::Starting;
                        }
                    }
                } else {
                    record.state = if self.cloud_running(record).await {
                        State::Running
                    } else {
                        State::Stopped
                    };
                }
            }
            Location::Edge => {
                record.generation = run.mv.from;
                record.state = State::Running;
                if rollback.restart {
                    // The edge copy stopped for the return with everything pushed; the
                    // cloud could not take it over, so it starts there again.
                    let restarted = match self.edge_spec(record).await {
                        Ok(spec) => {
                            let finalize = Command::Finalize {
                                spec,
                                generation: record.generation.get(),
                            };
                            self.hub
                                .request(
                                    &record.owner,
                                    record.device.as_deref(),
                                    finalize,
                                    FINALIZE_TIMEOUT,
                                )
                                .await
                                .map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match restarted {
                        Ok(Reply::Started { runtime_id, .. }) => {
                            record.runtime_id = Some(runtime_id);
                        }
                        Ok(other) => {
                            reason = format!("{reason}; the edge answered {}", other.kind());
                            record.state = State::Stopped;
                        }
                        Err(e) => {
                            reason = format!("{reason}; starting it at the edge again failed: {e}");
                            record.state = State::Stopped;
                        }
                    }
                }
            }
        }
        let fence = rollback.fence;
        self.finish(record, &run.mv, MoveOutcome::RolledBack { reason })
            .await;
        if fence {
            self.fence_edge(record).await;
        }
    }

    /// The outcome is unknown: the move stays recorded in its phase, and the container
    /// says why, until the agent reports or the owner forces the move.
    async fn await_edge(&self, mut run: Run, reason: String) {
        tracing::warn!(id = %run.record.id, %reason, "a move waits for its agent");
        let record = &mut run.record;
        record.state = State::Moving;
        record.reason = Some(format!(
            "{reason}; waiting for the agent to report (`offload move {} --to cloud --force` starts the cloud copy from the last synced files)",
            record.name
        ));
        record.updated_at = now();
        let m = run.mv.clone();
        let r = record.clone();
        let saved = self
            .db(move |s| {
                s.update_move(&m)?;
                s.update_container(&r)?;
                s.record_event(
                    &r.id,
                    r.updated_at,
                    "move",
                    r.reason.as_deref().unwrap_or_default(),
                )
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(id = %record.id, error = %e, "cannot record a move in doubt");
        }
    }

    /// Ends a move: the record as it now is, the report, and the move row gone.
    async fn finish(&self, record: &mut ContainerRecord, mv: &MoveRecord, outcome: MoveOutcome) {
        record.updated_at = now();
        record.reason = outcome.reason().map(str::to_owned);
        let label = outcome.as_str();
        let detail = match outcome.reason() {
            Some(why) => format!("move {} {label}: {why}", mv.direction().as_str()),
            None => format!("move {} {label}", mv.direction().as_str()),
        };
        record.last_move = Some(MoveReport {
            direction: mv.direction(),
            outcome,
            forced: mv.forced,
            from_generation: mv.from,
            to_generation: record.generation,
            started_at: mv.started_at,
            finished_at: record.updated_at,
            timings: mv.timings.clone(),
        });
        self.hub.move_ended(&record.id);
        self.metrics
            .move_ended(mv.direction().as_str(), label, mv.timings.downtime_ms);
        let r = record.clone();
        let result = self
            .db(move |s| {
                s.finish_move(&r)?;
                s.record_event(&r.id, r.updated_at, "move", &detail)
            })
            .await;
        if let Err(e) = result {
            tracing::error!(id = %record.id, error = %e, "cannot record the end of a move");
        }
        self.publish(
            record,
            EventBody::MoveEnded {
                container_id: record.id.clone(),
                name: record.name.clone(),
                direction: mv.direction(),
                outcome: label.to_owned(),
                reason: record.reason.clone(),
                timings: mv.timings.clone(),
            },
        )
        .await;
        if let Some(text) = end_notice(record, mv, label) {
            self.hub.notice(&record.owner, text);
        }
        tracing::info!(id = %record.id, direction = mv.direction().as_str(), outcome = label, reason = ?record.reason, "move ended");
    }

    /// What the edge needs to run the container.
    pub(crate) async fn edge_spec(
        &self,
        record: &ContainerRecord,
    ) -> Result<EdgeSpec, ActionError> {
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
            id: record.id.clone(),
            name: record.name.clone(),
            owner: record.owner.clone(),
            image: record.image.clone(),
            image_id: image.id,
            image_pullable: !image.repo_digests.is_empty(),
            command: record.command.clone(),
            env: record.env.clone(),
            cpus: record.cpus,
            memory_bytes: record.memory_bytes,
        })
    }

    pub(crate) async fn cloud_running(&self, record: &ContainerRecord) -> bool {
        match &record.runtime_id {
            Some(id) => matches!(self.runtime().inspect(id).await, Ok(Some(c)) if c.running),
            None => false,
        }
    }

    /// Starts the cloud copy on its workspace: a fresh engine container, labelled with the
    /// record's current generation.
    pub(crate) async fn restart_cloud_copy(
        &self,
        record: &mut ContainerRecord,
    ) -> Result<(), ActionError> {
        self.remove_cloud_copies(record).await?;
        // On a cluster a fresh copy lands on the node with the most room now.
        record.node = self.place(record).await?;
        record.runtime_id = Some(self.runtime().run(&self.spec_for(record)).await?);
        Ok(())
    }

    /// Starts the cloud copy on cluster node `node`, as [`Controller::restart_cloud_copy`]
    /// does on the node with the most room.
    pub(crate) async fn start_cloud_copy_on(
        &self,
        record: &mut ContainerRecord,
        node: &str,
    ) -> Result<(), ActionError> {
        self.remove_cloud_copies(record).await?;
        record.node = Some(node.to_owned());
        record.runtime_id = Some(self.runtime().run(&self.spec_for(record)).await?);
        Ok(())
    }

    /// Removes the recorded engine container and any other one carrying the id.
    async fn remove_cloud_copies(&self, record: &mut ContainerRecord) -> Result<(), ActionError> {
        if let Some(old) = record.runtime_id.take() {
            self.runtime().remove(&old).await?;
        }
        for stale in self.engine_containers_of(&record.id).await? {
            self.runtime().remove(&stale.runtime_id).await?;
        }
        Ok(())
    }

    /// Tells the agent of the device the container is on, if connected, that its copy is
    /// stale.
    pub(crate) async fn fence_edge(&self, record: &ContainerRecord) {
        self.fence_edge_on(record, record.device.as_deref()).await;
    }

    /// Tells the agent of the owner's `device` that its copy of `record` is stale.
    pub(crate) async fn fence_edge_on(&self, record: &ContainerRecord, device: Option<&str>) {
        let command = Command::Fence {
            container_id: record.id.clone(),
            generation: record.generation.get(),
        };
        if let Err(e) = self
            .hub
            .request(&record.owner, device, command, Duration::from_secs(120))
            .await
        {
            tracing::info!(id = %record.id, error = %e, "the edge copy will be fenced when its agent reports");
        }
    }

    /// `move --to cloud --force`: the edge is not asked. The cloud copy starts from the
    /// last acknowledged files past any generation the edge may run, which fences it. A
    /// move in doubt is ended this way.
    async fn force_to_cloud(
        &self,
        record: &mut ContainerRecord,
        in_flight: Option<MoveRecord>,
    ) -> Result<(), ActionError> {
        let edge_may_run_newer = match &in_flight {
            None if record.location == Location::Edge => false,
            Some(mv) if mv.direction() == MoveDirection::ToEdge => true,
            Some(_) => false,
            None => {
                return Err(ActionError::Conflict(format!(
                    "container {} is not at the edge",
                    record.id
                )));
            }
        };
        if let Some(old) = in_flight {
            // The move in doubt ends here; the forced move is recorded in its place.
            let why = "ended by a forced move to the cloud".to_owned();
            let mut ended = record.clone();
            ended.location = old.direction().source();
            self.finish(&mut ended, &old, MoveOutcome::RolledBack { reason: why })
                .await;
            record.last_move = ended.last_move;
        }
        let mut mv = self.begin(record, MoveDirection::ToCloud, true).await?;
        if edge_may_run_newer {
            // The edge may run the next generation: the cloud copy must pass it.
            mv.from = mv.from.next();
        }
        mv.phase = MovePhase::ToCloud(ToCloud::StartingCloud);
        let mut run = Run {
            record: record.clone(),
            mv,
            started: Instant::now(),
            was_running: false,
            spec: None,
            target_runtime_id: None,
            target_node: None,
        };
        let event = match self.enter(&run.mv).await {
            Ok(()) => self.take_phase(&mut run).await,
            Err(e) => PhaseEvent::Failed(format!("cannot record the move: {e}")),
        };
        match event {
            PhaseEvent::Succeeded => {
                self.complete(run).await;
                *record = self.reload(&record.id).await?;
                self.fence_edge(record).await;
                Ok(())
            }
            PhaseEvent::Failed(why) | PhaseEvent::Lost(why) => {
                // Nothing runs anywhere the server can reach; the reconciler keeps trying
                // to start the cloud copy.
                run.record.location = Location::Cloud;
                run.record.generation = run.mv.to();
                run.record.runtime_id = None;
                run.record.state = State::Starting;
                self.finish(
                    &mut run.record,
                    &run.mv,
                    MoveOutcome::Failed {
                        reason: why.clone(),
                    },
                )
                .await;
                *record = run.record;
                Err(ActionError::Unavailable(format!(
                    "{why}; offload keeps trying to start it"
                )))
            }
        }
    }

    /// Moves nobody runs — after a restart, or in doubt — decided again from what the
    /// store and the agents say now. Level-triggered: a move whose lock is taken is
    /// looked at on the next round.
    pub async fn settle_moves(self: &Arc<Self>) {
        let moves = match self.db(|s| s.moves()).await {
            Ok(moves) => moves,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the moves in flight");
                return;
            }
        };
        for listed in moves {
            let Some(guard) = self.try_lock(&listed.container_id) else {
                continue;
            };
            // The move may have ended while we looked at others.
            let Ok(Some(mv)) = self.move_of(&listed.container_id).await else {
                continue;
            };
            let Ok(record) = self.reload(&mv.container_id).await else {
                continue;
            };
            let held = self
                .hub
                .agent(&record.owner, record.device.as_deref())
                .map(|link| link.containers().into_iter().find(|c| c.id == record.id));
            let edge = match &held {
                None => EdgeView::Absent,
                Some(None) => EdgeView::NoCopy,
                Some(Some(copy)) => EdgeView::Copy {
                    generation: Generation::new(copy.generation),
                    running: copy.running,
                },
            };
            let decision = settle(World {
                phase: mv.phase,
                from: mv.from,
                edge,
            });
            if let Decision::AwaitEdge(_) = decision
                && record.reason.is_some()
            {
                continue;
            }
            tracing::info!(id = %record.id, phase = ?mv.phase, ?edge, ?decision, "settling a move");
            let target_runtime_id = match (mv.phase, held) {
                (MovePhase::ToEdge(_), Some(Some(copy))) => copy.runtime_id,
                _ => None,
            };
            // A move between nodes records its target before it starts the copy there.
            let target_node = match mv.phase {
                MovePhase::ToNode(_) => record.node.clone(),
                _ => None,
            };
            let mut run = Run {
                record,
                mv,
                started: Instant::now(),
                // The move may have stopped it; a rollback restarts it.
                was_running: true,
                spec: None,
                target_runtime_id,
                target_node,
            };
            self.hub.move_started(
                &run.record.id,
                &run.record.owner,
                run.record.device.as_deref(),
            );
            match decision {
                Decision::Enter(phase) => {
                    run.mv.phase = phase;
                    if run.record.reason.take().is_some() {
                        run.record.updated_at = now();
                        let r = run.record.clone();
                        if let Err(e) = self.db(move |s| s.update_container(&r)).await {
                            tracing::warn!(id = %run.record.id, error = %e, "cannot record a resumed move");
                        }
                    }
                    let ctl = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        ctl.drive(run).await;
                    });
                }
                decision => self.conclude(run, decision).await,
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// What the owner is told when a move to or from their machine ends.
fn end_notice(record: &ContainerRecord, mv: &MoveRecord, label: &str) -> Option<String> {
    let name = &record.name;
    let whither = match mv.direction() {
        MoveDirection::ToEdge => "to this machine",
        MoveDirection::ToCloud => "to the cloud",
        MoveDirection::ToNode => return None,
    };
    let down = mv
        .timings
        .downtime_ms
        .map(|ms| format!(" ({:.1} s without it)", ms as f64 / 1000.0))
        .unwrap_or_default();
    Some(match (label, mv.direction()) {
        ("done", MoveDirection::ToEdge) => format!("{name} now runs on this machine{down}"),
        ("done", _) => format!("{name} runs in the cloud again{down}"),
        (other, _) => format!(
            "the move of {name} {whither} {}: {}",
            other.replace('_', " "),
            record.reason.as_deref().unwrap_or("no reason given")
        ),
    })
}
