//! The Swarm runtime against a real three-node swarm (needs root: network namespaces).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use offload_runtime::{
    ContainerRuntime, ContainerSpec, ExecOutput, ExecSpec, NetworkMode, RuntimeError,
    SwarmNodeEngine, SwarmRuntime,
};
use offload_testkit::Swarm;

const IMAGE: &str = "offload-test/busybox:latest";

fn spec(workspace: &std::path::Path, node: Option<String>) -> ContainerSpec {
    ContainerSpec {
        name: format!("offload-rt-{}", std::process::id()),
        image: IMAGE.into(),
        command: vec!["sleep".into(), "1000".into()],
        env: vec![],
        cpus: 0.5,
        memory_bytes: 64 << 20,
        workspace: workspace.to_path_buf(),
        workspace_target: "/workspace".into(),
        labels: BTreeMap::from([
            ("offload.id".to_owned(), "rt".to_owned()),
            ("offload.owner".to_owned(), "alice".to_owned()),
            ("offload.generation".to_owned(), "1".to_owned()),
        ]),
        network: NetworkMode::Default,
        stop_grace_secs: 1,
        node,
    }
}

async fn run_command(rt: &SwarmRuntime, id: &str, cmd: &[&str]) -> String {
    let session = rt
        .exec(
            id,
            &ExecSpec {
                command: cmd.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
        )
        .await
        .expect("exec starts");
    let mut out = Vec::new();
    let mut output = session.output;
    while let Some(piece) = output.next().await {
        if let ExecOutput::Stdout(bytes) = piece.expect("exec output") {
            out.extend(bytes);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_run_pinned_stop_start_and_go() {
    let swarm = tokio::task::spawn_blocking(|| Swarm::start("rt", 3, IMAGE))
        .await
        .unwrap()
        .expect("swarm starts");
    let engines: Vec<SwarmNodeEngine> = swarm
        .nodes()
        .iter()
        .map(|n| SwarmNodeEngine {
            name: n.name().to_owned(),
            docker_host: n.host().to_owned(),
        })
        .collect();

    // A worker is no manager: the runtime refuses it with a clear reason.
    let err = SwarmRuntime::connect(swarm.nodes()[1].host(), &engines)
        .await
        .err()
        .expect("a worker is refused");
    assert!(err.to_string().contains("not a swarm manager"), "{err}");

    let rt = SwarmRuntime::connect(swarm.manager().host(), &engines)
        .await
        .expect("connects to the manager");
    let nodes = rt.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.schedulable()), "{nodes:?}");
    assert!(nodes.iter().all(|n| n.memory_bytes > 0 && n.cpus > 0.0));
    let target = &swarm.nodes()[2];
    let node = nodes.iter().find(|n| n.id == target.node_id()).unwrap();
    assert_eq!(node.name, target.name(), "named by its offload.node label");
    assert!(rt.image(IMAGE).await.unwrap().is_some());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "hello").unwrap();
    let id = rt
        .run(&spec(dir.path(), Some(target.node_id().to_owned())))
        .await
        .expect("the service runs");
    let seen = rt.inspect(&id).await.unwrap().expect("inspectable");
    assert!(seen.running);
    assert_eq!(seen.node.as_deref(), Some(target.node_id()));
    assert_eq!(seen.labels["offload.owner"], "alice");
    assert_eq!(seen.image, IMAGE);
    assert_eq!(target.engine().container_ids().unwrap().len(), 1);
    for other in &swarm.nodes()[..2] {
        assert!(other.engine().container_ids().unwrap().is_empty());
    }
    assert_eq!(
        run_command(&rt, &id, &["cat", "/workspace/f"]).await,
        "hello"
    );
    // Confinement as on a single engine: no new privileges, no CAP_MKNOD.
    let status = run_command(&rt, &id, &["cat", "/proc/self/status"]).await;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(rt.usage(&id).await.unwrap().memory_bytes > 0);
    let listed = rt.list_labelled("offload.id").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].runtime_id, id);

    rt.stop(&id, Duration::from_secs(1)).await.expect("stops");
    let seen = rt.inspect(&id).await.unwrap().unwrap();
    assert!(!seen.running);
    assert!(matches!(
        rt.exec(
            &id,
            &ExecSpec {
                command: vec!["true".into()],
                ..Default::default()
            }
        )
        .await,
        Err(RuntimeError::NotFound { .. })
    ));
    rt.start(&id).await.expect("starts again");
    let seen = rt.inspect(&id).await.unwrap().unwrap();
    assert!(seen.running);
    assert_eq!(seen.node.as_deref(), Some(target.node_id()), "same node");

    // The node's own engine lists the task container and stops it there, whatever the
    // manager knows.
    let on_node = rt
        .node_containers(target.node_id(), "offload.id")
        .await
        .unwrap();
    let copy = on_node.iter().find(|c| c.running).expect("a running copy");
    assert_eq!(copy.labels["offload.generation"], "1");
    assert_eq!(copy.node.as_deref(), Some(target.node_id()));
    rt.stop_on_node(target.node_id(), &copy.runtime_id, Duration::from_secs(1))
        .await
        .unwrap();
    let after = rt
        .node_containers(target.node_id(), "offload.id")
        .await
        .unwrap();
    assert!(after.iter().all(|c| !c.running), "{after:?}");
    rt.stop_on_node(target.node_id(), &copy.runtime_id, Duration::from_secs(1))
        .await
        .expect("stopping a stopped copy succeeds");

    // A frozen engine: the probe says so, and nothing waits on it.
    let bound = Duration::from_secs(60);
    swarm.freeze(target.name()).unwrap();
    let nodes = tokio::time::timeout(bound, rt.nodes())
        .await
        .expect("listing nodes does not hang on a frozen engine")
        .unwrap();
    let frozen = nodes.iter().find(|n| n.id == target.node_id()).unwrap();
    assert!(!frozen.reachable && !frozen.schedulable(), "{frozen:?}");
    assert!(
        tokio::time::timeout(bound, rt.image(IMAGE))
            .await
            .expect("image checks skip a frozen engine")
            .unwrap()
            .is_some()
    );
    let err = tokio::time::timeout(bound, rt.node_containers(target.node_id(), "offload.id"))
        .await
        .expect("a frozen engine's listing times out")
        .unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err}");
    swarm.thaw(target.name()).unwrap();
    let nodes = rt.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .find(|n| n.id == target.node_id())
            .is_some_and(|n| n.reachable),
        "reachable again once thawed"
    );

    rt.remove(&id).await.unwrap();
    assert!(rt.inspect(&id).await.unwrap().is_none());
    rt.remove(&id).await.expect("removing twice succeeds");

    // A node no one has: a clear placement error, and no service left behind.
    let err = rt
        .run(&spec(dir.path(), Some("nosuchnode0000000000000000".into())))
        .await
        .expect_err("nothing satisfies the constraint");
    assert!(err.to_string().contains("engine"), "{err}");
    let mut unpinned = spec(dir.path(), None);
    unpinned.image = "offload-test/absent:latest".into();
    let err = rt.run(&unpinned).await.expect_err("no node has the image");
    assert!(
        matches!(
            err,
            RuntimeError::ImageUnavailable { .. } | RuntimeError::Engine { .. }
        ),
        "{err}"
    );
    assert!(rt.list_labelled("offload.id").await.unwrap().is_empty());
    drop(swarm);
}
