//! The host sampler: whole-host CPU from kernel tick deltas and memory from `MemAvailable`.

use sysinfo::System;

use crate::error::MonitorError;
use crate::sample::{HostSample, HostSampler};

/// Samples the whole host through `sysinfo`, which on Linux reads `/proc/stat` (CPU as
/// the delta between two calls) and `/proc/meminfo` (`MemAvailable`), and uses the native
/// interfaces on macOS. Inside a container `/proc` shows the host's totals, which is what
/// host mode wants.
///
/// CPU is the use since the previous call (or since [`ProcHostSampler::new`]), so calls
/// should be at least `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` apart; the server's 2 s
/// interval is.
pub struct ProcHostSampler {
    system: System,
}

impl ProcHostSampler {
    /// Opens the host's metrics and takes the first CPU reading the next sample is a
    /// delta against.
    pub fn new() -> Result<Self, MonitorError> {
        let mut system =
            System::new().map_err(|source| MonitorError::OpenHostMetrics { source })?;
        system.refresh_cpu_usage();
        Ok(Self { system })
    }
}

impl HostSampler for ProcHostSampler {
    fn sample(&mut self) -> Result<HostSample, MonitorError> {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cpus = self.system.cpus().len();
        if cpus == 0 {
            return Err(MonitorError::HostUnreadable { what: "cpus" });
        }
        let total = self.system.total_memory();
        if total == 0 {
            return Err(MonitorError::HostUnreadable {
                what: "total memory",
            });
        }
        let available = self.system.available_memory().min(total);
        Ok(HostSample {
            cpu: (f64::from(self.system.global_cpu_usage()) / 100.0).clamp(0.0, 1.0),
            mem: 1.0 - available as f64 / total as f64,
            cpus: cpus as f64,
            mem_total_bytes: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_host_within_range() {
        let mut sampler = ProcHostSampler::new().unwrap();
        // CPU is a delta; give the kernel counters time to move.
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let sample = sampler.sample().unwrap();
        assert!((0.0..=1.0).contains(&sample.cpu), "{sample:?}");
        assert!(sample.mem > 0.0 && sample.mem <= 1.0, "{sample:?}");
        assert!(sample.cpus >= 1.0, "{sample:?}");
        assert!(sample.mem_total_bytes > 0, "{sample:?}");
    }
}
