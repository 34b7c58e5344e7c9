//! End to end: edge copies the agent has no record of (it was killed as it started them)
//! are found by their labels and stopped, keeping their late edits as a conflict set.

mod common;

use common::{Cloud, Edge, IMAGE, eventually};

/// Finds `name` anywhere under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name() == name {
                return Some(path);
            }
        }
    }
    None
}

#[test]
fn edge_copies_without_a_record_are_stopped_when_the_agent_starts() {
    let cloud = Cloud::start("s-cloud");
    let alice = cloud.user("alice");
    let mut edge = Edge::start("s-edge", &alice);

    // One container that has been to the edge and back (generation 3, in the cloud) and
    // one that was removed.
    let back = alice.start_sleeper("back");
    alice.ok(&[
        "shell",
        &back,
        "--",
        "sh",
        "-c",
        "echo original > /workspace/doc.txt",
    ]);
    alice.ok(&["move", &back, "--to", "edge"]);
    alice.ok(&["move", &back, "--to", "cloud"]);
    assert_eq!(alice.show(&back)["generation"], 3);
    let gone = alice.start_sleeper("gone");
    alice.ok(&["rm", &gone]);

    // The agent is down; copies of both appear on its engine, labelled as the agent
    // labels its own, with no state file naming them.
    edge.kill_agent();
    let edge_ws = edge.workspace(&back);
    std::fs::write(edge_ws.join("late.txt"), "written by the stray copy\n").expect("late edit");
    for (id, mount) in [(&back, Some(&edge_ws)), (&gone, None)] {
        let mut args = vec![
            "run".to_owned(),
            "-d".to_owned(),
            "--network".to_owned(),
            "none".to_owned(),
            "--name".to_owned(),
            format!("offload-edge-{id}"),
            "--label".to_owned(),
            format!("offload.id={id}"),
            "--label".to_owned(),
            "offload.owner=alice".to_owned(),
            "--label".to_owned(),
            "offload.generation=2".to_owned(),
            "--label".to_owned(),
            "offload.edge=true".to_owned(),
        ];
        if let Some(ws) = mount {
            args.push("-v".to_owned());
            args.push(format!("{}:/workspace", ws.display()));
        }
        args.extend([IMAGE.to_owned(), "sleep".to_owned(), "86400".to_owned()]);
        edge.engine.docker_output(&args).expect("stray copy starts");
    }
    assert_eq!(edge.running().len(), 2);

    edge.start_agent();
    eventually(60, "the stray copies to be stopped and removed", || {
        edge.engine.container_ids().is_ok_and(|ids| ids.is_empty())
    });
    let conflicts = cloud.workspace(&back).join(".offload-conflicts");
    eventually(30, "the stray's late edit to be kept as a conflict", || {
        find_file(&conflicts, "late.txt").is_some()
    });
    let kept = find_file(&conflicts, "late.txt").expect("conflict file");
    assert_eq!(
        std::fs::read_to_string(kept).expect("read"),
        "written by the stray copy\n"
    );
    // The cloud copy is untouched: still running, its files as they were.
    let shown = alice.show(&back);
    assert_eq!(shown["location"], "cloud");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["generation"], 3);
    assert!(!cloud.workspace(&back).join("late.txt").exists());
    assert_eq!(
        std::fs::read_to_string(cloud.workspace(&back).join("doc.txt")).expect("doc"),
        "original\n"
    );
}
