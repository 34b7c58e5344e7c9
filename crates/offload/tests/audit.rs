//! End to end: the audit log of a scripted session with the real binary and engine: each
//! action and each refused attempt is there once, with the user who made it.

mod common;

use common::{Cloud, User, eventually, stderr};
use serde_json::Value;

fn audit(admin: &User, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["admin", "audit", "-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&admin.ok(&all)).expect("audit json")
}

fn row(e: &Value) -> (String, String, String) {
    (
        e["user"].as_str().unwrap_or("-").to_owned(),
        e["action"].as_str().unwrap_or("?").to_owned(),
        e["outcome"].as_str().unwrap_or("?").to_owned(),
    )
}

#[test]
fn a_scripted_session_leaves_each_action_and_denial_in_the_audit_log() {
    let cloud = Cloud::start("audit");
    let ops = cloud.admin("ops");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");

    let id = alice.start_sleeper("box");
    let out = alice.run(&["shell", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    alice.ok(&["stop", &id]);
    // Bob cannot tell alice's container from a missing one; the log can.
    let out = bob.run(&["rm", &id]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("no such container"),
        "{}",
        stderr(&out)
    );
    let out = bob.run(&["admin", "audit"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
    alice.ok(&["rm", &id]);

    let expected = [
        ("-", "token_create", "ok"),
        ("ops", "join", "ok"),
        ("alice", "join", "ok"),
        ("bob", "join", "ok"),
        ("alice", "start", "ok"),
        ("alice", "shell", "ok"),
        ("alice", "stop", "ok"),
        ("bob", "remove", "denied"),
        ("bob", "read", "denied"),
        ("alice", "remove", "ok"),
    ];
    eventually(10, "the last entry", || {
        audit(&ops, &[])
            .iter()
            .any(|e| row(e) == ("alice".into(), "remove".into(), "ok".into()))
    });
    let rows: Vec<_> = audit(&ops, &[]).iter().map(row).collect();
    for (user, action, outcome) in expected {
        let want = (user.to_owned(), action.to_owned(), outcome.to_owned());
        let times = rows.iter().filter(|r| **r == want).count();
        let once = if action == "token_create" { 3 } else { 1 };
        assert_eq!(times, once, "{want:?} in {rows:?}");
    }
    assert_eq!(rows.len(), expected.len() + 2, "{rows:?}");

    let bobs = audit(&ops, &["--user", "bob"]);
    assert!(bobs.iter().all(|e| e["user"] == "bob"), "{bobs:?}");
    let denial = bobs
        .iter()
        .find(|e| e["action"] == "remove")
        .expect("bob's attempt");
    assert_eq!(denial["target"], id.as_str());
    assert!(
        denial["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("another user's container (of alice)"),
        "{denial}"
    );
    assert!(audit(&ops, &["--since", "1h"]).len() >= expected.len());
    assert!(audit(&ops, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let out = ops.run(&["admin", "audit", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("neither a time"), "{}", stderr(&out));
}
