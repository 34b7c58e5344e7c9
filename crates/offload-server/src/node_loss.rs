//! Cluster nodes that fail or are cut off (DESIGN.md §10), under invariant I1.
//!
//! offload pins each container's service to one node, so Swarm never brings a lost
//! node's container back by itself, and it does not stop the copy on a node it cannot
//! reach either. Each reconciler round this step reads the nodes and, level-triggered:
//!
//! 1. stops, on each node's own engine, every copy whose generation is below its record's
//!    (a copy that comes back with a node that was lost);
//! 2. tends the fences of lost copies ([`crate::fenced`]): finishes one that was
//!    interrupted, and once the lost copy is known stopped (its node's engine lists it not
//!    running, or the node left the swarm) keeps its late writes as a conflict set;
//! 3. for each cloud container whose node has been down (to the manager) or out of reach
//!    (its engine does not answer offload) for `swarm.node_lost_grace_secs`: picks a node
//!    with room, stops the old copy where anything can (the node's engine, or the manager
//!    when it still reaches the node), sets the workspace aside when nothing could, writes
//!    the record at the next generation on the new node (I4), removes the old service and
//!    starts the new one. With no node that has room the container is `lost` and waits,
//!    keeping its generation, so a node that comes back first just carries on.
//!
//! Containers it holds (on a lost node, or with a fence not finished) are left alone by
//! the rest of the reconciler.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use offload_core::{ContainerId, ContainerRecord, Generation, Location, State, labels};
use offload_runtime::NodeInfo;
use tokio::time::Instant;

use crate::controller::{Controller, now};
use crate::fenced::{Fence, FencedWorkspaces};

/// How long stopping an old copy through the manager may take, beyond its stop grace.
const MANAGER_STOP_SLACK: Duration = Duration::from_secs(10);

/// What the node-loss step remembers between rounds.
pub struct NodeWatch {
    grace: Duration,
    state: Mutex<WatchState>,
    /// One step at a time, should two rounds overlap.
    round: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct WatchState {
    /// Since when each lost node has been seen lost.
    lost_since: HashMap<String, Instant>,
    /// Containers this step holds: the reconciler leaves them alone.
    held: HashSet<ContainerId>,
    /// Whether nodes were ever listed (a single engine lists none).
    observed: bool,
}

impl NodeWatch {
    pub fn new(grace: Duration) -> Self {
        NodeWatch {
            grace,
            state: Mutex::new(WatchState::default()),
            round: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the node-loss step holds this container: the reconciler must not adopt,
    /// restart or recreate it.
    pub fn holds(&self, id: &ContainerId) -> bool {
        self.lock().held.contains(id)
    }

    /// Whether `node` is lost now, as last observed.
    pub fn is_lost(&self, node: &str) -> bool {
        self.lock().lost_since.contains_key(node)
    }

    fn observed(&self) -> bool {
        self.lock().observed
    }

    /// Records which nodes are lost now; a node that is no longer lost starts afresh.
    fn observe(&self, lost: &HashSet<String>, at: Instant) {
        let mut state = self.lock();
        state.observed = true;
        state.lost_since.retain(|node, _| lost.contains(node));
        for node in lost {
            state.lost_since.entry(node.clone()).or_insert(at);
        }
    }

    fn lost_for(&self, node: &str, at: Instant) -> Option<Duration> {
        self.lock()
            .lost_since
            .get(node)
            .map(|since| at.saturating_duration_since(*since))
    }

    fn hold(&self, held: HashSet<ContainerId>) {
        self.lock().held = held;
    }
}

/// A node offload cannot use for a container it runs: down to the manager, or its engine
/// out of offload's reach.
fn is_lost(node: &NodeInfo) -> bool {
    node.state != "ready" || !node.reachable
}

/// How a lost node is described to users.
fn how_lost(node: &NodeInfo) -> &'static str {
    match (node.state.as_str(), node.reachable) {
        ("gone", _) => "gone from the swarm",
        ("ready", _) => "out of offload's reach (its engine does not answer)",
        (_, true) => "down (the swarm manager lost it)",
        (_, false) => "down and out of reach",
    }
}

/// A cloud record whose copy should run: the ones a lost node takes away.
fn wants_cloud_copy(record: &ContainerRecord) -> bool {
    record.location == Location::Cloud
        && matches!(record.state, State::Running | State::Starting | State::Lost)
}

/// What the nodes' own engines showed this round.
#[derive(Default)]
struct Listing {
    /// Nodes whose engines answered the listing.
    listed: HashSet<String>,
    /// Stale copies still running after this round (their stop failed): node, id,
    /// generation.
    running: HashSet<(String, ContainerId, u64)>,
}

impl Controller {
    /// The node-loss step of a reconciler round (see the module's note). Does nothing on
    /// a single engine.
    pub async fn watch_nodes(&self) {
        let Ok(_round) = self.node_watch.round.try_lock() else {
            return;
        };
        let Some(nodes) = self.observe_nodes().await else {
            return;
        };
        let Ok(records) = self.db(|s| s.containers(None)).await else {
            return;
        };
        let by_id: HashMap<ContainerId, &ContainerRecord> =
            records.iter().map(|r| (r.id.clone(), r)).collect();
        let mut held = HashSet::new();
        let listing = self.stop_stale_copies(&nodes, &by_id).await;
        self.tend_fences(&nodes, &by_id, &listing, &mut held).await;

        let at = Instant::now();
        for record in records.iter().filter(|r| wants_cloud_copy(r)) {
            let Some(node_id) = record.node.as_deref() else {
                continue;
            };
            if !self.node_watch.is_lost(node_id) {
                continue;
            }
            held.insert(record.id.clone());
            let waited = self.node_watch.lost_for(node_id, at).unwrap_or_default();
            if waited < self.node_watch.grace {
                tracing::info!(id = %record.id, node = node_id, waited_secs = waited.as_secs(), "the container's node is lost; waiting out the grace period");
                continue;
            }
            let node = nodes
                .iter()
                .find(|n| n.id == node_id)
                .cloned()
                .unwrap_or_else(|| NodeInfo {
                    id: node_id.to_owned(),
                    name: node_id.to_owned(),
                    state: "gone".to_owned(),
                    availability: String::new(),
                    cpus: 0.0,
                    memory_bytes: 0,
                    reachable: false,
                });
            self.fail_over(&record.id, &node, &nodes).await;
        }
        self.node_watch.hold(held);
    }

    /// Lists the nodes and records which are lost (a node the records name that the
    /// swarm no longer lists is lost too). `None` on a single engine, or when the manager
    /// does not answer.
    pub(crate) async fn observe_nodes(&self) -> Option<Vec<NodeInfo>> {
        let nodes = match self.runtime().nodes().await {
            Ok(nodes) if nodes.is_empty() => return None,
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the swarm's nodes");
                return None;
            }
        };
        let mut lost: HashSet<String> = nodes
            .iter()
            .filter(|n| is_lost(n))
            .map(|n| n.id.clone())
            .collect();
        if let Ok(records) = self.db(|s| s.containers(None)).await {
            for node in records.iter().filter_map(|r| r.node.as_ref()) {
                if !nodes.iter().any(|n| &n.id == node) {
                    lost.insert(node.clone());
                }
            }
        }
        self.node_watch.observe(&lost, Instant::now());
        Some(nodes)
    }

    /// Before the first round has looked at the nodes (at start), looks now, so the
    /// reconciler never mistakes a lost node's container for one of its own to restart.
    pub(crate) async fn ensure_node_view(&self) {
        if !self.node_watch.observed() {
            let _ = self.observe_nodes().await;
        }
    }

    /// Whether the reconciler must leave this cloud record to the node-loss step.
    pub(crate) fn left_to_node_watch(&self, record: &ContainerRecord) -> bool {
        self.node_watch.holds(&record.id)
            || (wants_cloud_copy(record)
                && record
                    .node
                    .as_deref()
                    .is_some_and(|n| self.node_watch.is_lost(n)))
    }

    /// Step 1: every copy a node's own engine runs below its record's generation is
    /// stopped there, whatever the manager says.
    async fn stop_stale_copies(
        &self,
        nodes: &[NodeInfo],
        records: &HashMap<ContainerId, &ContainerRecord>,
    ) -> Listing {
        let mut listing = Listing::default();
        for node in nodes.iter().filter(|n| n.reachable) {
            let found = match self.runtime().node_containers(&node.id, labels::ID).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "cannot list a node's containers");
                    continue;
                }
            };
            listing.listed.insert(node.id.clone());
            for copy in found.iter().filter(|c| c.running) {
                let Some(id) = copy
                    .labels
                    .get(labels::ID)
                    .and_then(|id| ContainerId::parse(id).ok())
                else {
                    continue;
                };
                let Some(generation) = copy
                    .labels
                    .get(labels::GENERATION)
                    .and_then(|g| g.parse::<u64>().ok())
                else {
                    continue;
                };
                // Unknown ids are left to Swarm (their services are gone); moves in flight
                // to the mover.
                let Some(record) = records.get(&id) else {
                    continue;
                };
                if record.state == State::Moving || Generation::new(generation) >= record.generation
                {
                    continue;
                }
                match self
                    .runtime()
                    .stop_on_node(&node.id, &copy.runtime_id, self.grace())
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(%id, node = %node.name, generation, "stopped a stale copy on its node");
                        let detail = format!(
                            "a stale copy of generation {generation} ran on node {}; stopped there",
                            node.name
                        );
                        let id2 = id.clone();
                        let _ = self
                            .db(move |s| s.record_event(&id2, now(), "fenced", &detail))
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(%id, node = %node.name, generation, error = %e, "cannot stop a stale copy on its node");
                        listing.running.insert((node.id.clone(), id, generation));
                    }
                }
            }
        }
        listing
    }

    /// Step 2: finishes interrupted fences and collects those whose lost copy is stopped.
    async fn tend_fences(
        &self,
        nodes: &[NodeInfo],
        records: &HashMap<ContainerId, &ContainerRecord>,
        listing: &Listing,
        held: &mut HashSet<ContainerId>,
    ) {
        let fences = self.fences.clone();
        let Ok(list) = tokio::task::spawn_blocking(move || fences.list()).await else {
            return;
        };
        for fence in list {
            let record = records.get(&fence.container_id);
            let aside = self.fences.is_set_aside(&fence);
            match record {
                None => {
                    // The container was removed: nothing is left to keep the files for.
                    self.fence_io(&fence, |f, fence| f.discard(fence)).await;
                }
                Some(r) if r.generation.get() <= fence.generation => {
                    // The failover stopped before the record moved on: nothing was set
                    // aside, and the next failover begins afresh.
                    if !self.fences.aside_path(&fence).exists() {
                        self.fence_io(&fence, |f, fence| f.discard(fence)).await;
                    } else {
                        tracing::warn!(id = %fence.container_id, generation = fence.generation, "a set-aside workspace whose record never moved past it; leaving it alone");
                    }
                }
                Some(r) if !aside => {
                    // A failover was interrupted before its replacement started. Setting
                    // the workspace aside under a running copy would take its files from
                    // it, so a copy of a later generation that runs forbids it.
                    let newer_runs = match self.engine_containers_of(&r.id).await {
                        Ok(copies) => copies.iter().any(|c| {
                            c.running
                                && c.labels
                                    .get(labels::GENERATION)
                                    .and_then(|g| g.parse::<u64>().ok())
                                    .is_some_and(|g| g > fence.generation)
                        }),
                        Err(_) => true,
                    };
                    if newer_runs {
                        tracing::error!(id = %r.id, generation = fence.generation, "a fence was never finished but a newer copy runs; leaving the workspace in place");
                        continue;
                    }
                    let done = self
                        .fence_io(&fence, |f, fence| f.set_aside(fence))
                        .await
                        .is_some();
                    if !done {
                        held.insert(fence.container_id.clone());
                    }
                }
                Some(r) => {
                    let node_gone = !nodes.iter().any(|n| n.id == fence.node);
                    let stopped = listing.listed.contains(&fence.node)
                        && !listing.running.iter().any(|(node, id, g)| {
                            *node == fence.node
                                && *id == fence.container_id
                                && *g <= fence.generation
                        });
                    if node_gone || stopped {
                        self.collect_fence(r, &fence).await;
                    }
                }
            }
        }
    }

    /// Runs a fence operation on a blocking thread; `None` (logged) when it failed.
    async fn fence_io<T: Send + 'static>(
        &self,
        fence: &Fence,
        op: impl FnOnce(&FencedWorkspaces, &Fence) -> Result<T, crate::fenced::FenceError>
        + Send
        + 'static,
    ) -> Option<T> {
        let (fences, owned) = (self.fences.clone(), fence.clone());
        match tokio::task::spawn_blocking(move || op(&fences, &owned)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::warn!(id = %fence.container_id, generation = fence.generation, error = %e, "fence of a lost copy");
                None
            }
            Err(e) => {
                tracing::warn!(id = %fence.container_id, error = %e, "fence of a lost copy");
                None
            }
        }
    }

    async fn collect_fence(&self, record: &ContainerRecord, fence: &Fence) {
        let Some(collected) = self.fence_io(fence, |f, fence| f.collect(fence)).await else {
            return;
        };
        let detail = match &collected.dir {
            Some(dir) => format!(
                "the copy of generation {} on node {} wrote {} file(s) after it was fenced: kept in {dir}",
                fence.generation, fence.node_name, collected.files
            ),
            None => format!(
                "the copy of generation {} on node {} wrote nothing after it was fenced",
                fence.generation, fence.node_name
            ),
        };
        tracing::info!(id = %record.id, "{detail}");
        let id = record.id.clone();
        let _ = self
            .db(move |s| s.record_event(&id, now(), "conflict", &detail))
            .await;
    }

    /// Step 3 for one container: the replacement on another node, or `lost` when no node
    /// has room.
    async fn fail_over(&self, id: &ContainerId, node: &NodeInfo, nodes: &[NodeInfo]) {
        let Some(_guard) = self.try_lock(id) else {
            return;
        };
        let Ok(mut record) = self.reload(id).await else {
            return;
        };
        if !wants_cloud_copy(&record) || record.node.as_deref() != Some(node.id.as_str()) {
            return;
        }
        let lost = how_lost(node);
        let Some(target) = self.room_for(&record, nodes).await else {
            if record.state != State::Lost {
                record.state = State::Lost;
                record.reason = Some(format!(
                    "its node {} is {lost} and no other node has room for it; offload starts it on another node as soon as one has (or here again, if the node comes back first)",
                    node.name
                ));
                record.updated_at = now();
                let detail = record.reason.clone().unwrap_or_default();
                let _ = self.save(&record, "node-lost", &detail).await;
            }
            return;
        };
        let from = record.generation;
        let (fences, cid) = (self.fences.clone(), id.clone());
        let begun = tokio::task::spawn_blocking(move || fences.find(&cid, from.get()))
            .await
            .ok()
            .flatten();
        // A fence begun by an earlier attempt is finished whatever this one finds: the
        // copy may have written since that instant.
        let stopped = match begun {
            Some(_) => None,
            None => self.stop_lost_copy(&record, node).await,
        };
        let fence = match stopped {
            Some(_) => None,
            None => {
                let (fences, cid, name) = (self.fences.clone(), id.clone(), node.name.clone());
                let (node_id, at) = (node.id.clone(), now());
                match tokio::task::spawn_blocking(move || {
                    fences.begin(&cid, from.get(), &node_id, &name, at)
                })
                .await
                {
                    Ok(Ok(fence)) => Some(fence),
                    Ok(Err(e)) => {
                        self.failover_stalled(
                            &mut record,
                            &format!("cannot record its fence ({e})"),
                        )
                        .await;
                        return;
                    }
                    Err(e) => {
                        self.failover_stalled(&mut record, &e.to_string()).await;
                        return;
                    }
                }
            }
        };

        // The new generation and node are written before anything is started (I4): from
        // here on, the old copy is stale wherever it turns up.
        record.generation = from.next();
        record.node = Some(target.id.clone());
        record.state = State::Starting;
        record.reason = Some(format!(
            "its node {} is {lost}: starting it on node {} at generation {}",
            node.name, target.name, record.generation
        ));
        record.updated_at = now();
        let how = match stopped {
            Some(how) => format!("its copy there was stopped {how}"),
            None => "its copy there could not be stopped: its workspace was set aside, and what it writes until it is stopped is kept under .offload-conflicts/".to_owned(),
        };
        let detail = format!(
            "node {} is {lost}; starting again on node {} at generation {} ({how})",
            node.name, target.name, record.generation
        );
        tracing::warn!(id = %record.id, "{detail}");
        if self.save(&record, "node-lost", &detail).await.is_err() {
            return;
        }

        // The old service goes: the new one takes its name, and a node that comes back
        // finds it removed and ends its task.
        let mut old: Vec<String> = record.runtime_id.take().into_iter().collect();
        if let Ok(more) = self.engine_containers_of(&record.id).await {
            old.extend(more.into_iter().map(|c| c.runtime_id));
        }
        old.sort();
        old.dedup();
        for service in old {
            if let Err(e) = self.runtime().remove(&service).await {
                record.runtime_id = Some(service);
                self.failover_stalled(&mut record, &format!("cannot remove its old service ({e})"))
                    .await;
                return;
            }
        }
        if let Some(fence) = &fence
            && self
                .fence_io(fence, |f, fence| f.set_aside(fence))
                .await
                .is_none()
        {
            self.failover_stalled(
                &mut record,
                "cannot set its workspace aside (the server's log says why)",
            )
            .await;
            return;
        }
        match self.runtime().run(&self.spec_for(&record)).await {
            Ok(runtime_id) => {
                record.runtime_id = Some(runtime_id);
                record.state = State::Running;
                record.reason = None;
                record.updated_at = now();
                let detail = format!(
                    "running on node {} at generation {}",
                    target.name, record.generation
                );
                let _ = self.save(&record, "node-lost", &detail).await;
            }
            Err(e) => {
                self.failover_stalled(
                    &mut record,
                    &format!("starting it on node {} failed ({e})", target.name),
                )
                .await;
            }
        }
    }

    /// Records why a failover could not finish this round; the next one takes it up.
    async fn failover_stalled(&self, record: &mut ContainerRecord, why: &str) {
        record.reason = Some(format!("{why}; offload keeps trying"));
        record.updated_at = now();
        let detail = record.reason.clone().unwrap_or_default();
        tracing::warn!(id = %record.id, "{detail}");
        let _ = self.save(record, "node-lost", &detail).await;
    }

    /// The node a replacement goes to: the one placement picks, if the container fits
    /// in what offload has not placed there yet. `None`: no node has room.
    async fn room_for(&self, record: &ContainerRecord, nodes: &[NodeInfo]) -> Option<NodeInfo> {
        let target = self.place(record).await.ok().flatten()?;
        let node = nodes.iter().find(|n| n.id == target)?;
        if Some(target.as_str()) == record.node.as_deref() || is_lost(node) {
            return None;
        }
        let records = self.db(|s| s.containers(None)).await.ok()?;
        let placed: u64 = records
            .iter()
            .filter(|r| {
                r.id != record.id
                    && r.location == Location::Cloud
                    && r.node.as_deref() == Some(target.as_str())
                    && !matches!(r.state, State::Stopped | State::Missing | State::Failed)
            })
            .map(|r| r.memory_bytes)
            .sum();
        (placed.saturating_add(record.memory_bytes) <= node.memory_bytes).then(|| node.clone())
    }

    /// Stops the copy on a lost node where anything can, and says how: its own engine
    /// when offload reaches it, else the manager when the swarm still reaches the node
    /// (scaling the service to 0 ends the task there, and the node reports it ended).
    /// `None` when nothing could confirm it stopped.
    async fn stop_lost_copy(
        &self,
        record: &ContainerRecord,
        node: &NodeInfo,
    ) -> Option<&'static str> {
        let mine = |c: &offload_runtime::RuntimeContainer| {
            c.running && c.labels.get(labels::ID).map(String::as_str) == Some(record.id.as_str())
        };
        if node.reachable {
            let found = self
                .runtime()
                .node_containers(&node.id, labels::ID)
                .await
                .ok()?;
            for copy in found.iter().filter(|c| mine(c)) {
                self.runtime()
                    .stop_on_node(&node.id, &copy.runtime_id, self.grace())
                    .await
                    .ok()?;
            }
            let after = self
                .runtime()
                .node_containers(&node.id, labels::ID)
                .await
                .ok()?;
            return (!after.iter().any(mine)).then_some("on the node's own engine");
        }
        if node.state == "ready"
            && let Some(service) = &record.runtime_id
        {
            let stop = self.runtime().stop(service, self.grace());
            if let Ok(Ok(())) = tokio::time::timeout(self.grace() + MANAGER_STOP_SLACK, stop).await
            {
                return Some("through the swarm manager");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
