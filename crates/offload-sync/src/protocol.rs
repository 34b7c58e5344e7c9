//! The messages of the workspace sync, shared by the server, the agent and the benchmark.
//!
//! Pulling (the edge fetches the cloud copy):
//!
//! - `GET  .../workspace/manifest?base=<hex digest>` answers an [`encode_update`]: the
//!   cloud's manifest, as a delta from the named base when the server still holds it.
//! - `POST .../workspace/fetch` takes an [`encode_request`] (chunk ids, and signatures of
//!   the old bytes the edge holds for them) and answers a [`serve_request`] batch: each
//!   chunk raw, LZ4-compressed or patched against its basis.
//!
//! Pushing (the edge sends its changes to the cloud copy), the same messages the other
//! way round:
//!
//! - `POST .../workspace/plan?generation=N&conflict=B` takes a binary [`Delta`] against the
//!   manifest the server last acknowledged and answers an [`encode_plan`]: the chunk
//!   requests the server needs served, each an [`encode_request`].
//! - `POST .../workspace/chunks?plan=P&batch=K` takes the [`serve_request`] answer to
//!   request K, which the server verifies and keeps until the push.
//! - `POST .../workspace/push` takes a [`PushRequest`] naming the plan and answers a
//!   [`PushReport`] once the files are durably in place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::binary::{Reader, Writer};
use crate::chunk::ChunkRef;
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, Manifest};
use crate::patch::{MAX_BASIS, Signature};
use crate::path::RelPath;
use crate::source::ChunkSource;
use crate::{ChunkId, Delta, diff};

pub use crate::wire::{decode_reply, encode_request, serve_request};

const UPDATE_MAGIC: &[u8; 4] = b"OFSU";
const PLAN_MAGIC: &[u8; 4] = b"OFSP";

/// Commits a planned push.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The generation the pushing copy runs at; a stale one is refused.
    pub generation: u64,
    /// The plan the delta and its chunks were sent under.
    pub plan: u64,
    /// The pusher was fenced: keep these changes under `.offload-conflicts/` instead.
    #[serde(default)]
    pub conflict: bool,
}

/// The server's answer to a push's delta: a plan id and the chunk requests to serve.
///
/// ```text
/// "OFSP" | version u8 = 1 | plan id | count | count × ( len | request )
/// ```
pub fn encode_plan(plan: u64, batches: &[Vec<Wanted>]) -> Vec<u8> {
    let mut w = Writer::with_magic(PLAN_MAGIC);
    w.varint(plan);
    w.usize(batches.len());
    for batch in batches {
        let request = encode_request(batch);
        w.usize(request.len());
        w.bytes(&request);
    }
    w.buf
}

/// The pusher's side of [`encode_plan`]: the plan id and each request, still encoded
/// (each is checked by [`serve_request`]).
pub fn decode_plan(bytes: &[u8]) -> Result<(u64, Vec<Vec<u8>>), SyncError> {
    let mut r = Reader::new(bytes, "push plan");
    r.expect_magic(PLAN_MAGIC)?;
    let plan = r.varint()?;
    let n = r.count(1)?;
    let mut requests = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1)?;
        requests.push(r.take(len)?.to_vec());
    }
    r.finish()?;
    Ok((plan, requests))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::pseudo_random;
    use crate::chunk::{ChunkParams, chunk_bytes, cut_points};
    use crate::source::MemoryChunks;

    fn path(s: &str) -> RelPath {
        RelPath::new(s).expect("valid path")
    }

    fn dir(p: &str) -> Entry {
        Entry {
            path: path(p),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1_600_000_000_000_000_000,
        }
    }

    fn file(p: &str, data: &[u8], mtime_ns: i64) -> Entry {
        Entry {
            path: path(p),
            kind: EntryKind::File {
                size: data.len() as u64,
                chunks: chunk_bytes(data),
            },
            mode: 0o644,
            mtime_ns,
        }
    }

    fn link(p: &str, target: &str) -> Entry {
        Entry {
            path: path(p),
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
            mode: 0o777,
            mtime_ns: 0,
        }
    }

    /// The chunks of `data`, as a tree holding it would serve them.
    fn add_chunks(store: &mut MemoryChunks, data: &[u8]) {
        let mut start = 0;
        for end in cut_points(data) {
            let bytes = &data[start..end];
            store
                .insert(ChunkId::of(bytes), bytes.to_vec())
                .expect("insert");
            start = end;
        }
    }

    fn chunks_of(data: &[u8]) -> MemoryChunks {
        let mut store = MemoryChunks::new();
        add_chunks(&mut store, data);
        store
    }

    fn ids(wanted: &[Wanted]) -> Vec<ChunkId> {
        wanted.iter().map(|w| w.id).collect()
    }

    /// A tree of many small files, and the same tree with one of them edited.
    fn many_files() -> (Manifest, Manifest) {
        let mut entries = vec![dir("src")];
        for i in 0..300u64 {
            let name = format!("src/f{i:03}.rs");
            entries.push(file(&name, &pseudo_random(100 + i as usize, i + 1), 7));
        }
        let base = Manifest::new(entries);
        let mut new = base.clone();
        new.entries[42] = file(new.entries[42].path.as_str(), b"edited", 8);
        (base, new)
    }

    #[test]
    fn an_update_round_trips_whole_and_as_a_small_delta() {
        let limits = Limits::default();
        let (base, new) = many_files();
        let whole = encode_update(&new, None);
        let delta = encode_update(&new, Some(&base));
        assert_eq!(decode_update(&whole, None, &limits).expect("whole"), new);
        assert_eq!(
            decode_update(&whole, Some(&base), &limits).expect("whole, base unused"),
            new
        );
        assert_eq!(
            decode_update(&delta, Some(&base), &limits).expect("delta"),
            new
        );
        assert!(
            delta.len() * 20 < whole.len(),
            "a one-file edit costs {} bytes as a delta and {} whole",
            delta.len(),
            whole.len()
        );
        // Nothing changed: the delta is empty and still rebuilds the manifest.
        let same = encode_update(&base, Some(&base));
        assert_eq!(
            decode_update(&same, Some(&base), &limits).expect("empty delta"),
            base
        );
    }

    #[test]
    fn a_delta_against_a_base_the_receiver_does_not_hold_is_refused() {
        let limits = Limits::default();
        let (base, new) = many_files();
        let delta = encode_update(&new, Some(&base));
        let mut other = base.clone();
        other.entries[1].mtime_ns += 1;
        assert!(decode_update(&delta, Some(&other), &limits).is_err());
        assert!(decode_update(&delta, Some(&new), &limits).is_err());
        assert!(decode_update(&delta, None, &limits).is_err());
    }

    #[test]
    fn a_manifest_that_does_not_match_its_digest_is_refused() {
        let limits = Limits::default();
        let (base, new) = many_files();
        for base_given in [None, Some(&base)] {
            let mut tampered = encode_update(&new, base_given);
            tampered[5] ^= 1;
            assert!(matches!(
                decode_update(&tampered, Some(&base), &limits),
                Err(SyncError::InvalidManifest { .. })
            ));
        }
        // A valid manifest under the digest of another.
        let mut swapped = encode_update(&base, None);
        swapped[5..37].copy_from_slice(&new.digest());
        assert!(matches!(
            decode_update(&swapped, None, &limits),
            Err(SyncError::InvalidManifest { .. })
        ));
    }

    #[test]
    fn malformed_updates_are_refused() {
        let limits = Limits::default();
        let (base, new) = many_files();
        for base_given in [None, Some(&base)] {
            let good = encode_update(&new, base_given);
            for n in 0..good.len() {
                assert!(
                    decode_update(&good[..n], Some(&base), &limits).is_err(),
                    "prefix of {n} bytes accepted"
                );
            }
            let mut trailing = good.clone();
            trailing.push(0);
            assert!(decode_update(&trailing, Some(&base), &limits).is_err());
            let mut kind = good;
            kind[37] = 2;
            assert!(decode_update(&kind, Some(&base), &limits).is_err());
        }
    }

    #[test]
    fn with_delta_gives_the_new_manifest() {
        let limits = Limits::default();
        let old = Manifest::new(vec![
            dir("a"),
            dir("a/b"),
            file("a/b/f", b"f", 1),
            file("a/g", b"g", 1),
            link("l", "x"),
            file("x", b"x", 1),
        ]);
        let new = Manifest::new(vec![
            dir("a"),
            file("a/g", b"g, edited", 2),
            link("l", "a/g"),
            file("n", b"new", 3),
            dir("x"),
            file("x/y", b"y", 3),
        ]);
        for (from, to) in [(&old, &new), (&new, &old), (&old, &Manifest::empty())] {
            let delta = diff(from, to);
            assert_eq!(&from.with_delta(&delta, &limits).expect("apply"), to);
        }
        assert_eq!(
            old.with_delta(&Delta::default(), &limits).expect("no-op"),
            old
        );

        // A delta that leaves an orphan is refused.
        let orphan = Delta {
            upserts: vec![file("missing/f", b"f", 1)],
            deletes: vec![],
        };
        assert!(old.with_delta(&orphan, &limits).is_err());
        let half_delete = Delta {
            upserts: vec![],
            deletes: vec![path("a/b")],
        };
        assert!(old.with_delta(&half_delete, &limits).is_err());
    }

    /// The old chunk of `data` that holds byte `at`.
    fn chunk_around(data: &[u8], at: usize) -> &[u8] {
        let mut start = 0;
        for end in cut_points(data) {
            if at < end {
                return &data[start..end];
            }
            start = end;
        }
        panic!("{at} is past the end");
    }

    #[test]
    fn a_one_byte_edit_in_a_large_file_wants_one_chunk_patched_against_the_old_one() {
        let limits = Limits::default();
        let old = pseudo_random(20 << 20, 1);
        let mut new = old.clone();
        let at = 10 << 20;
        new[at] ^= 0x55;
        let own = Manifest::new(vec![file("big", &old, 1)]);
        let theirs = Manifest::new(vec![file("big", &new, 2)]);
        let local = chunks_of(&old);
        let delta = diff(&own, &theirs);

        let wanted = wanted_chunks(&delta, &own, |id| local.contains(id), &local, 64 << 20);
        assert_eq!(
            wanted.len(),
            1,
            "a 1-byte edit wants {} chunks",
            wanted.len()
        );
        let new_chunk = chunk_around(&new, at);
        assert!(
            new_chunk.len() >= ChunkParams::LARGE.min,
            "cut as a large file"
        );
        assert_eq!(wanted[0].id, ChunkId::of(new_chunk));
        let basis = wanted[0]
            .basis
            .as_ref()
            .expect("the edited chunk has a basis");
        assert_eq!(
            basis.bytes,
            chunk_around(&old, at),
            "the basis is the old chunk"
        );
        assert_eq!(basis.sig, Signature::of(&basis.bytes));

        // Through the wire, the chunk crosses as a patch of a few KiB.
        let sender = chunks_of(&new);
        let request = encode_request(&wanted);
        let reply = serve_request(&request, &sender, &limits).expect("serve");
        assert!(
            reply.len() < 8 << 10 && request.len() < 32 << 10,
            "a {} byte chunk took a {} byte request and a {} byte reply",
            new_chunk.len(),
            request.len(),
            reply.len()
        );
        assert_eq!(
            decode_reply(&reply, &wanted, &limits).expect("decode"),
            vec![(wanted[0].id, new_chunk.to_vec())]
        );
    }

    #[test]
    fn a_new_file_has_no_basis() {
        let old = pseudo_random(500_000, 2);
        let fresh = pseudo_random(500_000, 3);
        // "n" was a directory and "s" a symlink: neither has old bytes.
        let own = Manifest::new(vec![file("big", &old, 1), dir("n"), link("s", "big")]);
        let theirs = Manifest::new(vec![
            file("big", &old, 1),
            file("fresh", &fresh, 1),
            file("n", &fresh[..300_000], 1),
            file("s", &fresh[200_000..], 1),
        ]);
        let local = chunks_of(&old);
        let delta = diff(&own, &theirs);
        let wanted = wanted_chunks(&delta, &own, |id| local.contains(id), &local, 64 << 20);
        let needed = delta.needed_chunks(|id| local.contains(id));
        assert!(!wanted.is_empty());
        assert_eq!(ids(&wanted), needed);
        assert!(wanted.iter().all(|w| w.basis.is_none()));
    }

    /// Two small files, each with a byte flipped in its middle.
    fn two_edits() -> (Manifest, Manifest, MemoryChunks, [Vec<u8>; 2]) {
        let old = [pseudo_random(1 << 20, 4), pseudo_random(1 << 20, 5)];
        let mut new = old.clone();
        new[0][500_000] ^= 1;
        new[1][500_000] ^= 1;
        let own = Manifest::new(vec![file("a", &old[0], 1), file("b", &old[1], 1)]);
        let theirs = Manifest::new(vec![file("a", &new[0], 2), file("b", &new[1], 2)]);
        let mut local = chunks_of(&old[0]);
        add_chunks(&mut local, &old[1]);
        (own, theirs, local, old)
    }

    #[test]
    fn bases_stay_within_the_budget() {
        let (own, theirs, local, old) = two_edits();
        let delta = diff(&own, &theirs);
        let want = |budget| wanted_chunks(&delta, &own, |id| local.contains(id), &local, budget);
        let sizes = [
            chunk_around(&old[0], 500_000).len(),
            chunk_around(&old[1], 500_000).len(),
        ];
        let with_bases =
            |wanted: &[Wanted]| -> Vec<bool> { wanted.iter().map(|w| w.basis.is_some()).collect() };

        assert_eq!(with_bases(&want(usize::MAX)), [true, true]);
        assert_eq!(with_bases(&want(0)), [false, false]);
        assert_eq!(
            with_bases(&want(sizes[0] - 1)),
            [false, sizes[1] < sizes[0]]
        );
        assert_eq!(with_bases(&want(sizes[0])), [true, false]);
        assert_eq!(
            with_bases(&want(sizes[0] + sizes[1] - 1)),
            [true, false],
            "the budget counts all bases together"
        );
        assert_eq!(with_bases(&want(sizes[0] + sizes[1])), [true, true]);
    }

    #[test]
    fn no_basis_when_the_old_bytes_cannot_be_read() {
        let (own, theirs, _, _) = two_edits();
        let delta = diff(&own, &theirs);
        let empty = MemoryChunks::new();
        let wanted = wanted_chunks(&delta, &own, |_| false, &empty, usize::MAX);
        assert_eq!(wanted.len(), 2);
        assert!(wanted.iter().all(|w| w.basis.is_none()));
    }

    #[test]
    fn chunks_held_are_not_wanted_and_each_is_wanted_once() {
        let held = pseudo_random(400_000, 6);
        let fresh = pseudo_random(400_000, 7);
        let own = Manifest::new(vec![file("held", &held, 1)]);
        // Two copies of new content, and a copy of what the receiver holds.
        let theirs = Manifest::new(vec![
            file("copy1", &fresh, 1),
            file("copy2", &fresh, 1),
            file("held", &held, 1),
            file("held-too", &held, 1),
        ]);
        let local = chunks_of(&held);
        let fresh_ids: Vec<ChunkId> = chunk_bytes(&fresh).iter().map(|c| c.id).collect();
        assert!(fresh_ids.len() > 2);
        let delta = diff(&own, &theirs);

        let wanted = wanted_chunks(&delta, &own, |id| local.contains(id), &local, 0);
        assert_eq!(ids(&wanted), fresh_ids);
        for (w, c) in wanted.iter().zip(chunk_bytes(&fresh)) {
            assert_eq!(w.len, c.len);
        }

        // A chunk held elsewhere (a cache) is not wanted either.
        let cached = fresh_ids[1];
        let wanted = wanted_chunks(
            &delta,
            &own,
            |id| local.contains(id) || *id == cached,
            &local,
            0,
        );
        let mut expected = fresh_ids.clone();
        expected.remove(1);
        assert_eq!(ids(&wanted), expected);
    }

    fn some_wanted(lens: &[u32]) -> Vec<Wanted> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| Wanted {
                id: ChunkId([i as u8; 32]),
                len,
                basis: None,
            })
            .collect()
    }

    #[test]
    fn fetch_batches_respect_both_bounds_and_keep_order() {
        let lens: Vec<u32> = (0..100u32).map(|i| 1 + (i * 7919) % 100_000).collect();
        let (max_bytes, max_chunks) = (300_000u64, 7usize);
        let batches = fetch_batches(some_wanted(&lens), max_bytes, max_chunks);
        let flat: Vec<u32> = batches.iter().flatten().map(|w| w.len).collect();
        assert_eq!(flat, lens, "every chunk once, in order");
        let bytes = |b: &[Wanted]| b.iter().map(|w| u64::from(w.len)).sum::<u64>();
        for (k, batch) in batches.iter().enumerate() {
            assert!(!batch.is_empty() && batch.len() <= max_chunks);
            assert!(bytes(batch) <= max_bytes);
            // Batches are full: the next chunk did not fit.
            if let Some(next) = batches.get(k + 1) {
                assert!(
                    batch.len() == max_chunks || bytes(batch) + u64::from(next[0].len) > max_bytes
                );
            }
        }
        assert!(batches.iter().any(|b| b.len() == max_chunks));
        assert!(batches.iter().any(|b| b.len() < max_chunks));

        // A batch may fill both bounds exactly.
        let shape = |lens: &[u32], max_bytes, max_chunks| -> Vec<usize> {
            fetch_batches(some_wanted(lens), max_bytes, max_chunks)
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(shape(&[50, 50, 50], 100, 10), [2, 1]);
        assert_eq!(shape(&[1, 1, 1, 1, 1], 100, 2), [2, 2, 1]);
        // A chunk larger than the byte bound goes alone.
        assert_eq!(shape(&[10, 500, 10, 10], 100, 10), [1, 1, 2]);
        assert!(fetch_batches(Vec::new(), 100, 10).is_empty());
    }

    #[test]
    fn plans_round_trip_and_refuse_malformed_bytes() {
        let (own, theirs, local, _) = two_edits();
        let wanted = wanted_chunks(
            &diff(&own, &theirs),
            &own,
            |id| local.contains(id),
            &local,
            usize::MAX,
        );
        let batches = fetch_batches(wanted, u64::MAX, 1);
        assert_eq!(batches.len(), 2);
        for plan in [0, 42, u64::MAX] {
            let bytes = encode_plan(plan, &batches);
            let (id, requests) = decode_plan(&bytes).expect("decode");
            assert_eq!(id, plan);
            let expected: Vec<Vec<u8>> = batches.iter().map(|b| encode_request(b)).collect();
            assert_eq!(requests, expected);
        }
        assert_eq!(
            decode_plan(&encode_plan(7, &[])).expect("empty plan"),
            (7, Vec::new())
        );

        let good = encode_plan(42, &batches);
        for n in 0..good.len() {
            assert!(decode_plan(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_plan(&trailing).is_err());
        let mut magic = good;
        magic[3] = b'X';
        assert!(decode_plan(&magic).is_err());
    }
}
