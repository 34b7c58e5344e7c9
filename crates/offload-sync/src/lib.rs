//! offload-sync: the workspace sync of offload (DESIGN.md §6), which moves the files under
//! a container's `/workspace` between the cloud host and the laptop without loss.
//!
//! The core is synchronous and does no networking: the server and agent carry its
//! messages ([`protocol`]) over HTTP. One [`session`] drives a pull or a push over a
//! [`session::Transport`] (the agent's HTTPS client, or [`session::InProcess`] for the
//! benchmark and the tests), with the tuning defined there once.
//!
//! # Model
//!
//! - Files are cut into content-defined chunks by FastCDC 2020 with the protocol constants
//!   of [`ChunkParams`]: 16/64/256 KiB (min/average/max) in files below
//!   [`LARGE_FILE_SIZE`] (8 MiB), 512 KiB/1 MiB/4 MiB ([`MAX_CHUNK_SIZE`]) in larger ones,
//!   normalisation level 1, pinned by golden-vector tests. A chunk is named by its BLAKE3
//!   hash, a [`ChunkId`]; a file lists its [`ChunkRef`]s `{ id, len }`. An edit changes
//!   only the chunks around it, and identical content anywhere is never sent twice.
//! - [`RelPath`] is a validated relative path (no `..`, no leading `/`, no NUL or
//!   backslash, components ≤ 255 bytes, whole ≤ 4096 bytes); deserialising validates, so
//!   a hostile path cannot even be represented.
//! - An [`Entry`] is a path, an [`EntryKind`] (`Dir`, `File { size, chunks }`,
//!   `Symlink { target }`), permission bits (`mode & 0o777`) and `mtime_ns`. Symlink
//!   targets must be relative and stay inside the root ([`check_symlink_target`]).
//! - A [`Manifest`] is a snapshot: entries sorted by path. [`Manifest::validate`] holds an
//!   untrusted one to [`Limits`] (count, order, duplicates, sizes against chunk lengths,
//!   chunk lengths, parents that must be directories in the same manifest).
//!
//! # Flow
//!
//! ```text
//! sender:   scan(root, opts, previous) -> Scan { manifest, skipped, .. }
//!           protocol::encode_update(&manifest, base) -> bytes  // a delta from `base`
//! receiver: protocol::decode_update(bytes, base) -> the sender's manifest
//!           diff(&own, &theirs) -> Delta { upserts, deletes }
//!           protocol::wanted_chunks(&delta, &own, have, &own_tree, budget) -> Vec<Wanted>
//!           protocol::encode_request(batch) -> bytes   // ids, signatures of old bytes
//! sender:   protocol::serve_request(bytes, &TreeChunks) -> bytes   // raw, LZ4 or patch
//! receiver: protocol::decode_reply(bytes, batch) -> verified chunks -> Incoming
//!           apply(root, &delta, &Chain::new(vec![&own_tree, &incoming]), &opts)
//!           (apply runs beside the transfer, taking chunks as they arrive)
//! ```
//!
//! - [`scan`] walks through directory handles only (each directory opened with
//!   `O_NOFOLLOW` relative to its parent's handle from the root, every stat and read
//!   relative to a handle), so a directory a container swaps for a symlink mid-scan is
//!   never entered and nothing outside the root is read. Hidden files are included, only
//!   `.offloadignore` files exclude (gitignore syntax, matched by the `ignore` crate's
//!   `Gitignore`), `.offload-conflicts/` and apply's `.offload-tmp-*` names are left out,
//!   device files, FIFOs, sockets and unsyncable names or symlinks are listed in
//!   [`Scan::skipped`]. Given the previous manifest it reuses the chunk lists of files
//!   whose size and mtime (and inode and ctime, kept in a side table that is never
//!   serialised) are unchanged, so rescanning an unchanged tree reads no file.
//!   [`disk_usage`] walks the same way, summing allocated blocks from metadata alone
//!   within a [`UsageBudget`].
//! - [`diff`] and [`Delta`]: upserts (new or changed entries, plus the parents of changed
//!   entries so their mtimes can be restored) and deletes. [`Delta::validate`] refuses a
//!   delta that names a path twice, writes below a path it deletes or below a file or
//!   symlink it upserts (the symlink-then-write-through-it trick).
//! - [`ChunkSource`] is the seam apply reads chunks through: [`ChunkStore`] (an atomic,
//!   verifying, content-addressed cache on disk), [`TreeChunks`] (chunks read out of a live
//!   tree via its manifest, hash-checked so a file that changed is an error; it is both how
//!   a sender serves chunks and how a receiver reuses what its own tree already holds),
//!   [`MemoryChunks`], [`Incoming`] (chunks arriving while an apply runs) and [`Chain`].
//! - [`protocol`] and the wire formats beneath it: binary manifests and deltas, chunk
//!   requests and batches (each chunk raw, LZ4 or a [`patch`] against old bytes the
//!   receiver holds); decoding bounds every count and length before allocating and
//!   verifies every hash.
//! - [`apply`] checks everything before writing (a refused delta changes nothing),
//!   refuses a delta that would empty a non-empty tree unless
//!   [`ApplyOptions::allow_mass_delete`], assembles files in a staging directory inside
//!   the root (reading the old tree before changing it), then renames them into place,
//!   fsyncs, and sets directory modes and mtimes last. All writes go through directory
//!   handles opened with `O_NOFOLLOW` from the root, so nothing is written outside it.
//!   [`ApplyOptions::prefix`] applies below a subdirectory, e.g.
//!   `.offload-conflicts/<name>/` for a fenced copy's late changes.
//! - [`copy_tree`] copies a whole tree (or what changed in it since an instant) as it is,
//!   through the same confined handles, hashing nothing: the server sets a lost cluster
//!   copy's workspace aside with it and keeps that copy's late writes as a conflict set.
//!
//! # Rules worth knowing
//!
//! - A deleted directory that still holds paths the delta does not know about (ignored or
//!   created meanwhile) is kept and reported in [`ApplyReport::kept_dirs`]; a directory
//!   that a file or symlink replaces must hold only paths the delta deletes, or the
//!   delta is refused. Unknown data is never removed.
//! - Setuid, setgid and sticky bits are never carried; owners are not carried.
//! - Absolute symlinks (e.g. a virtualenv's `python -> /usr/bin/python3`) are not synced:
//!   they are listed in [`Scan::skipped`].

mod apply;
mod binary;
mod chunk;
mod copy;
mod delta;
mod error;
mod manifest;
pub mod patch;
mod path;
pub mod protocol;
mod rooted;
mod scan;
pub mod session;
mod source;
mod walk;
mod wire;

pub use apply::{ApplyOptions, ApplyReport, apply};
pub use chunk::{
    AVG_CHUNK_SIZE, ChunkId, ChunkParams, ChunkRef, LARGE_FILE_SIZE, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE, NORMALIZATION, SMALL_MAX_CHUNK_SIZE, chunk_bytes, cut_points, for_each_chunk,
};
pub use copy::{CopyReport, Select, copy_tree};
pub use delta::{Delta, diff};
pub use error::SyncError;
pub use manifest::{Entry, EntryKind, Limits, MANIFEST_VERSION, Manifest};
pub use path::{
    CONFLICTS_DIR, MAX_COMPONENT_LEN, MAX_PATH_LEN, RelPath, TEMP_PREFIX, check_symlink_target,
};
pub use scan::{
    DiskUsage, IGNORE_FILE, Scan, ScanOptions, ScanStats, Skipped, UsageBudget, disk_usage, scan,
};
pub use source::{
    Chain, ChunkSource, ChunkStore, Incoming, MemoryChunks, TreeChunks, verify_chunk,
};
