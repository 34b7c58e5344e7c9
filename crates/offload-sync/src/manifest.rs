//! Snapshots of a tree: `Entry`, `EntryKind`, `Manifest`, the `Limits` every peer enforces
//! and the validation that holds a manifest (or a delta's entries) to them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkParams, ChunkRef, MAX_CHUNK_SIZE};
use crate::error::SyncError;
use crate::path::{RelPath, check_symlink_target};

/// Version of the manifest format, carried in every serialised manifest.
pub const MANIFEST_VERSION: u32 = 1;

/// Bounds a peer holds untrusted manifests, deltas and chunk batches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most entries in one manifest, or upserts plus deletes in one delta.
    pub max_entries: usize,
    /// Largest single file.
    pub max_file_size: u64,
    /// Most chunks in one wire batch.
    pub max_batch_chunks: usize,
    /// Most decompressed bytes in one wire batch.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_file_size: 1 << 40,
            max_batch_chunks: 16_384,
            max_batch_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File { size: u64, chunks: Vec<ChunkRef> },
    Symlink { target: String },
}

/// One path of a tree with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
    /// Permission bits only (`0o777`); setuid, setgid and sticky are never carried.
    /// Ignored for symlinks, whose scan records `0o777`.
    pub mode: u32,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    /// Checks the rules that concern this entry alone.
    pub fn validate(&self, limits: &Limits) -> Result<(), SyncError> {
        if self.path.is_internal() {
            return Err(SyncError::entry(&self.path, "name is reserved for offload"));
        }
        if self.mode & !0o777 != 0 {
            return Err(SyncError::entry(
                &self.path,
                format!("mode {:o} has bits beyond 0o777", self.mode),
            ));
        }
        match &self.kind {
            EntryKind::Dir => {}
            EntryKind::Symlink { target } => check_symlink_target(&self.path, target)
                .map_err(|reason| SyncError::entry(&self.path, reason))?,
            EntryKind::File { size, chunks } => {
                if *size > limits.max_file_size {
                    return Err(SyncError::entry(&self.path, "file larger than the limit"));
                }
                let mut sum = 0u64;
                let max = ChunkParams::for_size(*size).max.min(MAX_CHUNK_SIZE);
                for chunk in chunks {
                    if chunk.len == 0 || chunk.len as usize > max {
                        return Err(SyncError::entry(
                            &self.path,
                            format!("chunk length {} out of range", chunk.len),
                        ));
                    }
                    sum += u64::from(chunk.len);
                    if sum > *size {
                        break;
                    }
                }
                if sum != *size {
                    return Err(SyncError::entry(
                        &self.path,
                        format!("size {size} disagrees with its chunks"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Local facts about a scanned file, kept beside a manifest but never serialised: they
/// let the next scan trust a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalStat {
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
}

/// The side table a scan leaves for the next one.
#[derive(Clone, Debug, Default)]
pub(crate) struct StatCache {
    /// When the scan that made this manifest started (ns since the epoch).
    pub scan_started_ns: i64,
    pub files: HashMap<RelPath, LocalStat>,
}

/// A snapshot of a tree: entries sorted by path, unique.
///
/// Equality compares the entries only, not the local stat side table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub entries: Vec<Entry>,
    #[serde(skip)]
    pub(crate) stat_cache: Option<StatCache>,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.entries == other.entries
    }
}

impl Eq for Manifest {}

impl Manifest {
    /// A manifest of `entries`, sorted by path (duplicates are left for `validate`).
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            version: MANIFEST_VERSION,
            entries,
            stat_cache: None,
        }
    }

    /// The empty tree.
    pub fn empty() -> Self {
        Manifest::new(Vec::new())
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Total bytes of all files.
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    pub fn to_json(&self) -> Result<Vec<u8>, SyncError> {
        serde_json::to_vec(self).map_err(|source| SyncError::Json { source })
    }

    /// Parses and validates a manifest from untrusted JSON.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Self, SyncError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| SyncError::Json { source })?;
        manifest.validate(limits)?;
        Ok(manifest)
    }

    /// Checks everything a peer must before trusting a manifest: version, count, strict
    /// path order (no duplicates), each entry's own rules, and that every entry's parent
    /// is present as a directory (so no path runs through a symlink or a file).
    pub fn validate(&self, limits: &Limits) -> Result<(), SyncError> {
        if self.version != MANIFEST_VERSION {
            return Err(SyncError::InvalidManifest {
                reason: format!("unsupported manifest version {}", self.version),
            });
        }
        if self.entries.len() > limits.max_entries {
            return Err(SyncError::InvalidManifest {
                reason: format!(
                    "{} entries exceed the limit of {}",
                    self.entries.len(),
                    limits.max_entries
                ),
            });
        }
        for pair in self.entries.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(SyncError::InvalidManifest {
                    reason: format!(
                        "entries not sorted or duplicated at {:?}",
                        pair[1].path.as_str()
                    ),
                });
            }
        }
        for entry in &self.entries {
            entry.validate(limits)?;
            if let Some(parent) = entry.path.parent() {
                match self.get(&parent) {
                    Some(p) if p.is_dir() => {}
                    Some(_) => {
                        return Err(SyncError::entry(
                            &entry.path,
                            "parent is a file or symlink in the same manifest",
                        ));
                    }
                    None => return Err(SyncError::entry(&entry.path, "parent directory missing")),
                }
            }
        }
        Ok(())
    }
}
