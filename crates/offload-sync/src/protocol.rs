//! The JSON bodies of the workspace sync endpoints, shared by the server and the agent.
//!
//! - `GET  .../workspace/manifest` answers a [`Manifest`](crate::Manifest).
//! - `POST .../workspace/fetch` takes a [`ChunkList`] and answers an encoded chunk batch
//!   ([`encode_chunks`](crate::encode_chunks)).
//! - `POST .../workspace/missing` takes a [`ChunkList`] and answers the [`ChunkList`] of
//!   those the server lacks.
//! - `POST .../workspace/chunks` takes an encoded chunk batch and stores it.
//! - `POST .../workspace/push` takes a [`PushRequest`] and answers a [`PushReport`] once
//!   the files are durably in place.

use serde::{Deserialize, Serialize};

use crate::{ChunkId, Delta};

/// A list of chunk ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkList {
    pub ids: Vec<ChunkId>,
}

/// Changes from the edge, against the manifest the server last acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The generation the pushing copy runs at; a stale one is refused.
    pub generation: u64,
    pub delta: Delta,
    /// The pusher was fenced: keep these changes under `.offload-conflicts/` instead.
    #[serde(default)]
    pub conflict: bool,
}

/// What a push changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    pub files_written: u64,
    pub bytes_written: u64,
    pub deleted: u64,
    /// Where a conflict set went, relative to the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_dir: Option<String>,
}
