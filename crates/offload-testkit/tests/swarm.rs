//! Live test of the swarm fixture: three real `dockerd`s in network namespaces; needs root.

use std::path::Path;
use std::time::Duration;

use offload_testkit::{NODE_LABEL, Swarm, process_alive, wait_until};

const IMAGE: &str = "offload-testkit/busybox:swarm";

#[test]
fn a_three_node_swarm_places_services_and_leaves_nothing_behind() {
    let swarm = Swarm::start("kit", 3, IMAGE).expect("the swarm starts");
    assert_eq!(swarm.nodes().len(), 3);

    // The manager sees three ready nodes, each with its own ID and label.
    let listed = swarm
        .docker_output([
            "node",
            "ls",
            "--format",
            "{{.ID}} {{.Status}} {{.Availability}}",
        ])
        .expect("node ls");
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let mut ids: Vec<&str> = swarm.nodes().iter().map(|n| n.node_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "node IDs are distinct");
    for node in swarm.nodes() {
        let label = swarm
            .docker_output([
                "node",
                "inspect",
                "--format",
                &format!("{{{{index .Spec.Labels \"{NODE_LABEL}\"}}}}"),
                node.node_id(),
            ])
            .expect("node inspect");
        assert_eq!(label.trim(), node.name());
        assert!(node.engine().image_id(IMAGE).expect("inspect").is_some());
    }

    // A service pinned to the last node runs there and only there.
    let target = &swarm.nodes()[2];
    swarm
        .docker_output([
            "service",
            "create",
            "--detach",
            "--name",
            "pinned",
            "--endpoint-mode",
            "dnsrr",
            "--restart-condition",
            "none",
            "--constraint",
            &format!("node.labels.{NODE_LABEL}=={}", target.name()),
            IMAGE,
            "sleep",
            "1000",
        ])
        .expect("service create");
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        target
            .engine()
            .container_ids()
            .is_ok_and(|ids| ids.len() == 1)
    })
    .expect("the task runs on the pinned node");
    for other in &swarm.nodes()[..2] {
        assert!(other.engine().container_ids().expect("ps").is_empty());
    }

    // A node cut off the bridge goes down in the manager's eyes, and comes back.
    let worker = swarm.nodes()[1].name().to_owned();
    let worker_id = swarm.nodes()[1].node_id().to_owned();
    swarm.cut_off(&worker).expect("link down");
    wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        swarm
            .docker_output([
                "node",
                "inspect",
                "--format",
                "{{.Status.State}}",
                &worker_id,
            ])
            .is_ok_and(|s| s.trim() == "down")
    })
    .expect("the manager sees the cut-off node down");
    swarm.reconnect(&worker).expect("link up");
    wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        swarm
            .docker_output([
                "node",
                "inspect",
                "--format",
                "{{.Status.State}}",
                &worker_id,
            ])
            .is_ok_and(|s| s.trim() == "ready")
    })
    .expect("the node comes back");

    let pids: Vec<u32> = swarm.nodes().iter().map(|n| n.engine().pid()).collect();
    let dirs: Vec<_> = swarm
        .nodes()
        .iter()
        .map(|n| n.engine().dir().to_path_buf())
        .collect();
    let namespaces: Vec<String> = swarm.nodes().iter().map(|n| n.netns().to_owned()).collect();
    drop(swarm);
    for pid in pids {
        assert!(!process_alive(pid), "dockerd {pid} outlived the swarm");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} outlived the swarm", dir.display());
    }
    for netns in namespaces {
        assert!(
            !Path::new("/run/netns").join(&netns).exists(),
            "namespace {netns} outlived the swarm"
        );
    }
}

#[test]
fn a_swarm_needs_at_least_one_node() {
    let err = Swarm::start("none", 0, IMAGE).expect_err("zero nodes is refused");
    assert!(
        format!("{err:#}").contains("from 1 to 200 nodes"),
        "{err:#}"
    );
}
