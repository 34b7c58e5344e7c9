//! The resources the monitor watches and their watermarks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A host resource that can come under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// CPU time, as a fraction of the host's (or pool's) cores.
    Cpu,
    /// Memory, as a fraction of the host's (or pool's) bytes.
    Memory,
}

impl Resource {
    /// Every resource, in a fixed order.
    pub const ALL: [Resource; 2] = [Resource::Cpu, Resource::Memory];

    pub(crate) fn index(self) -> usize {
        match self {
            Resource::Cpu => 0,
            Resource::Memory => 1,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        })
    }
}

/// The hysteresis band of one resource: pressure starts above `high`, ends below `low`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// Fraction below which pressure ends.
    pub low: f64,
    /// Fraction above which pressure can start.
    pub high: f64,
}
