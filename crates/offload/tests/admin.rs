//! End to end, the operator's tools with the real binary and engine: the audit log of a
//! scripted session (each action and each refused attempt once, with the user who made
//! it); disabling and enabling a user; revoking tokens; quotas; every user's containers.

mod common;

use common::{Cloud, Edge, IMAGE, User, copies, eventually, stderr};
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
    // Asked by the operator, alice declines: who asked and who answered how.
    let edge = Edge::start("audit-edge", &alice);
    ops.ok(&["admin", "pressure", "--user", "alice"]);
    let queries: Vec<Value> =
        serde_json::from_str(&alice.ok(&["queries", "-o", "json"])).expect("queries json");
    let qid = queries[0]["id"].as_str().expect("a query").to_owned();
    alice.ok(&["decline", &qid]);
    drop(edge);
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
        ("alice", "agent", "ok"),
        ("ops", "admin_pressure", "ok"),
        ("alice", "decline", "ok"),
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
    let decline = audit(&ops, &["--user", "alice"])
        .into_iter()
        .find(|e| e["action"] == "decline")
        .expect("alice's answer");
    assert_eq!(decline["target"], qid.as_str(), "{decline}");
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

#[test]
fn a_disabled_user_is_shut_out_at_once_while_their_containers_run_and_enabling_lets_them_back() {
    let cloud = Cloud::start("adm-disable");
    let ops = cloud.admin("ops");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let edge = Edge::start("adm-disable-edge", &alice);
    let id = alice.start_sleeper("box");
    let out = ops.ok(&["admin", "user", "disable", "alice"]);
    assert!(out.contains("alice disabled"), "{out}");

    let out = alice.run(&["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("user alice is disabled by the operator"),
        "{}",
        stderr(&out)
    );
    eventually(30, "the agent to be cut off", || {
        edge.log().contains("disabled by the operator")
    });
    assert_eq!(
        copies(&cloud.engine, &id).len(),
        1,
        "the container keeps running"
    );
    let users: Vec<serde_json::Value> =
        serde_json::from_str(&ops.ok(&["admin", "users", "-o", "json"])).expect("json");
    let row = users.iter().find(|u| u["name"] == "alice").expect("alice");
    assert!(row["disabled_at"].is_i64(), "{row}");
    assert_eq!(row["containers"], 1);
    assert!(row.get("agent").is_none(), "{row}");

    // Only admins; an unknown user and yourself are clear errors.
    let out = bob.run(&["admin", "user", "enable", "alice"]);
    assert!(
        stderr(&out).contains("needs an admin token"),
        "{}",
        stderr(&out)
    );
    let out = ops.run(&["admin", "user", "disable", "nobody"]);
    assert!(stderr(&out).contains("user nobody"), "{}", stderr(&out));
    let out = ops.run(&["admin", "user", "disable", "ops"]);
    assert!(
        stderr(&out).contains("cannot disable yourself"),
        "{}",
        stderr(&out)
    );

    ops.ok(&["admin", "user", "enable", "alice"]);
    assert_eq!(alice.ls().len(), 1);
    eventually(60, "the agent to reconnect", || {
        let users: Vec<serde_json::Value> =
            serde_json::from_str(&ops.ok(&["admin", "users", "-o", "json"])).expect("json");
        users
            .iter()
            .any(|u| u["name"] == "alice" && u["agent"].is_string())
    });
}

#[test]
fn revoked_tokens_never_work_again_and_quotas_refuse_a_start_that_would_pass_them() {
    let engine = offload_testkit::Engine::start("adm-quota").expect("engine");
    engine.import_busybox(IMAGE).expect("image");
    let cloud = Cloud::with_config(
        engine,
        "max_cpus = 1.5\nmax_memory = \"1g\"\nmax_cpus_per_user = 1.5\nmax_memory_per_user = \"1g\"\n",
    );
    let ops = cloud.admin("ops");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");

    alice.ok(&[
        "start", "--name", "a", "--cpus", "1", "--memory", "256m", IMAGE, "--", "sleep", "1d",
    ]);
    let out = alice.run(&[
        "start", "--name", "b", "--cpus", "1", IMAGE, "--", "sleep", "1d",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("quota of 1.5"), "{}", stderr(&out));
    let out = alice.run(&[
        "start", "--name", "c", "--cpus", "0.5", "--memory", "900m", IMAGE,
    ]);
    assert!(
        stderr(&out).contains("quota of 1.00 GiB") || stderr(&out).contains("quota of 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(alice.ls().len(), 1, "nothing was created");
    alice.ok(&[
        "start", "--name", "d", "--cpus", "0.5", "--memory", "256m", IMAGE, "--", "sleep", "1d",
    ]);
    bob.start_sleeper("bobs");

    let all: Vec<serde_json::Value> =
        serde_json::from_str(&ops.ok(&["admin", "ls", "-o", "json"])).expect("json");
    let mut owners: Vec<&str> = all
        .iter()
        .map(|v| v["owner"].as_str().expect("owner"))
        .collect();
    owners.sort_unstable();
    assert_eq!(owners, ["alice", "alice", "bob"]);
    let out = alice.run(&["admin", "ls"]);
    assert!(
        stderr(&out).contains("needs an admin token"),
        "{}",
        stderr(&out)
    );

    let out = ops.ok(&["admin", "token", "revoke", "--user", "bob"]);
    assert!(out.contains("revoked 1 token(s) of bob"), "{out}");
    let out = bob.run(&["ls"]);
    assert!(
        stderr(&out).contains("token is not valid"),
        "{}",
        stderr(&out)
    );
    let out = ops.run(&["admin", "token", "revoke", "ofl-not-a-token"]);
    assert!(stderr(&out).contains("no such token"), "{}", stderr(&out));
    // Bob's container still runs; he joins again with a new token.
    let bob = cloud.user("bob");
    assert_eq!(bob.ls().len(), 1);
}

#[test]
fn draining_the_cloud_asks_every_owner_now_and_starts_nothing_new_until_it_ends() {
    let mut cloud = Cloud::start("drain-all");
    let ops = cloud.admin("ops");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let _edge = Edge::start("drain-all-edge", &alice);
    let a = alice.start_sleeper("a");
    let idle = alice.start_sleeper("idle");
    alice.ok(&["stop", &idle]);
    let b = bob.start_sleeper("b");
    let refused = |user: &User, args: &[&str], what: &str| {
        let out = user.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} must be refused");
        assert!(stderr(&out).contains(what), "{args:?}: {}", stderr(&out));
    };

    refused(&alice, &["admin", "drain"], "admin");
    let report: Value =
        serde_json::from_str(&ops.ok(&["admin", "drain", "-o", "json"])).expect("report json");
    let asked = report["asked"].as_array().expect("asked");
    assert_eq!(asked.len(), 1, "{report}");
    assert_eq!(asked[0]["container_id"], a.as_str());
    let why = |id: &str| {
        report["not_asked"]
            .as_array()
            .expect("not asked")
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["reason"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert!(why(&b).contains("bob's agent is not connected"), "{report}");
    assert!(why(&idle).contains("stopped"), "{report}");

    // Nothing new starts, nothing stopped starts again, nothing returns.
    let start = ["start", "--name", "new", IMAGE, "--", "sleep", "60"];
    refused(&bob, &start, "draining the cloud");
    refused(&alice, &["restart", &idle], "draining the cloud");
    let top: Value = serde_json::from_str(&ops.ok(&["top", "-o", "json"])).expect("top");
    assert!(top["draining_since"].as_i64().is_some(), "{top}");
    let qid = asked[0]["id"].as_str().expect("qid");
    alice.ok(&["accept", qid]);
    eventually(90, "a at the edge", || alice.show(&a)["location"] == "edge");
    refused(&alice, &["move", &a, "--to", "cloud"], "draining the cloud");
    assert_eq!(alice.show(&a)["location"], "edge");

    // The drain outlives a restart of the server.
    cloud.kill_server();
    cloud.start_server();
    refused(&bob, &start, "draining the cloud");

    ops.ok(&["admin", "drain", "--end"]);
    refused(&ops, &["admin", "drain", "--end"], "not draining");
    bob.ok(&start);
    alice.ok(&["restart", &idle]);
    let entries = audit(&ops, &["--user", "ops"]);
    let drains = entries
        .iter()
        .filter(|e| e["action"] == "admin_drain" || e["action"] == "admin_drain_end")
        .count();
    assert_eq!(drains, 3, "{entries:?}");
}
