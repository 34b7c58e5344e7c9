//! End-to-end on a real three-node Docker Swarm (engines in network namespaces on one
//! machine; needs root): the real `offload server` with `engine = "swarm"`, its workspaces
//! on a root every node sees at the same path (here, the host's filesystem).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{IMAGE, User, eventually, offload_bin, stderr};
use offload_testkit::Swarm;

/// An offload server on a swarm.
struct SwarmCloud {
    server: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl SwarmCloud {
    fn config(swarm: &Swarm, dir: &Path) -> String {
        let mut config = format!(
            "engine = \"swarm\"\nnetwork = \"default\"\nstop_grace_secs = 1\n\
             workspace_root = \"{}\"\n[swarm]\nmanager = \"{}\"\n",
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
        let dir = tempfile::tempdir().unwrap();
        let config = SwarmCloud::config(swarm, dir.path());
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
        let out = Command::new(offload_bin())
            .args(["admin", "token", "create", "--user", name, "--data-dir"])
            .arg(self.dir.path().join("server"))
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
    let bad = SwarmCloud::config(&swarm, dir.path()).replace(
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
    let node_ids: Vec<String> = swarm
        .nodes()
        .iter()
        .map(|n| n.node_id().to_owned())
        .collect();

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

    let out = alice.run(&["shell", &a, "--", "sh", "-c", "echo hi > /workspace/f"]);
    assert!(out.status.success(), "{}", stderr(&out));
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
