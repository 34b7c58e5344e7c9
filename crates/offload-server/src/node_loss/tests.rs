//! The node-loss step's decisions against the fake engine playing a three-node swarm:
//! the grace, the replacement at the next generation on another node, the fence of a copy
//! nobody can stop, the stale copy stopped when its node comes back, and `lost` when no
//! node has room.

use std::sync::Arc;
use std::time::Duration;

use offload_core::api::{ContainerView, StartRequest};
use offload_core::{ContainerRecord, Generation, State};
use offload_runtime::NodeInfo;
use offload_runtime::fake::{Call, FakeRuntime, Op};
use offload_store::{Principal, Store};

use crate::config::{ServerConfig, SwarmConfig};
use crate::controller::Controller;
use crate::fenced::FENCED_DIR;

struct Cluster {
    _dir: tempfile::TempDir,
    ctl: Arc<Controller>,
    fake: FakeRuntime,
    who: Principal,
}

fn node(id: &str, memory: u64) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        name: format!("name-{id}"),
        state: "ready".to_owned(),
        availability: "active".to_owned(),
        cpus: 4.0,
        memory_bytes: memory,
        reachable: true,
    }
}

const GIB: u64 = 1 << 30;

/// A controller over a fake swarm of nodes `a` (most memory: new containers go there),
/// `b` and `c`, with the given grace.
fn cluster(grace_secs: f64) -> Cluster {
    cluster_of(
        grace_secs,
        vec![node("a", 8 * GIB), node("b", 4 * GIB), node("c", 2 * GIB)],
    )
}

fn cluster_of(grace_secs: f64, nodes: Vec<NodeInfo>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let fake = FakeRuntime::new();
    fake.add_image("busybox");
    fake.set_nodes(nodes);
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        swarm: SwarmConfig {
            node_lost_grace_secs: grace_secs,
            ..Default::default()
        },
        ..Default::default()
    };
    let who = Principal {
        user: offload_core::UserName::parse("alice").unwrap(),
        admin: false,
    };
    store.upsert_user(&who.user, false, 0).unwrap();
    let ctl = Arc::new(Controller::new(store, Arc::new(fake.clone()), config).unwrap());
    Cluster {
        _dir: dir,
        ctl,
        fake,
        who,
    }
}

impl Cluster {
    async fn start(&self) -> ContainerRecord {
        let request = StartRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        self.ctl.start(&self.who, request).await.unwrap()
    }

    async fn record(&self, record: &ContainerRecord) -> ContainerRecord {
        self.ctl.reload(&record.id).await.unwrap()
    }

    async fn round(&self) {
        self.ctl.reconcile_round().await;
    }

    /// Two rounds with the grace elapsed between them.
    async fn rounds_past(&self, grace: Duration) {
        self.round().await;
        tokio::time::sleep(grace + Duration::from_millis(100)).await;
        self.round().await;
    }

    fn runs(&self) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Run(_)))
            .count()
    }

    async fn events(&self, record: &ContainerRecord) -> Vec<(String, String)> {
        let id = record.id.clone();
        self.ctl
            .db(move |s| s.events(&id, 100))
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.detail))
            .collect()
    }

    fn fenced(&self, record: &ContainerRecord, generation: u64) -> std::path::PathBuf {
        self.ctl
            .workspace_dir(&record.id)
            .parent()
            .unwrap()
            .join(FENCED_DIR)
            .join(format!("{}-g{generation}", record.id))
    }
}

const GRACE: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_node_lost_for_less_than_the_grace_changes_nothing() {
    let c = cluster(60.0);
    let rec = c.start().await;
    assert_eq!(rec.node.as_deref(), Some("a"));
    c.fake.set_node("a", "down", false);
    c.round().await;
    c.round().await;
    let now = c.record(&rec).await;
    assert_eq!(now, rec, "nothing changes within the grace");
    assert_eq!(c.runs(), 1, "no replacement");
    assert!(
        !c.fake.calls().iter().any(|call| matches!(
            call,
            Call::StopOnNode(..) | Call::Remove(_) | Call::Start(_)
        )),
        "{:?}",
        c.fake.calls()
    );
    assert_eq!(c.fake.running_on("a").len(), 1);

    // The node comes back within the grace: the container simply carries on.
    c.fake.set_node("a", "ready", true);
    c.round().await;
    assert_eq!(c.record(&rec).await, rec);
}

/// The manager lost the node but offload reaches its engine (a partition of the swarm's
/// own network): the old copy is stopped there first, so the two never overlap, and the
/// workspace stays where it is.
#[tokio::test]
async fn past_the_grace_the_container_runs_at_the_next_generation_on_another_node() {
    let c = cluster(GRACE.as_secs_f64());
    let rec = c.start().await;
    let old_task = c.fake.running_on("a")[0].0.clone();
    std::fs::write(c.ctl.workspace_dir(&rec.id).join("notes"), b"acknowledged").unwrap();
    c.fake.set_node("a", "down", true);
    c.rounds_past(GRACE).await;

    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Running, "{:?}", now.reason);
    assert_eq!(now.generation, Generation::new(2));
    assert_eq!(
        now.node.as_deref(),
        Some("b"),
        "the node with the most room left"
    );
    assert_ne!(now.runtime_id, rec.runtime_id, "a new service");
    assert_eq!(now.reason, None);
    assert!(c.fake.running_on("a").is_empty(), "the old copy is stopped");
    let on_b = c.fake.running_on("b");
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].1, "2", "the new copy carries the new generation");
    assert_eq!(c.fake.running(), vec![now.runtime_id.clone().unwrap()]);

    // Stopped on the node's engine before anything new ran.
    let calls = c.fake.calls();
    let stopped = calls
        .iter()
        .position(|call| *call == Call::StopOnNode("a".into(), old_task.clone()))
        .expect("the old copy was stopped on its node");
    let started = calls
        .iter()
        .rposition(|call| matches!(call, Call::Run(_)))
        .unwrap();
    assert!(stopped < started, "{calls:?}");
    assert_eq!(
        std::fs::read(c.ctl.workspace_dir(&rec.id).join("notes")).unwrap(),
        b"acknowledged"
    );
    assert!(!c.fenced(&rec, 1).exists(), "nothing to set aside");
    let events = c.events(&rec).await;
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "node-lost" && d.contains("stopped on the node's own engine")),
        "{events:?}"
    );

    // More rounds change nothing, and the node's return brings nothing back.
    c.fake.set_node("a", "ready", true);
    c.round().await;
    c.round().await;
    assert_eq!(c.record(&rec).await.runtime_id, now.runtime_id);
    assert_eq!(c.runs(), 2);
    assert!(c.fake.running_on("a").is_empty());
}

/// Nobody reaches the node: its copy may still run and write. The replacement starts on a
/// copy of the workspace; the old one, set aside, is where the lost copy's writes land;
/// when the node comes back its copy is stopped on its engine and what it wrote late is
/// kept as a conflict set, beside the new copy's files.
#[tokio::test]
async fn a_copy_nobody_can_stop_is_fenced_and_stopped_when_its_node_returns() {
    let c = cluster(GRACE.as_secs_f64());
    let rec = c.start().await;
    let ws = c.ctl.workspace_dir(&rec.id);
    std::fs::write(ws.join("notes"), b"acknowledged").unwrap();
    c.fake.set_node("a", "down", false);
    c.rounds_past(GRACE).await;

    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Running, "{:?}", now.reason);
    assert_eq!(now.generation, Generation::new(2));
    assert_eq!(now.node.as_deref(), Some("b"));
    // The lost copy still runs where nobody reaches it; the new one runs on b.
    assert_eq!(c.fake.running_on("a")[0].1, "1");
    assert_eq!(c.fake.running_on("b")[0].1, "2");
    // The new copy has every file; the old directory is set aside for the lost copy.
    assert_eq!(std::fs::read(ws.join("notes")).unwrap(), b"acknowledged");
    let aside = c.fenced(&rec, 1);
    assert_eq!(std::fs::read(aside.join("notes")).unwrap(), b"acknowledged");
    let events = c.events(&rec).await;
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "node-lost" && d.contains("workspace was set aside")),
        "{events:?}"
    );

    // The lost copy writes on (through its mount, into the old directory); the new one
    // writes the same file in its workspace.
    std::fs::write(aside.join("notes"), b"written late by the lost copy").unwrap();
    std::fs::write(aside.join("late.txt"), b"late").unwrap();
    std::fs::write(ws.join("notes"), b"the new copy's work").unwrap();

    // Rounds while the node is away change nothing.
    c.round().await;
    assert!(aside.exists());
    assert_eq!(c.fake.running_on("a").len(), 1);

    // The node comes back: its copy is stopped on its own engine, its late writes kept.
    c.fake.set_node("a", "ready", true);
    c.round().await;
    assert!(
        c.fake.running_on("a").is_empty(),
        "the stale copy is stopped"
    );
    assert!(
        c.fake
            .calls()
            .iter()
            .any(|call| matches!(call, Call::StopOnNode(n, _) if n == "a"))
    );
    assert_eq!(c.fake.running_on("b")[0].1, "2", "the new copy runs on");
    assert_eq!(
        std::fs::read(ws.join("notes")).unwrap(),
        b"the new copy's work",
        "the lost copy never wrote the new copy's files"
    );
    let sets: Vec<_> = std::fs::read_dir(ws.join(".offload-conflicts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set = &sets[0];
    let name = set.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("node-name-a-generation-1-"), "{name}");
    assert_eq!(
        std::fs::read(set.join("notes")).unwrap(),
        b"written late by the lost copy"
    );
    assert_eq!(std::fs::read(set.join("late.txt")).unwrap(), b"late");
    assert!(!aside.exists(), "the fence is gone once collected");
    let events = c.events(&rec).await;
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "fenced" && d.contains("generation 1")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "conflict" && d.contains("2 file(s)")),
        "{events:?}"
    );
    c.round().await;
    assert_eq!(
        std::fs::read_dir(ws.join(".offload-conflicts"))
            .unwrap()
            .count(),
        1,
        "collected once"
    );
}

/// The swarm still reaches the node but offload does not reach its engine: the manager
/// stops the old copy (the node reports it ended), so no fence is needed.
#[tokio::test]
async fn a_node_only_offload_cannot_reach_is_stopped_through_the_manager() {
    let c = cluster(GRACE.as_secs_f64());
    let rec = c.start().await;
    c.fake.set_node("a", "ready", false);
    c.rounds_past(GRACE).await;
    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Running, "{:?}", now.reason);
    assert_eq!(now.node.as_deref(), Some("b"));
    assert!(c.fake.running_on("a").is_empty());
    assert!(
        c.fake
            .calls()
            .contains(&Call::Stop(rec.runtime_id.clone().unwrap()))
    );
    assert!(!c.fenced(&rec, 1).exists());
}

#[tokio::test]
async fn with_no_node_that_has_room_the_container_is_lost_and_waits() {
    // b and c are too small for a 1 GiB container.
    let c = cluster_of(
        GRACE.as_secs_f64(),
        vec![node("a", 8 * GIB), node("b", GIB / 2), node("c", GIB / 2)],
    );
    let rec = c.start().await;
    c.fake.set_node("a", "down", false);
    c.rounds_past(GRACE).await;

    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Lost);
    assert_eq!(now.generation, rec.generation, "nothing was fenced");
    assert_eq!(now.node.as_deref(), Some("a"));
    let reason = now.reason.clone().unwrap();
    assert!(reason.contains("no other node has room"), "{reason}");
    assert_eq!(c.runs(), 1);
    let view = ContainerView::from(&now);
    assert_eq!(serde_json::to_value(&view).unwrap()["state"], "lost");
    assert!(!c.fenced(&rec, 1).exists());

    // Its node comes back first: it carries on there, at its generation.
    c.fake.set_node("a", "ready", true);
    c.round().await;
    let back = c.record(&rec).await;
    assert_eq!(back.state, State::Running, "{:?}", back.reason);
    assert_eq!(back.generation, rec.generation);
    assert_eq!(back.runtime_id, rec.runtime_id);
    assert_eq!(c.runs(), 1);

    // Lost again; then a node with room joins: it runs there at the next generation.
    c.fake.set_node("a", "down", false);
    c.rounds_past(GRACE).await;
    assert_eq!(c.record(&rec).await.state, State::Lost);
    c.fake.set_nodes(vec![
        NodeInfo {
            state: "down".into(),
            reachable: false,
            ..node("a", 8 * GIB)
        },
        node("b", GIB / 2),
        node("d", 4 * GIB),
    ]);
    c.round().await;
    let moved = c.record(&rec).await;
    assert_eq!(moved.state, State::Running, "{:?}", moved.reason);
    assert_eq!(moved.node.as_deref(), Some("d"));
    assert_eq!(moved.generation, Generation::new(2));
}

/// A replacement whose start fails stays `starting` with the reason, and the reconciler
/// starts it later: one copy, at the new generation, never the old one adopted again.
#[tokio::test]
async fn a_replacement_that_fails_to_start_is_retried_and_never_doubled() {
    let c = cluster(GRACE.as_secs_f64());
    let rec = c.start().await;
    c.fake.set_node("a", "down", true);
    c.fake.fail(Op::Run, 1);
    c.rounds_past(GRACE).await;
    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Starting);
    assert_eq!(now.generation, Generation::new(2));
    assert!(
        now.reason
            .as_deref()
            .unwrap()
            .contains("offload keeps trying"),
        "{:?}",
        now.reason
    );
    // The old service is gone; the next rounds start the new copy, once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.round().await;
    c.round().await;
    let now = c.record(&rec).await;
    assert_eq!(now.state, State::Running, "{:?}", now.reason);
    assert_eq!(c.fake.running().len(), 1);
    let copies: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| c.fake.running_on(n))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].1, "2");
}

/// The reconciler never adopts a copy of an older generation than its record's.
#[tokio::test]
async fn an_engine_container_of_an_older_generation_is_removed_not_adopted() {
    let c = cluster(60.0);
    let rec = c.start().await;
    let mut bumped = c.record(&rec).await;
    bumped.generation = Generation::new(5);
    bumped.state = State::Starting;
    c.ctl.save(&bumped, "test", "bumped").await.unwrap();
    let report = c.ctl.reconcile().await.unwrap();
    assert_eq!(report.stale_removed, 1);
    assert!(
        c.fake
            .calls()
            .contains(&Call::Remove(rec.runtime_id.clone().unwrap()))
    );
    let now = c.record(&rec).await;
    assert_ne!(now.runtime_id, rec.runtime_id);
    assert_eq!(now.state, State::Running);
    let copies = c.fake.running_on("a");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].1, "5");
}
