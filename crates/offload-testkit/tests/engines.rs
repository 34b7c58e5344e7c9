//! Live tests of the engine fixture: they start real `dockerd`s and need root.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use offload_testkit::{Engine, process_alive, wait_until};

const IMAGE: &str = "offload-testkit/busybox:test";

fn start_with_busybox(name: &str) -> Engine {
    let started = Instant::now();
    let engine = Engine::start(name).expect("engine starts");
    let ready = started.elapsed();
    let importing = Instant::now();
    let id = engine.import_busybox(IMAGE).expect("busybox imports");
    eprintln!(
        "engine {name}: start {ready:?}, import_busybox {:?}",
        importing.elapsed()
    );
    assert!(id.starts_with("sha256:"), "{id}");
    engine
}

#[test]
fn two_engines_run_side_by_side_and_stop_without_leaks() {
    let (cloud, edge) = thread::scope(|s| {
        let cloud = s.spawn(|| start_with_busybox("cloud"));
        let edge = s.spawn(|| start_with_busybox("edge"));
        (
            cloud.join().expect("cloud thread"),
            edge.join().expect("edge thread"),
        )
    });
    assert_ne!(cloud.host(), edge.host());
    assert_ne!(cloud.pid(), edge.pid());
    assert!(cloud.host().starts_with("unix:///"));
    assert!(cloud.socket_path().exists());

    // Separate trust keys give separate engine IDs.
    let cloud_id = cloud
        .docker_output(["info", "--format", "{{.ID}}"])
        .expect("info");
    let edge_id = edge
        .docker_output(["info", "--format", "{{.ID}}"])
        .expect("info");
    assert_ne!(cloud_id.trim(), edge_id.trim());

    let run = |engine: &Engine, name: &str| {
        engine
            .docker_output([
                "run",
                "--detach",
                "--name",
                name,
                "--network",
                "none",
                "--init",
                IMAGE,
                "sleep",
                "1000",
            ])
            .expect("container starts")
            .trim()
            .to_owned()
    };
    let cloud_container = run(&cloud, "job-on-cloud");
    let edge_container = run(&edge, "job-on-edge");

    assert_eq!(
        cloud.container_ids().expect("ps"),
        vec![cloud_container.clone()]
    );
    assert_eq!(
        edge.container_ids().expect("ps"),
        vec![edge_container.clone()]
    );
    assert!(
        cloud.docker_output(["inspect", &edge_container]).is_err(),
        "the cloud engine must not see the edge container"
    );

    // --init makes `docker stop` prompt: sleep as PID 1 would ignore SIGTERM until -t.
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        cloud
            .docker_output(["inspect", "--format", "{{.State.Running}}", "job-on-cloud"])
            .is_ok_and(|s| s.trim() == "true")
    })
    .expect("container runs");
    let stopping = Instant::now();
    cloud
        .docker_output(["stop", "--time", "10", "job-on-cloud"])
        .expect("container stops");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "docker stop took {:?}",
        stopping.elapsed()
    );

    let pids = [cloud.pid(), edge.pid()];
    let dirs = [cloud.dir().to_path_buf(), edge.dir().to_path_buf()];
    let containerd_pids: Vec<u32> = dirs
        .iter()
        .map(|dir| {
            std::fs::read_to_string(dir.join("exec/containerd/containerd.pid"))
                .expect("containerd pidfile")
                .trim()
                .parse()
                .expect("containerd pid")
        })
        .collect();
    assert!(
        pids.iter()
            .chain(&containerd_pids)
            .all(|&pid| process_alive(pid))
    );

    // edge still has a running container when it is dropped.
    let stopping = Instant::now();
    drop(cloud);
    drop(edge);
    eprintln!("dropping both engines took {:?}", stopping.elapsed());
    for pid in pids.iter().chain(&containerd_pids) {
        assert!(!process_alive(*pid), "process {pid} outlived its engine");
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        assert!(
            !mounts.contains(&dir.display().to_string()),
            "mounts left under {}",
            dir.display()
        );
    }
    let shims = shims_of(&dirs);
    assert!(shims.is_empty(), "shims left behind: {shims:?}");
}

#[test]
fn busybox_image_runs_shell_commands_and_import_is_idempotent() {
    let engine = Engine::start("busybox").expect("engine starts");
    let first = engine.import_busybox(IMAGE).expect("import");
    let second = engine.import_busybox(IMAGE).expect("second import");
    assert_eq!(first, second);

    let out = engine
        .docker_output([
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo hi; id -un; test -d /workspace; test -w /tmp; echo $PATH",
        ])
        .expect("shell runs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["hi", "root"]);
    assert!(lines[2].ends_with("/bin"), "{out}");

    // The default command is a shell.
    let out = engine
        .docker(["run", "--rm", "-i", "--network", "none", IMAGE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"echo from-default-cmd\n")?;
            child.wait_with_output()
        })
        .expect("default command runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from-default-cmd"
    );
}

#[test]
fn four_engines_start_at_once() {
    let started = Instant::now();
    let engines: Vec<Engine> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| s.spawn(move || Engine::start(&format!("many-{i}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("engine starts"))
            .collect()
    });
    eprintln!("4 engines ready after {:?}", started.elapsed());
    for engine in &engines {
        let version = engine
            .docker_output(["version", "--format", "{{.Server.APIVersion}}"])
            .expect("version");
        assert!(!version.trim().is_empty());
    }
    let pids: Vec<u32> = engines.iter().map(Engine::pid).collect();
    drop(engines);
    assert!(pids.iter().all(|&pid| !process_alive(pid)));
}

/// Runs `failed_start_child` in a child process of this test binary with a fake dockerd:
/// setting the variable here would be `unsafe` (edition 2024) and race other tests.
#[test]
fn failed_start_reports_the_dockerd_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("dockerd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake dockerd: refusing to start' >&2\nexit 1\n",
    )
    .expect("write fake dockerd");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "failed_start_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("OFFLOAD_TESTKIT_DOCKERD", &fake)
        .env("FAILED_START_CHILD", "1")
        .output()
        .expect("child test runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by failed_start_reports_the_dockerd_log with a fake dockerd"]
fn failed_start_child() {
    if std::env::var_os("FAILED_START_CHILD").is_none() {
        return;
    }
    let err = Engine::start("broken").expect_err("the fake dockerd exits at once");
    let msg = format!("{err:#}");
    assert!(msg.contains("engine \"broken\" failed to start"), "{msg}");
    assert!(msg.contains("dockerd exited during startup"), "{msg}");
    assert!(msg.contains("fake dockerd: refusing to start"), "{msg}");
    let dir = msg
        .split("(dir ")
        .nth(1)
        .and_then(|rest| rest.split([')', ',']).next())
        .expect("the message names the engine directory");
    assert!(!Path::new(dir).exists(), "{dir} was not cleaned up");
}

/// Kills a test process that holds an engine, as a runner's timeout would; the watchdog
/// must stop the engine and remove its directory anyway.
#[test]
fn engine_is_cleaned_up_when_its_test_process_is_killed() {
    use std::io::BufRead;

    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "killed_owner_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("KILLED_OWNER_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child test runs");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("ENGINE "))
        .expect("the child reports its engine");
    let mut fields = line.split_whitespace().skip(1);
    let pid: u32 = fields.next().and_then(|p| p.parse().ok()).expect("pid");
    let dir = std::path::PathBuf::from(fields.next().expect("dir"));
    assert!(process_alive(pid));

    child.kill().expect("kill the owner");
    child.wait().expect("reap the owner");

    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        !process_alive(pid) && !dir.exists()
    })
    .unwrap_or_else(|err| {
        panic!(
            "engine of the killed process survived (pid {pid} alive: {}, {} exists: {}): {err}",
            process_alive(pid),
            dir.display(),
            dir.exists()
        )
    });
    let shims = shims_of(&[dir]);
    assert!(shims.is_empty(), "shims left behind: {shims:?}");
}

#[test]
#[ignore = "run by engine_is_cleaned_up_when_its_test_process_is_killed"]
fn killed_owner_child() {
    if std::env::var_os("KILLED_OWNER_CHILD").is_none() {
        return;
    }
    let engine = start_with_busybox("orphan");
    engine
        .docker_output([
            "run",
            "--detach",
            "--network",
            "none",
            "--init",
            IMAGE,
            "sleep",
            "1000",
        ])
        .expect("container starts");
    println!("ENGINE {} {}", engine.pid(), engine.dir().display());
    loop {
        thread::park();
    }
}

fn shims_of(dirs: &[std::path::PathBuf]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmd = String::from_utf8_lossy(&raw);
                dirs.iter()
                    .any(|d| cmd.contains(&format!("{}/", Path::new(d).display())))
            })
        })
        .collect()
}
