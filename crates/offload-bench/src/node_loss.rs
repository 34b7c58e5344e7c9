//! `node-loss`: how long a container takes to run again after its swarm node is lost,
//! with offload (a one-replica service pinned to its node, replaced by offload's reconciler
//! at the next generation) next to Swarm's own rescheduling of an unpinned one-replica
//! service (restart condition `any`), on a real three-node swarm of private engines in
//! network namespaces (`offload-testkit`).
//!
//! Two ways to lose a node, each `--runs` times for both: `cut` takes its link off the
//! swarm's bridge (the manager loses it; its engine still answers offload over its socket)
//! and `freeze` stops its `dockerd` with SIGSTOP (nobody reaches it; its containers run on
//! under containerd). For each run it records, from the moment of the failure: when the
//! manager marked the node down, when a new copy ran on another node (seen on that node's
//! engine), whether the old copy's process was still alive at that moment (two copies at
//! once), and, once the node is back, how long until its old copy stopped.
//!
//! Run it through `bench/nodeloss.sh`, which builds it and offload in release mode. Needs
//! root. Prints a markdown report on stdout, progress on stderr.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use offload_testkit::{Swarm, SwarmNode};

const IMAGE: &str = "offload-bench/busybox:latest";
const USAGE: &str = "usage: node-loss --offload BIN [--runs N] [--grace SECS] [--modes cut,freeze]

  --offload BIN   the offload binary (release build)
  --runs N        runs per tool and mode; medians are reported (default 3)
  --grace SECS    offload's swarm.node_lost_grace_secs (default 15, the product's default)
  --modes LIST    how nodes are lost: cut, freeze or both (default cut,freeze)";
const POLL: Duration = Duration::from_millis(200);
const RECOVERY_LIMIT: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cut,
    Freeze,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cut => "cut",
            Mode::Freeze => "freeze",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Offload,
    Swarm,
}

/// One run's figures, in seconds from the failure.
#[derive(Clone, Debug)]
struct Run {
    tool: Tool,
    mode: Mode,
    /// The manager listed the node as down.
    down: Option<f64>,
    /// A new copy ran on another node.
    recovered: f64,
    /// The old copy's process was alive when the new copy was seen running.
    overlap: bool,
    /// From the node's return until its old copy no longer ran.
    stale_stopped: Option<f64>,
}

struct Args {
    offload: PathBuf,
    runs: usize,
    grace: f64,
    modes: Vec<Mode>,
}

fn parse_args() -> Result<Args, String> {
    let mut offload = None;
    let mut runs = 3;
    let mut grace = 15.0;
    let mut modes = vec![Mode::Cut, Mode::Freeze];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--offload" => offload = Some(PathBuf::from(value("--offload")?)),
            "--runs" => {
                runs = value("--runs")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--runs takes a positive number")?
            }
            "--grace" => {
                grace = value("--grace")?
                    .parse()
                    .ok()
                    .filter(|g: &f64| g.is_finite() && *g >= 0.0)
                    .ok_or("--grace takes a number of seconds")?
            }
            "--modes" => {
                modes = value("--modes")?
                    .split(',')
                    .map(|m| match m {
                        "cut" => Ok(Mode::Cut),
                        "freeze" => Ok(Mode::Freeze),
                        other => Err(format!("unknown mode {other:?}: use cut or freeze")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        offload: offload.ok_or("--offload is needed")?,
        runs,
        grace,
        modes,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("node-loss: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-loss: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log(message: &str) {
    eprintln!("[nodeloss] {message}");
}

fn run(args: &Args) -> Result<()> {
    log("starting a three-node swarm");
    let swarm = Swarm::start("nl", 3, IMAGE)?;
    // The manager keeps the swarm: containers run on the two workers, for both tools.
    swarm.docker_output([
        "node",
        "update",
        "--availability",
        "pause",
        swarm.manager().node_id(),
    ])?;
    let server = Server::start(&swarm, &args.offload, args.grace)?;
    let mut runs = Vec::new();
    for &mode in &args.modes {
        for n in 1..=args.runs {
            let run = offload_run(&swarm, &server, mode, n)?;
            log(&format!("offload {} run {n}: {run:?}", mode.name()));
            runs.push(run);
            let run = swarm_run(&swarm, mode, n)?;
            log(&format!("swarm {} run {n}: {run:?}", mode.name()));
            runs.push(run);
        }
    }
    drop(server);
    drop(swarm);
    report(args, &runs);
    Ok(())
}

/// The real offload server on the swarm, and one user.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Server {
    fn start(swarm: &Swarm, bin: &Path, grace: f64) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut config = format!(
            "engine = \"swarm\"\nnetwork = \"default\"\nstop_grace_secs = 1\n\
             workspace_root = \"{}\"\n[swarm]\nmanager = \"{}\"\nnode_lost_grace_secs = {grace}\n",
            dir.path().join("shared/workspaces").display(),
            swarm.manager().host()
        );
        for node in swarm.nodes() {
            config.push_str(&format!(
                "[[swarm.nodes]]\nname = \"{}\"\ndocker_host = \"{}\"\n",
                node.name(),
                node.host()
            ));
        }
        std::fs::write(dir.path().join("server.toml"), config)?;
        let log_file = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(dir.path().join("server.toml"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("server"))
            .env("OFFLOAD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("offload server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            child,
            dir,
            bin: bin.to_owned(),
        };
        let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
            bail!(
                "the server did not start; see its log: {}",
                server.log_tail()
            );
        };
        let token = server.cmd(&[
            "admin",
            "token",
            "create",
            "--user",
            "bench",
            "--data-dir",
            &server.dir.path().join("server").to_string_lossy(),
        ])?;
        let token = token.lines().last().unwrap_or_default().trim().to_owned();
        server.user(&["join", &url, &token])?;
        // Let the server's first reconciler rounds pass before anything is measured.
        std::thread::sleep(Duration::from_secs(2));
        server.child.try_wait()?.map_or(Ok(()), |status| {
            Err(anyhow::anyhow!(
                "the server exited ({status}): {}",
                server.log_tail()
            ))
        })?;
        Ok(server)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin).args(args).output()?;
        if !out.status.success() {
            bail!(
                "offload {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn user(&self, args: &[&str]) -> Result<String> {
        let config = self.dir.path().join("user.toml");
        let mut all = vec!["--config", config.to_str().context("config path")?];
        all.extend_from_slice(args);
        self.cmd(&all)
    }

    fn show(&self, id: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.user(&["show", id, "-o", "json"])?,
        )?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

fn fail(swarm: &Swarm, mode: Mode, node: &str) -> Result<()> {
    match mode {
        Mode::Cut => swarm.cut_off(node),
        Mode::Freeze => swarm.freeze(node),
    }
}

fn restore(swarm: &Swarm, mode: Mode, node: &str) -> Result<()> {
    match mode {
        Mode::Cut => swarm.reconnect(node),
        Mode::Freeze => swarm.thaw(node),
    }
}

fn node_state(swarm: &Swarm, node: &SwarmNode) -> String {
    swarm
        .docker_output([
            "node",
            "inspect",
            "--format",
            "{{.Status.State}}",
            node.node_id(),
        ])
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Running containers on `node`'s engine that match the label filters.
fn running(node: &SwarmNode, filters: &[String]) -> Vec<String> {
    let mut args = vec!["ps".to_owned(), "--quiet".to_owned()];
    for filter in filters {
        args.push("--filter".to_owned());
        args.push(format!("label={filter}"));
    }
    node.engine()
        .docker_output(&args)
        .map(|out| out.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn pid_of(node: &SwarmNode, container: &str) -> Result<i32> {
    let out = node
        .engine()
        .docker_output(["inspect", "--format", "{{.State.Pid}}", container])?;
    out.trim().parse().context("a container PID")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Fails `victim`, waits until a copy matching `filters` runs on another node, restores
/// the node and waits until the old copy (`old_pid`) is gone.
fn measure(
    swarm: &Swarm,
    tool: Tool,
    mode: Mode,
    victim: &SwarmNode,
    filters: &[String],
    old_pid: i32,
) -> Result<Run> {
    let start = Instant::now();
    fail(swarm, mode, victim.name())?;
    let mut down = None;
    let recovered = loop {
        if down.is_none() && node_state(swarm, victim) == "down" {
            down = Some(start.elapsed().as_secs_f64());
        }
        let elsewhere = swarm
            .nodes()
            .iter()
            .filter(|n| n.node_id() != victim.node_id())
            .any(|n| !running(n, filters).is_empty());
        if elsewhere {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > RECOVERY_LIMIT {
            restore(swarm, mode, victim.name())?;
            bail!(
                "{tool:?} did not run the container again within {}s",
                RECOVERY_LIMIT.as_secs()
            );
        }
        std::thread::sleep(POLL);
    };
    let overlap = alive(old_pid);
    restore(swarm, mode, victim.name())?;
    let back = Instant::now();
    let mut stale_stopped = None;
    while back.elapsed() < RECOVERY_LIMIT {
        if !alive(old_pid) {
            stale_stopped = Some(back.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(POLL);
    }
    // The node is ready again before the next run.
    let ready = Instant::now();
    while node_state(swarm, victim) != "ready" {
        if ready.elapsed() > RECOVERY_LIMIT {
            bail!("node {} did not come back", victim.name());
        }
        std::thread::sleep(POLL);
    }
    Ok(Run {
        tool,
        mode,
        down,
        recovered,
        overlap,
        stale_stopped,
    })
}

fn offload_run(swarm: &Swarm, server: &Server, mode: Mode, n: usize) -> Result<Run> {
    let name = format!("nl-{}-{n}", mode.name());
    let id = server.user(&["start", "--name", &name, IMAGE, "--", "sleep", "86400"])?;
    let id = id.lines().last().unwrap_or_default().trim().to_owned();
    let shown = server.show(&id)?;
    let node_id = shown["node"].as_str().context("a node")?.to_owned();
    let generation = shown["generation"].as_u64().context("a generation")?;
    let victim = swarm.node_by_id(&node_id).context("the container's node")?;
    let old = running(victim, &[format!("offload.id={id}")]);
    let old = old.first().context("the container runs on its node")?;
    let pid = pid_of(victim, old)?;
    let filters = [
        format!("offload.id={id}"),
        format!("offload.generation={}", generation + 1),
    ];
    let run = measure(swarm, Tool::Offload, mode, victim, &filters, pid)?;
    server.user(&["rm", &id])?;
    Ok(run)
}

fn swarm_run(swarm: &Swarm, mode: Mode, n: usize) -> Result<Run> {
    let name = format!("sw-{}-{n}", mode.name());
    swarm.docker_output([
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--endpoint-mode",
        "dnsrr",
        "--constraint",
        "node.role==worker",
        "--stop-grace-period",
        "1s",
        IMAGE,
        "sleep",
        "86400",
    ])?;
    let filters = [format!("com.docker.swarm.service.name={name}")];
    let placed = Instant::now();
    let (victim, old) = loop {
        let found = swarm
            .nodes()
            .iter()
            .find_map(|node| running(node, &filters).first().map(|c| (node, c.clone())));
        if let Some(found) = found {
            break found;
        }
        if placed.elapsed() > RECOVERY_LIMIT {
            bail!("the service {name} did not start");
        }
        std::thread::sleep(POLL);
    };
    let pid = pid_of(victim, &old)?;
    let run = measure(swarm, Tool::Swarm, mode, victim, &filters, pid)?;
    swarm.docker_output(["service", "rm", &name])?;
    Ok(run)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn secs(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.1}"))
}

fn report(args: &Args, runs: &[Run]) {
    let of = |tool: Tool, mode: Mode| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.tool == tool && r.mode == mode)
            .collect()
    };
    println!(
        "## Node-loss recovery, median of {} runs (seconds from the failure)",
        args.runs
    );
    println!();
    println!(
        "offload's `swarm.node_lost_grace_secs` = {}; Swarm's restart condition `any`, defaults otherwise.",
        args.grace
    );
    println!();
    println!(
        "| node lost by | manager saw it down | offload: running elsewhere | Swarm: running elsewhere | offload ÷ Swarm | old copy alive when the new one ran: offload / Swarm | old copy stopped after the node's return: offload / Swarm |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &mode in &args.modes {
        let (o, s) = (of(Tool::Offload, mode), of(Tool::Swarm, mode));
        let down = median(o.iter().chain(&s).filter_map(|r| r.down).collect());
        let orec = median(o.iter().map(|r| r.recovered).collect());
        let srec = median(s.iter().map(|r| r.recovered).collect());
        let ratio = match (orec, srec) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        let overlaps =
            |rs: &[&Run]| format!("{}/{}", rs.iter().filter(|r| r.overlap).count(), rs.len());
        let stale = |rs: &[&Run]| secs(median(rs.iter().filter_map(|r| r.stale_stopped).collect()));
        let how = match mode {
            Mode::Cut => "link cut (`cut`)",
            Mode::Freeze => "dockerd frozen (`freeze`)",
        };
        println!(
            "| {how} | {} | **{}** | **{}** | {ratio} | {} / {} | {} / {} |",
            secs(down),
            secs(orec),
            secs(srec),
            overlaps(&o),
            overlaps(&s),
            stale(&o),
            stale(&s)
        );
    }
    println!();
    println!("### Every run (seconds)");
    println!();
    println!(
        "| tool | mode | manager saw it down | running elsewhere | old copy alive then | old copy stopped after return |"
    );
    println!("|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {:?} | {} | {} | {:.1} | {} | {} |",
            r.tool,
            r.mode.name(),
            secs(r.down),
            r.recovered,
            if r.overlap { "yes" } else { "no" },
            secs(r.stale_stopped)
        );
    }
}
