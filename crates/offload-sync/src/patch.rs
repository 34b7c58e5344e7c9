//! Patches: a chunk the receiver lacks, sent as the difference from bytes it already has.
//!
//! An edit changes one chunk, and a chunk can be up to [`MAX_CHUNK_SIZE`] long, so sending
//! the changed chunk whole would cost far more than the edit. When the receiver still holds
//! the old version of that region of the file (the *basis*: the old chunks between the
//! nearest unchanged neighbours), it sends a [`Signature`] of the basis instead: the basis
//! cut into small content-defined pieces (about 512 bytes, more for a large basis), each
//! named by 8 bytes of its BLAKE3 hash. The sender cuts the new chunk the same way and
//! answers with a [`patch`]: runs of pieces the basis holds, and the new bytes of the rest.
//! The receiver rebuilds the chunk and checks it against the chunk's full 32-byte id, so a
//! truncated-hash collision or a basis that changed gives an error, never wrong bytes.
//!
//! ```text
//! signature: shift u8 | count | count × ( len | hash [8] )
//! patch:     count | count × ( 0 | first piece | pieces     -- copy from the basis
//!                            | 1 | len | len bytes )         -- new bytes
//! ```
//!
//! [`MAX_CHUNK_SIZE`]: crate::chunk::MAX_CHUNK_SIZE

use std::collections::HashMap;

use crate::binary::{Reader, Writer};
use crate::chunk::{ChunkParams, MAX_CHUNK_SIZE};
use crate::error::SyncError;

/// Largest shift of the piece sizes: pieces of at most `4096 << 3` bytes.
const MAX_SHIFT: u8 = 3;
/// A basis is cut into about this many pieces at most before the pieces grow.
const TARGET_PIECES: usize = 1024;

/// The pieces of a basis, as the receiver describes them to the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Piece sizes are those of [`ChunkParams::PATCH`] times `2^shift`.
    pub shift: u8,
    pub pieces: Vec<(u32, [u8; 8])>,
}

fn params(shift: u8) -> ChunkParams {
    let p = ChunkParams::PATCH;
    ChunkParams {
        min: p.min << shift,
        avg: p.avg << shift,
        max: p.max << shift,
    }
}

fn piece_hash(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    out
}

fn pieces(data: &[u8], shift: u8) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    params(shift).cut_points(data).into_iter().map(move |end| {
        let piece = &data[start..end];
        start = end;
        piece
    })
}

impl Signature {
    /// The signature of `basis`, with pieces sized so there are about a thousand.
    pub fn of(basis: &[u8]) -> Signature {
        let mut shift = 0;
        while shift < MAX_SHIFT && (basis.len() / ChunkParams::PATCH.avg) >> shift > TARGET_PIECES {
            shift += 1;
        }
        Signature {
            shift,
            pieces: pieces(basis, shift)
                .map(|p| (p.len() as u32, piece_hash(p)))
                .collect(),
        }
    }

    /// Total bytes of the basis it describes.
    pub fn basis_len(&self) -> u64 {
        self.pieces.iter().map(|(len, _)| u64::from(*len)).sum()
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u8(self.shift);
        w.usize(self.pieces.len());
        for (len, hash) in &self.pieces {
            w.varint(u64::from(*len));
            w.bytes(hash);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Signature, SyncError> {
        let shift = r.u8()?;
        if shift > MAX_SHIFT {
            return Err(r.bad(format!("signature shift {shift} out of range")));
        }
        let n = r.count(9)?;
        let mut pieces = Vec::with_capacity(n);
        let mut total = 0u64;
        for _ in 0..n {
            let len = r.u32()?;
            if len == 0 || len as usize > params(shift).max {
                return Err(r.bad(format!("signature piece of {len} bytes")));
            }
            total += u64::from(len);
            pieces.push((len, r.array()?));
        }
        if total > MAX_BASIS as u64 {
            return Err(r.bad("signature describes too large a basis"));
        }
        Ok(Signature { shift, pieces })
    }
}

/// Largest basis a receiver describes in one signature.
pub const MAX_BASIS: usize = 4 * MAX_CHUNK_SIZE;

/// Encodes `target` as a patch against the basis `sig` describes. Returns `None` when the
/// patch would not be smaller than `target` itself.
pub fn patch(target: &[u8], sig: &Signature) -> Option<Vec<u8>> {
    patch_indexed(target, sig, &PieceIndex::of(sig))
}

/// Where each piece of a signature is, by hash and length: built once per signature when
/// several chunks are patched against the same basis.
pub struct PieceIndex(HashMap<([u8; 8], u32), u32>);

impl PieceIndex {
    pub fn of(sig: &Signature) -> PieceIndex {
        let mut index = HashMap::with_capacity(sig.pieces.len());
        for (i, (len, hash)) in sig.pieces.iter().enumerate() {
            index.entry((*hash, *len)).or_insert(i as u32);
        }
        PieceIndex(index)
    }
}

/// [`patch`] with the signature's index already built.
pub fn patch_indexed(target: &[u8], sig: &Signature, index: &PieceIndex) -> Option<Vec<u8>> {
    let index = &index.0;
    enum Op {
        Copy(u32, u32),
        Literal(usize, usize),
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut pos = 0usize;
    for piece in pieces(target, sig.shift) {
        let at = pos;
        pos += piece.len();
        match index.get(&(piece_hash(piece), piece.len() as u32)) {
            Some(&i) => match ops.last_mut() {
                Some(Op::Copy(first, n)) if *first + *n == i => *n += 1,
                _ => ops.push(Op::Copy(i, 1)),
            },
            None => match ops.last_mut() {
                Some(Op::Literal(_, end)) => *end = pos,
                _ => ops.push(Op::Literal(at, pos)),
            },
        }
    }
    if !ops.iter().any(|op| matches!(op, Op::Copy(..))) {
        return None;
    }
    let mut w = Writer::default();
    w.usize(ops.len());
    for op in &ops {
        match op {
            Op::Copy(first, n) => {
                w.u8(0);
                w.varint(u64::from(*first));
                w.varint(u64::from(*n));
            }
            Op::Literal(start, end) => {
                let bytes = &target[*start..*end];
                w.u8(1);
                w.usize(bytes.len());
                w.bytes(bytes);
            }
        }
    }
    (w.buf.len() < target.len()).then_some(w.buf)
}

/// Rebuilds a chunk of `raw_len` bytes from a patch and the basis bytes its signature
/// described. Every reference and length is checked; the caller verifies the hash.
pub fn unpatch(
    encoded: &[u8],
    basis: &[u8],
    sig: &Signature,
    raw_len: usize,
) -> Result<Vec<u8>, SyncError> {
    let mut offsets = Vec::with_capacity(sig.pieces.len() + 1);
    let mut at = 0usize;
    offsets.push(0);
    for (len, _) in &sig.pieces {
        at += *len as usize;
        offsets.push(at);
    }
    if at != basis.len() {
        return Err(SyncError::InvalidBatch {
            reason: "patch basis does not match its signature".to_owned(),
        });
    }
    let mut r = Reader::new(encoded, "patch");
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(raw_len);
    for _ in 0..n {
        match r.u8()? {
            0 => {
                let first = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
                let count = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
                let end = first.checked_add(count).filter(|&e| e < offsets.len());
                let Some(end) = end else {
                    return Err(r.bad("copy beyond the basis"));
                };
                let bytes = &basis[offsets[first]..offsets[end]];
                if out.len() + bytes.len() > raw_len {
                    return Err(r.bad("patch longer than its chunk"));
                }
                out.extend_from_slice(bytes);
            }
            1 => {
                let len = r.count(1)?;
                if out.len() + len > raw_len {
                    return Err(r.bad("patch longer than its chunk"));
                }
                out.extend_from_slice(r.take(len)?);
            }
            other => return Err(r.bad(format!("unknown patch op {other}"))),
        }
    }
    r.finish()?;
    if out.len() != raw_len {
        return Err(r.bad("patch shorter than its chunk"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::pseudo_random;

    fn round_trip(old: &[u8], new: &[u8]) -> usize {
        let sig = Signature::of(old);
        let mut w = Writer::default();
        sig.write(&mut w);
        let mut r = Reader::new(&w.buf, "signature");
        let sig = Signature::read(&mut r).expect("signature decodes");
        let encoded = patch(new, &sig).expect("a patch is smaller");
        assert_eq!(
            unpatch(&encoded, old, &sig, new.len()).expect("unpatch"),
            new
        );
        encoded.len() + w.buf.len()
    }

    #[test]
    fn small_edits_cost_little() {
        let old = pseudo_random(200_000, 1);
        let mut flipped = old.clone();
        flipped[100_000] ^= 1;
        assert!(round_trip(&old, &flipped) < 10_000);
        let mut inserted = pseudo_random(1024, 2);
        inserted.extend_from_slice(&old);
        assert!(round_trip(&old, &inserted) < 12_000);
        let small = pseudo_random(9_000, 3);
        let mut edited = small.clone();
        edited[4000..4100].copy_from_slice(&pseudo_random(100, 4));
        assert!(round_trip(&small, &edited) < 3_000);
    }

    #[test]
    fn unrelated_bytes_give_no_patch() {
        let sig = Signature::of(&pseudo_random(50_000, 5));
        assert!(patch(&pseudo_random(50_000, 6), &sig).is_none());
    }

    #[test]
    fn hostile_patches_are_refused() {
        let old = pseudo_random(20_000, 7);
        let sig = Signature::of(&old);
        let mut w = Writer::default();
        w.usize(1);
        w.u8(0);
        w.varint(0);
        w.varint(sig.pieces.len() as u64 + 1);
        assert!(
            unpatch(&w.buf, &old, &sig, 20_000).is_err(),
            "copy past the end"
        );
        let mut w = Writer::default();
        w.usize(1);
        w.u8(1);
        w.varint(u64::MAX);
        assert!(unpatch(&w.buf, &old, &sig, 20_000).is_err(), "huge literal");
        let mut w = Writer::default();
        w.usize(1);
        w.u8(0);
        w.varint(0);
        w.varint(1);
        assert!(
            unpatch(&w.buf, &old, &sig, 1).is_err(),
            "longer than the chunk"
        );
        assert!(
            unpatch(&w.buf, &old[1..], &sig, 20_000).is_err(),
            "basis mismatch"
        );
    }
}
