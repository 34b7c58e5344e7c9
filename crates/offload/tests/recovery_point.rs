//! End to end: the recovery point of a container at the edge — how many seconds of its
//! work the cloud may not have. Zero while the agent reports every change synced; growing
//! once the laptop is gone, with a warning event past the operator's threshold; back to
//! zero, with an event, when the agent returns and catches up.

mod common;

use common::{Cloud, Edge, eventually};
use offload_testkit::Engine;
use serde_json::Value;

fn events(user: &common::User) -> Vec<Value> {
    user.ok(&["events", "--tail", "1000", "-o", "json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event per line"))
        .collect()
}

#[test]
fn the_recovery_point_grows_while_the_laptop_is_gone_warns_past_the_threshold_and_recovers() {
    let engine = Engine::start("rp-cloud").expect("engine");
    engine.import_busybox(common::IMAGE).expect("image");
    let cloud = Cloud::with_config(
        engine,
        "recovery_point_warn_secs = 3\n[monitor]\ninterval_secs = 0.5\n",
    );
    let alice = cloud.user("alice");
    let mut edge = Edge::start("rp-edge", &alice);
    let id = alice.start_sleeper("box");
    assert!(
        alice.show(&id).get("sync_lag_secs").is_none(),
        "a container in the cloud has no recovery point"
    );
    alice.ok(&["move", &id, "--to", "edge"]);
    eventually(20, "an up-to-date recovery point", || {
        alice.show(&id)["sync_lag_secs"] == 0
    });
    assert!(alice.ok(&["ls"]).contains("up to date"));

    // The laptop drops off: the cloud's copy falls behind, and says so past 3 s.
    edge.kill_agent();
    eventually(30, "a recovery point past the threshold", || {
        alice.show(&id)["sync_lag_secs"].as_u64().unwrap_or(0) >= 3
    });
    assert!(
        alice.ok(&["ls"]).contains("s behind"),
        "{}",
        alice.ok(&["ls"])
    );
    assert!(alice.ok(&["show", &id]).contains("recovery:"));
    eventually(20, "the warning event", || {
        events(&alice).iter().any(|e| {
            e["kind"] == "recovery_point_behind"
                && e["container_id"] == id.as_str()
                && e["threshold_secs"] == 3
        })
    });

    // It comes back and catches up.
    edge.start_agent();
    eventually(30, "the recovery point back to zero", || {
        alice.show(&id)["sync_lag_secs"] == 0
    });
    eventually(20, "the caught-up event", || {
        events(&alice)
            .iter()
            .any(|e| e["kind"] == "recovery_point_caught_up" && e["container_id"] == id.as_str())
    });
    let warnings = events(&alice)
        .iter()
        .filter(|e| e["kind"] == "recovery_point_behind")
        .count();
    assert_eq!(warnings, 1, "one warning per crossing");
    let bob = cloud.user("bob");
    assert!(
        events(&bob)
            .iter()
            .all(|e| e["kind"] != "recovery_point_behind"),
        "another user's stream never carries it"
    );
}
