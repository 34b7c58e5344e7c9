//! End to end: moving containers between two real Docker engines (cloud and edge), with
//! the real server and agent, files crossing both ways.

mod common;

use common::{Cloud, Edge, IMAGE, copies, eventually, freeze, running_on, stderr, stdout, tree};

/// Fills the workspace from inside the container: a 50 MB file, 2,000 small files, a
/// symlink, an executable and an empty directory.
fn fill_workspace(user: &common::User, id: &str) {
    let script = r#"
        set -e
        cd /workspace
        dd if=/dev/urandom of=big.bin bs=1M count=50 2>/dev/null
        mkdir -p small/a small/b empty/dir
        i=0
        while [ $i -lt 2000 ]; do
            echo "file $i $(date +%N)" > small/$((i % 2 == 0 ? 0 : 1))-$i.txt
            i=$((i + 1))
        done
        mv small/0-* small/a/ 2>/dev/null || true
        printf '#!/bin/sh\necho run\n' > tool.sh
        chmod 755 tool.sh
        ln -s small/a/0-0.txt link
    "#;
    let out = user.run(&["shell", id, "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn move_to_edge_and_back_three_times_without_losing_files() {
    let cloud = Cloud::start("m-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("m-edge", &alice);
    let id = alice.start_sleeper("work");
    fill_workspace(&alice, &id);
    let cloud_ws = cloud.workspace(&id);
    assert!(tree(&cloud_ws).len() > 2000);
    assert!(
        edge.engine.image_id(IMAGE).expect("inspect").is_none(),
        "the edge starts without the image"
    );

    for round in 1..=3 {
        // Down to the edge.
        let out = alice.run(&["move", &id, "--to", "edge"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        let shown = alice.show(&id);
        assert_eq!(shown["location"], "edge", "{shown}");
        assert_eq!(shown["state"], "running");
        assert_eq!(shown["generation"], (2 * round) as u64);
        let runtime_id = shown["runtime_id"].as_str().expect("rid").to_owned();
        assert_eq!(edge.running(), vec![runtime_id.clone()], "runs at the edge");
        assert!(
            running_on(&cloud.engine).is_empty(),
            "nothing runs in the cloud"
        );
        assert!(edge.engine.image_id(IMAGE).expect("inspect").is_some());
        assert_eq!(tree(&cloud_ws), tree(&edge.workspace(&id)), "round {round}");
        let timings = &shown["last_move"]["timings"];
        assert!(timings["downtime_ms"].as_u64().is_some(), "{shown}");
        if round == 1 {
            assert_eq!(timings["image"], "streamed", "{shown}");
            assert!(timings["bytes"].as_u64().unwrap_or(0) > 50 << 20, "{shown}");
        } else {
            // A repeated offload reuses the image, the old tree and the chunk cache: only
            // what changed since crosses.
            assert_eq!(timings["image"], "present");
            assert!(
                timings["bytes"].as_u64().unwrap_or(u64::MAX) < 1 << 20,
                "{shown}"
            );
        }

        // Work at the edge reaches the cloud copy within seconds.
        let line = format!("edited at the edge in round {round}");
        let out = alice.run(&[
            "shell",
            &id,
            "--",
            "sh",
            "-c",
            &format!("echo '{line}' > /workspace/notes.txt; rm small/b/1-1.txt 2>/dev/null; true"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let cloud_notes = cloud_ws.join("notes.txt");
        eventually(20, "the edit to reach the cloud", || {
            std::fs::read_to_string(&cloud_notes).is_ok_and(|t| t.trim() == line)
        });

        // Back to the cloud, which sees the edge's changes.
        let out = alice.run(&["move", &id, "--to", "cloud"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        let shown = alice.show(&id);
        assert_eq!(shown["location"], "cloud");
        assert_eq!(shown["state"], "running");
        assert_eq!(shown["generation"], (2 * round + 1) as u64);
        assert!(edge.running().is_empty(), "the edge copy stopped");
        assert_eq!(running_on(&cloud.engine).len(), 1);
        let out = alice.run(&["shell", &id, "--", "cat", "/workspace/notes.txt"]);
        assert_eq!(stdout(&out).trim(), line);
        assert!(
            !cloud_ws.join("small/b/1-1.txt").exists(),
            "deletions cross too"
        );
    }
}

#[test]
fn a_move_to_a_stopped_edge_engine_fails_and_the_cloud_copy_keeps_running() {
    let cloud = Cloud::start("f-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("f-edge", &alice);
    let id = alice.start_sleeper("work");
    let before = alice.show(&id)["runtime_id"].clone();
    // The edge machine's engine goes away; its agent stays connected.
    if let Some(pid) = rustix::process::Pid::from_raw(edge.engine.pid() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let out = alice.run(&["move", &id, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "cloud");
    assert_eq!(shown["state"], "running");
    assert_eq!(
        shown["runtime_id"], before,
        "the cloud copy was never stopped"
    );
    assert_eq!(shown["last_move"]["outcome"], "rolled_back");
    assert!(
        shown["last_move"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let out = alice.run(&["shell", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_forced_return_fences_the_unreachable_edge_and_keeps_its_late_edits() {
    let cloud = Cloud::start("x-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("x-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "echo original > /workspace/doc.txt",
    ]);
    alice.ok(&["move", &id, "--to", "edge"]);
    let edge_rid = alice.show(&id)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();

    // The laptop drops off the network: the container keeps running there.
    edge.kill_agent();
    eventually(30, "the container to show as unreachable", || {
        alice.show(&id)["state"] == "unreachable"
    });
    assert_eq!(edge.running(), vec![edge_rid.clone()]);
    let out = alice.run(&["move", &id, "--to", "cloud"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "without --force the agent is needed"
    );

    alice.ok(&["move", &id, "--to", "cloud", "--force"]);
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "cloud");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["generation"], 3);
    assert_eq!(
        std::fs::read_to_string(cloud.workspace(&id).join("doc.txt")).expect("doc"),
        "original\n"
    );

    // Meanwhile the user kept working on the laptop.
    edge.engine
        .docker_output([
            "exec",
            &edge_rid,
            "sh",
            "-c",
            "echo late edit > /workspace/doc.txt",
        ])
        .expect("edit at the edge");
    edge.start_agent();
    eventually(30, "the stale edge copy to stop", || {
        edge.running().is_empty()
    });
    let conflicts = cloud.workspace(&id).join(".offload-conflicts");
    let kept = offload_testkit::wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || {
            conflict_files(&conflicts)
                .iter()
                .any(|(name, text)| name.ends_with("doc.txt") && text == "late edit\n")
        },
    );
    assert!(
        kept.is_ok(),
        "the late edit is kept as a conflict; found {:?}\nagent log:\n{}\nserver log:\n{}",
        conflict_files(&conflicts),
        edge.log(),
        cloud.server_log()
    );
    assert_eq!(
        std::fs::read_to_string(cloud.workspace(&id).join("doc.txt")).expect("doc"),
        "original\n",
        "the late edit does not overwrite the cloud's copy"
    );
    assert_eq!(running_on(&cloud.engine).len(), 1, "exactly one copy runs");
}

fn conflict_files(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for set in entries.flatten() {
        if let Ok(files) = std::fs::read_dir(set.path()) {
            for f in files.flatten() {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                out.push((f.path().to_string_lossy().into_owned(), text));
            }
        }
    }
    out
}

#[test]
fn killing_the_agent_mid_push_leaves_no_partial_file_and_the_next_push_completes() {
    let cloud = Cloud::start("k-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("k-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&["move", &id, "--to", "edge"]);

    let before = tree(&cloud.workspace(&id));
    // A large file appears at the edge whole (written beside the workspace and renamed
    // in, so no half-written version exists to sync); the agent starts pushing it and
    // is killed.
    let data: Vec<u8> = (0..150u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = blake3::hash(&data);
    let workspace = edge.workspace(&id);
    let outside = workspace.with_extension("big.dat");
    std::fs::write(&outside, &data).expect("write at the edge");
    std::fs::rename(&outside, workspace.join("big.dat")).expect("move into the workspace");
    let staging = cloud.data_dir.join("staging").join(&id);
    eventually(30, "the push to start", || {
        std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some())
    });
    edge.kill_agent();

    let target = cloud.workspace(&id).join("big.dat");
    if let Ok(bytes) = std::fs::read(&target) {
        assert_eq!(
            blake3::hash(&bytes),
            expected,
            "no partial file under its real name"
        );
    }
    // Nothing half-written is visible under a user's name anywhere in the workspace
    // either: it holds what it held before, at most the whole file, and the apply's own
    // staging directory while an apply runs.
    let staging = |path: &String| path.starts_with(".offload-tmp-");
    let mut found = tree(&cloud.workspace(&id));
    found.remove("big.dat");
    found.retain(|path, _| !staging(path));
    assert_eq!(found, before, "no partial file in the workspace");

    edge.start_agent();
    eventually(60, "the next push to complete", || {
        std::fs::read(&target).is_ok_and(|b| blake3::hash(&b) == expected)
    });
    // and the staging goes once the applies are done.
    eventually(30, "no staging left in the workspace", || {
        !tree(&cloud.workspace(&id)).keys().any(staging)
    });
}

#[test]
fn killing_the_server_mid_move_leaves_exactly_one_copy_and_the_state_says_where() {
    let mut cloud = Cloud::start("s-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("s-edge", &alice);
    for (round, wait_for_step) in [(0, "preparing"), (1, "finalizing")] {
        let id = alice.start_sleeper(&format!("work{round}"));
        // Enough data that the pre-copy takes a moment.
        alice.ok(&[
            "shell",
            &id,
            "--",
            "sh",
            "-c",
            "dd if=/dev/urandom of=/workspace/blob bs=1M count=200 2>/dev/null",
        ]);
        if round == 0 {
            // The agent's first call to its engine hangs: the move stays preparing.
            freeze(&edge.engine, true);
        }
        alice.ok(&["move", &id, "--to", "edge", "--detach"]);
        if round == 1 {
            // Once the pre-copy runs, the cloud engine is frozen: the server's stop of the
            // cloud copy hangs. Then the edge engine is frozen and the cloud's thawed: the
            // move enters finalizing and the start at the edge hangs there.
            eventually(60, "the pre-copy to report progress", || {
                alice.show(&id)["moving"]["progress"].is_object()
            });
            freeze(&cloud.engine, true);
            let stopping = offload_testkit::wait_until(
                std::time::Duration::from_secs(60),
                std::time::Duration::from_millis(50),
                || alice.show(&id)["moving"]["step"] == "stopping_cloud",
            );
            freeze(&edge.engine, true);
            freeze(&cloud.engine, false);
            assert!(stopping.is_ok(), "the move reached stopping_cloud");
        }
        let reached = offload_testkit::wait_until(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(50),
            || alice.show(&id)["moving"]["step"] == wait_for_step,
        );
        cloud.kill_server();
        freeze(&edge.engine, false);
        assert!(reached.is_ok(), "the move reached {wait_for_step}");
        cloud.start_server();
        eventually(120, "the interrupted move to settle", || {
            alice.show(&id)["state"] != "moving"
        });
        let shown = alice.show(&id);
        let runtime_id = shown["runtime_id"].as_str().expect("rid").to_owned();
        let here = match shown["location"].as_str() {
            Some("cloud") => &cloud.engine,
            _ => &edge.engine,
        };
        assert_eq!(shown["state"], "running", "{shown}");
        // The edge may still be stopping a fenced copy for a moment.
        eventually(60, "exactly one copy to run, where the state says", || {
            copies(here, &id) == [runtime_id.clone()]
                && copies(&cloud.engine, &id).len() + copies(&edge.engine, &id).len() == 1
        });
    }
}

#[test]
fn the_edge_keeps_running_while_the_server_is_down_and_catches_up_when_it_returns() {
    let mut cloud = Cloud::start("d-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("d-edge", &alice);
    let id = alice.start_sleeper("work");
    alice.ok(&["move", &id, "--to", "edge"]);
    let edge_rid = alice.show(&id)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();

    cloud.kill_server();
    edge.engine
        .docker_output([
            "exec",
            &edge_rid,
            "sh",
            "-c",
            "echo 'written while the cloud was away' > /workspace/offline.txt",
        ])
        .expect("work goes on at the edge");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        edge.running(),
        vec![edge_rid.clone()],
        "the edge copy keeps running"
    );

    cloud.start_server();
    let target = cloud.workspace(&id).join("offline.txt");
    eventually(60, "the agent to catch up", || {
        std::fs::read_to_string(&target).is_ok_and(|t| t.contains("while the cloud was away"))
    });
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "edge");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["runtime_id"], edge_rid.as_str());
    assert!(
        running_on(&cloud.engine).is_empty(),
        "no second copy in the cloud"
    );
}

/// An image that runs as a non-root user writes its workspace in the cloud and, after a
/// move, at the edge: the edge's workspace is open to the container as the cloud's is,
/// while the agent's directories above it stay private.
#[test]
fn an_image_running_as_a_non_root_user_writes_its_workspace_at_the_edge() {
    use std::os::unix::fs::PermissionsExt;
    let cloud = Cloud::start("nr-cloud");
    let rootfs = offload_testkit::busybox_rootfs_tar().expect("busybox rootfs");
    cloud
        .engine
        .import_rootfs(
            "student:1",
            rootfs,
            &[
                r#"CMD ["/bin/sh"]"#,
                "ENV PATH=/bin",
                "USER 1000:1000",
                "WORKDIR /",
            ],
        )
        .expect("import");
    let alice = cloud.user("alice");
    let edge = Edge::start("nr-edge", &alice);
    let id = alice
        .ok(&["start", "--name", "nr", "student:1", "--", "sleep", "86400"])
        .trim()
        .to_owned();
    let write = |file: &str| {
        alice.run(&[
            "shell",
            &id,
            "--",
            "sh",
            "-c",
            &format!("id -u && echo work > /workspace/{file}"),
        ])
    };
    let out = write("cloud.txt");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1000");

    let out = alice.run(&["move", &id, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = write("edge.txt");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(edge.workspace(&id).join("edge.txt")).expect("written at the edge"),
        b"work\n"
    );
    let workspaces = edge.workspace(&id).parent().expect("parent").to_owned();
    let mode = std::fs::metadata(&workspaces)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the agent's directories stay private");
}
