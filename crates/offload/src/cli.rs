//! The command line, as DESIGN.md §9 fixes it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "offload",
    version,
    about = "Move containers between a busy cloud host and your own machine, without losing work"
)]
pub struct Cli {
    /// Config file: the server's TOML for `offload server`, otherwise the client's
    /// credentials (default: $OFFLOAD_CONFIG, then ~/.config/offload/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Server(_) | Command::Agent(_) => "info",
            _ => "warn",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the offload server on the cloud host.
    Server(ServerArgs),
    /// Administration on the server host.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Join a server with a token from its operator and store the credentials.
    Join {
        /// e.g. https://cloud.example.org:7443
        server_url: String,
        /// The join token printed by `offload admin token create`.
        token: String,
    },
    /// Create a container in the cloud and print its id.
    Start(StartArgs),
    /// Start a stopped container again.
    Restart {
        /// Container id or name.
        id: String,
    },
    /// List your containers.
    Ls {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one container.
    Show {
        /// Container id or name.
        id: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Open a shell in a container, wherever it runs; `-- CMD...` runs one command.
    Shell {
        /// Container id or name.
        id: String,
        /// Allocate a terminal for CMD too (a shell without CMD always gets one when
        /// stdin is a terminal).
        #[arg(short = 't', long)]
        tty: bool,
        /// Command and arguments.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print an OpenSSH config with a `NAME.offload` host for each of your containers;
    /// `--write` saves it under ~/.ssh and includes it from ~/.ssh/config.
    SshConfig {
        /// Write ~/.ssh/offload.config (0600) and add one `Include` line to ~/.ssh/config.
        #[arg(long)]
        write: bool,
    },
    /// Connect with the system's `ssh` to a container, wherever it runs; `-- CMD...` runs
    /// one command.
    Ssh(SshArgs),
    /// Copy files between this machine and a container, wherever it runs: exactly one
    /// side is ID:PATH (relative paths start at /workspace). Directories copy
    /// recursively with modes and mtimes; into an existing directory they land inside it;
    /// SRC/. copies a directory's contents.
    Cp {
        /// What to copy: a local path or ID:PATH.
        src: String,
        /// Where to: a local path or ID:PATH.
        dst: String,
        /// Copy what a symlink SRC points to instead of the symlink.
        #[arg(short = 'L', long)]
        follow_link: bool,
    },
    /// Forward local ports to ports in a container, wherever it runs: `REMOTE` listens on
    /// 127.0.0.1:REMOTE, `LOCAL:REMOTE` on 127.0.0.1:LOCAL (0 picks a free port and prints
    /// it). Runs until interrupted and follows the container across moves: while it moves,
    /// new connections wait and then reach it where it runs.
    #[command(name = "port-forward")]
    PortForward {
        /// Container id or name.
        id: String,
        /// `[LOCAL:]REMOTE`, one or more.
        #[arg(required = true, value_name = "[LOCAL:]REMOTE", value_parser = crate::forward::parse_spec)]
        ports: Vec<crate::forward::PortSpec>,
        /// Seconds a new connection waits for a moving or unreachable container before
        /// it is closed.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        wait: u64,
    },
    /// Print a container's output, wherever it runs: its stdout on stdout and its stderr
    /// on stderr, in the order written, as `docker logs` does. With -f, keep printing until
    /// it stops, following it across moves (after a move, the new copy's output from its
    /// start).
    Logs {
        /// Container id or name.
        id: String,
        /// Keep printing what it writes, across moves, until it stops.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with the last N lines only (or `all`).
        #[arg(long, value_name = "N", value_parser = crate::logs::parse_tail)]
        tail: Option<crate::logs::Tail>,
        /// Start each line with its time (RFC 3339, UTC).
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Only lines written since T: a duration back from now (10m, 1h30m), an RFC 3339
        /// time (2024-05-01T12:00:00Z) or Unix seconds.
        #[arg(long, value_name = "T", value_parser = crate::logs::parse_since)]
        since: Option<u64>,
    },
    /// Stop a container; its workspace stays.
    Stop {
        /// Container id or name.
        id: String,
    },
    /// Remove a container and its workspace.
    Rm {
        /// Container id or name.
        id: String,
    },
    /// Run the agent on your machine: it runs containers moved here and syncs their
    /// workspaces back to the cloud.
    Agent(AgentArgs),
    /// Move a container to your machine (edge) or back to the cloud.
    Move {
        /// Container id or name.
        id: String,
        /// Where to.
        #[arg(long, value_enum)]
        to: Target,
        /// To the cloud even though the agent is unreachable: the cloud copy starts from
        /// the last synced files; the edge copy's later changes are kept as a conflict set.
        #[arg(long)]
        force: bool,
        /// Return at once instead of following the move.
        #[arg(long)]
        detach: bool,
        /// To the edge: which of your devices (its agent's `--device` name) [default: the
        /// connected one that can run it with the most room].
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Say what the move would do (the bytes that would cross, the predicted
        /// downtime) without moving anything.
        #[arg(long, conflicts_with_all = ["force", "detach"])]
        dry_run: bool,
        /// How a dry run prints its estimate.
        #[arg(short, long, value_enum, default_value_t, requires = "dry_run")]
        output: Output,
    },
    /// List your connected devices: what each offers and runs.
    Devices {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// List the server's requests to move your containers to your machine.
    Queries {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Accept a query: the container moves to your machine.
    Accept {
        /// Query id.
        qid: String,
    },
    /// Decline a query: the container stays in the cloud.
    Decline {
        /// Query id.
        qid: String,
    },
    /// The server's events: your containers' starts, moves (each phase), stops and
    /// removals, queries, your agent, and the cloud's pressure (admins: everyone's).
    Events {
        /// Keep printing events as they happen; a dropped connection resumes after the last
        /// event printed.
        #[arg(short, long)]
        follow: bool,
        /// How many earlier events to print first.
        #[arg(long, default_value_t = 50)]
        tail: usize,
        /// Start after this event id (as printed with `-o json`) instead of the latest.
        #[arg(long)]
        after: Option<u64>,
        /// `json`: one JSON object per line.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print a one-time link that signs a browser in to the dashboard (valid for five
    /// minutes), and open it when this runs in a desktop session's terminal.
    Dashboard {
        /// Only print the link.
        #[arg(long)]
        no_open: bool,
    },
    /// The resource monitor: usage, forecast, watermarks, pressure, containers.
    Top {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show offload at work on this machine: server, user, container, move, cleanup.
    Demo(DemoArgs),
    /// Print a completion script for a shell, e.g.
    /// `offload completions bash > /etc/bash_completion.d/offload`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `offload man | man -l -`.
    Man,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Edge,
    Cloud,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Docker Engine API endpoint of this machine's engine [default: $DOCKER_HOST, then
    /// the local socket].
    #[arg(long, value_name = "URI")]
    pub docker_host: Option<String>,
    /// Workspaces and state [default: ~/.local/share/offload].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Network for containers run here: default, none, or an engine network name.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Seconds between SIGTERM and SIGKILL when a container stops here.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stop_grace: u32,
    /// Accept the server's requests to move containers here without asking.
    #[arg(long)]
    pub auto_accept: bool,
    /// Let the server move containers back when the cloud has room again.
    #[arg(long)]
    pub auto_return: bool,
    /// This device's name among your devices (letters, digits, '.', '_', '-'): each of
    /// your machines runs its own agent under its own name [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Cores offload's containers may use here, at most [default: all the engine has].
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Memory offload's containers may use here, at most, e.g. 4g [default: all the
    /// engine has].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
}

const SERVER_CONFIG_HELP: &str = "\
Config file keys (TOML; flags override them), with their defaults:
  listen = \"0.0.0.0:7443\"          data_dir = \"/var/lib/offload\"
  docker_host = (DOCKER_HOST)        network = \"default\"   (default | none | NAME)
  default_cpus = 1.0  max_cpus = 4.0  default_memory = \"1g\"  max_memory = \"8g\"
  max_containers_per_user = 20       stop_grace_secs = 10
  tls_sans = []                      join_token_ttl_secs = 86400
  header_read_timeout_secs = 10      idle_timeout_secs = 120
  body_read_timeout_secs = 30        (connections closed / requests failed after these)
  max_connections = 1024             max_connections_per_address = 64
  engine = \"docker\"                  (docker | swarm)
  workspace_root = (DATA_DIR/workspaces)  on a swarm: a shared filesystem mounted
                                     at this same path on every node
  cloud_moves = \"notify\"             on a swarm, moves from a busy node to one with
                                     room: notify (tell the owner, then move) | ask

[swarm]                              with engine = \"swarm\"
  manager = (docker_host)            a swarm manager's Docker host
  [[swarm.nodes]]                    one per node: name = \"..\", docker_host = \"..\"
                                     (the node's own engine, for shells and readings),
                                     cpus = N, memory = \"16g\" (optional: the capacity
                                     its load is measured against; default the node's)

[monitor]
  interval_secs = 2          seconds between evaluations
  cpu_high = 0.85            cpu_low = 0.60    CPU watermarks (fractions; pressure
  mem_high = 0.90            mem_low = 0.75    starts above high, ends below low)
  sustain_secs = 10          usage must stay above high this long
  horizon_secs = 30          Holt forecast horizon (0 turns forecasting off)
  forecast_alpha = 0.5       forecast_beta = 0.3
  query_deadline_secs = 60   time a user has to answer
  default_action = \"decline\" what an unanswered query becomes (accept | decline)
  decline_cooldown_secs = 600  a declined container is not asked again this long
  ask_cooldown_secs = 120    at most one round of asks this often
  return_after_secs = 30     calm time before containers are offered a return
  move_timeout_secs = 600    an accepted container counts as leaving this long
  node_move_cooldown_secs = 300  on a swarm: a container moved between nodes stays
  source = \"host\"           host: the whole host; pool: managed containers only,
  pool_cpus = 0              against pool_cpus and pool_mem_bytes
  pool_mem_bytes = 0";

#[derive(Args, Debug)]
#[command(after_long_help = SERVER_CONFIG_HELP, after_help = "Config file keys: see --help.")]
pub struct ServerArgs {
    /// Address of the HTTPS API [default: 0.0.0.0:7443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// State, certificates and workspaces [default: /var/lib/offload].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Docker Engine API endpoint of the cloud engine [default: $DOCKER_HOST, then the
    /// local socket].
    #[arg(long, value_name = "URI")]
    pub docker_host: Option<String>,
    /// Network for user containers: default, none, or an engine network name.
    #[arg(long)]
    pub network: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when a container stops [default: 10].
    #[arg(long, value_name = "SECS")]
    pub stop_grace: Option<u32>,
    /// The cloud's engine: docker (one engine) or swarm (see [swarm] in the config file)
    /// [default: docker].
    #[arg(long, value_parser = parse_engine)]
    pub engine: Option<offload_server::config::EngineKind>,
}

fn parse_engine(value: &str) -> Result<offload_server::config::EngineKind, String> {
    offload_server::config::EngineKind::parse(value)
        .ok_or_else(|| format!("unknown engine {value:?}: use docker or swarm"))
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask now, as if pressure were seen: every running cloud container whose owner has a
    /// connected agent gets a query (needs an admin token).
    Pressure {
        /// Ask only this user's containers.
        #[arg(long)]
        user: Option<String>,
    },
    /// Drain the cloud: nothing new starts or returns there, and every owner whose agent
    /// is connected is asked now to take their containers; `--end` ends it. With `--node`,
    /// drain one node of the cloud's swarm instead: nothing more is placed there, and its
    /// containers move to other nodes with their workspaces (needs an admin token).
    Drain {
        /// The node: its name or its ID.
        #[arg(long, conflicts_with = "end")]
        node: Option<String>,
        /// End the drain of the cloud: containers start and return again.
        #[arg(long)]
        end: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every user: containers, tokens, agent, last seen, disabled (needs an admin token).
    Users {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Disable or enable a user (needs an admin token).
    #[command(subcommand)]
    User(UserCommand),
    /// Every container of every user (needs an admin token).
    Ls {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The audit log: who started, moved, stopped or removed what, who answered which
    /// query, admin actions, and every refused attempt (needs an admin token).
    Audit {
        /// Only this user's entries.
        #[arg(long)]
        user: Option<String>,
        /// Only entries since then: a time (2026-12-01T09:00:00Z) or an age (2h, 30m, 7d).
        #[arg(long)]
        since: Option<String>,
        /// The newest this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Stop a user's tokens from working, at once, and cut off their agent; their
    /// containers keep running until you stop them.
    Disable { name: String },
    /// Let a disabled user's tokens work again.
    Enable { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a single-use join token for a user; prints it on the last line.
    Create {
        /// User name (created if new).
        #[arg(long)]
        user: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
        /// The server's data directory [default: /var/lib/offload].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Seconds the token stays valid [default: 86400].
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
    },
    /// Revoke every token of a user (they must join again) or one token (needs an admin
    /// token).
    Revoke {
        /// Every API token and unused join token of this user.
        #[arg(long, conflicts_with = "token", required_unless_present = "token")]
        user: Option<String>,
        /// One token, in full.
        token: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Image reference.
    pub image: String,
    /// A name to use instead of the id.
    #[arg(long)]
    pub name: Option<String>,
    /// CPU limit in cores (a positive number).
    #[arg(long, value_parser = offload_core::parse_cpus)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 512m or 2g.
    #[arg(long)]
    pub memory: Option<String>,
    /// An environment variable, KEY=VALUE (KEY alone: its value here); repeatable. It
    /// goes with the container wherever it runs.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Variables from a file of KEY=VALUE lines (`#` comments), as `docker run` reads it.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Command to run instead of the image's default.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SshArgs {
    /// Container id or name (`NAME.offload` and `ID.offload` are accepted too).
    pub id: String,
    /// Speak SSH on stdin and stdout for the local OpenSSH client: the `ProxyCommand` that
    /// `offload ssh-config` writes.
    #[arg(long, conflicts_with_all = ["tty", "command"])]
    pub stdio: bool,
    /// Ask ssh for a terminal for CMD too (`ssh -t`).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Command and arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Docker Engine API endpoint for the cloud side [default: $DOCKER_HOST].
    #[arg(long, value_name = "URI")]
    pub docker_host: Option<String>,
    /// Docker Engine API endpoint for the edge side [default: the cloud's engine plays
    /// both sides].
    #[arg(long, value_name = "URI")]
    pub edge_docker_host: Option<String>,
    /// A locally available image to run.
    #[arg(long, default_value = "offload-demo/busybox:latest")]
    pub image: String,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn port_forward_refuses_ports_outside_the_range_as_bad_usage() {
        for bad in ["0", "70000", "65536", "0:0", "70000:80", "abc"] {
            let err = Cli::try_parse_from(["offload", "port-forward", "box", bad])
                .err()
                .unwrap_or_else(|| panic!("port {bad} was accepted"));
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("must be a number"), "{bad}: {err}");
        }
        let none = Cli::try_parse_from(["offload", "port-forward", "box"]);
        assert_eq!(none.err().map(|e| e.exit_code()), Some(2));
        let ok = Cli::try_parse_from(["offload", "port-forward", "box", "8080", "0:22"]);
        assert!(ok.is_ok());
    }

    #[test]
    fn logs_refuses_a_tail_or_since_it_cannot_read_as_bad_usage() {
        for (flag, bad, says) in [
            ("--tail", "two", "--tail takes a number of lines"),
            ("--tail", "-1", "--tail takes a number of lines"),
            ("--since", "yesterday", "--since takes a duration"),
            ("--since", "10x", "--since takes a duration"),
        ] {
            let arg = format!("{flag}={bad}");
            let err = Cli::try_parse_from(["offload", "logs", "box", arg.as_str()])
                .err()
                .unwrap_or_else(|| panic!("{flag} {bad} was accepted"));
            assert_eq!(err.exit_code(), 2, "{flag} {bad}");
            assert!(err.to_string().contains(says), "{flag} {bad}: {err}");
        }
        let ok = Cli::try_parse_from([
            "offload", "logs", "box", "-f", "-t", "--tail", "2", "--since", "10m",
        ])
        .unwrap();
        let Command::Logs {
            follow,
            tail,
            timestamps,
            since,
            ..
        } = ok.command
        else {
            panic!("not logs");
        };
        assert!(follow && timestamps);
        assert_eq!(tail, Some(crate::logs::Tail(Some(2))));
        assert!(since.is_some_and(|ns| ns > 0));
    }

    #[test]
    fn start_refuses_cpus_that_are_not_a_positive_number_as_bad_usage() {
        for bad in ["NaN", "inf", "-inf", "0", "-2"] {
            let flag = format!("--cpus={bad}");
            let err = Cli::try_parse_from(["offload", "start", "busybox", flag.as_str()])
                .err()
                .unwrap_or_else(|| panic!("--cpus {bad} was accepted"));
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("invalid cpus"), "{bad}: {err}");
        }
        let ok = Cli::try_parse_from(["offload", "start", "busybox", "--cpus", "0.5"]);
        assert!(ok.is_ok());
    }
}
