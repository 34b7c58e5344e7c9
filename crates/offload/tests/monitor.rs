//! End to end: real CPU load on the cloud engine makes the monitor ask, the owner's agent
//! answers, the container moves, the pressure ends, and it comes back.

mod common;

use common::{Cloud, Edge, IMAGE, eventually, stderr, stdout};
use offload_testkit::Engine;
use serde_json::Value;

/// Pool mode: only the cloud's containers count, against 0.8 CPU, so the edge engine
/// sharing this machine's CPUs cannot hide the relief a move brings. Two busy containers
/// of 0.4 CPU fill it even on a loaded machine; one alone stays below the low watermark.
const POOL: &str = r#"
[monitor]
source = "pool"
pool_cpus = 0.8
pool_mem_bytes = 8589934592
interval_secs = 0.5
cpu_high = 0.7
cpu_low = 0.55
sustain_secs = 2
horizon_secs = 0
query_deadline_secs = 6
ask_cooldown_secs = 3
decline_cooldown_secs = 600
return_after_secs = 3
"#;

fn busy(user: &common::User, name: &str) -> String {
    user.ok(&[
        "start",
        "--name",
        name,
        "--cpus",
        "0.4",
        IMAGE,
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ])
    .trim()
    .to_owned()
}

fn top(user: &common::User) -> Value {
    serde_json::from_str(&user.ok(&["top", "-o", "json"])).expect("top json")
}

fn queries(user: &common::User) -> Vec<Value> {
    serde_json::from_str(&user.ok(&["queries", "-o", "json"])).expect("queries json")
}

#[test]
fn cpu_pressure_asks_the_owner_moves_on_accept_and_returns_when_calm() {
    let cloud = Cloud::with_config(Engine::start("p-cloud").expect("engine"), POOL);
    cloud.engine.import_busybox(IMAGE).expect("image");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let edge = Edge::start_with("p-edge", &alice, &["--auto-accept", "--auto-return"]);
    let mine = busy(&alice, "mine");
    let theirs = busy(&bob, "theirs");

    // Two busy containers fill the pool: pressure, a query to
    // the only owner with an agent, accepted automatically, and the move.
    eventually(90, "alice's container to move to the edge", || {
        alice.show(&mine)["location"] == "edge" && alice.show(&mine)["state"] == "running"
    });
    let asked = queries(&alice);
    assert_eq!(asked.len(), 1, "asked exactly once: {asked:?}");
    assert_eq!(asked[0]["state"], "accepted");
    let reason = asked[0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("cpu"), "the query says why: {reason}");
    assert!(
        edge.log().contains("the cloud asks to move"),
        "{}",
        edge.log()
    );
    assert!(
        edge.log().contains("under pressure"),
        "the pressure warning reached the agent"
    );
    assert!(queries(&bob).is_empty(), "bob has no agent: never asked");
    let bobs_view = top(&bob);
    let listed: Vec<&Value> = bobs_view["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .collect();
    assert!(
        listed.iter().all(|c| c["owner"] == "bob"),
        "top shows a user only their own containers: {bobs_view}"
    );
    assert_eq!(bob.show(&theirs)["location"], "cloud");

    // The move relieved the cloud: the pool is half full, below the low watermark.
    eventually(30, "the pressure to end", || {
        !top(&alice)["under_pressure"].as_bool().unwrap_or(true)
    });
    assert_eq!(
        alice.show(&mine)["location"],
        "edge",
        "no return while it would not fit"
    );

    // Bob's work ends; the cloud is calm and has room: alice's container comes back.
    bob.ok(&["rm", &theirs]);
    eventually(60, "the return to the cloud", || {
        let shown = alice.show(&mine);
        shown["location"] == "cloud" && shown["state"] == "running"
    });
    assert!(edge.log().contains("room again"), "{}", edge.log());
}

#[test]
fn answers_declines_expiry_and_bad_answers() {
    let cloud = Cloud::with_config(Engine::start("q-cloud").expect("engine"), POOL);
    cloud.engine.import_busybox(IMAGE).expect("image");
    let root = cloud.admin("root");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let _edge = Edge::start("q-edge", &alice);
    let a = alice.start_sleeper("a");

    // Only admins may ask by hand.
    let out = alice.run(&["admin", "pressure"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));

    // Asked, then declined: it stays in the cloud, and is not asked again by the policy.
    root.ok(&["admin", "pressure", "--user", "alice"]);
    let q = &queries(&alice)[0];
    let qid = q["id"].as_str().expect("qid").to_owned();
    assert_eq!(q["state"], "pending");
    let out = bob.run(&["accept", &qid]);
    assert_eq!(out.status.code(), Some(1), "someone else's query");
    assert!(stderr(&out).contains("no such"), "{}", stderr(&out));
    let out = alice.run(&["accept", "qnonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&alice.run(&["decline", &qid])).contains("declined"));
    let out = alice.run(&["decline", &qid]);
    assert_eq!(out.status.code(), Some(1), "a duplicate answer is refused");
    assert!(
        stderr(&out).contains("already declined"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["accept", &qid]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(alice.show(&a)["location"], "cloud");

    // Real pressure now: the declined container is remembered and not asked again.
    let hogs: Vec<String> = (0..4).map(|i| busy(&bob, &format!("hog{i}"))).collect();
    let seen = offload_testkit::wait_until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(200),
        || top(&root)["under_pressure"].as_bool().unwrap_or(false),
    );
    assert!(
        seen.is_ok(),
        "pressure: {}\n{}",
        top(&root),
        cloud.server_log()
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        queries(&alice).len(),
        1,
        "a declined container is not asked again"
    );
    for hog in &hogs {
        bob.ok(&["rm", hog]);
    }

    // An unanswered query expires to the default (decline), and a late answer is refused.
    let b = alice.start_sleeper("b");
    root.ok(&["admin", "pressure", "--user", "alice"]);
    let pending: Vec<Value> = queries(&alice)
        .into_iter()
        .filter(|q| q["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "only b is asked: {pending:?}");
    let late = pending[0]["id"].as_str().expect("qid").to_owned();
    eventually(30, "the query to expire", || {
        queries(&alice)
            .iter()
            .any(|q| q["id"] == late.as_str() && q["state"] == "expired")
    });
    let out = alice.run(&["accept", &late]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert_eq!(alice.show(&b)["location"], "cloud");
}

#[test]
fn inverted_watermarks_stop_the_server_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[monitor]\ncpu_high = 0.5\ncpu_low = 0.7\n").expect("write");
    let out = std::process::Command::new(common::offload_bin())
        .arg("--config")
        .arg(&config)
        .args(["server", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("monitor.cpu_"), "{}", stderr(&out));
    std::fs::write(&config, "[monitor]\nmem_high = 1.5\n").expect("write");
    let out = std::process::Command::new(common::offload_bin())
        .arg("--config")
        .arg(&config)
        .args(["server", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("monitor.mem_high"),
        "{}",
        stderr(&out)
    );
}
