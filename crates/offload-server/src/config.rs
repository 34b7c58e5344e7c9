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
    /// The resource monitor: watermarks, sustain, forecast, queries, returns, pool.
    pub monitor: offload_monitor::PolicyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            data_dir: PathBuf::from("/var/lib/offload"),
            docker_host: None,
            network: "default".to_owned(),
            default_cpus: 1.0,
            default_memory: "1g".to_owned(),
            max_cpus: 4.0,
            max_memory: "8g".to_owned(),
            max_containers_per_user: 20,
            stop_grace_secs: 10,
            tls_sans: Vec::new(),
            join_token_ttl_secs: 24 * 3600,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_read_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_address: 64,
            monitor: offload_monitor::PolicyConfig::default(),
        }
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
        };
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
        if offload_runtime::NetworkMode::parse(&self.network).is_none() {
            return Err(value(
                "network",
                "use default, none or the name of an engine network (host and container: are not allowed)"
                    .to_owned(),
            ));
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
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(err.unwrap_err().to_string().contains("bogus"));
    }
}
