//! End to end: Podman as an engine, through its Docker-compatible socket. A container
//! moves between a Docker cloud and a Podman edge, and between a Podman cloud and a
//! Docker edge, there and back, with identical files.

mod common;

use common::{Cloud, Edge, IMAGE, User, copies, eventually, running_on, stderr, stdout, tree};
use offload_testkit::Engine;

/// A workspace of small files, a larger one, a symlink, an executable and an empty
/// directory, written from inside the container.
fn fill_workspace(user: &User, id: &str) {
    let script = r#"
        set -e
        cd /workspace
        dd if=/dev/urandom of=big.bin bs=1M count=8 2>/dev/null
        mkdir -p small empty/dir
        i=0
        while [ $i -lt 300 ]; do echo "file $i" > small/$i.txt; i=$((i + 1)); done
        printf '#!/bin/sh\necho run\n' > tool.sh
        chmod 755 tool.sh
        ln -s small/0.txt link
    "#;
    let out = user.run(&["shell", id, "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Moves `id` to the edge and back once (round `round`): the files are the same on both
/// sides after each move, the edge's edit and deletion reach the cloud, and exactly one
/// copy runs. Returns the timings of the move to the edge.
fn there_and_back(
    cloud: &Cloud,
    edge: &Edge,
    alice: &User,
    id: &str,
    round: u32,
) -> serde_json::Value {
    let cloud_ws = cloud.workspace(id);
    let out = alice.run(&["move", id, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = alice.show(id);
    assert_eq!(shown["location"], "edge", "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(
        copies(&edge.engine, id).len(),
        1,
        "one copy runs at the edge"
    );
    assert!(
        copies(&cloud.engine, id).is_empty(),
        "none runs in the cloud"
    );
    assert_eq!(tree(&cloud_ws), tree(&edge.workspace(id)));
    let timings = shown["last_move"]["timings"].clone();

    // The container works at the edge: its limits, its workspace.
    let script = format!("ulimit -n > limits; echo edge {round} > notes; rm small/{round}.txt");
    let out = alice.run(&["shell", id, "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let edit = format!("edge {round}");
    eventually(30, "the edge's edit to reach the cloud", || {
        std::fs::read_to_string(cloud_ws.join("notes")).is_ok_and(|t| t.trim() == edit)
    });

    let out = alice.run(&["move", id, "--to", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = alice.show(id);
    assert_eq!(shown["location"], "cloud", "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(copies(&edge.engine, id).is_empty(), "the edge copy stopped");
    assert_eq!(copies(&cloud.engine, id).len(), 1);
    assert_eq!(tree(&cloud_ws), tree(&edge.workspace(id)));
    assert!(
        !cloud_ws.join(format!("small/{round}.txt")).exists(),
        "the deletion crossed"
    );
    let out = alice.run(&["shell", id, "--", "cat", "/workspace/notes"]);
    assert_eq!(stdout(&out).trim(), edit);
    timings
}

#[test]
fn a_container_moves_between_a_docker_cloud_and_a_podman_edge_and_back() {
    let cloud = Cloud::start("pd-cloud");
    let alice = cloud.user("alice");
    let engine = Engine::start_podman("pd-edge").expect("podman starts");
    let edge = Edge::on_engine(engine, &alice, &[], &[]);
    let id = alice.start_sleeper("work");
    fill_workspace(&alice, &id);
    let first = there_and_back(&cloud, &edge, &alice, &id, 1);
    // The image crossed into Podman's storage, and a second move finds it there, with
    // the files the edge kept: only what changed crosses.
    assert_eq!(first["image"], "streamed", "{first}");
    assert!(edge.engine.image_id(IMAGE).expect("inspect").is_some());
    let second = there_and_back(&cloud, &edge, &alice, &id, 2);
    assert_eq!(second["image"], "present", "{second}");
    // Podman's default of a million open files would not start here: the container has
    // the limit this host allows.
    let limits = std::fs::read_to_string(cloud.workspace(&id).join("limits")).expect("limits");
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if let Some(hard) = hard {
        assert_eq!(limits.trim(), hard.to_string());
    }
    assert!(
        second["bytes"].as_u64().unwrap_or(u64::MAX) < 1 << 20,
        "{second}"
    );
    assert!(running_on(&edge.engine).is_empty());
}

#[test]
fn a_container_moves_between_a_podman_cloud_and_a_docker_edge_and_back() {
    let engine = Engine::start_podman("pd-cloud2").expect("podman starts");
    engine.import_busybox(IMAGE).expect("busybox imports");
    let cloud = Cloud::on_engine(engine);
    let alice = cloud.user("alice");
    let edge = Edge::start("pd-edge2", &alice);
    let id = alice.start_sleeper("work");
    fill_workspace(&alice, &id);
    let timings = there_and_back(&cloud, &edge, &alice, &id, 1);
    assert_eq!(
        timings["image"], "streamed",
        "Podman's image archive loads into Docker"
    );
    assert!(edge.engine.image_id(IMAGE).expect("inspect").is_some());
}
