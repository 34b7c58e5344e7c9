//! End to end: `offload events -f` with the real server, agent and engines. A watcher
//! whose server restarts in the middle of a move resumes after the last event it printed
//! and ends up with exactly the events the server kept, once each; another user's watcher
//! never sees them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{Cloud, Edge, User, eventually, offload_bin, stderr};
use serde_json::Value;

/// `offload events -f -o json` in the background, its events collected as they come.
struct Watcher {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    fn start(user: &User) -> Watcher {
        let mut child = Command::new(offload_bin())
            .arg("--config")
            .arg(&user.config)
            .args(["events", "--follow", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("offload events spawns");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not an event ({e}): {line}"));
                sink.lock().expect("lock").push(event);
            }
        });
        Watcher { child, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }

    fn has(&self, kind: &str) -> bool {
        self.seen().iter().any(|e| e["kind"] == kind)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server kept for `user`, from a fresh, non-following request.
fn kept(user: &User) -> Vec<Value> {
    let out = user.ok(&["events", "--tail", "10000", "-o", "json"]);
    out.lines()
        .map(|line| serde_json::from_str(line).expect("event json"))
        .collect()
}

/// The events about a user (their containers, queries, agent), without the cloud's own
/// (pressure), which every user sees and a loaded machine may start at any time.
fn own(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.get("user").is_some())
        .cloned()
        .collect()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect()
}

#[test]
fn a_watcher_resumes_across_a_server_restart_mid_move_and_sees_every_event_once() {
    let mut cloud = Cloud::start("ev-cloud");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let _edge = Edge::start("ev-edge", &alice);
    let alices = Watcher::start(&alice);
    let bobs = Watcher::start(&bob);
    eventually(30, "alice's agent_connected", || {
        alices.has("agent_connected")
    });

    let id = alice.start_sleeper("box");
    let bobs_box = bob.start_sleeper("other");
    alice.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "dd if=/dev/urandom of=/workspace/big bs=1M count=20 2>/dev/null",
    ]);
    eventually(30, "the container_created event", || {
        alices.has("container_created")
    });

    alice.ok(&["move", &id, "--to", "edge", "--detach"]);
    eventually(30, "the first move phase", || alices.has("move_phase"));
    cloud.kill_server();
    cloud.start_server();
    eventually(60, "the agent to reconnect", || {
        let seen = alices.seen();
        seen.iter()
            .filter(|e| e["kind"] == "agent_connected")
            .count()
            >= 2
    });
    eventually(120, "the move to settle", || {
        let shown = alice.show(&id);
        shown["state"] == "running"
    });
    // The restart may have rolled the move back (the cloud copy kept running) or let it
    // finish; either way the container ends at the edge, then comes back.
    if alice.show(&id)["location"] == "cloud" {
        let out = alice.run(&["move", &id, "--to", "edge"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let out = alice.run(&["move", &id, "--to", "cloud"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    eventually(30, "the move back to end", || {
        alices
            .seen()
            .iter()
            .any(|e| e["kind"] == "move_ended" && e["direction"] == "to_cloud")
    });

    // Everything the server kept for alice, in order, each once: nothing lost while the
    // server was down, nothing printed twice after the watcher resumed.
    eventually(30, "the watcher to catch up", || {
        ids(&alices.seen()) == ids(&kept(&alice))
    });
    let seen = alices.seen();
    let mut sorted = ids(&seen);
    sorted.dedup();
    assert_eq!(sorted, ids(&seen), "no event twice");
    assert!(
        ids(&seen).windows(2).all(|w| w[0] < w[1]),
        "in order: {:?}",
        ids(&seen)
    );
    let phases: Vec<&str> = seen
        .iter()
        .filter(|e| e["kind"] == "move_phase" && e["direction"] == "to_cloud")
        .map(|e| e["phase"].as_str().expect("phase"))
        .collect();
    assert_eq!(phases, ["stopping_edge", "starting_cloud"], "{seen:?}");
    let ended = seen
        .iter()
        .find(|e| e["kind"] == "move_ended" && e["direction"] == "to_cloud")
        .expect("move back ended");
    assert_eq!(ended["outcome"], "done", "{ended}");
    assert!(
        ended["timings"]["downtime_ms"].as_u64().is_some(),
        "{ended}"
    );
    assert!(own(&seen).iter().all(|e| e["user"] == "alice"), "{seen:?}");

    // Bob saw his own container and nothing of alice's.
    let bobs_seen = bobs.seen();
    assert!(
        bobs_seen
            .iter()
            .any(|e| e["kind"] == "container_created" && e["container_id"] == bobs_box),
        "{bobs_seen:?}"
    );
    assert!(
        bobs_seen
            .iter()
            .all(|e| e["user"] != "alice" && e["container_id"] != id.as_str()),
        "{bobs_seen:?}"
    );
}

#[test]
fn a_resume_point_in_another_users_stream_is_refused_like_an_unknown_one() {
    let cloud = Cloud::start("ev-bad");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    alice.start_sleeper("box");
    let theirs = ids(&own(&kept(&alice)))[0].to_string();
    for after in [theirs.as_str(), "987654"] {
        let out = bob.run(&["events", "--follow", "--after", after]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("event {after} is not in your stream")),
            "{}",
            stderr(&out)
        );
    }
    let out = bob.run(&["events", "--tail", "many"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(own(&kept(&bob)).is_empty(), "bob has no events yet");
}
