//! Cluster nodes: moving a container from one node to another (the monitor's relief of a
//! busy node, and drains), and draining a node.
//!
//! Every node sees the workspace root at the same path, so a move between nodes copies
//! nothing: the copy stops on its node and a fresh one starts on the target at the next
//! generation (`offload_core::moves::ToNode`), and the owner is told first, with why.

use std::sync::Arc;

use offload_core::api::{DrainReport, DrainStay};
use offload_core::{ContainerId, ContainerRecord, Location, MoveDirection, State};
use offload_runtime::NodeInfo;
use offload_store::Principal;

use crate::controller::{Controller, now, require_admin};
use crate::error::ActionError;

impl Controller {
    /// Whether cluster node `id` takes containers now.
    pub(crate) async fn schedulable(&self, id: &str) -> bool {
        match self.runtime().nodes().await {
            Ok(nodes) => nodes.iter().any(|n| n.id == id && n.schedulable()),
            Err(_) => false,
        }
    }

    /// The operator's name of cluster node `id` (its ID if the engine does not know it).
    pub(crate) async fn node_name(&self, id: &str) -> String {
        match self.runtime().nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .find(|n| n.id == id)
                .map_or_else(|| id.to_owned(), |n| n.name),
            Err(_) => id.to_owned(),
        }
    }

    /// Moves a cloud container that should run to another cluster node: `to`, or the one
    /// with the most room. Its owner is told first, with `reason`; the move is recorded
    /// and runs in the background: the copy stops on its node, and a fresh one starts on
    /// the target from the same workspace at the next generation.
    pub async fn relocate(
        self: &Arc<Self>,
        id: &ContainerId,
        to: Option<&str>,
        reason: &str,
    ) -> Result<ContainerRecord, ActionError> {
        let Some(guard) = self.try_lock(id) else {
            return Err(ActionError::Conflict(format!(
                "container {id} is busy (a move or another action is in progress)"
            )));
        };
        let mut record = self.reload(id).await?;
        if record.location != Location::Cloud
            || !matches!(record.state, State::Running | State::Starting)
        {
            return Err(ActionError::Conflict(format!(
                "container {} is {} at the {}; only a cloud container that runs moves between nodes",
                record.id,
                record.state.as_str(),
                record.location.as_str()
            )));
        }
        let key = record.id.clone();
        if self.db(move |s| s.move_of(&key)).await?.is_some() {
            return Err(ActionError::Conflict(format!(
                "container {} is already moving",
                record.id
            )));
        }
        let nodes = self.runtime().nodes().await?;
        if nodes.is_empty() {
            return Err(ActionError::Conflict(
                "the cloud is one engine, not a cluster: there is no other node".into(),
            ));
        }
        let target = match to {
            Some(to) => {
                let node = nodes.iter().find(|n| n.id == to).ok_or_else(|| {
                    ActionError::Unavailable(format!("node {to} is no longer in the swarm"))
                })?;
                if record.node.as_deref() == Some(node.id.as_str()) {
                    return Err(ActionError::Conflict(format!(
                        "container {} already runs on node {}",
                        record.id, node.name
                    )));
                }
                if !node.schedulable() {
                    return Err(ActionError::Unavailable(format!(
                        "node {} takes no containers now ({}/{})",
                        node.name, node.state, node.availability
                    )));
                }
                node.id.clone()
            }
            None => self
                .place_except(&record, record.node.as_deref())
                .await?
                .ok_or_else(|| ActionError::Unavailable("the swarm has no nodes".into()))?,
        };
        let name_of = |id: Option<&str>| {
            id.and_then(|id| nodes.iter().find(|n| n.id == id))
                .map_or_else(|| "?".to_owned(), |n| n.name.clone())
        };
        let (from_name, to_name) = (name_of(record.node.as_deref()), name_of(Some(&target)));
        let notice = format!(
            "{} moves from node {from_name} to node {to_name} inside the cloud: {reason}; \
             its processes restart there, its files stay as they are",
            record.name
        );
        tracing::info!(id = %record.id, from = %from_name, to = %to_name, %reason, "moving to another node");
        let detail = format!("moving from node {from_name} to node {to_name}: {reason}");
        let (key, at) = (record.id.clone(), now());
        self.db(move |s| s.record_event(&key, at, "move", &detail))
            .await?;
        self.hub.notice(&record.owner, notice);
        let mv = self.begin(&mut record, MoveDirection::ToNode, false).await?;
        self.drive_to_node(guard, record.clone(), mv, target);
        Ok(record)
    }

    /// `offload admin drain --node NODE`: drains the node (its name or ID) in the engine,
    /// so nothing more is placed there, and moves its containers, each to the node with
    /// the most room.
    pub async fn drain(
        self: &Arc<Self>,
        who: &Principal,
        node: &str,
    ) -> Result<DrainReport, ActionError> {
        require_admin(who)?;
        let nodes = self.runtime().nodes().await?;
        if nodes.is_empty() {
            return Err(ActionError::BadRequest(
                "the cloud is one engine, not a cluster: it has no nodes to drain".into(),
            ));
        }
        let matching: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| n.id == node || n.name == node)
            .collect();
        let info = match matching.as_slice() {
            [] => {
                return Err(ActionError::BadRequest(format!(
                    "the swarm has no node {node}; its nodes are {}",
                    nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            [one] => (*one).clone(),
            _ => {
                return Err(ActionError::BadRequest(format!(
                    "{node} names more than one node; name it by its ID"
                )));
            }
        };
        self.runtime().drain_node(&info.id).await?;
        tracing::info!(node = %info.name, "draining a node");
        let reason = format!("the operator drains node {}", info.name);
        Ok(self.move_off(&info, &reason).await)
    }

    /// The reconciler's round: containers on a node the operator drained (`docker node
    /// update --availability drain`, or `offload admin drain`) move to other nodes with
    /// their workspaces, rather than stay stopped where Swarm shut them down.
    pub async fn move_off_drained_nodes(self: &Arc<Self>) {
        let nodes = match self.runtime().nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the cluster's nodes");
                return;
            }
        };
        // A node that is down is left to the reconciler's handling of lost nodes: its
        // copy cannot be confirmed stopped.
        for node in nodes
            .iter()
            .filter(|n| n.availability == "drain" && n.state == "ready")
        {
            let report = self
                .move_off(node, &format!("node {} is drained", node.name))
                .await;
            for stay in &report.staying {
                tracing::debug!(node = %node.name, id = %stay.id, reason = %stay.reason, "staying on a drained node for now");
            }
        }
    }

    /// Starts a move to another node for every container of `node` that should run.
    async fn move_off(self: &Arc<Self>, node: &NodeInfo, reason: &str) -> DrainReport {
        let mut report = DrainReport {
            node: node.id.clone(),
            name: node.name.clone(),
            ..Default::default()
        };
        let records = match self.db(|s| s.containers(None)).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the containers to move off a node");
                return report;
            }
        };
        for record in records.iter().filter(|r| {
            r.location == Location::Cloud
                && r.node.as_deref() == Some(node.id.as_str())
                && matches!(r.state, State::Running | State::Starting | State::Moving)
        }) {
            if record.state == State::Moving {
                report.staying.push(DrainStay {
                    id: record.id.to_string(),
                    reason: "a move of it is in flight".into(),
                });
                continue;
            }
            match self.relocate(&record.id, None, reason).await {
                Ok(_) => report.moving.push(record.id.to_string()),
                Err(e) => report.staying.push(DrainStay {
                    id: record.id.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        report
    }
}
