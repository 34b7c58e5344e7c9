//! End-to-end on a real three-node Docker Swarm (engines in network namespaces on one
//! machine; needs root): the real `offload server` with `engine = "swarm"`, its workspaces
//! on a root every node sees at the same path (here, the host's filesystem).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{IMAGE, User, eventually, offload_bin, stderr, stdout};
use offload_testkit::Swarm;

/// An offload server on a swarm.
struct SwarmCloud {
    server: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl SwarmCloud {
    /// The server's configuration; `extra` is added to the `[swarm]` section.
    fn config(swarm: &Swarm, dir: &Path, extra: &str) -> String {
        let mut config = format!(
            "engine = \"swarm\"\nnetwork = \"default\"\nstop_grace_secs = 1\n\
             workspace_root = \"{}\"\n[swarm]\nmanager = \"{}\"\n{extra}",
            dir.join("shared/workspaces").display(),
            swarm.manager().host()
        );
        for node in swarm.nodes() {
            config.push_str(&format!(
                "[[swarm.nodes]]\nname = \"{}\"\ndocker_host = \"{}\"\n",
                node.name(),
                node.host()
            ));
        }
        config
    }

    fn server(dir: &Path, config: &str) -> Command {
        std::fs::write(dir.join("server.toml"), config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut cmd = Command::new(offload_bin());
        cmd.arg("--config")
            .arg(dir.join("server.toml"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("server"))
            .env("OFFLOAD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        cmd
    }

    fn start(swarm: &Swarm) -> SwarmCloud {
        SwarmCloud::start_with(swarm, |config| config)
    }

    /// A server whose configuration is [`SwarmCloud::config`] changed by `edit`.
    fn start_with(swarm: &Swarm, edit: impl FnOnce(String) -> String) -> SwarmCloud {
        let dir = tempfile::tempdir().unwrap();
        let config = edit(SwarmCloud::config(swarm, dir.path(), ""));
        let mut server = SwarmCloud::server(dir.path(), &config).spawn().unwrap();
        let stdout = server.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("offload server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = server.kill();
                panic!(
                    "server did not start; log:\n{}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            }
        };
        SwarmCloud { server, url, dir }
    }

    fn user(&self, name: &str) -> User {
        self.joined(name, false)
    }

    fn joined(&self, name: &str, admin: bool) -> User {
        let out = Command::new(offload_bin())
            .args(["admin", "token", "create", "--user", name, "--data-dir"])
            .arg(self.dir.path().join("server"))
            .args(if admin { &["--admin"][..] } else { &[][..] })
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned();
        let user = User::at(&self.dir.path().join(format!("{name}.toml")));
        user.ok(&["join", &self.url, &token]);
        user
    }

    fn workspace(&self, id: &str) -> PathBuf {
        self.dir.path().join("shared/workspaces").join(id)
    }

    /// [`eventually`], and on a timeout the end of the server's log and what `top` says.
    fn eventually(&self, user: &User, secs: u64, what: &str, f: impl FnMut() -> bool) {
        let waited =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eventually(secs, what, f)));
        if let Err(panic) = waited {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("server log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("top:\n{}", stdout(&user.run(&["top"])));
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for SwarmCloud {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.server.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.server.wait();
    }
}

/// Task containers on each node's own engine that carry offload's id `id`.
fn containers_of(swarm: &Swarm, id: &str, running_only: bool) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for node in swarm.nodes() {
        let mut args = vec!["ps", "--quiet", "--filter"];
        let filter = format!("label=offload.id={id}");
        args.push(&filter);
        if !running_only {
            args.push("--all");
        }
        let out = node.engine().docker_output(&args).unwrap_or_default();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            found.push((node.node_id().to_owned(), line.trim().to_owned()));
        }
    }
    found
}

/// The swarm's node IDs, in the testkit's order.
fn node_ids(swarm: &Swarm) -> Vec<String> {
    swarm
        .nodes()
        .iter()
        .map(|n| n.node_id().to_owned())
        .collect()
}

fn services(swarm: &Swarm) -> Vec<String> {
    swarm
        .docker_output(["service", "ls", "--quiet", "--filter", "label=offload.id"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn containers_run_as_services_on_the_node_with_most_room() {
    let swarm = Swarm::start("e2e", 3, IMAGE).expect("the swarm starts");

    // A manager that does not answer: the server refuses to start, and says why.
    let dir = tempfile::tempdir().unwrap();
    let bad = SwarmCloud::config(&swarm, dir.path(), "").replace(
        swarm.manager().host(),
        &format!("unix://{}/absent.sock", dir.path().display()),
    );
    let out = SwarmCloud::server(dir.path(), &bad)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("swarm") && said.contains("absent.sock"),
        "{said}"
    );

    let cloud = SwarmCloud::start(&swarm);
    let alice = cloud.user("alice");
    let node_ids = node_ids(&swarm);

    // `offload start` runs a service on one node, with its workspace from the shared root.
    let a = alice.start_sleeper("a");
    let shown = alice.show(&a);
    assert_eq!(shown["state"], "running", "{shown}");
    let node_a = shown["node"].as_str().expect("a node field").to_owned();
    assert!(
        node_ids.contains(&node_a),
        "{node_a} is one of {node_ids:?}"
    );
    assert_eq!(services(&swarm).len(), 1);
    let running = containers_of(&swarm, &a, true);
    assert_eq!(running.len(), 1, "one copy: {running:?}");
    assert_eq!(running[0].0, node_a, "it runs on the node the record names");

    sh(&alice, &a, "echo hi > /workspace/f");
    assert_eq!(
        std::fs::read_to_string(cloud.workspace(&a).join("f")).unwrap(),
        "hi\n",
        "the server reads the workspace the node wrote"
    );

    // A second container goes where there is more room: not onto the first one's node.
    let b = alice.start_sleeper("b");
    let node_b = alice.show(&b)["node"].as_str().unwrap().to_owned();
    assert_ne!(node_b, node_a);
    let table = alice.ok(&["ls"]);
    assert!(table.lines().next().unwrap().contains("NODE"), "{table}");
    assert!(
        table.contains(&node_a) && table.contains(&node_b),
        "{table}"
    );

    // stop and restart: the same node, the same workspace.
    alice.ok(&["stop", &a]);
    assert_eq!(alice.show(&a)["state"], "stopped");
    eventually(60, "the stopped copy to go", || {
        containers_of(&swarm, &a, true).is_empty()
    });
    alice.ok(&["restart", &a]);
    assert_eq!(alice.show(&a)["node"], node_a.as_str());
    let running = containers_of(&swarm, &a, true);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].0, node_a);
    assert_eq!(
        alice.ok(&["shell", &a, "--", "cat", "/workspace/f"]),
        "hi\n"
    );

    // rm takes the service and its workspace.
    alice.ok(&["rm", &a]);
    assert!(cloud.workspace(&a).symlink_metadata().is_err());
    assert_eq!(services(&swarm).len(), 1, "only b's service is left");
    eventually(60, "a's task containers to go", || {
        containers_of(&swarm, &a, false).is_empty()
    });

    // No node can take a container: a clear error, and nothing left behind.
    for id in &node_ids {
        swarm
            .docker_output(["node", "update", "--availability", "drain", id])
            .unwrap();
    }
    let out = alice.run(&["start", "--name", "c", IMAGE, "--", "sleep", "100"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("no node of the swarm can take"), "{said}");
    assert!(alice.ls().iter().all(|c| c["name"] != "c"));
    assert_eq!(services(&swarm).len(), 1);

    alice.ok(&["rm", &b]);
    assert!(services(&swarm).is_empty());
    drop(cloud);
    drop(swarm);
}

/// Starts a container of `user` that holds `mib` MiB of memory (a file in its `/dev/shm`,
/// which the engine counts as the container's memory) and sleeps.
fn start_filled(user: &User, name: &str, mib: u32) -> String {
    let fill = format!("head -c {mib}m /dev/zero > /dev/shm/fill && exec sleep 86400");
    user.ok(&[
        "start", "--name", name, "--memory", "64m", IMAGE, "--", "sh", "-c", &fill,
    ])
    .trim()
    .to_owned()
}

/// Runs a shell script in the container through `offload shell`; it must succeed.
fn sh(user: &User, id: &str, script: &str) {
    let out = user.run(&["shell", id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn set_availability(swarm: &Swarm, node_id: &str, availability: &str) {
    swarm
        .docker_output(["node", "update", "--availability", availability, node_id])
        .unwrap();
}

/// Relief inside the cloud and drains, on nodes the operator sized at 40 MiB of memory
/// each: Alice's container (28 MiB) and two of Bob's (5 MiB each) put node A over its
/// high watermark while the others are idle. The monitor moves Alice's container, the one
/// whose move alone relieves A, to an idle node without a query to anybody, on the same
/// files at the next generation; then `offload admin drain --node` and an operator's
/// `docker node update --availability drain` each move it on with its files.
#[test]
fn a_busy_node_is_relieved_inside_the_cloud_and_drains_move_containers_with_their_files() {
    let swarm = Swarm::start("relief", 3, IMAGE).expect("the swarm starts");
    let cloud = SwarmCloud::start_with(&swarm, |config| {
        let config = config.replace("\ndocker_host = ", "\nmemory = \"40m\"\ndocker_host = ");
        format!("{config}[monitor]\ninterval_secs = 1\nsustain_secs = 2\nhorizon_secs = 0\n")
    });
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let admin = cloud.joined("root", true);
    let ids = node_ids(&swarm);
    let node_a = ids[0].clone();

    // Everything lands on A: the other nodes take nothing while the containers start.
    for id in &ids[1..] {
        set_availability(&swarm, id, "pause");
    }
    let b1 = start_filled(&bob, "b1", 5);
    let b2 = start_filled(&bob, "b2", 5);
    let a = start_filled(&alice, "a", 28);
    for id in &ids[1..] {
        set_availability(&swarm, id, "active");
    }
    for (user, id) in [(&bob, &b1), (&bob, &b2), (&alice, &a)] {
        assert_eq!(user.show(id)["node"], node_a.as_str());
    }
    sh(
        &alice,
        &a,
        "echo kept > /workspace/notes && mkdir -p /workspace/src && \
         head -c 300000 /dev/urandom > /workspace/src/data",
    );
    let files = common::tree(&cloud.workspace(&a));
    assert_eq!(files.len(), 3, "{files:?}");

    // The monitor sees A over its high watermark and B and C idle: Alice's container moves.
    eventually(90, "a's move to an idle node", || {
        let shown = alice.show(&a);
        shown["node"] != node_a.as_str() && shown["state"] == "running"
    });
    let shown = alice.show(&a);
    let node_1 = shown["node"].as_str().unwrap().to_owned();
    assert_eq!(shown["generation"], 2, "{shown}");
    assert_eq!(shown["last_move"]["direction"], "to_node", "{shown}");
    assert_eq!(shown["last_move"]["outcome"], "done", "{shown}");
    let listed = alice.ls();
    let entry = listed.iter().find(|c| c["id"] == a.as_str()).unwrap();
    assert_eq!(entry["node"], node_1.as_str(), "ls names the new node");
    let running = containers_of(&swarm, &a, true);
    assert_eq!(running.len(), 1, "one copy: {running:?}");
    assert_eq!(running[0].0, node_1);
    // Bob's containers stayed, and nobody was asked anything.
    for id in [&b1, &b2] {
        let shown = bob.show(id);
        assert_eq!(shown["node"], node_a.as_str());
        assert_eq!(shown["generation"], 1);
    }
    for user in [&alice, &bob] {
        let queries: Vec<serde_json::Value> =
            serde_json::from_str(&user.ok(&["queries", "-o", "json"])).unwrap();
        assert!(queries.is_empty(), "{queries:?}");
    }
    // The same files, seen by the new copy.
    assert_eq!(common::tree(&cloud.workspace(&a)), files);
    assert_eq!(
        alice.ok(&["shell", &a, "--", "cat", "/workspace/notes"]),
        "kept\n"
    );
    let top = alice.ok(&["top"]);
    assert!(top.contains("NODE") && top.contains("relief-0"), "{top}");

    // Bob's containers go; then offload drains the node Alice's container is on.
    bob.ok(&["rm", &b1]);
    bob.ok(&["rm", &b2]);
    let name_1 = swarm.node_by_id(&node_1).unwrap().name().to_owned();
    let out = alice.run(&["admin", "drain", "--node", &name_1]);
    assert!(!out.status.success(), "a user is no admin");
    let report: serde_json::Value =
        serde_json::from_str(&admin.ok(&["admin", "drain", "--node", &name_1, "-o", "json"]))
            .unwrap();
    assert_eq!(report["node"], node_1.as_str(), "{report}");
    assert_eq!(report["moving"], serde_json::json!([a]), "{report}");
    eventually(90, "a's move off the drained node", || {
        let shown = alice.show(&a);
        shown["node"] != node_1.as_str() && shown["state"] == "running"
    });
    let node_2 = alice.show(&a)["node"].as_str().unwrap().to_owned();
    assert_eq!(alice.show(&a)["generation"], 3);
    let drained = swarm
        .docker_output([
            "node",
            "inspect",
            "--format",
            "{{.Spec.Availability}}",
            &node_1,
        ])
        .unwrap();
    assert_eq!(drained.trim(), "drain");
    assert_eq!(common::tree(&cloud.workspace(&a)), files);

    // The operator drains that one with Docker's own command: offload moves it on.
    set_availability(&swarm, &node_2, "drain");
    eventually(90, "a's move off the node the operator drained", || {
        let shown = alice.show(&a);
        shown["node"] != node_2.as_str() && shown["state"] == "running" && shown["generation"] == 4
    });
    let node_3 = alice.show(&a)["node"].as_str().unwrap().to_owned();
    assert!(node_3 != node_1 && node_3 != node_2);
    let running = containers_of(&swarm, &a, true);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].0, node_3);
    assert_eq!(common::tree(&cloud.workspace(&a)), files);
    assert_eq!(
        alice.ok(&["shell", &a, "--", "cat", "/workspace/notes"]),
        "kept\n"
    );

    alice.ok(&["rm", &a]);
    drop(cloud);
    drop(swarm);
}

/// Running task containers of offload's container `id`, as each node's own engine reports
/// them: (node ID, generation label). The node named `skip` (frozen) is not asked.
fn running_copies(swarm: &Swarm, id: &str, skip: Option<&str>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for node in swarm.nodes() {
        if Some(node.name()) == skip {
            continue;
        }
        let filter = format!("label=offload.id={id}");
        let args = [
            "ps",
            "--filter",
            &filter,
            "--format",
            "{{.Label \"offload.generation\"}}",
        ];
        // A node's engine busy with its own swarm work can fail one call; a second one
        // says what the node runs.
        let out = node
            .engine()
            .docker_output(args)
            .or_else(|first| {
                eprintln!("listing on node {} failed once: {first:#}", node.name());
                std::thread::sleep(std::time::Duration::from_secs(1));
                node.engine().docker_output(args)
            })
            .unwrap_or_else(|e| panic!("cannot list node {}: {e:#}", node.name()));
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            found.push((node.node_id().to_owned(), line.trim().to_owned()));
        }
    }
    found
}

/// Lines of the file at `path` written by the copy whose hostname is `host`.
fn lines_by(path: &Path, host: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(host))
        .count()
}

/// Appends "<hostname> <time>" to /workspace/ticks five times a second: each copy of the
/// container signs what it writes.
const TICKER: &str =
    "while true; do echo \"$(cat /etc/hostname) $(date +%s)\" >> /workspace/ticks; sleep 0.2; done";

/// A node lost while it runs a container: first cut off the swarm's network (the manager
/// loses it, offload still reaches its engine), then frozen (nobody reaches it, and its
/// copy runs on). Each time the container runs again on another node within a minute with
/// its files, and the copy on the lost node is stopped and never runs beside the new one.
#[test]
fn a_lost_nodes_container_runs_again_elsewhere_and_its_stale_copy_is_stopped() {
    let swarm = Swarm::start("loss", 3, IMAGE).expect("the swarm starts");
    // The manager keeps the swarm going: containers run on the two workers.
    swarm
        .docker_output([
            "node",
            "update",
            "--availability",
            "pause",
            swarm.manager().node_id(),
        ])
        .unwrap();
    let cloud = SwarmCloud::start_with(&swarm, |config| {
        config.replacen("[swarm]\n", "[swarm]\nnode_lost_grace_secs = 3\n", 1)
    });
    let alice = cloud.user("alice");
    let start = |name: &str| {
        alice
            .ok(&["start", "--name", name, IMAGE, "--", "sh", "-c", TICKER])
            .trim()
            .to_owned()
    };

    // 1. Cut off: the old copy is stopped on its engine before the new one starts.
    let a = start("a");
    alice.ok(&[
        "shell",
        &a,
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/precious",
    ]);
    let first = alice.show(&a)["node"].as_str().unwrap().to_owned();
    let cut = swarm.node_by_id(&first).unwrap().name().to_owned();
    swarm.cut_off(&cut).unwrap();
    let mut most = 0;
    eventually(60, "a to run again on another node", || {
        most = most.max(running_copies(&swarm, &a, None).len());
        let shown = alice.show(&a);
        shown["state"] == "running" && shown["node"] != first.as_str() && shown["generation"] == 2
    });
    assert!(most <= 1, "two copies of a ran at once");
    let second = alice.show(&a)["node"].as_str().unwrap().to_owned();
    assert_eq!(
        running_copies(&swarm, &a, None),
        [(second.clone(), "2".to_owned())]
    );
    assert_eq!(
        alice.ok(&["shell", &a, "--", "cat", "/workspace/precious"]),
        "kept\n"
    );
    swarm.reconnect(&cut).unwrap();
    // Back in the swarm, the node ends the task of the service offload removed.
    eventually(90, "the returned node to drop a's old task", || {
        let out = swarm
            .node(&cut)
            .unwrap()
            .engine()
            .docker_output([
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("label=offload.id={a}"),
            ])
            .unwrap();
        out.trim().is_empty()
    });
    assert_eq!(
        running_copies(&swarm, &a, None),
        [(second.clone(), "2".to_owned())]
    );

    // 2. Frozen: its copy goes on and nobody can stop it. The new copy starts from a copy
    // of the workspace, so the lost one writes only into the set-aside directory.
    let b = start("b");
    alice.ok(&[
        "shell",
        &b,
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/precious",
    ]);
    let first_b = alice.show(&b)["node"].as_str().unwrap().to_owned();
    let frozen = swarm.node_by_id(&first_b).unwrap().name().to_owned();
    let live = cloud.workspace(&b).join("ticks");
    eventually(30, "b to write", || {
        std::fs::read_to_string(&live).is_ok_and(|t| t.lines().count() >= 3)
    });
    let old_host = std::fs::read_to_string(&live)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    swarm.freeze(&frozen).unwrap();
    eventually(60, "b to run again on another node", || {
        let shown = alice.show(&b);
        shown["state"] == "running" && shown["node"] != first_b.as_str() && shown["generation"] == 2
    });
    assert_eq!(
        alice.ok(&["shell", &b, "--", "cat", "/workspace/precious"]),
        "kept\n"
    );
    let aside = cloud
        .dir
        .path()
        .join("shared/workspaces/.fenced")
        .join(format!("{b}-g1"));
    let seen = lines_by(&aside.join("ticks"), &old_host);
    eventually(
        30,
        "the lost copy to write on, into the set-aside workspace",
        || lines_by(&aside.join("ticks"), &old_host) >= seen + 5,
    );
    let in_live = lines_by(&live, &old_host);
    assert!(in_live > 0);
    assert_eq!(
        running_copies(&swarm, &b, Some(&frozen)),
        [(
            alice.show(&b)["node"].as_str().unwrap().to_owned(),
            "2".to_owned()
        )],
        "one copy on the nodes that answer"
    );

    swarm.thaw(&frozen).unwrap();
    let frozen_id = swarm.node(&frozen).unwrap().node_id().to_owned();
    let conflicts = cloud.workspace(&b).join(".offload-conflicts");
    eventually(
        90,
        "the stale copy to be stopped and its late writes kept",
        || {
            !running_copies(&swarm, &b, None)
                .iter()
                .any(|(node, _)| *node == frozen_id)
                && !aside.exists()
        },
    );
    let sets: Vec<PathBuf> = std::fs::read_dir(&conflicts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let name = sets[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("node-{frozen}-generation-1-")),
        "{name}"
    );
    let kept = lines_by(&sets[0].join("ticks"), &old_host);
    assert!(
        kept > in_live,
        "the conflict set has the lost copy's late lines ({kept} against {in_live})"
    );
    assert_eq!(
        lines_by(&live, &old_host),
        in_live,
        "the lost copy never wrote into the new copy's files"
    );
    let shown = alice.show(&b);
    assert_eq!(
        running_copies(&swarm, &b, None),
        [(shown["node"].as_str().unwrap().to_owned(), "2".to_owned())]
    );
    assert_eq!(running_copies(&swarm, &a, None), [(second, "2".to_owned())]);
    drop(cloud);
    drop(swarm);
}

/// Pressure on every node, on nodes the operator sized at 40 MiB each: no move inside the
/// cloud can help, so the owner with an agent is asked, accepts, and the container moves to
/// the edge with its files; when the cloud is calm again it comes back to a node of the
/// swarm, with the files it wrote at the edge. Bob has no agent and is never asked.
#[test]
fn pressure_on_every_node_asks_the_owner_and_the_container_goes_to_the_edge_and_back() {
    let swarm = Swarm::start("full", 3, IMAGE).expect("the swarm starts");
    let cloud = SwarmCloud::start_with(&swarm, |config| {
        let config = config.replace("\ndocker_host = ", "\nmemory = \"40m\"\ndocker_host = ");
        format!(
            "{config}[monitor]\ninterval_secs = 1\nsustain_secs = 2\nhorizon_secs = 0\n\
             mem_high = 0.7\nmem_low = 0.5\nquery_deadline_secs = 30\nask_cooldown_secs = 3\n\
             return_after_secs = 3\n"
        )
    });
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let ids = node_ids(&swarm);

    // Each node gets its share, one node open at a time: A holds Bob's 25 MiB and Alice's
    // 10 MiB (0.875), B and C Bob's 30 MiB each (0.75). Alice's 10 MiB fit on no other node.
    let only = |open: &str| {
        for id in &ids {
            set_availability(&swarm, id, if id == open { "active" } else { "pause" });
        }
    };
    only(&ids[0]);
    let mut bobs = vec![start_filled(&bob, "b0", 25)];
    let a = start_filled(&alice, "a", 10);
    only(&ids[1]);
    bobs.push(start_filled(&bob, "b1", 30));
    only(&ids[2]);
    bobs.push(start_filled(&bob, "b2", 30));
    for id in &ids {
        set_availability(&swarm, id, "active");
    }
    assert_eq!(alice.show(&a)["node"], ids[0].as_str());
    sh(
        &alice,
        &a,
        "echo kept > /workspace/notes && head -c 200000 /dev/urandom > /workspace/data",
    );
    let files = common::tree(&cloud.workspace(&a));

    // Alice's agent accepts; the container runs at the edge with the same files.
    let edge = common::Edge::start_with("full-edge", &alice, &["--auto-accept", "--auto-return"]);
    cloud.eventually(&alice, 120, "a's move to the edge", || {
        let shown = alice.show(&a);
        shown["location"] == "edge" && shown["state"] == "running"
    });
    let queries: Vec<serde_json::Value> =
        serde_json::from_str(&alice.ok(&["queries", "-o", "json"])).unwrap();
    assert!(
        queries
            .iter()
            .any(|q| q["container_id"] == a.as_str() && q["state"] == "accepted"),
        "{queries:?}"
    );
    let bobs_queries: Vec<serde_json::Value> =
        serde_json::from_str(&bob.ok(&["queries", "-o", "json"])).unwrap();
    assert!(
        bobs_queries.is_empty(),
        "bob has no agent: {bobs_queries:?}"
    );
    assert_eq!(common::tree(&edge.workspace(&a)), files);
    assert!(
        running_copies(&swarm, &a, None).is_empty(),
        "no copy left on a node"
    );
    for id in &bobs {
        assert_eq!(bob.show(id)["generation"], 1, "bob's containers stay");
    }
    sh(
        &alice,
        &a,
        "echo 'written at the edge' > /workspace/edge-notes",
    );

    // Bob's containers go; the cloud is calm and the container comes back to a node.
    for id in &bobs {
        bob.ok(&["rm", id]);
    }
    cloud.eventually(&alice, 120, "a's return to the swarm", || {
        let shown = alice.show(&a);
        shown["location"] == "cloud" && shown["state"] == "running"
    });
    let shown = alice.show(&a);
    let node = shown["node"].as_str().expect("a node").to_owned();
    assert!(ids.contains(&node), "{shown}");
    let running = running_copies(&swarm, &a, None);
    assert_eq!(running.len(), 1, "one copy: {running:?}");
    assert_eq!(running[0].0, node);
    assert!(edge.running().is_empty(), "the edge copy stopped");
    assert_eq!(
        alice.ok(&[
            "shell",
            &a,
            "--",
            "cat",
            "/workspace/edge-notes",
            "/workspace/notes"
        ]),
        "written at the edge\nkept\n"
    );
    let back = common::tree(&cloud.workspace(&a));
    assert_eq!(back.len(), files.len() + 1, "{back:?}");
    for (path, sum) in &files {
        assert_eq!(back.get(path), Some(sum), "{path}");
    }

    alice.ok(&["rm", &a]);
    drop(edge);
    drop(cloud);
    drop(swarm);
}
