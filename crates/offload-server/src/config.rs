//! Server configuration: defaults, then the TOML file, then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use offload_core::parse_memory;
use serde::{Deserialize, Serialize};

/// Everything an operator can set. Unknown keys in the file are an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTPS API.
    pub listen: SocketAddr,
    /// State database, CA, certificates and workspaces live here.
    pub data_dir: PathBuf,
    /// Docker Engine API endpoint of the cloud engine; `DOCKER_HOST` or the local socket
    /// when unset.
    pub docker_host: Option<String>,
    /// The cloud's engine: one Docker engine (`docker`) or a Docker Swarm (`swarm`).
    pub engine: EngineKind,
    /// Where workspaces live; `<data_dir>/workspaces` when unset. On a swarm, a directory
    /// every node mounts at this same path (the operator's shared filesystem).
    pub workspace_root: Option<PathBuf>,
    /// The swarm, with `engine = "swarm"`.
    pub swarm: SwarmConfig,
    /// On a swarm, what happens when the monitor moves a container from a busy node to
    /// one with room: `notify` (the owner is told, then it moves) or `ask` (it moves only
    /// if the owner accepts a query).
    pub cloud_moves: CloudMoves,
    /// The network user containers join: `default` (the engine's), `none`, or a network name.
    pub network: String,
    /// CPU limit when a start request names none.
    pub default_cpus: f64,
    /// Memory limit when a start request names none (`1g`, `512m`).
    pub default_memory: String,
    /// Largest CPU limit a user may ask for.
    pub max_cpus: f64,
    /// Largest memory limit a user may ask for.
    pub max_memory: String,
    /// Most containers one user may have.
    pub max_containers_per_user: usize,
    /// Most CPUs one user's containers may ask for together (their limits, running or
    /// stopped).
    pub max_cpus_per_user: f64,
    /// Most memory one user's containers may ask for together (`16g`).
    pub max_memory_per_user: String,
    /// Seconds a container gets between SIGTERM and SIGKILL when stopped.
    pub stop_grace_secs: u32,
    /// Extra DNS names or IP addresses for the server certificate.
    pub tls_sans: Vec<String>,
    /// How long a join token stays valid, in seconds.
    pub join_token_ttl_secs: u64,
    /// Seconds a client has to send a request's headers (and, on HTTP/1.1, the next
    /// request on a kept-alive connection).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection with no request in flight may send nothing before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a request body may deliver no data before the request fails.
    pub body_read_timeout_secs: u64,
    /// Most open connections, in total.
    pub max_connections: usize,
    /// Most open connections from one client address.
    pub max_connections_per_address: usize,
    /// Hours the event stream (`GET /v1/events`) keeps events for watchers to resume.
    pub events_retention_hours: u64,
    /// The resource monitor: watermarks, sustain, forecast, queries, returns, pool.
    pub monitor: offload_monitor::PolicyConfig,
    /// Seconds of an edge container's work the cloud may lack before a
    /// `recovery_point_behind` event warns of it.
    pub recovery_point_warn_secs: u64,
    /// Receivers that get each event as a signed JSON POST (`[[webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook: every event (or the kinds named) is POSTed to `url` as JSON, with
/// `X-Offload-Signature: sha256=HEX`, the HMAC-SHA256 of the body under the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The shared secret, at least 16 characters; or `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file whose content (trimmed) is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Only these event kinds (`move_ended`, `query_asked`, ...); every kind when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl WebhookConfig {
    /// The secret, read from `secret_file` when that is how it is given.
    pub fn load_secret(&self) -> Result<String, ConfigError> {
        let value = |message: String| ConfigError::Value {
            key: "webhooks.secret",
            message,
        };
        let secret = match (&self.secret, &self.secret_file) {
            (Some(secret), None) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| value(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            _ => {
                return Err(value(format!(
                    "give {} exactly one of secret and secret_file",
                    self.url
                )));
            }
        };
        if secret.chars().count() < 16 {
            return Err(value(format!(
                "the secret of {} must be at least 16 characters",
                self.url
            )));
        }
        Ok(secret)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let value = |key, message: String| ConfigError::Value { key, message };
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| value("webhooks.url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(value(
                "webhooks.url",
                format!(
                    "{:?} must be an http:// or https:// URL with a host",
                    self.url
                ),
            ));
        }
        if let Some(kind) = self
            .events
            .iter()
            .find(|k| !offload_core::events::EventBody::KINDS.contains(&k.as_str()))
        {
            return Err(value(
                "webhooks.events",
                format!(
                    "{kind:?} is not an event kind; the kinds are {}",
                    offload_core::events::EventBody::KINDS.join(", ")
                ),
            ));
        }
        self.load_secret().map(|_| ())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            data_dir: PathBuf::from("/var/lib/offload"),
            docker_host: None,
            engine: EngineKind::Docker,
            workspace_root: None,
            swarm: SwarmConfig::default(),
            cloud_moves: CloudMoves::Notify,
            network: "default".to_owned(),
            default_cpus: 1.0,
            default_memory: "1g".to_owned(),
            max_cpus: 4.0,
            max_memory: "8g".to_owned(),
            max_containers_per_user: 20,
            max_cpus_per_user: 8.0,
            max_memory_per_user: "16g".to_owned(),
            stop_grace_secs: 10,
            tls_sans: Vec::new(),
            join_token_ttl_secs: 24 * 3600,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_read_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_address: 64,
            events_retention_hours: 7 * 24,
            monitor: offload_monitor::PolicyConfig::default(),
            recovery_point_warn_secs: 300,
            webhooks: Vec::new(),
        }
    }
}

/// Which engine runs the cloud's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One Docker (or Podman) engine on the server's host.
    #[default]
    Docker,
    /// A Docker Swarm: each container a one-replica service pinned to a node.
    Swarm,
}

impl EngineKind {
    /// Parses `docker` or `swarm` (the `--engine` flag).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "docker" => Some(EngineKind::Docker),
            "swarm" => Some(EngineKind::Swarm),
            _ => None,
        }
    }
}

/// How moves between the nodes of a swarm reach the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudMoves {
    /// The owner's agent is told why, then the container moves.
    #[default]
    Notify,
    /// The owner gets a query; the container moves only if it is accepted.
    Ask,
}

/// `[swarm]`: the manager and every node's own engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// Docker Engine API endpoint of a swarm manager; `docker_host` when unset.
    pub manager: Option<String>,
    /// `[[swarm.nodes]]`: each node's engine, for commands and readings in its containers.
    pub nodes: Vec<SwarmNodeConfig>,
    /// Seconds a node may be down (to the manager) or its engine out of reach (to offload)
    /// before its containers start again on other nodes, at a new generation.
    pub node_lost_grace_secs: f64,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            manager: None,
            nodes: Vec::new(),
            node_lost_grace_secs: 15.0,
        }
    }
}

/// One `[[swarm.nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmNodeConfig {
    pub name: String,
    pub docker_host: String,
    /// Cores the monitor measures this node's load against and placement counts; the
    /// node's own figure when unset. Set it where nodes share a machine (every node then
    /// reports the whole machine) or where offload gets only part of a node.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory, as `cpus` (`16g`, `512m`).
    #[serde(default)]
    pub memory: Option<String>,
}

impl SwarmNodeConfig {
    /// The operator's capacity for this node, checked.
    pub fn capacity(&self) -> Result<offload_runtime::NodeCapacity, ConfigError> {
        let value = |message: String| ConfigError::Value {
            key: "swarm.nodes",
            message,
        };
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            return Err(value(format!(
                "node {}: cpus must be a positive number, not {cpus}",
                self.name
            )));
        }
        let memory_bytes = match &self.memory {
            Some(raw) => Some(
                parse_memory(raw).map_err(|e| value(format!("node {}: memory: {e}", self.name)))?,
            ),
            None => None,
        };
        Ok(offload_runtime::NodeCapacity {
            cpus: self.cpus,
            memory_bytes,
        })
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config value for {key}: {message}")]
    Value { key: &'static str, message: String },
    #[error("invalid config value for {key}: {message}")]
    Monitor { key: &'static str, message: String },
}

/// Limits derived from the configuration, in the units the server computes with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub default_cpus: f64,
    pub default_memory: u64,
    pub max_cpus: f64,
    pub max_memory: u64,
    pub user_cpus: f64,
    pub user_memory: u64,
}

impl ServerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every value and derives the limits.
    pub fn validate(&self) -> Result<Limits, ConfigError> {
        let value = |key, message: String| ConfigError::Value { key, message };
        let memory = |key, raw: &str| parse_memory(raw).map_err(|e| value(key, e.to_string()));
        let limits = Limits {
            default_cpus: self.default_cpus,
            default_memory: memory("default_memory", &self.default_memory)?,
            max_cpus: self.max_cpus,
            max_memory: memory("max_memory", &self.max_memory)?,
            user_cpus: self.max_cpus_per_user,
            user_memory: memory("max_memory_per_user", &self.max_memory_per_user)?,
        };
        if !(limits.user_cpus.is_finite() && limits.user_cpus >= limits.max_cpus) {
            return Err(value(
                "max_cpus_per_user",
                format!(
                    "must be a number of at least max_cpus ({})",
                    limits.max_cpus
                ),
            ));
        }
        if limits.user_memory < limits.max_memory {
            return Err(value(
                "max_memory_per_user",
                format!("must be at least max_memory ({})", self.max_memory),
            ));
        }
        if !(limits.max_cpus.is_finite() && limits.max_cpus > 0.0) {
            return Err(value("max_cpus", "must be a positive number".into()));
        }
        if !(limits.default_cpus > 0.0 && limits.default_cpus <= limits.max_cpus) {
            return Err(value(
                "default_cpus",
                format!("must be above 0 and at most max_cpus ({})", limits.max_cpus),
            ));
        }
        if limits.default_memory > limits.max_memory {
            return Err(value(
                "default_memory",
                "must not exceed max_memory".to_owned(),
            ));
        }
        if limits.default_memory < MIN_MEMORY {
            return Err(value("default_memory", "must be at least 6m".to_owned()));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.validate()?;
            if self.webhooks[..i].iter().any(|h| h.url == hook.url) {
                return Err(value(
                    "webhooks.url",
                    format!("{} is configured twice", hook.url),
                ));
            }
        }
        if offload_runtime::NetworkMode::parse(&self.network).is_none() {
            return Err(value(
                "network",
                "use default, none or the name of an engine network (host and container: are not allowed)"
                    .to_owned(),
            ));
        }
        if self.engine == EngineKind::Swarm {
            self.validate_swarm()?;
        }
        if let Some(root) = &self.workspace_root
            && !root.is_absolute()
        {
            return Err(value("workspace_root", "must be an absolute path".into()));
        }
        if self.max_containers_per_user == 0 {
            return Err(value(
                "max_containers_per_user",
                "must be at least 1".into(),
            ));
        }
        if let Err(e) = self.monitor.validate() {
            return Err(ConfigError::Monitor {
                key: e.key(),
                message: e.to_string(),
            });
        }
        if self.join_token_ttl_secs == 0 {
            return Err(value("join_token_ttl_secs", "must be at least 1".into()));
        }
        for (key, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
        ] {
            if secs == 0 {
                return Err(value(key, "must be at least 1".into()));
            }
        }
        if self.max_connections_per_address == 0 {
            return Err(value(
                "max_connections_per_address",
                "must be at least 1".into(),
            ));
        }
        if self.max_connections < self.max_connections_per_address {
            return Err(value(
                "max_connections",
                format!(
                    "must be at least max_connections_per_address ({})",
                    self.max_connections_per_address
                ),
            ));
        }
        Ok(limits)
    }

    fn validate_swarm(&self) -> Result<(), ConfigError> {
        let value = |key, message: String| ConfigError::Value { key, message };
        if self.swarm.manager.is_none() && self.docker_host.is_none() {
            return Err(value(
                "swarm.manager",
                "engine = \"swarm\" needs the manager's Docker host (swarm.manager or docker_host)"
                    .into(),
            ));
        }
        if self.network == "none" {
            return Err(value(
                "network",
                "a Swarm service cannot run without a network: use default or a swarm network (an --internal overlay isolates containers)".into(),
            ));
        }
        if self.swarm.nodes.is_empty() {
            return Err(value(
                "swarm.nodes",
                "name each node's engine in [[swarm.nodes]] (name, docker_host)".into(),
            ));
        }
        let grace = self.swarm.node_lost_grace_secs;
        if !(grace.is_finite() && (0.0..=86_400.0).contains(&grace)) {
            return Err(value(
                "swarm.node_lost_grace_secs",
                "must be a number of seconds from 0 to 86400".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for node in &self.swarm.nodes {
            if node.name.trim().is_empty() || node.docker_host.trim().is_empty() {
                return Err(value(
                    "swarm.nodes",
                    "every node needs a name and a docker_host".into(),
                ));
            }
            if !names.insert(node.name.as_str()) {
                return Err(value(
                    "swarm.nodes",
                    format!("node {} is named twice", node.name),
                ));
            }
            node.capacity()?;
        }
        Ok(())
    }

    /// The swarm manager's Docker host.
    pub fn swarm_manager(&self) -> Option<&str> {
        self.swarm
            .manager
            .as_deref()
            .or(self.docker_host.as_deref())
    }

    /// Where workspaces live.
    pub fn workspace_dir(&self) -> PathBuf {
        self.workspace_root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("workspaces"))
    }

    /// The listener's limits.
    pub fn connection_limits(&self) -> crate::listener::ConnectionLimits {
        let secs = std::time::Duration::from_secs;
        crate::listener::ConnectionLimits {
            header_read_timeout: secs(self.header_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            body_read_timeout: secs(self.body_read_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

/// The smallest memory limit Docker accepts.
pub const MIN_MEMORY: u64 = 6 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cfg = ServerConfig {
            network: "host".into(),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("network"));
        let cfg = ServerConfig {
            default_memory: "lots".into(),
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("default_memory")
        );
    }

    #[test]
    fn monitor_errors_name_the_key() {
        let cfg: ServerConfig =
            toml::from_str("[monitor]\ncpu_high = 0.5\ncpu_low = 0.7\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("monitor.cpu_"), "{err}");
        let err = toml::from_str::<ServerConfig>("[monitor]\nwatermark = 1\n").unwrap_err();
        assert!(err.to_string().contains("watermark"));
    }

    #[test]
    fn webhooks_are_checked_naming_what_is_wrong() {
        let parse = |toml: &str| -> String {
            let cfg: ServerConfig = toml::from_str(toml).expect("parses");
            match cfg.validate() {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            }
        };
        let good =
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef\"\n";
        assert_eq!(parse(good), "ok");
        let err = parse(&good.replace("http://127.0.0.1:9/hook", "ftp://host/x"));
        assert!(
            err.contains("webhooks.url") && err.contains("http"),
            "{err}"
        );
        let err = parse(&good.replace("http://127.0.0.1:9/hook", "not a url"));
        assert!(err.contains("not a URL"), "{err}");
        let err = parse(&good.replace("0123456789abcdef", "short"));
        assert!(err.contains("at least 16"), "{err}");
        let err = parse(&format!("{good}events = [\"move_ended\", \"moved\"]\n"));
        assert!(err.contains("\"moved\" is not an event kind"), "{err}");
        let err = parse(&format!("{good}secret_file = \"/nonexistent\"\n"));
        assert!(err.contains("exactly one"), "{err}");
        let err = parse(&good.replace(
            "secret = \"0123456789abcdef\"",
            "secret_file = \"/nonexistent\"",
        ));
        assert!(err.contains("cannot read /nonexistent"), "{err}");
        let err = parse(&format!("{good}{good}"));
        assert!(err.contains("configured twice"), "{err}");
        assert!(
            toml::from_str::<ServerConfig>("[[webhooks]]\nurl = \"http://h/\"\nsecert = \"x\"\n")
                .is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn connection_limits_are_checked() {
        let cfg = ServerConfig {
            idle_timeout_secs: 0,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("idle_timeout_secs"), "{err}");
        let cfg = ServerConfig {
            max_connections: 10,
            max_connections_per_address: 11,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("max_connections"), "{err}");
        let cfg: ServerConfig = toml::from_str("header_read_timeout_secs = 3\n").unwrap();
        assert_eq!(
            cfg.connection_limits().header_read_timeout,
            std::time::Duration::from_secs(3)
        );
    }

    #[test]
    fn swarm_settings_are_checked() {
        let cfg: ServerConfig = toml::from_str(
            "engine = \"swarm\"\n[swarm]\nmanager = \"unix:///m.sock\"\n\
             [[swarm.nodes]]\nname = \"a\"\ndocker_host = \"unix:///a.sock\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.swarm_manager(), Some("unix:///m.sock"));
        let err = ServerConfig {
            network: "none".into(),
            ..cfg.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("network"), "{err}");
        let mut twice = cfg.clone();
        twice.swarm.nodes.push(twice.swarm.nodes[0].clone());
        assert!(
            twice
                .validate()
                .unwrap_err()
                .to_string()
                .contains("named twice")
        );
        let err = ServerConfig {
            engine: EngineKind::Swarm,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("swarm.manager"), "{err}");
        assert!(toml::from_str::<ServerConfig>("engine = \"k8s\"\n").is_err());
        assert_eq!(cfg.swarm.node_lost_grace_secs, 15.0, "the default grace");
        let mut negative = cfg.clone();
        negative.swarm.node_lost_grace_secs = -1.0;
        let err = negative.validate().unwrap_err().to_string();
        assert!(err.contains("swarm.node_lost_grace_secs"), "{err}");
    }

    #[test]
    fn node_capacities_and_cloud_moves_are_read_and_checked() {
        let base = "engine = \"swarm\"\n[swarm]\nmanager = \"unix:///m.sock\"\n\
                    [[swarm.nodes]]\nname = \"a\"\ndocker_host = \"unix:///a.sock\"\n";
        let cfg: ServerConfig = toml::from_str(base).unwrap();
        assert_eq!(cfg.cloud_moves, CloudMoves::Notify);
        let capacity = cfg.swarm.nodes[0].capacity().unwrap();
        assert_eq!((capacity.cpus, capacity.memory_bytes), (None, None));
        let cfg: ServerConfig = toml::from_str(&format!(
            "cloud_moves = \"ask\"\n{base}cpus = 1.5\nmemory = \"2g\"\n"
        ))
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.cloud_moves, CloudMoves::Ask);
        let capacity = cfg.swarm.nodes[0].capacity().unwrap();
        assert_eq!(capacity.cpus, Some(1.5));
        assert_eq!(capacity.memory_bytes, Some(2 << 30));
        for bad in ["cpus = 0\n", "cpus = -2\n", "memory = \"lots\"\n"] {
            let cfg: ServerConfig = toml::from_str(&format!("{base}{bad}")).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.contains("swarm.nodes") && err.contains("node a"),
                "{err}"
            );
        }
        assert!(toml::from_str::<ServerConfig>("cloud_moves = \"sometimes\"\n").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(err.unwrap_err().to_string().contains("bogus"));
    }
}
