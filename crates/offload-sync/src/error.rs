//! The one error type of offload-sync: what failed, on which path or chunk, and why.

use std::io;
use std::path::PathBuf;

use crate::chunk::ChunkId;

/// Everything that can go wrong while scanning, validating, transporting or applying.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A path in a manifest, delta or on disk is not a valid workspace-relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    /// An entry of a manifest or delta breaks a rule (bad symlink target, size, mode, parent).
    #[error("invalid entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },

    /// A manifest or delta as a whole breaks a rule (order, duplicates, counts).
    #[error("invalid manifest: {reason}")]
    InvalidManifest { reason: String },

    /// An apply was refused before anything was written.
    #[error("refused to apply delta: {reason}")]
    Refused { reason: String },

    /// A filesystem operation failed.
    #[error("failed to {op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// A chunk is neither in the local tree, the cache nor the batch that was sent.
    #[error("chunk {id} not found")]
    ChunkNotFound { id: ChunkId },

    /// Bytes that claim to be a chunk do not hash to its id or have the wrong length.
    #[error("chunk {id} is corrupt: {reason}")]
    ChunkCorrupt { id: ChunkId, reason: String },

    /// A file changed between the scan and the read of one of its chunks.
    #[error("file {path:?} changed since it was scanned (chunk {id} no longer matches)")]
    SourceChanged { path: String, id: ChunkId },

    /// A chunk batch on the wire is malformed or exceeds the limits.
    #[error("invalid chunk batch: {reason}")]
    InvalidBatch { reason: String },

    /// A manifest could not be encoded or decoded as JSON.
    #[error("failed to encode or decode manifest json")]
    Json { source: serde_json::Error },
}

impl SyncError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SyncError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn entry(path: impl ToString, reason: impl Into<String>) -> Self {
        SyncError::InvalidEntry {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        SyncError::Refused {
            reason: reason.into(),
        }
    }
}
