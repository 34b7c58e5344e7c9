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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::binary::{Reader, Writer};
use crate::chunk::{ChunkRef, MAX_CHUNK_SIZE};
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, Manifest};
use crate::patch::{MAX_BASIS, Signature, patch, unpatch};
use crate::path::RelPath;
use crate::source::{ChunkSource, verify_chunk};
use crate::wire::worth_compressing;
use crate::{ChunkId, Delta, diff};

const UPDATE_MAGIC: &[u8; 4] = b"OFSU";
const REQUEST_MAGIC: &[u8; 4] = b"OFSR";
const BATCH_MAGIC: &[u8; 4] = b"OFSB";

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

/// A manifest on its way from sender to receiver: whole, or as the delta from a manifest
/// the receiver already holds (its *base*, named by [`Manifest::digest`]). Either way it
/// carries the digest of the full manifest, which the receiver checks after rebuilding it,
/// so the two sides can never disagree about what the tree holds.
///
/// ```text
/// "OFSU" | version u8 = 1 | digest [32] | 0 | manifest
///                                       | 1 | base digest [32] | delta
/// ```
pub fn encode_update(new: &Manifest, base: Option<&Manifest>) -> Vec<u8> {
    let mut w = Writer::with_magic(UPDATE_MAGIC);
    w.bytes(&new.digest());
    match base {
        Some(base) => {
            w.u8(1);
            w.bytes(&base.digest());
            w.bytes(&diff(base, new).to_bytes());
        }
        None => {
            w.u8(0);
            w.bytes(&new.to_bytes());
        }
    }
    w.buf
}

/// The receiver's side of [`encode_update`]: the sender's full manifest, validated and
/// checked against its digest. `base` is the manifest the receiver named, if any; an update
/// against another base is refused.
pub fn decode_update(
    bytes: &[u8],
    base: Option<&Manifest>,
    limits: &Limits,
) -> Result<Manifest, SyncError> {
    let mut r = Reader::new(bytes, "manifest update");
    r.expect_magic(UPDATE_MAGIC)?;
    let digest: [u8; 32] = r.array()?;
    let manifest = match r.u8()? {
        0 => Manifest::from_bytes(r.buf, limits)?,
        1 => {
            let named: [u8; 32] = r.array()?;
            let Some(base) = base.filter(|b| b.digest() == named) else {
                return Err(r.bad("delta against a manifest this side does not hold"));
            };
            let delta = Delta::from_bytes(r.buf, limits)?;
            base.with_delta(&delta, limits)?
        }
        other => return Err(r.bad(format!("unknown update kind {other}"))),
    };
    if manifest.digest() != digest {
        return Err(SyncError::InvalidManifest {
            reason: "the rebuilt manifest does not match the sender's digest".to_owned(),
        });
    }
    Ok(manifest)
}

impl Manifest {
    /// This manifest with `delta` applied: what the tree holds after `apply` of `delta`.
    pub fn with_delta(&self, delta: &Delta, limits: &Limits) -> Result<Manifest, SyncError> {
        delta.validate(limits)?;
        let mut map: BTreeMap<&RelPath, &Entry> =
            self.entries.iter().map(|e| (&e.path, e)).collect();
        for path in &delta.deletes {
            map.remove(path);
        }
        for entry in &delta.upserts {
            map.insert(&entry.path, entry);
        }
        let manifest = Manifest::new(map.into_values().cloned().collect());
        manifest.validate(limits)?;
        Ok(manifest)
    }
}

/// A chunk the receiver asks for, with the old bytes it may be patched against.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub id: ChunkId,
    pub len: u32,
    pub basis: Option<Arc<Basis>>,
}

/// Old bytes of a file the receiver holds, with their signature.
#[derive(Debug)]
pub struct Basis {
    pub bytes: Vec<u8>,
    pub sig: Signature,
}

/// The chunks `delta` needs that `have` says are missing, each once, in file order. A
/// missing chunk that replaces old chunks of the same file which `local` can still read
/// gets those old bytes as its basis (see [`crate::patch`]), within `basis_budget` bytes
/// in all.
pub fn wanted_chunks(
    delta: &Delta,
    own: &Manifest,
    have: impl Fn(&ChunkId) -> bool,
    local: &dyn ChunkSource,
    basis_budget: usize,
) -> Vec<Wanted> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut budget = basis_budget;
    for entry in &delta.upserts {
        let EntryKind::File { chunks, .. } = &entry.kind else {
            continue;
        };
        let old: &[ChunkRef] = match own.get(&entry.path).map(|e| &e.kind) {
            Some(EntryKind::File { chunks, .. }) => chunks,
            _ => &[],
        };
        let mut old_pos: HashMap<ChunkId, usize> = HashMap::with_capacity(old.len());
        for (i, c) in old.iter().enumerate() {
            old_pos.entry(c.id).or_insert(i);
        }
        let mut gap_start = 0usize;
        let mut i = 0;
        while i < chunks.len() {
            if let Some(&at) = old_pos.get(&chunks[i].id) {
                gap_start = at + 1;
                i += 1;
                continue;
            }
            // A run of chunks the old file does not hold, up to the next one it does.
            let run_end = (i..chunks.len())
                .find(|&k| old_pos.contains_key(&chunks[k].id))
                .unwrap_or(chunks.len());
            let gap_end = chunks
                .get(run_end)
                .and_then(|c| old_pos.get(&c.id).copied())
                .unwrap_or(old.len());
            let missing: Vec<&ChunkRef> = chunks[i..run_end]
                .iter()
                .filter(|c| seen.insert(c.id) && !have(&c.id))
                .collect();
            let basis = if missing.is_empty() || gap_start >= gap_end {
                None
            } else {
                read_basis(&old[gap_start..gap_end], local, &mut budget)
            };
            out.extend(missing.into_iter().map(|c| Wanted {
                id: c.id,
                len: c.len,
                basis: basis.clone(),
            }));
            i = run_end;
        }
    }
    out
}

fn read_basis(old: &[ChunkRef], local: &dyn ChunkSource, budget: &mut usize) -> Option<Arc<Basis>> {
    let total: usize = old.iter().map(|c| c.len as usize).sum();
    if total > MAX_BASIS || total > *budget {
        return None;
    }
    let mut bytes = Vec::with_capacity(total);
    for c in old {
        bytes.extend_from_slice(&local.get(&c.id).ok()?);
    }
    *budget -= total;
    let sig = Signature::of(&bytes);
    Some(Arc::new(Basis { bytes, sig }))
}

/// Splits wanted chunks into requests of at most `max_bytes` and `max_chunks`.
pub fn fetch_batches(wanted: Vec<Wanted>, max_bytes: u64, max_chunks: usize) -> Vec<Vec<Wanted>> {
    let mut out: Vec<Vec<Wanted>> = Vec::new();
    let mut bytes = 0u64;
    for w in wanted {
        let len = u64::from(w.len);
        match out.last_mut() {
            Some(batch) if batch.len() < max_chunks && bytes + len <= max_bytes => {
                batch.push(w);
                bytes += len;
            }
            _ => {
                out.push(vec![w]);
                bytes = len;
            }
        }
    }
    out
}

/// The request for a batch: chunk ids and the signatures of their bases.
///
/// ```text
/// "OFSR" | version u8 = 1 | count | count × signature
///        | count | count × ( id [32] | basis (0 none, k the k-th signature) )
/// ```
pub fn encode_request(batch: &[Wanted]) -> Vec<u8> {
    let mut bases: Vec<&Arc<Basis>> = Vec::new();
    let mut refs = Vec::with_capacity(batch.len());
    for w in batch {
        refs.push(w.basis.as_ref().map(
            |b| match bases.iter().position(|seen| Arc::ptr_eq(seen, b)) {
                Some(k) => k + 1,
                None => {
                    bases.push(b);
                    bases.len()
                }
            },
        ));
    }
    let mut w = Writer::with_magic(REQUEST_MAGIC);
    w.usize(bases.len());
    for b in &bases {
        b.sig.write(&mut w);
    }
    w.usize(batch.len());
    for (wanted, basis) in batch.iter().zip(refs) {
        w.bytes(&wanted.id.0);
        w.usize(basis.unwrap_or(0));
    }
    w.buf
}

const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;
const CODEC_PATCH: u8 = 2;

/// The sender's answer to [`encode_request`]: each chunk read from `source` and sent
/// raw, LZ4-compressed or as a patch against its basis, whichever is smallest.
///
/// ```text
/// "OFSB" | version u8 = 1 | count | count × ( codec u8 | raw_len | enc_len | enc_len bytes )
/// ```
pub fn serve_request(
    request: &[u8],
    source: &dyn ChunkSource,
    limits: &Limits,
) -> Result<Vec<u8>, SyncError> {
    let mut r = Reader::new(request, "chunk request");
    r.expect_magic(REQUEST_MAGIC)?;
    let n = r.count(10)?;
    let mut sigs = Vec::with_capacity(n);
    for _ in 0..n {
        sigs.push(Signature::read(&mut r)?);
    }
    let n = r.count(33)?;
    if n > limits.max_batch_chunks {
        return Err(r.bad(format!(
            "{n} chunks exceed the limit of {}",
            limits.max_batch_chunks
        )));
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let id = ChunkId(r.array()?);
        let basis = r.varint()?;
        let sig = match basis {
            0 => None,
            k => Some(
                usize::try_from(k - 1)
                    .ok()
                    .and_then(|k| sigs.get(k))
                    .ok_or_else(|| r.bad(format!("basis {k} not in the request")))?,
            ),
        };
        items.push((id, sig));
    }
    r.finish()?;

    let mut w = Writer::with_magic(BATCH_MAGIC);
    w.usize(items.len());
    let mut total = 0usize;
    for (id, sig) in items {
        let bytes = source.get(&id)?;
        total += bytes.len();
        if total > limits.max_batch_bytes {
            return Err(SyncError::InvalidBatch {
                reason: format!(
                    "the chunks asked for exceed {} bytes",
                    limits.max_batch_bytes
                ),
            });
        }
        let patched = sig.and_then(|sig| patch(&bytes, sig));
        let compressed = if patched.is_none() && worth_compressing(&bytes) {
            Some(lz4_flex::block::compress(&bytes)).filter(|c| c.len() < bytes.len())
        } else {
            None
        };
        let (codec, payload) = match (&patched, &compressed) {
            (Some(p), _) => (CODEC_PATCH, &p[..]),
            (None, Some(c)) => (CODEC_LZ4, &c[..]),
            (None, None) => (CODEC_RAW, &bytes[..]),
        };
        w.u8(codec);
        w.usize(bytes.len());
        w.usize(payload.len());
        w.bytes(payload);
    }
    Ok(w.buf)
}

/// Decodes the sender's answer for `batch`, rebuilding patched chunks from their bases,
/// and verifies every chunk against its id.
pub fn decode_reply(
    reply: &[u8],
    batch: &[Wanted],
    limits: &Limits,
) -> Result<Vec<(ChunkId, Vec<u8>)>, SyncError> {
    let mut r = Reader::new(reply, "chunk batch");
    r.expect_magic(BATCH_MAGIC)?;
    let n = r.count(3)?;
    if n != batch.len() {
        return Err(r.bad(format!("{n} chunks where {} were asked for", batch.len())));
    }
    let mut out = Vec::with_capacity(n);
    let mut total = 0usize;
    for wanted in batch {
        let codec = r.u8()?;
        let raw_len = r.varint()?;
        let raw_len = usize::try_from(raw_len).unwrap_or(usize::MAX);
        if raw_len != wanted.len as usize || raw_len > MAX_CHUNK_SIZE {
            return Err(r.bad(format!(
                "chunk {} has {raw_len} bytes where {} were expected",
                wanted.id, wanted.len
            )));
        }
        total += raw_len;
        if total > limits.max_batch_bytes {
            return Err(r.bad("batch larger than the limit"));
        }
        let enc_len = r.count(1)?;
        let payload = r.take(enc_len)?;
        let bytes = match codec {
            CODEC_RAW if enc_len == raw_len => payload.to_vec(),
            CODEC_LZ4 => lz4_flex::block::decompress(payload, raw_len)
                .map_err(|e| r.bad(format!("chunk {} does not decompress: {e}", wanted.id)))?,
            CODEC_PATCH => match &wanted.basis {
                Some(basis) => unpatch(payload, &basis.bytes, &basis.sig, raw_len)?,
                None => return Err(r.bad(format!("chunk {} patched without a basis", wanted.id))),
            },
            other => return Err(r.bad(format!("unknown codec {other}"))),
        };
        verify_chunk(&wanted.id, &bytes)?;
        out.push((wanted.id, bytes));
    }
    r.finish()?;
    Ok(out)
}
