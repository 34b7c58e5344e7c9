//! What a sampler measures: host samples, per-container usage, the pool sampler and the
//! Docker-stats CPU formula.

use serde::{Deserialize, Serialize};

use crate::error::MonitorError;

/// One measurement of the host (or pool) as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HostSample {
    /// CPU in use, as a fraction of `cpus` (0..1 on a real host; a pool can exceed 1).
    pub cpu: f64,
    /// Memory in use, as a fraction of `mem_total_bytes`.
    pub mem: f64,
    /// Cores the fractions are relative to.
    pub cpus: f64,
    /// Bytes the memory fraction is relative to.
    pub mem_total_bytes: u64,
}

impl HostSample {
    /// The fraction of the host one container's use takes, per resource: `[cpu, memory]`.
    pub(crate) fn share_of(&self, cpu_cores: f64, mem_bytes: u64) -> [f64; 2] {
        let cpu = if self.cpus > 0.0 {
            cpu_cores / self.cpus
        } else {
            0.0
        };
        let mem = if self.mem_total_bytes > 0 {
            mem_bytes as f64 / self.mem_total_bytes as f64
        } else {
            0.0
        };
        [finite_or_zero(cpu), finite_or_zero(mem)]
    }
}

pub(crate) fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// Measures the host. The server calls it once per interval.
pub trait HostSampler {
    /// Takes one sample.
    fn sample(&mut self) -> Result<HostSample, MonitorError>;
}

/// One managed container's current use, as the container engine (cloud) or the agent
/// (edge) reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    /// offload container id.
    pub id: String,
    /// The user who owns it.
    pub owner: String,
    /// Cores in use.
    pub cpu: f64,
    /// Memory in use, in bytes.
    pub mem_bytes: u64,
    /// True while its cloud copy runs (including while a move pre-copies it); false at the
    /// edge.
    pub running_in_cloud: bool,
    /// On a cluster: the node its cloud copy runs (or last ran) on.
    #[serde(default)]
    pub node: Option<String>,
    /// A move of it is in flight.
    #[serde(default)]
    pub moving: bool,
}

/// The configured size of a pool of managed containers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolCapacity {
    cpus: f64,
    mem_bytes: u64,
}

impl PoolCapacity {
    /// A pool of `cpus` cores and `mem_bytes` bytes; both must be positive.
    pub fn new(cpus: f64, mem_bytes: u64) -> Result<Self, MonitorError> {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(MonitorError::InvalidPoolCapacity {
                field: "cpus",
                value: cpus.to_string(),
            });
        }
        if mem_bytes == 0 {
            return Err(MonitorError::InvalidPoolCapacity {
                field: "mem_bytes",
                value: "0".to_owned(),
            });
        }
        Ok(Self { cpus, mem_bytes })
    }

    /// Cores in the pool.
    pub fn cpus(&self) -> f64 {
        self.cpus
    }

    /// Bytes of memory in the pool.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Usage of the pool: the sum of the managed containers running in the cloud, over
    /// the configured capacity. Containers at the edge and anything else on the host do
    /// not count.
    pub fn sample(&self, containers: &[ContainerUsage]) -> HostSample {
        let (cores, bytes) = containers.iter().filter(|c| c.running_in_cloud).fold(
            (0.0_f64, 0_u64),
            |(cores, bytes), c| {
                (
                    cores + finite_or_zero(c.cpu),
                    bytes.saturating_add(c.mem_bytes),
                )
            },
        );
        HostSample {
            cpu: cores / self.cpus,
            mem: bytes as f64 / self.mem_bytes as f64,
            cpus: self.cpus,
            mem_total_bytes: self.mem_bytes,
        }
    }
}

/// A [`HostSampler`] over a pool: the server hands it the latest per-container usage
/// before each sample.
#[derive(Debug, Clone)]
pub struct PoolSampler {
    capacity: PoolCapacity,
    containers: Vec<ContainerUsage>,
}

impl PoolSampler {
    /// A sampler for `capacity` with no containers yet.
    pub fn new(capacity: PoolCapacity) -> Self {
        Self {
            capacity,
            containers: Vec::new(),
        }
    }

    /// Replaces the per-container usage the next sample is computed from.
    pub fn set_usage(&mut self, containers: Vec<ContainerUsage>) {
        self.containers = containers;
    }
}

impl HostSampler for PoolSampler {
    fn sample(&mut self) -> Result<HostSample, MonitorError> {
        Ok(self.capacity.sample(&self.containers))
    }
}

/// One reading of a container's CPU counters, as in Docker's stats (`cpu_stats` or
/// `precpu_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuReading {
    /// `cpu_usage.total_usage`: the container's CPU time in nanoseconds.
    pub total_usage: u64,
    /// `system_cpu_usage`: the host's CPU time in nanoseconds (all cores).
    pub system_cpu_usage: u64,
    /// `online_cpus`: cores online (older engines leave it 0; pass the length of
    /// `percpu_usage` then).
    pub online_cpus: u32,
}

/// Cores a container used between two readings: its CPU-time delta over the host's,
/// times the cores online. `None` when the readings cannot give a rate: an empty first
/// reading (a one-shot stats call has no `precpu`), no host time elapsed, or counters
/// that went backwards (the container restarted).
pub fn container_cpu_cores(previous: &CpuReading, current: &CpuReading) -> Option<f64> {
    if previous.system_cpu_usage == 0 || current.online_cpus == 0 {
        return None;
    }
    let used = current.total_usage.checked_sub(previous.total_usage)?;
    let elapsed = current
        .system_cpu_usage
        .checked_sub(previous.system_cpu_usage)?;
    if elapsed == 0 {
        return None;
    }
    Some(used as f64 / elapsed as f64 * f64::from(current.online_cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: &str, cpu: f64, mem_bytes: u64, running_in_cloud: bool) -> ContainerUsage {
        ContainerUsage {
            id: id.to_owned(),
            owner: "ana".to_owned(),
            cpu,
            mem_bytes,
            running_in_cloud,
            node: None,
            moving: false,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn pool_mode_counts_only_managed_containers_running_in_the_cloud() {
        let pool = PoolCapacity::new(8.0, 16 * GIB).unwrap();
        let mut sampler = PoolSampler::new(pool);
        sampler.set_usage(vec![
            usage("a", 2.0, 4 * GIB, true),
            usage("b", 1.0, 2 * GIB, true),
            // At the edge: uses the laptop, not the pool.
            usage("c", 4.0, 8 * GIB, false),
        ]);
        let sample = sampler.sample().unwrap();
        assert!((sample.cpu - 3.0 / 8.0).abs() < 1e-12, "{sample:?}");
        assert!((sample.mem - 6.0 / 16.0).abs() < 1e-12, "{sample:?}");
        assert_eq!(sample.cpus, 8.0);
        assert_eq!(sample.mem_total_bytes, 16 * GIB);
    }

    #[test]
    fn pool_mode_ignores_other_work_on_the_host() {
        // The host is saturated by work offload does not manage (a fake host sampler would
        // say 100%), yet the pool only sees its own containers.
        let pool = PoolCapacity::new(4.0, 8 * GIB).unwrap();
        assert_eq!(pool.sample(&[]).cpu, 0.0);
        assert_eq!(pool.sample(&[]).mem, 0.0);
        let one = pool.sample(&[usage("a", 1.0, GIB, true)]);
        assert!((one.cpu - 0.25).abs() < 1e-12);
        assert!((one.mem - 0.125).abs() < 1e-12);
    }

    #[test]
    fn pool_capacity_must_be_positive() {
        let err = PoolCapacity::new(0.0, GIB).unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
        let err = PoolCapacity::new(f64::NAN, GIB).unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
        let err = PoolCapacity::new(2.0, 0).unwrap_err();
        assert!(err.to_string().contains("mem_bytes"), "{err}");
    }

    #[test]
    fn container_cpu_cores_follows_the_docker_formula() {
        let previous = CpuReading {
            total_usage: 1_000_000_000,
            system_cpu_usage: 100_000_000_000,
            online_cpus: 4,
        };
        let current = CpuReading {
            total_usage: 3_000_000_000,
            system_cpu_usage: 108_000_000_000,
            online_cpus: 4,
        };
        // 2 s of container time over 8 s of host time (2 s wall on 4 cores) = 1 core.
        let cores = container_cpu_cores(&previous, &current).unwrap();
        assert!((cores - 1.0).abs() < 1e-12, "{cores}");
    }

    #[test]
    fn container_cpu_cores_refuses_readings_without_a_rate() {
        let current = CpuReading {
            total_usage: 5,
            system_cpu_usage: 10,
            online_cpus: 2,
        };
        let empty = CpuReading {
            total_usage: 0,
            system_cpu_usage: 0,
            online_cpus: 0,
        };
        assert_eq!(container_cpu_cores(&empty, &current), None);
        assert_eq!(container_cpu_cores(&current, &current), None);
        let restarted = CpuReading {
            total_usage: 1,
            system_cpu_usage: 20,
            online_cpus: 2,
        };
        assert_eq!(container_cpu_cores(&current, &restarted), None);
    }
}
