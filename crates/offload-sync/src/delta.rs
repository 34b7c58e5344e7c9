//! `Delta`: what turns one manifest into another, `diff` to compute it, and the checks a
//! delta must pass before anyone applies it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, Manifest};
use crate::path::RelPath;

/// Changes from one tree to another: entries to create or replace, paths to remove.
///
/// `diff` emits upserts sorted by path (parents first) and deletes deepest first; apply
/// does not rely on either order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub upserts: Vec<Entry>,
    pub deletes: Vec<RelPath>,
}

/// The delta that turns `old` into `new`.
///
/// An entry that differs in anything (kind, content, mode, mtime) is upserted; a kind
/// change is an upsert, not a delete plus an upsert. A directory whose children change is
/// upserted too, so the receiver can restore its mtime after touching it.
pub fn diff(old: &Manifest, new: &Manifest) -> Delta {
    let mut upserts: BTreeSet<&RelPath> = BTreeSet::new();
    let mut deletes = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (a, b) = (&old.entries, &new.entries);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.cmp(&y.path),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                deletes.push(a[i].path.clone());
                i += 1;
            }
            Ordering::Greater => {
                upserts.insert(&b[j].path);
                j += 1;
            }
            Ordering::Equal => {
                if a[i] != b[j] {
                    upserts.insert(&b[j].path);
                }
                i += 1;
                j += 1;
            }
        }
    }
    let touched_parents: Vec<RelPath> = upserts
        .iter()
        .copied()
        .cloned()
        .chain(deletes.iter().cloned())
        .filter_map(|p| p.parent())
        .collect();
    let mut parents = BTreeSet::new();
    for parent in &touched_parents {
        if new.get(parent).is_some_and(Entry::is_dir) && !upserts.contains(parent) {
            parents.insert(parent);
        }
    }
    let mut paths: Vec<&RelPath> = upserts.into_iter().chain(parents).collect();
    paths.sort();
    paths.dedup();
    deletes.sort_by(|x, y| y.cmp(x));
    Delta {
        upserts: paths
            .into_iter()
            .filter_map(|p| new.get(p).cloned())
            .collect(),
        deletes,
    }
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    /// Chunks the upserted files need that `have` says are missing, each once, in first
    /// use order.
    pub fn needed_chunks(&self, have: impl Fn(&ChunkId) -> bool) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in &self.upserts {
            if let EntryKind::File { chunks, .. } = &entry.kind {
                for chunk in chunks {
                    if seen.insert(chunk.id) && !have(&chunk.id) {
                        out.push(chunk.id);
                    }
                }
            }
        }
        out
    }

    /// Checks the delta on its own, before it meets a disk: counts, each entry's rules,
    /// no path named twice, no upsert below a deleted path or below an upserted file or
    /// symlink (the symlink-then-write-through-it trick), no reserved names.
    pub fn validate(&self, limits: &Limits) -> Result<(), SyncError> {
        let count = self.upserts.len().saturating_add(self.deletes.len());
        if count > limits.max_entries {
            return Err(SyncError::InvalidManifest {
                reason: format!(
                    "delta has {count} entries, over the limit of {}",
                    limits.max_entries
                ),
            });
        }
        let mut kinds: HashMap<&RelPath, bool> = HashMap::with_capacity(self.upserts.len());
        for entry in &self.upserts {
            entry.validate(limits)?;
            if kinds.insert(&entry.path, entry.is_dir()).is_some() {
                return Err(SyncError::entry(&entry.path, "path upserted twice"));
            }
        }
        let mut deleted = HashSet::with_capacity(self.deletes.len());
        for path in &self.deletes {
            if path.is_internal() {
                return Err(SyncError::entry(path, "name is reserved for offload"));
            }
            if kinds.contains_key(path) || !deleted.insert(path) {
                return Err(SyncError::entry(path, "path named twice"));
            }
        }
        for entry in &self.upserts {
            for ancestor in entry.path.ancestors() {
                if deleted.contains(&ancestor) {
                    return Err(SyncError::entry(
                        &entry.path,
                        format!("parent {ancestor} is deleted by the same delta"),
                    ));
                }
                if kinds.get(&ancestor) == Some(&false) {
                    return Err(SyncError::entry(
                        &entry.path,
                        format!("parent {ancestor} is a file or symlink in the same delta"),
                    ));
                }
            }
        }
        Ok(())
    }
}
