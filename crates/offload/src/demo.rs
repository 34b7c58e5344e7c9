//! `offload demo`: the whole story on this machine, with real processes: a server, users
//! who join, an agent on "alice's laptop", real CPU load that makes the monitor ask, the
//! accepted move with its files, the same `ssh homework.offload` (OpenSSH's own client)
//! and the same forwarded port reaching the container before and after the move, the
//! pressure ending, an edit flowing back, and the return when the cloud has room. Every
//! step is the real `offload` binary, printed with its time; everything is removed at the
//! end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use offload_runtime::{ContainerRuntime, DockerRuntime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

    fn bob(&self) -> PathBuf {
        self.dir.path().join("bob.toml")
    }

    /// The operator's credentials (an admin token).
    fn operator(&self) -> PathBuf {
        self.dir.path().join("operator.toml")
    }

    /// Runs `offload ARGS` as alice and returns its stdout; fails with its stderr.
    async fn offload(&self, args: &[&str]) -> anyhow::Result<String> {
        self.offload_as(&self.client(), args).await
    }

    /// Runs `offload ARGS` with the credentials in `config`.
    async fn offload_as(&self, config: &Path, args: &[&str]) -> anyhow::Result<String> {
        let begun = Instant::now();
        let output = Command::new(&self.exe)
            .arg("--config")
            .arg(config)
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

/// The demo's monitor: a pool of one CPU (only offload's containers count, so the edge
/// engine on the same machine does not hide the relief), quick to react.
const DEMO_MONITOR: &str = "[monitor]
source = \"pool\"
pool_cpus = 1.0
pool_mem_bytes = 8589934592
interval_secs = 1
sustain_secs = 3
horizon_secs = 10
cpu_high = 0.7
cpu_low = 0.5
query_deadline_secs = 60
return_after_secs = 5
";

/// Starts `offload server` and waits until it prints its address.
async fn start_server(
    demo: &Demo,
    docker_host: &str,
    data_dir: &Path,
) -> anyhow::Result<(Child, String)> {
    let config = demo.dir.path().join("server.toml");
    std::fs::write(&config, DEMO_MONITOR).context("cannot write the demo's server config")?;
    let mut child = Command::new(&demo.exe)
        .arg("--config")
        .arg(&config)
        .args(["server", "--listen", "127.0.0.1:0", "--network", "none"])
        .args(["--stop-grace", "1", "--docker-host", docker_host])
        .arg("--data-dir")
        .arg(data_dir)
        .env("OFFLOAD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(demo.dir.path().join("server.log"))?)
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
        .args([
            "agent",
            "--network",
            "none",
            "--stop-grace",
            "1",
            "--auto-return",
        ])
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
    demo.say("the operator creates join tokens for alice (with a laptop) and bob (without)");
    let data = data_dir.to_string_lossy().into_owned();
    let token = |user: &'static str, admin: bool| {
        let data = data.clone();
        async move {
            let mut args = vec![
                "admin",
                "token",
                "create",
                "--user",
                user,
                "--data-dir",
                &data,
            ];
            if admin {
                args.push("--admin");
            }
            let out = demo.offload(&args).await?;
            out.lines()
                .last()
                .map(|l| l.trim().to_owned())
                .context("no token printed")
        }
    };
    let alice_token = token("alice", false).await?;
    let bob_token = token("bob", false).await?;
    let operator_token = token("operator", true).await?;

    demo.say("alice joins: her client checks the server's CA against the token first");
    demo.offload(&["join", url, &alice_token]).await?;
    demo.offload_as(&demo.bob(), &["join", url, &bob_token])
        .await?;
    demo.offload_as(&demo.operator(), &["join", url, &operator_token])
        .await?;

    demo.say(&format!(
        "alice starts the agent on her laptop (engine {edge_host}); it moves her containers back by itself when the cloud has room (--auto-return)"
    ));
    *agent = Some(start_agent(demo, edge_host).await?);

    demo.say(
        "alice starts a container in the cloud and works in it; it serves her workspace on its own loopback (busybox httpd on 127.0.0.1:8080, no network)",
    );
    let id = demo
        .offload(&[
            "start",
            "--name",
            "homework",
            "--cpus",
            "0.4",
            "--memory",
            "128m",
            image,
            "--",
            "sh",
            "-c",
            SERVE_AND_BUSY,
        ])
        .await?
        .trim()
        .to_owned();
    let mut bobs = Vec::new();
    let mut forward = None;
    let result = work(demo, &id, data_dir, image, &mut bobs, &mut forward).await;
    if let Some(forward) = forward.as_mut() {
        stop(forward).await;
    }
    for b in bobs {
        let _ = demo.offload_as(&demo.bob(), &["rm", &b]).await;
    }
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

/// A CPU-bound loop: the night before the deadline.
const BUSY: &str = "while :; do :; done";

/// The same, with a web server on the container's loopback serving its workspace (it
/// starts again with the container wherever it runs).
const SERVE_AND_BUSY: &str = "httpd -p 127.0.0.1:8080 -h /workspace; while :; do :; done";

/// `ssh -F CONFIG -o BatchMode=yes homework.offload LINE` with OpenSSH's own client: no
/// prompt, no key to trust, the alias that `offload ssh-config` wrote.
async fn ssh(config: &Path, line: &str) -> anyhow::Result<String> {
    let begun = Instant::now();
    let output = Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", "homework.offload", line])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run ssh: install OpenSSH's client (scripts/demo.sh does)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!(
        "          $ ssh homework.offload '{line}'   ({:.2}s)",
        begun.elapsed().as_secs_f64()
    );
    for text in stdout.lines() {
        println!("            {text}");
    }
    if !output.status.success() {
        bail!(
            "ssh homework.offload failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}

/// One HTTP GET of `path` on the local port `port` (what `curl` would do): the body of a
/// 200 answer.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("no answer within 10 s")??;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "not an HTTP answer: {:?}",
            text.chars().take(80).collect::<String>()
        );
    };
    if !(head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")) {
        bail!(
            "the server answered {:?}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// GETs `path` through the forward, retrying while the forward waits for the container
/// (a move, its program starting), and prints what came back.
async fn curl(port: u16, path: &str) -> anyhow::Result<String> {
    let begun = Instant::now();
    let deadline = begun + Duration::from_secs(45);
    let body = loop {
        match http_get(port, path).await {
            Ok(body) => break body,
            Err(e) if Instant::now() > deadline => {
                bail!("GET {path} through 127.0.0.1:{port} did not answer within 45 s: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    println!(
        "          $ curl http://127.0.0.1:{port}{path}   ({:.2}s)",
        begun.elapsed().as_secs_f64()
    );
    for text in body.lines() {
        println!("            {text}");
    }
    Ok(body)
}

/// Starts `offload port-forward ID 0:8080` and returns it with the local port it prints.
async fn start_forward(demo: &Demo, id: &str) -> anyhow::Result<(Child, u16)> {
    let mut child = Command::new(&demo.exe)
        .arg("--config")
        .arg(demo.client())
        .args(["port-forward", id, "0:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start offload port-forward")?;
    let stdout = child.stdout.take().context("no port-forward stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            println!("          $ offload port-forward homework 0:8080");
            println!("            {line}");
            let port = line
                .strip_prefix("forwarding 127.0.0.1:")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(port) = port {
                return Ok::<_, anyhow::Error>(port);
            }
        }
        bail!("offload port-forward exited before forwarding")
    })
    .await
    .context("offload port-forward did not start within 30 s")??;
    if let Some(stderr) = child.stderr.take() {
        // What it says (the notice before the move) is part of the story.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("          port-forward: {line}");
            }
        });
    }
    Ok((child, port))
}

async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn quiet(demo: &Demo, config: &Path, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(&demo.exe)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

async fn work(
    demo: &Demo,
    id: &str,
    data_dir: &Path,
    image: &str,
    bobs: &mut Vec<String>,
    forward: &mut Option<Child>,
) -> anyhow::Result<()> {
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
        "her file is in the server's workspace: {:?}",
        text.trim()
    ));

    demo.say(
        "she connects the way she works: an ssh alias for her container and a forwarded port for her browser",
    );
    let config_text = quiet_text(demo, &["ssh-config"]).await?;
    let ssh_config = demo.dir.path().join("ssh_config");
    std::fs::write(&ssh_config, &config_text).context("cannot write the demo's ssh config")?;
    println!(
        "          $ offload ssh-config > ssh_config   ({} lines: Host homework.offload, its pinned host key, ProxyCommand offload ssh --stdio %n)",
        config_text.lines().count()
    );
    let probe = "hostname; cat /workspace/hello.txt";
    let host_before = ssh(&ssh_config, probe).await?;
    let (child, port) = start_forward(demo, id).await?;
    *forward = Some(child);
    curl(port, "/hello.txt").await?;

    demo.say("bob starts a busy container too: the pool of one CPU fills up");
    let bob = demo
        .offload_as(
            &demo.bob(),
            &[
                "start", "--name", "bob-job", "--cpus", "0.4", image, "--", "sh", "-c", BUSY,
            ],
        )
        .await?
        .trim()
        .to_owned();
    bobs.push(bob.clone());

    demo.say("the monitor sees the CPU pressure and asks alice (bob has no agent to move to)");
    let client = demo.client();
    let pending = || async {
        let list = quiet(demo, &client, &["queries", "-o", "json"]).await?;
        list.as_array()?
            .iter()
            .find(|q| q["state"] == "pending")
            .cloned()
    };
    let query = match wait_for("a query to alice", 20, pending).await {
        Ok(query) => query,
        Err(_) => {
            // On a machine busy with other work the loops get less CPU than their
            // limits, and the pool may not fill; the operator asks by hand then.
            demo.say(
                "the monitor has not seen pressure yet (this machine is busy with other work); the operator asks now",
            );
            demo.offload_as(&demo.operator(), &["admin", "pressure", "--user", "alice"])
                .await?;
            wait_for("a query to alice", 30, pending).await?
        }
    };
    let qid = query["id"].as_str().unwrap_or_default().to_owned();
    demo.say(&format!(
        "query {qid}: {}",
        query["reason"].as_str().unwrap_or_default()
    ));
    demo.offload(&["top"]).await?;

    demo.say("alice accepts; her container moves to her laptop with its files");
    demo.offload(&["accept", &qid]).await?;
    let shown = wait_for("the move to the edge", 120, || async {
        let v = quiet(demo, &client, &["show", id, "-o", "json"]).await?;
        (v["location"] == "edge" && v["state"] == "running").then_some(v)
    })
    .await?;
    demo.say(&format!(
        "it runs on the laptop (downtime {} ms)",
        shown["last_move"]["timings"]["downtime_ms"]
    ));
    demo.say(
        "the same ssh alias and the same local port reach it on the laptop: no new host key, no new port",
    );
    let host_after = ssh(&ssh_config, probe).await?;
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    if first_line(&host_after) == first_line(&host_before) {
        bail!("ssh reached the same engine container after the move");
    }
    curl(port, "/hello.txt").await?;
    demo.say(&format!(
        "ssh answered from the laptop's copy (hostname {} instead of {})",
        first_line(&host_after),
        first_line(&host_before)
    ));

    demo.say("the move relieved the cloud: the pressure ends");
    wait_for("the pressure to end", 60, || async {
        let v = quiet(demo, &client, &["top", "-o", "json"]).await?;
        (v["under_pressure"] == false).then_some(())
    })
    .await?;
    demo.offload(&["top"]).await?;

    demo.say("alice edits her file on the laptop; the agent streams it back to the cloud");
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
    wait_for("the edit to reach the cloud", 30, || async {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| t.contains("edited on the laptop"))
    })
    .await?;
    demo.say(&format!(
        "the cloud copy has the edit {:.2}s later",
        edited.elapsed().as_secs_f64()
    ));

    demo.say(
        "bob's job ends: the cloud has room again, and alice's container comes back by itself",
    );
    demo.offload_as(&demo.bob(), &["rm", &bob]).await?;
    bobs.clear();
    wait_for("the return to the cloud", 120, || async {
        let v = quiet(demo, &client, &["show", id, "-o", "json"]).await?;
        (v["location"] == "cloud" && v["state"] == "running").then_some(())
    })
    .await?;
    demo.say("back in the cloud, the forwarded port still reaches it");
    curl(port, "/hello.txt").await?;
    demo.offload(&["show", id]).await?;
    Ok(())
}

/// Runs `offload ARGS` as alice and returns its stdout without printing it.
async fn quiet_text(demo: &Demo, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(&demo.exe)
        .arg("--config")
        .arg(demo.client())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run offload {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "offload {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
