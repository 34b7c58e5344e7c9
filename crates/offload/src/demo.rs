//! `offload demo`: the whole flow on this machine, with real processes: a server, an
//! operator's token, a user who joins, a container in the cloud, a command in it, and a
//! clean-up. Every step is the real `offload` binary, printed with its time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use offload_runtime::{ContainerRuntime, DockerRuntime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::DemoArgs;

struct Demo {
    exe: PathBuf,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Demo {
    fn client(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    fn say(&self, text: &str) {
        let t = self.started.elapsed().as_secs_f64();
        println!("[{t:6.2}s] {text}");
    }

    /// Runs `offload ARGS` and returns its stdout; fails with its stderr.
    async fn offload(&self, args: &[&str]) -> anyhow::Result<String> {
        let begun = Instant::now();
        let output = Command::new(&self.exe)
            .arg("--config")
            .arg(self.client())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run offload {}", args.join(" ")))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        println!(
            "          $ offload {}   ({:.2}s)",
            args.join(" "),
            begun.elapsed().as_secs_f64()
        );
        for line in stdout.lines() {
            println!("            {line}");
        }
        if !output.status.success() {
            bail!(
                "offload {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(stdout)
    }
}

/// Starts `offload server` and waits until it prints its address.
async fn start_server(
    demo: &Demo,
    docker_host: &str,
    data_dir: &Path,
) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(&demo.exe)
        .args(["server", "--listen", "127.0.0.1:0", "--network", "none"])
        .args(["--stop-grace", "1", "--docker-host", docker_host])
        .arg("--data-dir")
        .arg(data_dir)
        .env("OFFLOAD_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start offload server")?;
    let stdout = child.stdout.take().context("no server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("offload server listening on ") {
                return Ok::<_, anyhow::Error>(url.trim().to_owned());
            }
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not start within 60 s")??;
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// Starts `offload agent` for the demo's user and waits until it is connected.
async fn start_agent(demo: &Demo, docker_host: &str) -> anyhow::Result<Child> {
    let mut child = Command::new(&demo.exe)
        .arg("--config")
        .arg(demo.client())
        .args(["agent", "--network", "none", "--stop-grace", "1"])
        .args(["--docker-host", docker_host])
        .arg("--data-dir")
        .arg(demo.dir.path().join("agent"))
        .env("OFFLOAD_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start offload agent")?;
    let stderr = child.stderr.take().context("no agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("connected to") {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("the agent exited before connecting")
    })
    .await
    .context("the agent did not connect within 60 s")??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("          agent: {line}");
        }
    });
    Ok(child)
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let docker_host = args
        .docker_host
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    let engine = DockerRuntime::connect(Some(&docker_host)).await?;
    engine
        .ping()
        .await
        .with_context(|| format!("no container engine answers at {docker_host}"))?;
    if engine.image(&args.image).await?.is_none() {
        bail!(
            "image {} is not on the engine at {docker_host}; scripts/demo.sh imports one",
            args.image
        );
    }
    let demo = Demo {
        exe: std::env::current_exe().context("cannot find the offload binary")?,
        dir: tempfile::Builder::new().prefix("offload-demo-").tempdir()?,
        started: Instant::now(),
    };
    let data_dir = demo.dir.path().join("server");

    let edge_host = args
        .edge_docker_host
        .clone()
        .unwrap_or_else(|| docker_host.clone());
    demo.say(&format!(
        "starting offload server on the cloud engine {docker_host}"
    ));
    let (mut server, url) = start_server(&demo, &docker_host, &data_dir).await?;
    let mut agent = None;
    let result = story(&demo, &url, &data_dir, &args.image, &edge_host, &mut agent).await;
    if let Some(agent) = agent.as_mut() {
        demo.say("stopping the agent");
        stop(agent).await;
    }
    demo.say("stopping the server");
    stop(&mut server).await;
    match result {
        Ok(()) => {
            demo.say("done: everything the demo created is gone");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

async fn story(
    demo: &Demo,
    url: &str,
    data_dir: &Path,
    image: &str,
    edge_host: &str,
    agent: &mut Option<Child>,
) -> anyhow::Result<()> {
    demo.say(&format!("server is up at {url}"));
    demo.say("the operator creates a join token for user alice");
    let out = demo
        .offload(&[
            "admin",
            "token",
            "create",
            "--user",
            "alice",
            "--data-dir",
            &data_dir.to_string_lossy(),
        ])
        .await?;
    let token = out
        .lines()
        .last()
        .context("no token printed")?
        .trim()
        .to_owned();

    demo.say("alice joins: her client checks the server's CA against the token first");
    demo.offload(&["join", url, &token]).await?;

    demo.say(&format!(
        "alice starts the agent on her laptop (engine {edge_host})"
    ));
    *agent = Some(start_agent(demo, edge_host).await?);

    demo.say("alice starts a container in the cloud");
    let id = demo
        .offload(&[
            "start", "--name", "demo", "--cpus", "0.5", "--memory", "128m", image, "--", "sleep",
            "86400",
        ])
        .await?
        .trim()
        .to_owned();
    let result = work(demo, &id, data_dir).await;
    if result.is_err()
        && demo
            .offload(&["show", &id])
            .await
            .is_ok_and(|s| s.contains("edge"))
    {
        let _ = demo.offload(&["move", &id, "--to", "cloud"]).await;
    }
    demo.say("alice removes her container");
    let removed = demo.offload(&["rm", &id]).await;
    result.and(removed.map(|_| ()))
}

async fn work(demo: &Demo, id: &str, data_dir: &Path) -> anyhow::Result<()> {
    demo.offload(&["ls"]).await?;
    demo.say("alice runs a command in it without logging into the cluster");
    demo.offload(&[
        "shell",
        id,
        "--",
        "sh",
        "-c",
        "echo 'hello from the cloud' > /workspace/hello.txt && ls -l /workspace",
    ])
    .await?;
    let file = data_dir.join("workspaces").join(id).join("hello.txt");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("the file is not in the workspace {}", file.display()))?;
    demo.say(&format!(
        "the file is in the server's workspace {}: {:?}",
        file.display(),
        text.trim()
    ));

    demo.say("the cloud is busy: alice moves her container to her laptop");
    demo.offload(&["move", id, "--to", "edge"]).await?;
    demo.offload(&["ls"]).await?;
    demo.say("the same files are there, and her shell now runs on the laptop");
    demo.offload(&[
        "shell",
        id,
        "--",
        "sh",
        "-c",
        "cat /workspace/hello.txt; hostname",
    ])
    .await?;

    demo.say("she edits a file at the edge; the agent streams it back to the cloud");
    let edited = Instant::now();
    demo.offload(&[
        "shell",
        id,
        "--",
        "sh",
        "-c",
        "echo 'edited on the laptop' >> /workspace/hello.txt",
    ])
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("edited on the laptop") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the edit did not reach the cloud copy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    demo.say(&format!(
        "the cloud copy has the edit {:.2}s later",
        edited.elapsed().as_secs_f64()
    ));

    demo.say("the cloud has room again: the container moves back");
    demo.offload(&["move", id, "--to", "cloud"]).await?;
    demo.offload(&["shell", id, "--", "cat", "/workspace/hello.txt"])
        .await?;
    demo.offload(&["show", id]).await?;
    Ok(())
}
