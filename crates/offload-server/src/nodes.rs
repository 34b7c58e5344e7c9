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
        let mv = self
            .begin(&mut record, MoveDirection::ToNode, false)
            .await?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use offload_core::agent::{EdgeCapacity, ServerMessage};
    use offload_core::api::StartRequest;
    use offload_core::{Generation, MoveOutcome, UserName};
    use offload_monitor::Answer;
    use offload_runtime::fake::{FakeRuntime, Op};
    use offload_runtime::{ContainerRuntime, UsageReading};
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::config::CloudMoves;
    use crate::hub::Hello;
    use crate::monitor::NoSampler;
    use crate::testing::{Rig, rig_with};

    const GIB: u64 = 1 << 30;

    /// A swarm of nodes a, b, c (2 cores, 4 GiB each) whose monitor acts on the first
    /// sample above a watermark.
    fn cluster(cloud_moves: CloudMoves) -> Rig {
        let rig = rig_with(|config| {
            config.cloud_moves = cloud_moves;
            config.monitor.sustain_secs = 0.0;
            config.monitor.horizon_secs = 0.0;
        });
        rig.fake.set_nodes(
            ["a", "b", "c"]
                .into_iter()
                .map(|n| FakeRuntime::node(n, 2.0, 4 * GIB))
                .collect(),
        );
        rig
    }

    fn principal(name: &str) -> Principal {
        Principal {
            user: UserName::parse(name).unwrap(),
            admin: false,
        }
    }

    /// Starts a container of `who` on `node` (the others paused meanwhile) using
    /// `memory` bytes.
    async fn start_on(rig: &Rig, who: &Principal, node: &str, memory: u64) -> ContainerRecord {
        rig.ctl.store().upsert_user(&who.user, false, 0).unwrap();
        for other in ["a", "b", "c"].into_iter().filter(|n| *n != node) {
            rig.fake.set_availability(other, "pause");
        }
        let request = StartRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        let record = rig.ctl.start(who, request).await.unwrap();
        for other in ["a", "b", "c"] {
            rig.fake.set_availability(other, "active");
        }
        assert_eq!(record.node.as_deref(), Some(node));
        rig.fake.set_usage(
            &format!("offload-{}", record.id),
            UsageReading {
                memory_bytes: memory,
                ..Default::default()
            },
        );
        record
    }

    /// Connects an agent for `who` whose messages the test reads.
    fn agent(rig: &Rig, who: &Principal) -> UnboundedReceiver<ServerMessage> {
        let (_link, outbox) = rig.ctl.hub.register(
            who.user.clone(),
            Hello {
                device: "laptop".to_owned(),
                capacity: EdgeCapacity {
                    cpus: 8.0,
                    memory_bytes: 16 * GIB,
                    free_disk_bytes: 100 * GIB,
                    architecture: "amd64".into(),
                    hostname: "laptop".into(),
                },
                images: Vec::new(),
                containers: Vec::new(),
                auto_accept: false,
                auto_return: false,
            },
        );
        outbox
    }

    fn messages(outbox: &mut UnboundedReceiver<ServerMessage>) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(m) = outbox.try_recv() {
            out.push(m);
        }
        out
    }

    async fn tick(rig: &Rig, monitor: &mut crate::monitor::MonitorLoop) {
        tokio::time::timeout(Duration::from_secs(10), monitor.tick(&mut NoSampler, None))
            .await
            .expect("the tick returns")
            .unwrap();
        // Moves run in the background; let them end.
        let records = rig.ctl.db(|s| s.containers(None)).await.unwrap();
        for r in records {
            rig.settled(&r.id).await;
        }
    }

    /// Alice's container and two of Bob's on node a take 95% of its memory; b and c are
    /// empty. The monitor moves the one container whose move alone brings a below its low
    /// watermark (Alice's) to the node with the most room, tells Alice first, records the
    /// move at the next generation, and asks nobody to offload.
    #[tokio::test]
    async fn a_busy_node_is_relieved_by_moving_a_container_to_the_node_with_room() {
        let rig = cluster(CloudMoves::Notify);
        let alice = rig.who.clone();
        let bob = principal("bob");
        let mut alice_agent = agent(&rig, &alice);
        let mut bob_agent = agent(&rig, &bob);
        let box_ = start_on(&rig, &alice, "a", 2800 << 20).await;
        let b1 = start_on(&rig, &bob, "a", 512 << 20).await;
        let b2 = start_on(&rig, &bob, "a", 512 << 20).await;
        let mut monitor = rig.ctl.monitor_loop().unwrap();
        tick(&rig, &mut monitor).await;

        let moved = rig.record(&box_.id).await;
        assert_eq!(
            moved.node.as_deref(),
            Some("b"),
            "the node with the most room"
        );
        assert_eq!(moved.state, State::Running);
        assert_eq!(moved.generation, Generation::new(2));
        let report = moved.last_move.clone().unwrap();
        assert_eq!(report.direction, MoveDirection::ToNode);
        assert_eq!(report.outcome, MoveOutcome::Done);
        // One copy runs, on b, at the new generation; the copy on a is gone.
        let copies = rig.cloud_copies(&box_.id);
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(copies[0].1, "2");
        assert_eq!(rig.fake.node_of(&copies[0].0).as_deref(), Some("b"));
        for other in [&b1, &b2] {
            let r = rig.record(&other.id).await;
            assert_eq!(
                (r.node.as_deref(), r.generation),
                (Some("a"), Generation::FIRST)
            );
        }
        // Alice was told why before it moved; nobody got a query.
        let told: Vec<String> = messages(&mut alice_agent)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::Notice { text } => Some(text),
                ServerMessage::Query { query, .. } => panic!("a query: {query:?}"),
                _ => None,
            })
            .collect();
        assert!(
            told.iter().any(
                |t| t.contains("moves from node a to node b inside the cloud")
                    && t.contains("node a is under pressure")
                    && t.contains("memory")
            ),
            "{told:?}"
        );
        assert!(
            !messages(&mut bob_agent)
                .iter()
                .any(|m| matches!(m, ServerMessage::Query { .. }))
        );
        assert!(rig.ctl.queries.pending().await.unwrap().is_empty());
        let id = box_.id.clone();
        let history = rig.ctl.db(move |s| s.events(&id, 100)).await.unwrap();
        assert!(
            history.iter().any(|e| e
                .detail
                .starts_with("moving from node a to node b: node a is under pressure")),
            "{history:?}"
        );

        // a is relieved: the next rounds move nothing more.
        tick(&rig, &mut monitor).await;
        tick(&rig, &mut monitor).await;
        assert_eq!(rig.record(&box_.id).await.generation, Generation::new(2));
        assert_eq!(rig.record(&b1.id).await.node.as_deref(), Some("a"));
    }

    /// With `cloud_moves = "ask"` the owner gets a query naming the node and nothing
    /// moves until they accept; a decline moves nothing, and the next round proposes
    /// another container instead.
    #[tokio::test]
    async fn in_ask_mode_a_move_between_nodes_waits_for_the_owner() {
        let rig = cluster(CloudMoves::Ask);
        let alice = rig.who.clone();
        let bob = principal("bob");
        let mut alice_agent = agent(&rig, &alice);
        let box_ = start_on(&rig, &alice, "a", 2800 << 20).await;
        let b1 = start_on(&rig, &bob, "a", 512 << 20).await;
        let b2 = start_on(&rig, &bob, "a", 512 << 20).await;
        let mut monitor = rig.ctl.monitor_loop().unwrap();
        tick(&rig, &mut monitor).await;

        assert_eq!(rig.record(&box_.id).await.node.as_deref(), Some("a"));
        let pending = rig.ctl.queries.pending().await.unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].container_id, box_.id);
        assert_eq!(pending[0].to_node.as_deref(), Some("b"));
        assert!(
            pending[0].reason.contains("move it to node b"),
            "{}",
            pending[0].reason
        );
        let asked = messages(&mut alice_agent)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::Query { query, .. } => Some(query),
                _ => None,
            });
        assert_eq!(asked.unwrap().to_node.as_deref(), Some("b"));
        // Asked again next round? No: it is pending.
        tick(&rig, &mut monitor).await;
        assert_eq!(rig.ctl.queries.pending().await.unwrap().len(), 1);

        rig.ctl
            .answer(&alice, &pending[0].id, Answer::Decline)
            .await
            .unwrap();
        tick(&rig, &mut monitor).await;
        assert_eq!(rig.record(&box_.id).await.node.as_deref(), Some("a"));
        let pending = rig.ctl.queries.pending().await.unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_ne!(
            pending[0].container_id, box_.id,
            "declined: not asked again"
        );
        assert!([&b1.id, &b2.id].contains(&&pending[0].container_id));

        // Bob accepts: his container moves.
        rig.ctl
            .answer(&bob, &pending[0].id, Answer::Accept)
            .await
            .unwrap();
        let moved = rig.settled(&pending[0].container_id).await;
        assert_ne!(moved.node.as_deref(), Some("a"));
        assert_eq!(moved.generation, Generation::new(2));
        assert_eq!(moved.last_move.unwrap().outcome, MoveOutcome::Done);
    }

    /// Every node busy: no move between nodes can help, so the owners are asked to move
    /// their containers to their machines, each about the node it would relieve.
    #[tokio::test]
    async fn a_cluster_busy_everywhere_asks_owners_to_offload() {
        let rig = cluster(CloudMoves::Notify);
        let alice = rig.who.clone();
        let mut alice_agent = agent(&rig, &alice);
        let mut ids = Vec::new();
        for node in ["a", "b", "c"] {
            ids.push(start_on(&rig, &alice, node, 3900 << 20).await.id);
        }
        let mut monitor = rig.ctl.monitor_loop().unwrap();
        tick(&rig, &mut monitor).await;
        let pending = rig.ctl.queries.pending().await.unwrap();
        let mut asked: Vec<ContainerId> = pending.iter().map(|q| q.container_id.clone()).collect();
        asked.sort();
        ids.sort();
        assert_eq!(asked, ids);
        assert!(pending.iter().all(|q| q.to_node.is_none()));
        assert!(
            pending
                .iter()
                .all(|q| q.reason.contains("no other node has room")),
            "{pending:?}"
        );
        for id in &ids {
            let r = rig.record(id).await;
            assert_eq!(
                r.generation,
                Generation::FIRST,
                "nothing moved inside the cloud"
            );
        }
        assert!(messages(&mut alice_agent).iter().any(
            |m| matches!(m, ServerMessage::Notice { text } if text.starts_with("the cloud is under pressure"))
        ));
    }

    /// An operator's `docker node update --availability drain` stops the node's tasks;
    /// the reconciler's next round moves its containers to other nodes, on the same
    /// workspace, at the next generation, rather than start them where they were.
    #[tokio::test]
    async fn a_node_drained_by_the_operator_is_emptied_by_the_reconciler() {
        let rig = cluster(CloudMoves::Notify);
        let alice = rig.who.clone();
        let one = start_on(&rig, &alice, "a", GIB).await;
        let two = start_on(&rig, &alice, "a", GIB).await;
        let elsewhere = start_on(&rig, &alice, "c", GIB).await;
        std::fs::write(rig.ctl.workspace_dir(&one.id).join("notes"), "kept").unwrap();
        rig.fake.set_availability("a", "drain");
        rig.ctl.reconcile_round().await;
        for record in [&one, &two] {
            let moved = rig.settled(&record.id).await;
            assert_ne!(moved.node.as_deref(), Some("a"), "{moved:?}");
            assert_eq!(moved.state, State::Running);
            assert_eq!(moved.generation, Generation::new(2));
            let copies = rig.cloud_copies(&record.id);
            assert_eq!(copies.len(), 1);
            assert_eq!(rig.fake.node_of(&copies[0].0), moved.node);
        }
        assert_eq!(
            std::fs::read_to_string(rig.ctl.workspace_dir(&one.id).join("notes")).unwrap(),
            "kept"
        );
        let untouched = rig.record(&elsewhere.id).await;
        assert_eq!(untouched.generation, Generation::FIRST);
        // Nothing is left to move: the next round changes nothing.
        rig.ctl.reconcile_round().await;
        assert_eq!(rig.record(&one.id).await.generation, Generation::new(2));
    }

    /// `offload admin drain --node`: admins only, a node the swarm has (by name or ID),
    /// on a cluster; its containers move, and one that no node can take stays with why.
    #[tokio::test]
    async fn admin_drain_checks_its_input_and_moves_what_it_can() {
        let rig = cluster(CloudMoves::Notify);
        let alice = rig.who.clone();
        let admin = Principal {
            user: alice.user.clone(),
            admin: true,
        };
        let record = start_on(&rig, &alice, "a", GIB).await;
        assert!(matches!(
            rig.ctl.drain(&alice, "a").await,
            Err(ActionError::Forbidden)
        ));
        match rig.ctl.drain(&admin, "nowhere").await {
            Err(ActionError::BadRequest(m)) => {
                assert!(
                    m.contains("no node nowhere") && m.contains("a, b, c"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Nothing changed.
        assert!(
            rig.fake
                .nodes()
                .await
                .unwrap()
                .iter()
                .all(|n| n.availability == "active")
        );
        rig.fake.set_availability("b", "pause");
        rig.fake.set_availability("c", "pause");
        let report = rig.ctl.drain(&admin, "a").await.unwrap();
        assert!(report.moving.is_empty());
        assert_eq!(report.staying.len(), 1);
        assert!(
            report.staying[0]
                .reason
                .contains("no other node of the swarm can take"),
            "{:?}",
            report.staying
        );
        rig.fake.set_availability("c", "active");
        rig.ctl.reconcile_round().await;
        let moved = rig.settled(&record.id).await;
        assert_eq!(moved.node.as_deref(), Some("c"));

        let single = crate::testing::rig();
        let admin = Principal {
            user: single.who.user.clone(),
            admin: true,
        };
        match single.ctl.drain(&admin, "a").await {
            Err(ActionError::BadRequest(m)) => assert!(m.contains("not a cluster"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// A copy that cannot start on the target rolls the move back: the container runs on
    /// its own node again, one copy, with the reason recorded (I5).
    #[tokio::test]
    async fn a_failed_start_on_the_target_runs_the_container_where_it_was() {
        let rig = cluster(CloudMoves::Notify);
        let record = start_on(&rig, &rig.who.clone(), "a", GIB).await;
        rig.fake.fail(Op::Run, 1);
        rig.ctl
            .relocate(&record.id, Some("b"), "a test")
            .await
            .unwrap();
        let after = rig.settled(&record.id).await;
        assert_eq!(after.node.as_deref(), Some("a"));
        assert_eq!(after.state, State::Running);
        match after.last_move.clone().unwrap().outcome {
            MoveOutcome::RolledBack { reason } => {
                assert!(reason.contains("starting on node b failed"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let copies = rig.cloud_copies(&record.id);
        assert_eq!(copies.len(), 1);
        assert_eq!(rig.fake.node_of(&copies[0].0).as_deref(), Some("a"));
        // Bad requests change nothing.
        for (to, wanted) in [
            ("a", "already runs on node a"),
            ("zz", "no longer in the swarm"),
        ] {
            match rig.ctl.relocate(&record.id, Some(to), "a test").await {
                Err(e) => assert!(e.to_string().contains(wanted), "{e}"),
                Ok(r) => panic!("{r:?}"),
            }
        }
        assert_eq!(rig.record(&record.id).await.generation, after.generation);
    }

    /// A stop on a node that does not confirm it (the engine errs) starts no copy on any
    /// other node while the old one may run (I1): the container waits, says why, and the
    /// next round moves it once the stop succeeds.
    #[tokio::test]
    async fn a_stop_not_confirmed_starts_no_copy_elsewhere() {
        let rig = cluster(CloudMoves::Notify);
        let record = start_on(&rig, &rig.who.clone(), "a", GIB).await;
        rig.fake.set_availability("a", "drain");
        rig.fake.fail(Op::Stop, usize::MAX);
        rig.ctl.reconcile_round().await;
        let waiting = rig.settled(&record.id).await;
        assert_eq!(waiting.state, State::Starting, "{waiting:?}");
        assert_eq!(waiting.generation, Generation::FIRST);
        // The move's report says why; the record's reason may since name the restart
        // the same round tried on the drained node, which the engine refuses too.
        match waiting.last_move.as_ref().map(|m| &m.outcome) {
            Some(MoveOutcome::RolledBack { reason }) => {
                assert!(reason.contains("was not seen to stop"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(waiting.reason.is_some(), "{waiting:?}");
        assert!(
            rig.fake
                .running()
                .iter()
                .all(|id| rig.fake.node_of(id).as_deref() == Some("a")),
            "nothing runs on another node"
        );
        rig.fake.heal();
        // The round spawns the move; the same round's restart attempt on the drained node
        // may run first and fail, so a later round is allowed to finish the work.
        let mut moved = rig.record(&record.id).await;
        for _ in 0..5 {
            rig.ctl.reconcile_round().await;
            moved = rig.settled(&record.id).await;
            if moved.state == State::Running && moved.node.as_deref() != Some("a") {
                break;
            }
        }
        assert_eq!(moved.state, State::Running, "{moved:?}");
        assert_ne!(moved.node.as_deref(), Some("a"));
        assert_eq!(rig.cloud_copies(&record.id).len(), 1);
    }
}
