//! Live tests of the Podman engine fixture: a real `podman system service` with runc.

use std::thread;
use std::time::Duration;

use offload_testkit::{Engine, EngineKind, process_alive, wait_until};

const IMAGE: &str = "offload-testkit/busybox:test";

/// Processes whose command line names the engine's storage: its conmons.
fn monitors_of(dir: &std::path::Path) -> Vec<u32> {
    let needle = format!("{}/data", dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains(&needle))
        })
        .collect()
}

/// Podman's default limits (a million files) can be above what the host allows, so the
/// container sets its own.
fn run_sleeper(engine: &Engine, name: &str) -> anyhow::Result<String> {
    let mut args = vec!["run", "--detach", "--name", name, "--network", "none"];
    args.extend(["--init", "--ulimit", "nofile=1024:1024"]);
    args.extend(["--ulimit", "nproc=1024:1024", IMAGE, "sleep", "1000"]);
    Ok(engine.docker_output(args)?.trim().to_owned())
}

/// Two Podman engines and a Docker engine side by side: each sees only its own
/// containers, the Docker CLI drives Podman through its compatible socket, `--init` runs
/// catatonit, and dropping the engine leaves no process, mount or directory.
#[test]
fn podman_engines_run_beside_docker_and_stop_without_leaks() {
    let (one, two, docker) = thread::scope(|s| {
        let one = s.spawn(|| Engine::start_podman("pm-one").expect("podman starts"));
        let two = s.spawn(|| Engine::start_podman("pm-two").expect("podman starts"));
        let docker = s.spawn(|| Engine::start("pm-docker").expect("dockerd starts"));
        (
            one.join().expect("thread"),
            two.join().expect("thread"),
            docker.join().expect("thread"),
        )
    });
    assert_eq!(one.kind(), EngineKind::Podman);
    assert_eq!(docker.kind(), EngineKind::Docker);
    let version = one
        .docker_output(["version", "--format", "{{json .Server.Components}}"])
        .expect("version");
    assert!(version.contains("Podman Engine"), "{version}");
    for engine in [&one, &two, &docker] {
        engine.import_busybox(IMAGE).expect("busybox imports");
    }

    let first = run_sleeper(&one, "job").expect("a container with ulimits starts");
    let second = run_sleeper(&two, "job").expect("the same name on another engine");
    assert_eq!(one.container_ids().expect("ps"), vec![first.clone()]);
    assert_eq!(two.container_ids().expect("ps"), vec![second]);
    assert!(docker.container_ids().expect("ps").is_empty());
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        one.docker_output(["inspect", "--format", "{{.State.Running}}", "job"])
            .is_ok_and(|s| s.trim() == "true")
    })
    .expect("the container runs");
    let init = one
        .docker_output(["exec", "job", "cat", "/proc/1/cmdline"])
        .expect("exec");
    // Podman mounts its init (catatonit) there.
    assert!(init.starts_with("/run/podman-init"), "PID 1 is {init:?}");

    let (pid, dir) = (one.pid(), one.dir().to_path_buf());
    assert!(
        !monitors_of(&dir).is_empty(),
        "a conmon watches the container"
    );
    drop(one);
    assert!(!process_alive(pid), "the service outlived its engine");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(!mounts.contains(&dir.display().to_string()), "mounts left");
    assert!(monitors_of(&dir).is_empty(), "conmons left behind");
}
