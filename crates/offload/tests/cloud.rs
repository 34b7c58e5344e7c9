//! End to end: cloud containers through the real `offload` binary on a real Docker engine.

mod common;

use std::time::Duration;

use common::{Cloud, IMAGE, stderr, stdout};
use offload_testkit::wait_until;

#[test]
fn start_list_shell_stop_remove() {
    let cloud = Cloud::start("c-basic");
    let alice = cloud.user("alice");
    let id = alice.start_sleeper("box");

    let list = alice.ls();
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["name"], "box");
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["owner"], "alice");
    assert_eq!(c["location"], "cloud");
    assert_eq!(c["state"], "running");
    assert_eq!(c["generation"], 1);
    let runtime_id = c["runtime_id"].as_str().expect("runtime id").to_owned();
    let inspect = cloud.inspect(&runtime_id);
    assert_eq!(inspect["Config"]["Labels"]["offload.id"], id.as_str());
    assert_eq!(inspect["Config"]["Labels"]["offload.owner"], "alice");
    assert_eq!(inspect["Config"]["Labels"]["offload.generation"], "1");
    assert_eq!(inspect["State"]["Running"], true);

    // A command writes to the workspace, which is the server's directory.
    let out = alice.run(&["shell", &id, "--", "sh", "-c", "echo hi > /workspace/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let written =
        std::fs::read_to_string(cloud.workspace(&id).join("f")).expect("file in workspace");
    assert_eq!(written, "hi\n");

    // Exit codes and both output streams come through; names work as ids.
    assert_eq!(
        alice.run(&["shell", &id, "--", "false"]).status.code(),
        Some(1)
    );
    assert_eq!(
        alice
            .run(&["shell", "box", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    let out = alice.run(&[
        "shell",
        "box",
        "--",
        "sh",
        "-c",
        "cat /workspace/f; echo oops >&2",
    ]);
    assert_eq!(stdout(&out), "hi\n");
    assert_eq!(stderr(&out), "oops\n");
    let out = alice.run(&["shell", "box", "--", "pwd"]);
    assert_eq!(stdout(&out), "/workspace\n");
    // Larger output streams whole.
    let out = alice.run(&["shell", "box", "--", "sh", "-c", "seq 1 20000"]);
    assert_eq!(stdout(&out).lines().count(), 20000);
    assert_eq!(stdout(&out).lines().last(), Some("20000"));

    // Stop keeps the workspace; restart brings the same container back.
    alice.ok(&["stop", &id]);
    assert_eq!(alice.show(&id)["state"], "stopped");
    assert_eq!(cloud.inspect(&runtime_id)["State"]["Running"], false);
    let out = alice.run(&["shell", &id, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    alice.ok(&["restart", &id]);
    assert_eq!(alice.show(&id)["state"], "running");
    let out = alice.run(&["shell", &id, "--", "cat", "/workspace/f"]);
    assert_eq!(stdout(&out), "hi\n");

    alice.ok(&["rm", "box"]);
    assert!(alice.ls().is_empty());
    assert!(cloud.engine.container_ids().expect("ids").is_empty());
    assert!(!cloud.workspace(&id).exists());
}

#[test]
fn host_config_allows_only_the_workspace_and_the_limits() {
    let cloud = Cloud::start("c-hostcfg");
    let alice = cloud.user("alice");
    let id = alice
        .ok(&[
            "start", "--cpus", "0.5", "--memory", "96m", IMAGE, "--", "sleep", "86400",
        ])
        .trim()
        .to_owned();
    let runtime_id = alice.show(&id)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    let inspect = cloud.inspect(&runtime_id);
    let host = &inspect["HostConfig"];
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["Memory"], 96 * 1024 * 1024);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["Init"], true);
    assert!(host["PidMode"].as_str().unwrap_or("").is_empty());
    assert!(host["IpcMode"].as_str().unwrap_or("") != "host");
    assert!(host["CapAdd"].is_null() || host["CapAdd"].as_array().is_some_and(|a| a.is_empty()));
    assert!(host["Binds"].is_null() || host["Binds"].as_array().is_some_and(|a| a.is_empty()));
    let mounts = inspect["Mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 1, "only the workspace is mounted: {mounts:?}");
    assert_eq!(mounts[0]["Destination"], "/workspace");
    assert_eq!(
        mounts[0]["Source"],
        cloud.workspace(&id).to_string_lossy().as_ref()
    );
}

/// A container cannot make device nodes in its workspace (the host reads it): `mknod`
/// fails for lack of CAP_MKNOD, nothing appears on the host, and ordinary writes work.
#[test]
fn containers_cannot_make_device_nodes_in_the_workspace() {
    let cloud = Cloud::start("c-mknod");
    let alice = cloud.user("alice");
    let id = alice.start_sleeper("box");
    let out = alice.run(&["shell", &id, "--", "mknod", "/workspace/dev", "c", "1", "3"]);
    assert_ne!(out.status.code(), Some(0), "mknod succeeded");
    assert!(
        cloud.workspace(&id).join("dev").symlink_metadata().is_err(),
        "a device node reached the host's workspace"
    );
    let out = alice.run(&["shell", &id, "--", "sh", "-c", "echo ok > /workspace/ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(cloud.workspace(&id).join("ok")).expect("file"),
        "ok\n"
    );
    let runtime_id = alice.show(&id)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    let cap_drop = &cloud.inspect(&runtime_id)["HostConfig"]["CapDrop"];
    assert!(
        cap_drop
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == "MKNOD" || c == "CAP_MKNOD")),
        "{cap_drop}"
    );
}

#[test]
fn users_see_only_their_own_containers() {
    let cloud = Cloud::start("c-users");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let id = alice.start_sleeper("mine");

    assert!(bob.ls().is_empty());
    for args in [
        vec!["show", id.as_str()],
        vec!["show", "mine"],
        vec!["shell", id.as_str(), "--", "true"],
        vec!["stop", id.as_str()],
        vec!["rm", id.as_str()],
    ] {
        let out = bob.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("no such container"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
    // Unknown ids read exactly the same.
    let unknown = stderr(&bob.run(&["show", "0123456789ab"]));
    let foreign = stderr(&bob.run(&["show", &id]));
    assert_eq!(
        unknown.replace("0123456789ab", "X"),
        foreign.replace(&id, "X")
    );
    // Alice's container is untouched.
    assert_eq!(alice.show(&id)["state"], "running");
}

#[test]
fn join_refuses_a_server_with_another_ca_and_tokens_are_single_use() {
    let cloud = Cloud::start("c-join");
    let other = Cloud::on_engine(offload_testkit::Engine::start("c-join2").expect("engine"));
    let token = cloud.token("carol", false);
    let carol = common::User::at(&cloud.dir.path().join("carol.toml"));

    let out = carol.run(&["join", &other.url, &token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("fingerprint"), "{}", stderr(&out));
    assert!(!carol.config.exists(), "nothing stored on a refused join");

    // The secret was not sent to the impostor, so it still works on the right server.
    carol.ok(&["join", &cloud.url, &token]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&carol.config)
            .expect("config")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(carol.ls().is_empty());

    // A used token is refused.
    let dave = common::User::at(&cloud.dir.path().join("dave.toml"));
    let out = dave.run(&["join", &cloud.url, &token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dave.config.exists());
    // A malformed token is refused before any connection.
    let out = dave.run(&["join", &cloud.url, "not-a-token"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("malformed join token"));
}

#[test]
fn server_kill_and_restart_adopts_running_containers() {
    let mut cloud = Cloud::start("c-restart");
    let alice = cloud.user("alice");
    let a = alice.start_sleeper("a");
    let b = alice.start_sleeper("b");
    let before: Vec<_> = alice
        .ls()
        .iter()
        .map(|c| c["runtime_id"].as_str().expect("rid").to_owned())
        .collect();

    cloud.kill_server();
    cloud.start_server();

    let after = alice.ls();
    assert_eq!(after.len(), 2);
    for c in &after {
        assert_eq!(c["state"], "running", "{c}");
        assert!(before.contains(&c["runtime_id"].as_str().expect("rid").to_owned()));
    }
    let mut engine = cloud.engine.container_ids().expect("ids");
    engine.sort();
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(engine.len(), 2, "no third container");
    for id in [&a, &b] {
        let out = alice.run(&["shell", id, "--", "true"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }

    // A container removed behind the server's back is reported, not recreated silently.
    let b_rid = alice.show(&b)["runtime_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    cloud.kill_server();
    cloud
        .engine
        .docker_output(["rm", "-f", &b_rid])
        .expect("rm");
    cloud.start_server();
    let shown = alice.show(&b);
    assert_eq!(shown["state"], "missing");
    assert!(shown["reason"].as_str().unwrap_or("").contains("not found"));
    assert_eq!(cloud.engine.container_ids().expect("ids").len(), 1);
    // Its owner can bring it back on the same workspace.
    alice.ok(&["restart", &b]);
    assert_eq!(alice.show(&b)["state"], "running");
}

#[test]
fn cli_errors_are_one_sentence_with_stable_exit_codes() {
    let cloud = Cloud::start("c-cli");
    let alice = cloud.user("alice");
    let out = alice.run(&["start", "Bad Image"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid image reference"));
    let out = alice.run(&["start", "offload-test/absent:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not on the cloud engine"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["start", "--memory", "lots", IMAGE]);
    assert_eq!(out.status.code(), Some(1));
    let out = alice.run(&["start", "--name", "x", "--cpus", "64", IMAGE]);
    assert_eq!(out.status.code(), Some(1));
    assert!(alice.ls().is_empty(), "failed starts leave nothing");
    let out = alice.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let nobody = common::User::at(&cloud.dir.path().join("missing.toml"));
    let out = nobody.run(&["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("offload join"));
    // Duplicate names are refused.
    alice.start_sleeper("dup");
    let out = alice.run(&["start", "--name", "dup", IMAGE]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already have"));
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        alice.ls().len() == 1
    })
    .expect("one container");
}

#[test]
fn an_interactive_shell_gets_a_terminal() {
    let cloud = Cloud::start("c-tty");
    let alice = cloud.user("alice");
    let id = alice.start_sleeper("box");
    // `script` gives the client a pseudo-terminal, as a user's terminal would.
    let command = format!(
        "{} --config {} shell {id}",
        common::offload_bin(),
        alice.config.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script runs");
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"tty; echo cols=$(stty size); exit 3\n")
            .expect("type into the shell");
    }
    let out = child.wait_with_output().expect("shell ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/"),
        "the command runs on a terminal: {text}"
    );
    assert_eq!(out.status.code(), Some(3), "the shell's exit code: {text}");
}
