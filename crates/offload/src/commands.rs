//! Each subcommand: parse, one library call, print.

use std::path::{Path, PathBuf};

use anyhow::Context;
use offload_core::UserName;
use offload_core::api::{ContainerView, StartRequest};
use offload_server::ServerConfig;

use offload_core::Location;
use offload_core::api::{
    CloudDrainReport, DashboardLink, DeviceView, DrainReport, DrainRequest, MonitorView,
    MoveEstimate, MoveRequest, PressureRequest, QueryView,
};

use crate::cli::{AdminCommand, Cli, Command, Output, ServerArgs, Target, TokenCommand};
use crate::shell::urlencode;
use offload_agent::client::{Api, ClientConfig, config_path};

/// Runs the command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let config = cli.config;
    match cli.command {
        Command::Server(args) => {
            offload_server::run(server_config(config.as_deref(), args)?).await?;
            Ok(0)
        }
        Command::Admin(AdminCommand::Token(TokenCommand::Create {
            user,
            admin,
            data_dir,
            ttl,
        })) => {
            let user = UserName::parse(&user)?;
            let defaults = ServerConfig::default();
            let data_dir = data_dir.unwrap_or(defaults.data_dir);
            let token = offload_server::create_join_token(
                &data_dir,
                &user,
                admin,
                ttl.unwrap_or(defaults.join_token_ttl_secs),
            )?;
            eprintln!(
                "join token for {user}{} (single use, expires in {} s):",
                if admin { " (admin)" } else { "" },
                ttl.unwrap_or(defaults.join_token_ttl_secs)
            );
            println!("{token}");
            Ok(0)
        }
        Command::Join { server_url, token } => {
            let path = config_path(config.as_deref())?;
            let joined = offload_agent::client::join(&server_url, &token).await?;
            joined.save(&path)?;
            println!(
                "joined {} as {}; credentials saved to {}",
                joined.server,
                joined.user,
                path.display()
            );
            Ok(0)
        }
        Command::Start(args) => {
            let api = connect(config.as_deref())?;
            let request = StartRequest {
                image: args.image,
                name: args.name,
                cpus: args.cpus,
                memory: args.memory,
                command: args.command,
                env: crate::env::collect(&args.env_file, &args.env)?,
            };
            let view: ContainerView = api.post("/v1/containers", &request).await?;
            println!("{}", view.id);
            Ok(0)
        }
        Command::Restart { id } => {
            let api = connect(config.as_deref())?;
            let view: ContainerView = api
                .post(
                    &format!("/v1/containers/{}/start", urlencode(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("{}", view.id);
            Ok(0)
        }
        Command::Ls { output } => {
            let api = connect(config.as_deref())?;
            let views: Vec<ContainerView> = api.get("/v1/containers").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
                Output::Table => print_table(&views, false),
            }
            Ok(0)
        }
        Command::Show { id, output } => {
            let api = connect(config.as_deref())?;
            let view: ContainerView = api
                .get(&format!("/v1/containers/{}", urlencode(&id)))
                .await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Output::Table => print_details(&view),
            }
            Ok(0)
        }
        Command::Shell { id, tty, command } => {
            let api = connect(config.as_deref())?;
            crate::shell::run(&api, &id, command, tty).await
        }
        Command::SshConfig { write } => crate::ssh::config_command(config.as_deref(), write).await,
        Command::Ssh(args) => crate::ssh::ssh_command(config.as_deref(), args).await,
        Command::Cp {
            src,
            dst,
            follow_link,
        } => {
            let api = connect(config.as_deref())?;
            crate::cp::run(&api, &src, &dst, follow_link).await
        }
        Command::PortForward { id, ports, wait } => {
            let path = absolute(&config_path(config.as_deref())?)?;
            let api = Api::new(ClientConfig::load(&path)?)?;
            crate::forward::run(api, path, &id, &ports, std::time::Duration::from_secs(wait)).await
        }
        Command::Logs {
            id,
            follow,
            tail,
            timestamps,
            since,
        } => {
            let api = connect(config.as_deref())?;
            let query = offload_core::logs::LogsQuery {
                follow,
                tail: tail.and_then(|t| t.0),
                since_ns: since.unwrap_or(0),
                timestamps,
            };
            crate::logs::run(&api, &id, query).await
        }
        Command::Stop { id } => {
            let api = connect(config.as_deref())?;
            let view: ContainerView = api
                .post(
                    &format!("/v1/containers/{}/stop", urlencode(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("{}", view.id);
            Ok(0)
        }
        Command::Rm { id } => {
            let api = connect(config.as_deref())?;
            api.delete(&format!("/v1/containers/{}", urlencode(&id)))
                .await?;
            println!("{id}");
            Ok(0)
        }
        Command::Agent(args) => {
            let client_path = absolute(&config_path(config.as_deref())?)?;
            let client = ClientConfig::load(&client_path)?;
            let data_dir = match args.data_dir {
                Some(dir) => absolute(&dir)?,
                None => offload_agent::default_data_dir()?,
            };
            let device = match args.device {
                Some(device) => device,
                None => rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned(),
            };
            if offload_core::Name::parse(&device).is_err() {
                anyhow::bail!(
                    "invalid device name {device:?}: letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit (set one with --device)"
                );
            }
            let cpus = match args.cpus {
                Some(c) if !(c.is_finite() && c > 0.0) => {
                    anyhow::bail!("invalid --cpus {c}: a number of cores above 0")
                }
                c => c,
            };
            let memory_bytes = match args.memory.as_deref() {
                Some(text) => Some(
                    offload_core::parse_memory(text)
                        .map_err(|e| anyhow::anyhow!("invalid --memory {text:?}: {e}"))?,
                ),
                None => None,
            };
            let options = offload_agent::AgentOptions {
                docker_host: args.docker_host,
                data_dir,
                network: args.network,
                stop_grace_secs: args.stop_grace,
                device,
                offer: offload_agent::Offer { cpus, memory_bytes },
                preferences: offload_agent::Preferences {
                    auto_accept: args.auto_accept,
                    auto_return: args.auto_return,
                },
                config_path: Some(client_path),
            };
            offload_agent::run(client, options).await?;
            Ok(0)
        }
        Command::Move {
            id,
            to,
            force,
            detach,
            device,
            dry_run,
            output,
        } => {
            if device.is_some() && to == Target::Cloud {
                anyhow::bail!(
                    "--device names where a move to the edge goes; a move to the cloud comes from the device the container is on"
                );
            }
            let api = connect(config.as_deref())?;
            let request = MoveRequest {
                to: match to {
                    Target::Edge => Location::Edge,
                    Target::Cloud => Location::Cloud,
                },
                force,
                device,
            };
            if dry_run {
                let estimate: MoveEstimate = api
                    .post(
                        &format!("/v1/containers/{}/move/estimate", urlencode(&id)),
                        &request,
                    )
                    .await?;
                match output {
                    Output::Table => println!("{}", crate::progress::describe_estimate(&estimate)),
                    Output::Json => println!("{}", serde_json::to_string_pretty(&estimate)?),
                }
                return Ok(0);
            }
            let view: ContainerView = api
                .post(&format!("/v1/containers/{}/move", urlencode(&id)), &request)
                .await?;
            if detach {
                println!("{}", view.id);
                return Ok(0);
            }
            crate::progress::follow_move(&api, &view.id).await
        }
        Command::Admin(AdminCommand::Pressure { user }) => {
            let api = connect(config.as_deref())?;
            let asked: Vec<QueryView> = api
                .post("/v1/admin/pressure", &PressureRequest { user })
                .await?;
            if asked.is_empty() {
                println!(
                    "nobody to ask: no running cloud container has an owner with a connected agent"
                );
            }
            for q in asked {
                println!(
                    "{}  {} ({})  asked {}",
                    q.id, q.container_name, q.container_id, q.owner
                );
            }
            Ok(0)
        }
        Command::Admin(AdminCommand::Token(TokenCommand::Revoke { user, token })) => {
            crate::admin::revoke(&connect(config.as_deref())?, user, token).await
        }
        Command::Admin(AdminCommand::Audit {
            user,
            since,
            limit,
            output,
        }) => crate::admin::audit(&connect(config.as_deref())?, user, since, limit, output).await,
        Command::Admin(AdminCommand::Users { output }) => {
            crate::admin::users(&connect(config.as_deref())?, output).await
        }
        Command::Admin(AdminCommand::User(command)) => {
            crate::admin::user(&connect(config.as_deref())?, command).await
        }
        Command::Admin(AdminCommand::Ls { output }) => {
            crate::admin::ls(&connect(config.as_deref())?, output).await
        }
        Command::Admin(AdminCommand::Drain {
            node: None,
            end,
            output,
        }) => {
            let api = connect(config.as_deref())?;
            if end {
                api.delete("/v1/admin/cloud/drain").await?;
                println!("the cloud drain ended: containers start and return again");
                return Ok(0);
            }
            let report: CloudDrainReport = api
                .post("/v1/admin/cloud/drain", &serde_json::json!({}))
                .await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    println!(
                        "the cloud is draining: nothing new starts or returns there until \
                         `offload admin drain --end`"
                    );
                    for q in &report.asked {
                        println!(
                            "{}  {}'s owner {} is asked (query {})",
                            q.container_id, q.container_name, q.owner, q.id
                        );
                    }
                    for stay in &report.not_asked {
                        println!("{}  not asked: {}", stay.id, stay.reason);
                    }
                }
            }
            Ok(0)
        }
        Command::Admin(AdminCommand::Drain {
            node: Some(node),
            output,
            ..
        }) => {
            let api = connect(config.as_deref())?;
            let report: DrainReport = api.post("/v1/admin/drain", &DrainRequest { node }).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    println!("node {} ({}) is drained", report.name, report.node);
                    for id in &report.moving {
                        println!("{id}  moving to another node");
                    }
                    for stay in &report.staying {
                        println!("{}  stays for now: {}", stay.id, stay.reason);
                    }
                    if report.moving.is_empty() && report.staying.is_empty() {
                        println!("no container runs there");
                    }
                }
            }
            Ok(0)
        }
        Command::Devices { output } => {
            let api = connect(config.as_deref())?;
            let devices: Vec<DeviceView> = api.get("/v1/devices").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&devices)?),
                Output::Table if devices.is_empty() => {
                    println!("no device is connected: run `offload agent` on your machine");
                }
                Output::Table => {
                    println!(
                        "{:<16}  {:<20}  {:<6}  {:>5}  {:>9}  {:>9}  CONTAINERS",
                        "DEVICE", "HOST", "ARCH", "CPUS", "MEMORY", "DISK FREE"
                    );
                    for d in devices {
                        println!(
                            "{:<16}  {:<20}  {:<6}  {:>5}  {:>9}  {:>9}  {}",
                            d.name,
                            d.hostname,
                            d.architecture,
                            d.cpus,
                            crate::cp::human_bytes(d.memory_bytes),
                            crate::cp::human_bytes(d.free_disk_bytes),
                            if d.containers.is_empty() {
                                "-".to_owned()
                            } else {
                                d.containers.join(" ")
                            }
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Queries { output } => {
            let api = connect(config.as_deref())?;
            let queries: Vec<QueryView> = api.get("/v1/queries").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&queries)?),
                Output::Table => {
                    println!(
                        "{:<12}  {:<20}  {:<10}  {:>8}  REASON",
                        "QUERY", "CONTAINER", "STATE", "LEFT"
                    );
                    let at = offload_server::controller::now();
                    for q in queries {
                        let left = if q.state == "pending" {
                            format!("{}s", (q.deadline_at - at).max(0))
                        } else {
                            "-".to_owned()
                        };
                        // A query about a move inside the cloud says so; its reason names
                        // the node.
                        let reason = match (&q.to_node, &q.device) {
                            (Some(_), _) => format!("(to another node) {}", q.reason),
                            (None, Some(device)) => format!("(to {device}) {}", q.reason),
                            (None, None) => q.reason.clone(),
                        };
                        println!(
                            "{:<12}  {:<20}  {:<10}  {:>8}  {reason}",
                            q.id, q.container_name, q.state, left
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Accept { qid } => answer(config.as_deref(), &qid, "accept").await,
        Command::Decline { qid } => answer(config.as_deref(), &qid, "decline").await,
        Command::Dashboard { no_open } => dashboard(config.as_deref(), no_open).await,
        Command::Top { output } => {
            let api = connect(config.as_deref())?;
            let view: MonitorView = api.get("/v1/monitor").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Output::Table => print_monitor(&view),
            }
            Ok(0)
        }
        Command::Events {
            follow,
            tail,
            after,
            output,
        } => crate::events::run(connect(config.as_deref())?, follow, tail, after, output).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "offload", &mut script);
            print_bytes(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            man_page(&mut page)?;
            print_bytes(&page)
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The manual page: offload(1) with every subcommand (and theirs) as a section of it.
fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    fn subcommands(out: &mut Vec<u8>, parent: &clap::Command, path: &str) -> std::io::Result<()> {
        for sub in parent.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{path} {}", sub.get_name());
            let about = sub
                .get_long_about()
                .or(sub.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default();
            let usage = sub.clone().bin_name(&name).render_usage().to_string();
            let usage = usage.trim_start_matches("Usage: ");
            out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
            out.extend_from_slice(
                format!(".B {}\n.PP\n{}\n", roff_text(usage), roff_text(&about)).as_bytes(),
            );
            for arg in sub
                .get_arguments()
                .filter(|a| !a.is_hide_set() && a.get_id() != "help")
            {
                let flag = match (arg.get_short(), arg.get_long()) {
                    (Some(s), Some(l)) => format!("-{s}, --{l}"),
                    (None, Some(l)) => format!("--{l}"),
                    (Some(s), None) => format!("-{s}"),
                    (None, None) => arg.get_id().to_string().to_uppercase(),
                };
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                out.extend_from_slice(
                    format!(".TP\n.B {}\n{}\n", roff_text(&flag), roff_text(&help)).as_bytes(),
                );
            }
            subcommands(out, sub, &name)?;
        }
        Ok(())
    }
    subcommands(out, &command, "offload")?;
    man.render_version_section(out)?;
    Ok(())
}

/// Text safe in a roff line: backslashes escaped, and a leading `.` or `'` (a request)
/// guarded.
fn roff_text(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `offload accept` / `offload decline`.
async fn answer(config: Option<&Path>, qid: &str, verb: &str) -> anyhow::Result<i32> {
    let api = connect(config)?;
    let q: QueryView = api
        .post(
            &format!("/v1/queries/{}/{verb}", urlencode(qid)),
            &serde_json::json!({}),
        )
        .await?;
    println!("{} {}", q.id, q.state);
    Ok(0)
}

/// Prints a one-time dashboard link: the secret travels in the URL's fragment, which the
/// browser never sends to any server, and the page exchanges it once for a session.
async fn dashboard(config: Option<&Path>, no_open: bool) -> anyhow::Result<i32> {
    use std::io::IsTerminal;

    let api = connect(config)?;
    let link: DashboardLink = api
        .post("/v1/dashboard/link", &serde_json::json!({}))
        .await?;
    let url = format!(
        "{}/#link={}",
        api.config.server.trim_end_matches('/'),
        link.code
    );
    let left = (link.expires_at - offload_server::controller::now()).max(0);
    let server = api.config.server.trim_end_matches('/');
    eprintln!(
        "This link signs a browser in as you, once, in the next {} minutes. Browsers do not \
         know this server's own certificate authority: import {server}/v1/ca into yours (the \
         one `offload join` checked against your join token), or accept its certificate once.",
        (left + 59) / 60
    );
    println!("{url}");
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_open && desktop && std::io::stdout().is_terminal() {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|s| s.success()) {
            eprintln!("could not open a browser: open the link above yourself");
        }
    }
    Ok(0)
}

fn connect(flag: Option<&Path>) -> anyhow::Result<Api> {
    let path = config_path(flag)?;
    Api::new(ClientConfig::load(&path)?)
}

/// Defaults, then the file, then `OFFLOAD_*` environment variables (through clap), then
/// flags.
fn server_config(file: Option<&Path>, args: ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut config = match file {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(host) = args.docker_host {
        config.docker_host = Some(host);
    }
    if let Some(network) = args.network {
        config.network = network;
    }
    if let Some(grace) = args.stop_grace {
        config.stop_grace_secs = grace;
    }
    if let Some(engine) = args.engine {
        config.engine = engine;
    }
    config.data_dir = absolute(&config.data_dir)?;
    config.validate()?;
    Ok(config)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("cannot resolve the data directory")?
        .join(path))
}

fn print_monitor(v: &MonitorView) {
    println!(
        "source: {}   {}",
        v.source,
        if v.under_pressure {
            "UNDER PRESSURE"
        } else {
            "ok"
        }
    );
    println!("{}", v.reason);
    if let Some(since) = v.draining_since {
        let ago = (offload_server::controller::now() - since).max(0);
        println!("the operator drains the cloud (for {ago} s): nothing new starts there");
    }
    println!(
        "{:<8}  {:>6}  {:>8}  {:>5}  {:>5}  PRESSURE",
        "RESOURCE", "USAGE", "FORECAST", "LOW", "HIGH"
    );
    for r in &v.resources {
        println!(
            "{:<8}  {:>5.1}%  {:>7.1}%  {:>4.0}%  {:>4.0}%  {}",
            r.resource,
            r.usage * 100.0,
            r.forecast * 100.0,
            r.low * 100.0,
            r.high * 100.0,
            if r.pressure { "yes" } else { "no" }
        );
    }
    println!("pending queries: {}", v.pending_queries);
    if !v.nodes.is_empty() {
        println!(
            "{:<20}  {:>6}  {:>10}  {:>6}  {:>6}  STATE",
            "NODE", "CPUS", "MEMORY", "CPU", "MEM"
        );
        for n in &v.nodes {
            let state = match (n.schedulable, n.under_pressure, n.stuck) {
                (_, true, true) => "under pressure, no other node has room",
                (_, true, false) => "under pressure",
                (false, false, _) => "takes no containers",
                (true, false, _) => "ok",
            };
            println!(
                "{:<20}  {:>6.2}  {:>10}  {:>5.1}%  {:>5.1}%  {state}",
                n.name,
                n.cpus,
                offload_core::size::format_bytes(n.memory_bytes),
                n.cpu * 100.0,
                n.mem * 100.0,
            );
        }
    }
    let nodes = v.containers.iter().any(|c| c.node.is_some());
    print!(
        "{:<12}  {:<12}  {:<8}  {:>6}  {:>10}",
        "CONTAINER", "OWNER", "WHERE", "CPUS", "MEMORY"
    );
    println!("{}", if nodes { "  NODE" } else { "" });
    for c in &v.containers {
        print!(
            "{:<12}  {:<12}  {:<8}  {:>6.2}  {:>10}",
            c.id,
            c.owner,
            c.location.as_str(),
            c.cpu_cores,
            offload_core::size::format_bytes(c.memory_bytes)
        );
        match (nodes, &c.node) {
            (true, Some(node)) => println!("  {node}"),
            (true, None) => println!("  -"),
            (false, _) => println!(),
        }
    }
}

fn short(id: Option<&str>) -> String {
    id.map(|i| i.chars().take(12).collect())
        .unwrap_or_else(|| "-".to_owned())
}

/// The containers as a table; `owners` adds an OWNER column (`offload admin ls`).
pub(crate) fn print_table(views: &[ContainerView], owners: bool) {
    // The NODE column appears only on a cluster, so single-engine output is unchanged.
    let nodes = views.iter().any(|v| v.node.is_some());
    let node_header = if nodes { "  NODE" } else { "" };
    // Likewise the recovery point, only when a container runs at the edge.
    let lags = views.iter().any(|v| v.sync_lag_secs.is_some());
    let lag_header = if lags { "  RECOVERY POINT" } else { "" };
    let owner_header = if owners {
        format!("{:<16}  ", "OWNER")
    } else {
        String::new()
    };
    println!(
        "{owner_header}{:<12}  {:<20}  {:<28}  {:<8}  {:<11}  {:>3}  {:<12}{node_header}{lag_header}",
        "ID", "NAME", "IMAGE", "LOCATION", "STATE", "GEN", "RUNTIME ID"
    );
    for v in views {
        let node = match (nodes, &v.node) {
            (true, Some(node)) => format!("  {node}"),
            (true, None) => "  -".to_owned(),
            (false, _) => String::new(),
        };
        let owner = if owners {
            format!("{:<16}  ", v.owner)
        } else {
            String::new()
        };
        let lag = match (lags, v.sync_lag_secs) {
            (true, Some(secs)) => format!("  {}", recovery_point(secs)),
            (true, None) => "  -".to_owned(),
            (false, _) => String::new(),
        };
        println!(
            "{owner}{:<12}  {:<20}  {:<28}  {:<8}  {:<11}  {:>3}  {:<12}{node}{lag}",
            v.id,
            v.name,
            v.image,
            v.location.as_str(),
            v.state.as_str(),
            v.generation,
            short(v.runtime_id.as_deref())
        );
    }
}

/// A recovery point for people: "up to date", or how far behind the cloud's copy is.
fn recovery_point(secs: u64) -> String {
    match secs {
        0 => "up to date".to_owned(),
        s if s < 120 => format!("{s} s behind"),
        s if s < 7200 => format!("{} min behind", s / 60),
        s => format!("{} h behind", s / 3600),
    }
}

/// Where a move goes, for people.
fn whither(direction: offload_core::MoveDirection) -> &'static str {
    match direction {
        offload_core::MoveDirection::ToEdge => "to the edge",
        offload_core::MoveDirection::ToCloud => "to the cloud",
        offload_core::MoveDirection::ToNode => "to another node of the cloud",
    }
}

fn print_details(v: &ContainerView) {
    println!("id:          {}", v.id);
    println!("name:        {}", v.name);
    println!("owner:       {}", v.owner);
    println!("image:       {}", v.image);
    if !v.command.is_empty() {
        println!("command:     {}", v.command.join(" "));
    }
    println!("location:    {}", v.location.as_str());
    println!("state:       {}", v.state.as_str());
    println!("generation:  {}", v.generation);
    println!("runtime id:  {}", v.runtime_id.as_deref().unwrap_or("-"));
    if let Some(node) = &v.node {
        println!("node:        {node}");
    }
    if let Some(device) = &v.device {
        let when = if v.location == Location::Edge {
            ""
        } else {
            " (last)"
        };
        println!("device:      {device}{when}");
    }
    if let Some(secs) = v.sync_lag_secs {
        println!(
            "recovery:    {} (the work of this container the cloud may not have yet)",
            recovery_point(secs)
        );
    }
    println!(
        "limits:      {} cpus, {}",
        v.cpus,
        offload_core::size::format_bytes(v.memory_bytes)
    );
    if let Some(reason) = &v.reason {
        println!("reason:      {reason}");
    }
    if let Some(m) = &v.moving {
        println!(
            "moving:      {} ({})",
            whither(m.direction),
            m.step.as_str()
        );
    }
    if let Some(m) = &v.last_move {
        println!(
            "last move:   {}, {}{} (generation {} -> {})",
            whither(m.direction),
            m.outcome.as_str().replace('_', " "),
            if m.forced { ", forced" } else { "" },
            m.from_generation,
            m.to_generation
        );
        if let Some(reason) = m.outcome.reason() {
            println!("             {reason}");
        }
        println!(
            "             {}",
            crate::progress::describe_timings(&m.timings)
        );
        if let Some(p) = &m.timings.predicted {
            println!("predicted:   {}", crate::progress::describe_prediction(p));
        }
    }
}
