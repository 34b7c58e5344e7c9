//! The reconciler: a level-triggered loop (as kube-rs controllers run) that brings the
//! store, the cloud engine and the agents' reports in line (I4). Each round reads the
//! world, compares it with what the records say should run, acts idempotently, and
//! leaves whatever it could not lock to the next round, so a restart or a missed round
//! loses no decision: cloud containers that stopped behind offload's back (an engine
//! restart) are started again, interrupted and doubtful moves are settled, and edge
//! containers' states follow their agents' reports. On a cluster, each round first runs
//! the node-loss step ([`crate::node_loss`]), which owns the containers of lost nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload_core::agent::{Command, EdgeContainer};
use offload_core::{ContainerId, ContainerRecord, Generation, Location, State, UserName, labels};
use offload_runtime::RuntimeContainer;
use tokio::time::Instant;

use crate::controller::{Controller, now};
use crate::error::ActionError;
use crate::hub::AgentLink;

/// Time between two rounds.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// The first wait before a container that keeps stopping is started again; it doubles
/// on every attempt up to [`RESTART_BACKOFF_MAX`], as a kubelet's crash-loop back-off.
const RESTART_BACKOFF: Duration = Duration::from_secs(5);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// After a server start, agents get this long to reconnect before their containers are
/// shown as unreachable: a restart of the server is not the laptop going away.
const RECONNECT_GRACE: Duration = Duration::from_secs(20);

/// What a reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Engine containers found for a record and kept as its copy.
    pub adopted: usize,
    pub restarted: usize,
    pub missing: usize,
    pub duplicates_removed: usize,
    /// Engine containers of an older generation than their record's: removed.
    pub stale_removed: usize,
    pub unknown: usize,
    /// Records whose lock was taken: looked at again next round.
    pub busy: usize,
}

/// When each container that the reconciler had to start may be started next.
#[derive(Default)]
pub struct RestartBackoff {
    attempts: Mutex<HashMap<ContainerId, (u32, Instant)>>,
}

impl RestartBackoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerId, (u32, Instant)>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a start may be tried now; counts the attempt.
    fn try_now(&self, id: &ContainerId) -> bool {
        let now = Instant::now();
        let mut attempts = self.lock();
        let (count, next) = attempts.entry(id.clone()).or_insert((0, now));
        if now < *next {
            return false;
        }
        let wait = RESTART_BACKOFF
            .saturating_mul(1 << (*count).min(16))
            .min(RESTART_BACKOFF_MAX);
        *count += 1;
        *next = now + wait;
        true
    }

    /// The container ran when looked at: its next failure starts the back-off afresh.
    fn ran(&self, id: &ContainerId) {
        self.lock().remove(id);
    }
}

impl Controller {
    /// Runs a reconciliation round every [`RECONCILE_INTERVAL`], forever.
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reconcile_round().await;
        }
    }

    /// One round: lost cluster nodes, cloud containers, moves nobody runs, edge
    /// containers' states.
    pub async fn reconcile_round(self: &Arc<Self>) {
        // First: a lost node's containers are replaced (node loss), a drained node's move
        // with their files, rather than restart where Swarm stopped them.
        self.watch_nodes().await;
        self.move_off_drained_nodes().await;
        match self.reconcile().await {
            Ok(report) => tracing::trace!(?report, "reconciled the store with the engine"),
            Err(e) => tracing::warn!(error = %e, "cannot reconcile with the cloud engine"),
        }
        self.settle_moves().await;
        if self.started_at.elapsed() >= RECONNECT_GRACE {
            self.mark_unreachable(None).await;
        }
        for agent in self.hub.agents() {
            self.follow_edge(&agent, &agent.containers()).await;
        }
    }

    /// Brings the store in line with the cloud engine (I4): adopts containers that run,
    /// starts those the record wants running, never creates a duplicate, and records
    /// what vanished. Records whose lock is taken are left for the next round.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ActionError> {
        self.ensure_node_view().await;
        // The records are read before the engine is listed: a record that changes after
        // this read (a move ended meanwhile) is told apart below, and left for the next
        // round, rather than compared with a listing older than it.
        let records = self.db(|s| s.containers(None)).await?;
        let engine = self.runtime().list_labelled(labels::ID).await?;
        let mut by_id: HashMap<String, Vec<RuntimeContainer>> = HashMap::new();
        // An agent's containers (on an engine that plays both sides) are not ours.
        for c in engine
            .into_iter()
            .filter(|c| !c.labels.contains_key(labels::EDGE))
        {
            if let Some(id) = c.labels.get(labels::ID) {
                by_id.entry(id.clone()).or_default().push(c);
            }
        }
        let mut report = ReconcileReport::default();
        for found in records {
            let candidates = by_id.remove(found.id.as_str()).unwrap_or_default();
            let Some(_guard) = self.try_lock(&found.id) else {
                report.busy += 1;
                continue;
            };
            let Ok(record) = self.reload(&found.id).await else {
                continue;
            };
            if changed_since_read(&found, &record) {
                report.busy += 1;
                continue;
            }
            if record.location != Location::Cloud || record.state == State::Moving {
                // Moves in flight are settled by `settle_moves`.
                continue;
            }
            if self.left_to_node_watch(&record) {
                // Its node is lost, or its fence is not finished: the node-loss step's.
                report.busy += 1;
                continue;
            }
            self.reconcile_cloud(record, candidates, &mut report)
                .await?;
        }
        for (id, orphans) in by_id {
            for orphan in orphans {
                tracing::warn!(offload_id = %id, runtime_id = %orphan.runtime_id, "engine container carries an offload id this server does not know; leaving it alone");
                report.unknown += 1;
            }
        }
        Ok(report)
    }

    async fn reconcile_cloud(
        &self,
        mut record: ContainerRecord,
        candidates: Vec<RuntimeContainer>,
        report: &mut ReconcileReport,
    ) -> Result<(), ActionError> {
        let before = (
            record.state,
            record.runtime_id.clone(),
            record.reason.clone(),
        );
        // A copy of an older generation is stale (a node's copy that was replaced): it is
        // never adopted.
        let (stale, mut candidates): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|c| {
            c.labels
                .get(labels::GENERATION)
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| Generation::new(g) < record.generation)
        });
        for old in stale {
            tracing::warn!(id = %record.id, runtime_id = %old.runtime_id, "removing an engine container of an older generation");
            self.runtime().remove(&old.runtime_id).await?;
            if record.runtime_id.as_ref() == Some(&old.runtime_id) {
                record.runtime_id = None;
            }
            report.stale_removed += 1;
        }
        // Prefer the recorded engine container, then a running one.
        candidates.sort_by_key(|c| {
            (
                Some(&c.runtime_id) != record.runtime_id.as_ref(),
                !c.running,
            )
        });
        let mut candidates = candidates.into_iter();
        let wants_running = matches!(
            record.state,
            State::Running | State::Starting | State::Creating | State::Lost
        );
        match candidates.next() {
            Some(keep) => {
                report.adopted += 1;
                record.runtime_id = Some(keep.runtime_id.clone());
                if keep.running {
                    self.restarts.ran(&record.id);
                    if record.state != State::Stopped {
                        record.state = State::Running;
                        record.reason = None;
                    }
                } else if wants_running && self.restarts.try_now(&record.id) {
                    // It stopped behind offload's back (the engine restarted, the host
                    // rebooted): start it again, as the record says it should run.
                    match self.runtime().start(&keep.runtime_id).await {
                        Ok(()) => {
                            record.state = State::Running;
                            record.reason = None;
                            report.restarted += 1;
                        }
                        Err(e) => {
                            record.state = State::Starting;
                            record.reason = Some(format!(
                                "found stopped and could not start it ({e}); offload keeps trying"
                            ));
                        }
                    }
                }
            }
            None => match record.state {
                State::Creating => {
                    record.state = State::Failed;
                    record.reason = Some(
                        "the server stopped before the container was created; remove it and start again"
                            .into(),
                    );
                }
                State::Starting if self.restarts.try_now(&record.id) => {
                    match self.restart_cloud_copy(&mut record).await {
                        Ok(()) => {
                            record.state = State::Running;
                            record.reason = None;
                            report.restarted += 1;
                        }
                        Err(e) => {
                            record.reason =
                                Some(format!("starting it failed ({e}); offload keeps trying"));
                        }
                    }
                }
                State::Running | State::Stopped | State::Lost => {
                    record.state = State::Missing;
                    record.runtime_id = None;
                    record.reason = Some(
                        "its engine container was not found; `offload restart` on it recreates it from the workspace"
                            .into(),
                    );
                    report.missing += 1;
                }
                _ => {}
            },
        }
        for extra in candidates {
            tracing::warn!(id = %record.id, runtime_id = %extra.runtime_id, "removing a duplicate engine container");
            self.runtime().remove(&extra.runtime_id).await?;
            report.duplicates_removed += 1;
        }
        if (
            record.state,
            record.runtime_id.clone(),
            record.reason.clone(),
        ) != before
        {
            record.updated_at = now();
            let detail = record
                .reason
                .clone()
                .unwrap_or_else(|| format!("{} (reconciled)", record.state.as_str()));
            self.save(&record, "reconciled", &detail).await?;
        }
        Ok(())
    }

    /// An agent told us what it holds: fence stale copies, release what is no longer
    /// ours, settle moves waiting for it, and keep the edge containers' states current.
    pub async fn on_agent_report(
        self: &Arc<Self>,
        agent: Arc<AgentLink>,
        containers: Vec<EdgeContainer>,
    ) {
        for held in &containers {
            let id = &held.id;
            let record = match self.reload(id).await {
                Ok(r) if r.owner == agent.user => r,
                _ => {
                    // Unknown here (removed, or never ours): the agent drops it.
                    self.release(&agent, &held.id).await;
                    continue;
                }
            };
            // A copy of an older generation is stale; so is one of the current generation
            // on another device than the one the container is on (never made by a move).
            let elsewhere = record.location == Location::Edge
                && record
                    .device
                    .as_deref()
                    .is_some_and(|device| device != agent.device);
            if Generation::new(held.generation) < record.generation
                || (elsewhere && Generation::new(held.generation) == record.generation)
            {
                if held.running || !held.synced {
                    self.fence_edge_on(&record, Some(&agent.device)).await;
                } else {
                    self.release(&agent, &held.id).await;
                }
            }
        }
        self.settle_moves().await;
        self.follow_edge(&agent, &containers).await;
    }

    async fn release(&self, agent: &AgentLink, id: &ContainerId) {
        let release = Command::Release {
            container_id: id.clone(),
        };
        if let Err(e) = self
            .hub
            .request(
                &agent.user,
                Some(&agent.device),
                release,
                Duration::from_secs(60),
            )
            .await
        {
            tracing::info!(%id, error = %e, "the agent did not confirm a release");
        }
    }

    /// Edge containers' records follow what their agent reports: running, stopped, and
    /// the engine id there. Busy records are looked at next round.
    async fn follow_edge(&self, agent: &AgentLink, containers: &[EdgeContainer]) {
        for held in containers {
            let id = &held.id;
            let Some(_guard) = self.try_lock(id) else {
                continue;
            };
            let Ok(mut record) = self.reload(id).await else {
                continue;
            };
            if record.owner != agent.user
                || record
                    .device
                    .as_deref()
                    .is_some_and(|device| device != agent.device)
                || record.location != Location::Edge
                || record.state == State::Moving
                || record.generation != Generation::new(held.generation)
            {
                continue;
            }
            let state = if held.running {
                State::Running
            } else {
                State::Stopped
            };
            if record.state != state || record.runtime_id != held.runtime_id {
                record.state = state;
                record.runtime_id = held.runtime_id.clone();
                record.reason = None;
                record.updated_at = now();
                let _ = self
                    .save(&record, "edge", &format!("{} at the edge", state.as_str()))
                    .await;
            }
        }
    }

    /// One of the owner's agents went away: the edge containers on its device become
    /// `unreachable` (and keep running there; nothing else happens by itself).
    pub async fn on_agent_gone(&self, agent: &AgentLink) {
        self.mark_unreachable(Some(&agent.user)).await;
    }

    /// Running edge containers of `owner` (or of anyone, for `None`) whose device's agent
    /// is not connected become `unreachable`.
    async fn mark_unreachable(&self, owner: Option<&UserName>) {
        let owner = owner.cloned();
        let Ok(records) = self.db(move |s| s.containers(owner.as_ref())).await else {
            return;
        };
        for record in records {
            if record.location != Location::Edge
                || record.state != State::Running
                || self
                    .hub
                    .agent(&record.owner, record.device.as_deref())
                    .is_some()
            {
                continue;
            }
            // A busy record is looked at again next round.
            let Some(_guard) = self.try_lock(&record.id) else {
                continue;
            };
            let Ok(mut fresh) = self.reload(&record.id).await else {
                continue;
            };
            if fresh.location == Location::Edge
                && fresh.state == State::Running
                && self
                    .hub
                    .agent(&fresh.owner, fresh.device.as_deref())
                    .is_none()
            {
                fresh.state = State::Unreachable;
                fresh.updated_at = now();
                let _ = self.save(&fresh, "edge", "the agent disconnected").await;
            }
        }
    }
}

/// The record changed in a way the engine listing may not show yet: it moved, was
/// replaced, or changed state since it was read.
fn changed_since_read(read: &ContainerRecord, now: &ContainerRecord) -> bool {
    (
        read.location,
        read.state,
        read.generation,
        &read.runtime_id,
        &read.node,
    ) != (
        now.location,
        now.state,
        now.generation,
        &now.runtime_id,
        &now.node,
    )
}
