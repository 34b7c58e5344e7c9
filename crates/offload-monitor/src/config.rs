//! The `[monitor]` configuration table: watermarks, timings, forecast and sampler knobs.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, MonitorError};
use crate::resource::{Resource, Watermark};
use crate::sample::PoolCapacity;

/// What happens to a query nobody answered by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// The container stays in the cloud and is not asked again within the decline cooldown.
    #[default]
    Decline,
    /// The container is moved as if its owner had accepted.
    Accept,
}

/// Where host usage comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SamplerSource {
    /// The whole host, from the kernel (`/proc/stat`, `MemAvailable`).
    #[default]
    Host,
    /// Only managed containers, against `pool_cpus` and `pool_mem_bytes`; for hosts
    /// shared with other work.
    Pool,
}

/// Every knob of the resource monitor. Embedded by the server as its `[monitor]` table;
/// a missing key takes its default and an unknown key is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Seconds between evaluations (the server's tick).
    pub interval_secs: f64,
    /// CPU fraction above which pressure can start.
    pub cpu_high: f64,
    /// CPU fraction below which pressure ends.
    pub cpu_low: f64,
    /// Memory fraction above which pressure can start.
    pub mem_high: f64,
    /// Memory fraction below which pressure ends.
    pub mem_low: f64,
    /// Seconds usage must stay above high before pressure starts.
    pub sustain_secs: f64,
    /// Seconds ahead the forecast looks; 0 turns forecast-triggered pressure off.
    pub horizon_secs: f64,
    /// Holt level smoothing factor, in (0, 1].
    pub forecast_alpha: f64,
    /// Holt trend smoothing factor, in (0, 1].
    pub forecast_beta: f64,
    /// Seconds a user has to answer a query.
    pub query_deadline_secs: f64,
    /// What an unanswered query turns into (owners with auto-accept always accept).
    pub default_action: DefaultAction,
    /// Seconds a declined container is not asked again.
    pub decline_cooldown_secs: f64,
    /// Minimum seconds between two rounds of asks, so an unanswered or oscillating load
    /// asks at most once per cooldown.
    pub ask_cooldown_secs: f64,
    /// Seconds all resources must stay below low before containers are offered a return.
    pub return_after_secs: f64,
    /// Seconds an accepted container counts as leaving while it still runs in the cloud.
    pub move_timeout_secs: f64,
    /// On a cluster: seconds a container that moved between nodes (or whose owner
    /// declined such a move) is not moved between nodes again.
    pub node_move_cooldown_secs: f64,
    /// Where host usage comes from.
    pub source: SamplerSource,
    /// CPUs of the pool (used when `source = "pool"`).
    pub pool_cpus: f64,
    /// Memory bytes of the pool (used when `source = "pool"`).
    pub pool_mem_bytes: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            interval_secs: 2.0,
            cpu_high: 0.85,
            cpu_low: 0.60,
            mem_high: 0.90,
            mem_low: 0.75,
            sustain_secs: 10.0,
            horizon_secs: 30.0,
            forecast_alpha: 0.5,
            forecast_beta: 0.3,
            query_deadline_secs: 60.0,
            default_action: DefaultAction::Decline,
            decline_cooldown_secs: 600.0,
            ask_cooldown_secs: 120.0,
            return_after_secs: 30.0,
            move_timeout_secs: 600.0,
            node_move_cooldown_secs: 300.0,
            source: SamplerSource::Host,
            pool_cpus: 0.0,
            pool_mem_bytes: 0,
        }
    }
}

impl PolicyConfig {
    /// Checks every value; the error names the first offending `monitor.*` key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("monitor.interval_secs", self.interval_secs)?;
        for resource in Resource::ALL {
            let (low_key, high_key) = match resource {
                Resource::Cpu => ("monitor.cpu_low", "monitor.cpu_high"),
                Resource::Memory => ("monitor.mem_low", "monitor.mem_high"),
            };
            let Watermark { low, high } = self.watermark(resource);
            fraction(high_key, high, "0 < high <= 1", |v| v > 0.0 && v <= 1.0)?;
            fraction(low_key, low, "0 < low < 1", |v| v > 0.0 && v < 1.0)?;
            if low >= high {
                return Err(ConfigError::InvertedWatermarks {
                    low_key,
                    low,
                    high_key,
                    high,
                });
            }
        }
        not_negative("monitor.sustain_secs", self.sustain_secs)?;
        not_negative("monitor.horizon_secs", self.horizon_secs)?;
        fraction(
            "monitor.forecast_alpha",
            self.forecast_alpha,
            "0 < alpha <= 1",
            |v| v > 0.0 && v <= 1.0,
        )?;
        fraction(
            "monitor.forecast_beta",
            self.forecast_beta,
            "0 < beta <= 1",
            |v| v > 0.0 && v <= 1.0,
        )?;
        positive("monitor.query_deadline_secs", self.query_deadline_secs)?;
        not_negative("monitor.decline_cooldown_secs", self.decline_cooldown_secs)?;
        not_negative("monitor.ask_cooldown_secs", self.ask_cooldown_secs)?;
        not_negative("monitor.return_after_secs", self.return_after_secs)?;
        positive("monitor.move_timeout_secs", self.move_timeout_secs)?;
        not_negative(
            "monitor.node_move_cooldown_secs",
            self.node_move_cooldown_secs,
        )?;
        if self.source == SamplerSource::Pool {
            positive("monitor.pool_cpus", self.pool_cpus)?;
            if self.pool_mem_bytes == 0 {
                return Err(ConfigError::OutOfRange {
                    key: "monitor.pool_mem_bytes",
                    value: "0".to_owned(),
                    expected: "a positive number of bytes when source = \"pool\"",
                });
            }
        }
        Ok(())
    }

    /// The low and high watermarks of one resource.
    pub fn watermark(&self, resource: Resource) -> Watermark {
        match resource {
            Resource::Cpu => Watermark {
                low: self.cpu_low,
                high: self.cpu_high,
            },
            Resource::Memory => Watermark {
                low: self.mem_low,
                high: self.mem_high,
            },
        }
    }

    /// The pool's capacity when `source = "pool"`, `None` in host mode.
    pub fn pool_capacity(&self) -> Result<Option<PoolCapacity>, MonitorError> {
        match self.source {
            SamplerSource::Host => Ok(None),
            SamplerSource::Pool => PoolCapacity::new(self.pool_cpus, self.pool_mem_bytes).map(Some),
        }
    }
}

fn fraction(
    key: &'static str,
    value: f64,
    expected: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), ConfigError> {
    // NaN fails every comparison, so it is rejected here too.
    if ok(value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            expected,
        })
    }
}

fn positive(key: &'static str, value: f64) -> Result<(), ConfigError> {
    fraction(key, value, "a finite number above 0", |v| {
        v.is_finite() && v > 0.0
    })
}

fn not_negative(key: &'static str, value: f64) -> Result<(), ConfigError> {
    fraction(key, value, "a finite number of at least 0", |v| {
        v.is_finite() && v >= 0.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(config: PolicyConfig) -> String {
        config.validate().unwrap_err().key().to_owned()
    }

    #[test]
    fn the_defaults_validate() {
        PolicyConfig::default().validate().unwrap();
    }

    #[test]
    fn validation_errors_name_the_key() {
        let d = PolicyConfig::default;
        assert_eq!(
            key_of(PolicyConfig {
                cpu_high: 1.5,
                ..d()
            }),
            "monitor.cpu_high"
        );
        assert_eq!(
            key_of(PolicyConfig {
                cpu_high: 0.0,
                ..d()
            }),
            "monitor.cpu_high"
        );
        assert_eq!(
            key_of(PolicyConfig {
                cpu_low: -0.1,
                ..d()
            }),
            "monitor.cpu_low"
        );
        assert_eq!(
            key_of(PolicyConfig {
                mem_high: f64::NAN,
                ..d()
            }),
            "monitor.mem_high"
        );
        assert_eq!(
            key_of(PolicyConfig {
                mem_low: 0.0,
                ..d()
            }),
            "monitor.mem_low"
        );
        assert_eq!(
            key_of(PolicyConfig {
                interval_secs: 0.0,
                ..d()
            }),
            "monitor.interval_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                sustain_secs: -1.0,
                ..d()
            }),
            "monitor.sustain_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                horizon_secs: f64::INFINITY,
                ..d()
            }),
            "monitor.horizon_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                forecast_alpha: 0.0,
                ..d()
            }),
            "monitor.forecast_alpha"
        );
        assert_eq!(
            key_of(PolicyConfig {
                forecast_beta: 1.5,
                ..d()
            }),
            "monitor.forecast_beta"
        );
        assert_eq!(
            key_of(PolicyConfig {
                query_deadline_secs: 0.0,
                ..d()
            }),
            "monitor.query_deadline_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                decline_cooldown_secs: -5.0,
                ..d()
            }),
            "monitor.decline_cooldown_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                ask_cooldown_secs: f64::NAN,
                ..d()
            }),
            "monitor.ask_cooldown_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                return_after_secs: -1.0,
                ..d()
            }),
            "monitor.return_after_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                node_move_cooldown_secs: -1.0,
                ..d()
            }),
            "monitor.node_move_cooldown_secs"
        );
        assert_eq!(
            key_of(PolicyConfig {
                source: SamplerSource::Pool,
                ..d()
            }),
            "monitor.pool_cpus"
        );
        assert_eq!(
            key_of(PolicyConfig {
                source: SamplerSource::Pool,
                pool_cpus: 4.0,
                ..d()
            }),
            "monitor.pool_mem_bytes"
        );
    }

    #[test]
    fn inverted_watermarks_name_both_keys() {
        let err = PolicyConfig {
            cpu_low: 0.9,
            cpu_high: 0.8,
            ..PolicyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.key(), "monitor.cpu_high");
        assert_eq!(
            err.to_string(),
            "monitor.cpu_low (0.9) must be below monitor.cpu_high (0.8)"
        );
        let err = PolicyConfig {
            mem_low: 0.9,
            ..PolicyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.key(), "monitor.mem_high");
    }

    #[test]
    fn out_of_range_message_reads_as_a_sentence() {
        let err = PolicyConfig {
            cpu_high: 1.5,
            ..PolicyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "monitor.cpu_high = 1.5 is out of range: expected 0 < high <= 1"
        );
    }

    #[derive(Deserialize)]
    struct ServerFile {
        monitor: PolicyConfig,
    }

    #[test]
    fn a_monitor_table_takes_defaults_for_missing_keys() {
        let file: ServerFile = toml::from_str(
            "[monitor]\ncpu_high = 0.9\nsustain_secs = 20\ndefault_action = \"accept\"\n",
        )
        .unwrap();
        let expected = PolicyConfig {
            cpu_high: 0.9,
            sustain_secs: 20.0,
            default_action: DefaultAction::Accept,
            ..PolicyConfig::default()
        };
        assert_eq!(file.monitor, expected);
        let pool: ServerFile = toml::from_str(
            "[monitor]\nsource = \"pool\"\npool_cpus = 8\npool_mem_bytes = 17179869184\n",
        )
        .unwrap();
        pool.monitor.validate().unwrap();
        let capacity = pool.monitor.pool_capacity().unwrap().unwrap();
        assert_eq!(capacity.cpus(), 8.0);
        assert_eq!(capacity.mem_bytes(), 16 << 30);
    }

    #[test]
    fn a_monitor_table_rejects_unknown_keys() {
        let err = toml::from_str::<ServerFile>("[monitor]\ncpu_hihg = 0.9\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("cpu_hihg"), "{err}");
    }
}
