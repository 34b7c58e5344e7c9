//! End to end: recovery from the failures that leave a container's fate in doubt (an agent
//! killed while the edge starts or stops its copy) and from engines that stop containers
//! behind offload's back, with the real server and agent on real engines.

mod common;

use std::time::{Duration, Instant};

use common::{Cloud, Edge, User, copies, freeze, stderr, tree};

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a failed wait prints: where the container is said to be, where it runs, and the
/// end of both logs.
fn report(cloud: &Cloud, edge: &Edge, user: &User, id: &str) -> String {
    let shown = user.run(&["show", id, "-o", "json"]);
    format!(
        "show: {}\ncloud copies: {:?}\nedge copies: {:?}\nserver log:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&shown.stdout),
        copies(&cloud.engine, id),
        copies(&edge.engine, id),
        tail(&cloud.server_log(), 60),
        tail(&edge.log(), 60),
    )
}

/// Polls `f` every 250 ms for up to `secs`; on timeout panics with `what` and the report.
fn within(
    secs: u64,
    what: &str,
    (cloud, edge, user, id): (&Cloud, &Edge, &User, &str),
    mut f: impl FnMut() -> bool,
) {
    let held = offload_testkit::wait_until(
        Duration::from_secs(secs),
        Duration::from_millis(250),
        &mut f,
    );
    assert!(
        held.is_ok(),
        "timed out after {secs} s waiting for {what}\n{}",
        report(cloud, edge, user, id)
    );
}

/// A sleeper whose workspace holds a 200 MB file and a few small ones, so the pre-copy of
/// a move takes a moment.
fn sleeper_with_files(user: &User, name: &str) -> String {
    let id = user.start_sleeper(name);
    let script = r#"
        set -e
        cd /workspace
        dd if=/dev/urandom of=blob bs=1M count=200 2>/dev/null
        mkdir -p notes/deep
        echo one > notes/one.txt
        echo two > notes/deep/two.txt
        ln -s notes/one.txt link
    "#;
    let out = user.run(&["shell", &id, "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    id
}

/// Starts a move to the edge and holds it in `finalizing` with the agent's start of its
/// copy hanging on a frozen edge engine; then kills the agent and thaws the engine, so
/// the answer to `finalizing` is lost.
fn lose_the_answer_to_finalizing(cloud: &Cloud, edge: &mut Edge, user: &User, id: &str) {
    user.ok(&["move", id, "--to", "edge", "--detach"]);
    within(
        60,
        "the pre-copy to report progress",
        (cloud, edge, user, id),
        || user.show(id)["moving"]["progress"].is_object(),
    );
    // The server's stop of the cloud copy hangs on the frozen cloud engine; once the move
    // is stopping the cloud, the edge engine is frozen and the cloud's thawed: the move
    // enters finalizing and the agent's start of its copy hangs.
    freeze(&cloud.engine, true);
    let stopping =
        offload_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            user.show(id)["moving"]["step"] == "stopping_cloud"
        });
    freeze(&edge.engine, true);
    freeze(&cloud.engine, false);
    if stopping.is_err() {
        freeze(&edge.engine, false);
        panic!(
            "the move did not reach stopping_cloud\n{}",
            report(cloud, edge, user, id)
        );
    }
    let finalizing =
        offload_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            user.show(id)["moving"]["step"] == "finalizing"
        });
    edge.kill_agent();
    freeze(&edge.engine, false);
    assert!(
        finalizing.is_ok(),
        "the move did not reach finalizing\n{}",
        report(cloud, edge, user, id)
    );
}

#[test]
fn an_agent_killed_while_the_edge_starts_its_copy_leaves_one_copy_and_no_lost_edits() {
    let cloud = Cloud::start("r1-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("r1-edge", &alice);
    let id = sleeper_with_files(&alice, "work");
    let before = tree(&cloud.workspace(&id));
    assert!(before.contains_key("blob"), "{before:?}");

    lose_the_answer_to_finalizing(&cloud, &mut edge, &alice, &id);

    // While the agent is gone nobody knows whether the edge runs its copy: nothing may
    // start anywhere, and the container says it is still moving.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let shown = alice.show(&id);
        assert_eq!(
            shown["state"],
            "moving",
            "the move is in doubt while the agent is gone\n{}",
            report(&cloud, &edge, &alice, &id)
        );
        let running = copies(&cloud.engine, &id).len() + copies(&edge.engine, &id).len();
        assert!(
            running <= 1,
            "{running} copies run while the move is in doubt\n{}",
            report(&cloud, &edge, &alice, &id)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    edge.start_agent();
    let ctx = (&cloud, &edge, &alice, id.as_str());
    within(60, "the move in doubt to settle", ctx, || {
        alice.show(&id)["state"] != "moving"
    });
    let shown = alice.show(&id);
    assert_eq!(
        shown["state"],
        "running",
        "{}",
        report(&cloud, &edge, &alice, &id)
    );
    let runtime_id = shown["runtime_id"].as_str().expect("rid").to_owned();
    let (here, workspace) = match shown["location"].as_str() {
        Some("cloud") => (&cloud.engine, cloud.workspace(&id)),
        Some("edge") => (&edge.engine, edge.workspace(&id)),
        other => panic!("unexpected location {other:?}: {shown}"),
    };
    within(
        60,
        "exactly one copy to run, where the state says",
        ctx,
        || {
            copies(here, &id) == [runtime_id.clone()]
                && copies(&cloud.engine, &id).len() + copies(&edge.engine, &id).len() == 1
        },
    );
    assert_eq!(
        tree(&workspace),
        before,
        "the workspace where the copy runs is the one from before the move"
    );
}

#[test]
fn a_move_in_doubt_ends_with_a_forced_return() {
    let cloud = Cloud::start("r2-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("r2-edge", &alice);
    let id = sleeper_with_files(&alice, "work");
    assert_eq!(alice.show(&id)["generation"], 1);

    lose_the_answer_to_finalizing(&cloud, &mut edge, &alice, &id);

    let out = alice.run(&["move", &id, "--to", "cloud", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        report(&cloud, &edge, &alice, &id)
    );
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "cloud", "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    // Past the generation 2 the edge may run.
    assert_eq!(shown["generation"], 3, "{shown}");
    let runtime_id = shown["runtime_id"].as_str().expect("rid").to_owned();
    assert_eq!(
        copies(&cloud.engine, &id),
        std::slice::from_ref(&runtime_id)
    );

    edge.start_agent();
    let ctx = (&cloud, &edge, &alice, id.as_str());
    within(60, "the edge copy to be fenced", ctx, || {
        copies(&edge.engine, &id).is_empty() && copies(&cloud.engine, &id) == [runtime_id.clone()]
    });
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "cloud", "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["generation"], 3, "{shown}");
}

#[test]
fn a_return_interrupted_while_the_edge_stops_lands_in_the_cloud_when_the_agent_returns() {
    let cloud = Cloud::start("r3-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("r3-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&["move", &id, "--to", "edge"]);
    assert_eq!(alice.show(&id)["location"], "edge");

    // Work done at the edge just before the return.
    alice.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "echo 'written at the edge' > /workspace/edge.txt; mkdir -p /workspace/d; echo x > /workspace/d/x",
    ]);
    // The agent's stop of its copy hangs on the frozen edge engine.
    freeze(&edge.engine, true);
    let out = alice.run(&["move", &id, "--to", "cloud", "--detach"]);
    if out.status.code() != Some(0) {
        freeze(&edge.engine, false);
        panic!("move --detach: {}", stderr(&out));
    }
    let stopping =
        offload_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            alice.show(&id)["moving"]["step"] == "stopping_edge"
        });
    edge.kill_agent();
    freeze(&edge.engine, false);
    assert!(
        stopping.is_ok(),
        "the return did not reach stopping_edge\n{}",
        report(&cloud, &edge, &alice, &id)
    );

    // The edge may still run its copy, or may have stopped it with its push half done:
    // the cloud must not start one.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let shown = alice.show(&id);
        assert_eq!(
            shown["state"],
            "moving",
            "the return is in doubt while the agent is gone\n{}",
            report(&cloud, &edge, &alice, &id)
        );
        assert!(
            copies(&cloud.engine, &id).is_empty(),
            "a cloud copy started while the return is in doubt\n{}",
            report(&cloud, &edge, &alice, &id)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    edge.start_agent();
    let ctx = (&cloud, &edge, &alice, id.as_str());
    within(60, "the return to land in the cloud", ctx, || {
        let shown = alice.show(&id);
        shown["location"] == "cloud" && shown["state"] == "running"
    });
    let shown = alice.show(&id);
    let runtime_id = shown["runtime_id"].as_str().expect("rid").to_owned();
    within(60, "exactly one copy to run, in the cloud", ctx, || {
        copies(&cloud.engine, &id) == [runtime_id.clone()] && copies(&edge.engine, &id).is_empty()
    });
    let workspace = cloud.workspace(&id);
    assert_eq!(
        std::fs::read_to_string(workspace.join("edge.txt")).ok(),
        Some("written at the edge\n".to_owned()),
        "the edge's edit reached the cloud\n{}",
        report(&cloud, &edge, &alice, &id)
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("d/x")).ok(),
        Some("x\n".to_owned())
    );
}

#[test]
fn a_cloud_engine_restart_brings_the_container_back() {
    let cloud = Cloud::start("r4-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("r4-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/kept.txt",
    ]);
    let rid = alice.show(&id)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    let ctx = (&cloud, &edge, &alice, id.as_str());

    // What an engine restart does to a container without a restart policy.
    cloud
        .engine
        .docker_output(["stop", "-t", "1", &rid])
        .expect("docker stop");
    assert!(copies(&cloud.engine, &id).is_empty(), "the copy stopped");

    within(30, "the container to run again", ctx, || {
        let shown = alice.show(&id);
        let running = copies(&cloud.engine, &id);
        shown["state"] == "running"
            && shown["location"] == "cloud"
            && running.len() == 1
            && shown["runtime_id"] == running[0].as_str()
    });
    let out = alice.run(&["shell", &id, "--", "cat", "/workspace/kept.txt"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_edge_engine_restart_brings_the_edge_copy_back() {
    let cloud = Cloud::start("r5-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("r5-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&["move", &id, "--to", "edge"]);
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "edge", "{shown}");
    let rid = shown["runtime_id"].as_str().expect("rid").to_owned();
    let ctx = (&cloud, &edge, &alice, id.as_str());

    edge.engine
        .docker_output(["stop", "-t", "1", &rid])
        .expect("docker stop");
    assert!(
        copies(&edge.engine, &id).is_empty(),
        "the edge copy stopped"
    );

    within(30, "the edge copy to run again", ctx, || {
        let shown = alice.show(&id);
        let running = copies(&edge.engine, &id);
        shown["state"] == "running"
            && shown["location"] == "edge"
            && running.len() == 1
            && shown["runtime_id"] == running[0].as_str()
    });
    assert!(
        copies(&cloud.engine, &id).is_empty(),
        "no copy in the cloud\n{}",
        report(&cloud, &edge, &alice, &id)
    );
    let out = alice.run(&["shell", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
