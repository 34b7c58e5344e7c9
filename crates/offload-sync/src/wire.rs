//! Chunk requests and the batches that answer them: [`encode_request`] (receiver),
//! [`serve_request`] (sender), [`decode_reply`] (receiver).
//!
//! A request names each chunk by id and may give, for some, the signature of old bytes the
//! receiver holds (a *basis*, see [`crate::patch`]). The answer carries the chunks in the
//! order asked, without their ids: each raw, compressed with LZ4 on its own (when a probe
//! of its middle shows it compresses), or as a patch against its basis, whichever is
//! smallest. Integers are LEB128 varints.
//!
//! ```text
//! request: "OFSR" | version u8 = 1 | count | count × signature
//!          | count | count × ( id [32] | basis (0 none, k the k-th signature) )
//! batch:   "OFSB" | version u8 = 1 | count
//!          | count × ( codec u8 (0 raw, 1 lz4, 2 patch) | raw_len | enc_len | enc_len bytes )
//! ```
//!
//! Decoding trusts nothing: every count is bounded by the bytes left and by [`Limits`]
//! before it sizes an allocation, each chunk's length must be the one the receiver asked
//! for, LZ4 decodes into a buffer of exactly that length, a patch may only copy from its
//! basis, and every chunk must hash to its id.

use std::sync::Arc;

use crate::binary::{Reader, Writer};
use crate::chunk::{ChunkId, MAX_CHUNK_SIZE};
use crate::error::SyncError;
use crate::manifest::Limits;
use crate::patch::{PieceIndex, Signature, patch_indexed, unpatch};
use crate::protocol::{Basis, Wanted};
use crate::source::{ChunkSource, verify_chunk};

const REQUEST_MAGIC: &[u8; 4] = b"OFSR";
const BATCH_MAGIC: &[u8; 4] = b"OFSB";

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
        let sig = Signature::read(&mut r)?;
        let index = PieceIndex::of(&sig);
        sigs.push((sig, index));
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
        let patched = sig.and_then(|(sig, index)| patch_indexed(&bytes, sig, index));
        // Tried even when a patch exists: a patch's new bytes are not compressed, so text
        // edited in many places compresses smaller than it patches.
        let compressed = if worth_compressing(&bytes) {
            Some(lz4_flex::block::compress(&bytes)).filter(|c| c.len() < bytes.len())
        } else {
            None
        };
        let (codec, payload) = match (&patched, &compressed) {
            (Some(p), Some(c)) if c.len() < p.len() => (CODEC_LZ4, &c[..]),
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
            CODEC_RAW => {
                return Err(r.bad(format!(
                    "raw chunk {} has {enc_len} bytes where {raw_len} were declared",
                    wanted.id
                )));
            }
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

/// Bytes of a chunk's middle compressed to judge the whole chunk.
const PROBE: usize = 4096;

/// Whether LZ4 is likely to shrink `bytes`: a probe from the middle must compress by at
/// least 5%. Already compressed or encrypted data (archives, images, random bytes) then
/// costs one small compression instead of one of the whole chunk.
fn worth_compressing(bytes: &[u8]) -> bool {
    if bytes.len() < 2 * PROBE {
        return true;
    }
    let start = bytes.len() / 2 - PROBE / 2;
    let probe = &bytes[start..start + PROBE];
    lz4_flex::block::compress(probe).len() * 100 < PROBE * 95
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::chunk::tests::pseudo_random;
    use crate::source::MemoryChunks;

    fn wanted(bytes: &[u8]) -> Wanted {
        Wanted {
            id: ChunkId::of(bytes),
            len: bytes.len() as u32,
            basis: None,
        }
    }

    fn basis(old: &[u8]) -> Arc<Basis> {
        Arc::new(Basis {
            bytes: old.to_vec(),
            sig: Signature::of(old),
        })
    }

    fn source(chunks: &[&[u8]]) -> MemoryChunks {
        let mut source = MemoryChunks::new();
        for c in chunks {
            source.insert(ChunkId::of(c), c.to_vec()).expect("insert");
        }
        source
    }

    /// A batch of three chunks the sender sends three ways, and what the receiver asks.
    struct Sample {
        chunks: Vec<Vec<u8>>,
        batch: Vec<Wanted>,
        source: MemoryChunks,
    }

    /// A text chunk (LZ4), a random chunk (raw) and a random chunk with a one-byte edit
    /// that the receiver holds the old version of (patch). `scale` sizes them.
    fn sample(scale: usize) -> Sample {
        let text = b"hello offload ".repeat(scale / 14);
        let noise = pseudo_random(scale, 1);
        let old = pseudo_random(4 * scale, 2);
        let mut edited = old.clone();
        edited[2 * scale] ^= 0x40;
        let chunks = vec![text, noise, edited];
        let mut batch: Vec<Wanted> = chunks.iter().map(|c| wanted(c)).collect();
        batch[2].basis = Some(basis(&old));
        let source = source(&[&chunks[0], &chunks[1], &chunks[2]]);
        Sample {
            chunks,
            batch,
            source,
        }
    }

    fn expected(chunks: &[Vec<u8>]) -> Vec<(ChunkId, Vec<u8>)> {
        chunks.iter().map(|c| (ChunkId::of(c), c.clone())).collect()
    }

    /// One item of a batch as it lies in the reply.
    #[derive(Debug)]
    struct Item {
        codec: u8,
        raw_len: usize,
        /// Where its payload lies in the reply.
        payload: Range<usize>,
    }

    /// Parses a well-formed reply independently of `decode_reply`.
    fn items(reply: &[u8]) -> Vec<Item> {
        let mut r = Reader::new(reply, "test");
        r.expect_magic(BATCH_MAGIC).expect("magic");
        let n = r.varint().expect("count");
        let mut out = Vec::new();
        for _ in 0..n {
            let codec = r.u8().expect("codec");
            let raw_len = r.varint().expect("raw_len") as usize;
            let enc_len = r.varint().expect("enc_len") as usize;
            let start = reply.len() - r.buf.len();
            r.take(enc_len).expect("payload");
            out.push(Item {
                codec,
                raw_len,
                payload: start..start + enc_len,
            });
        }
        r.finish().expect("no trailing bytes");
        out
    }

    /// A reply written by hand: `(codec, raw_len, payload)` per item.
    fn reply(items: &[(u8, u64, &[u8])]) -> Vec<u8> {
        let mut w = Writer::with_magic(BATCH_MAGIC);
        w.usize(items.len());
        for (codec, raw_len, payload) in items {
            w.u8(*codec);
            w.varint(*raw_len);
            w.usize(payload.len());
            w.bytes(payload);
        }
        w.buf
    }

    fn serve(batch: &[Wanted], source: &MemoryChunks) -> Vec<u8> {
        serve_request(&encode_request(batch), source, &Limits::default()).expect("serve")
    }

    fn assert_invalid(result: Result<Vec<(ChunkId, Vec<u8>)>, SyncError>, what: &str) {
        match result {
            Err(SyncError::InvalidBatch { .. }) => {}
            other => panic!("{what}: expected InvalidBatch, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_sends_text_compressed_noise_raw_and_edits_as_patches() {
        let s = sample(50_000);
        let reply = serve(&s.batch, &s.source);
        let got = items(&reply);
        let codecs: Vec<u8> = got.iter().map(|i| i.codec).collect();
        assert_eq!(codecs, [CODEC_LZ4, CODEC_RAW, CODEC_PATCH]);
        for (item, chunk) in got.iter().zip(&s.chunks) {
            assert_eq!(item.raw_len, chunk.len());
        }
        assert!(
            got[0].payload.len() < s.chunks[0].len() / 10,
            "text compresses"
        );
        assert_eq!(
            got[1].payload.len(),
            s.chunks[1].len(),
            "noise is sent as is"
        );
        assert!(
            got[2].payload.len() < s.chunks[2].len() / 20,
            "a one-byte edit of {} bytes crossed as {} bytes",
            s.chunks[2].len(),
            got[2].payload.len()
        );
        assert_eq!(
            decode_reply(&reply, &s.batch, &Limits::default()).expect("decode"),
            expected(&s.chunks)
        );
    }

    #[test]
    fn a_basis_shared_by_several_chunks_is_described_once() {
        let old = pseudo_random(300_000, 3);
        let (mut a, mut b) = (old[..150_000].to_vec(), old[150_000..].to_vec());
        a[1000] ^= 1;
        b[1000] ^= 1;
        let shared = basis(&old);
        let mut batch = vec![wanted(&a), wanted(&b)];
        batch[0].basis = Some(shared.clone());
        batch[1].basis = Some(shared);
        let once = encode_request(&batch);
        batch[1].basis = Some(basis(&old));
        let twice = encode_request(&batch);
        let sig_len = {
            let mut w = Writer::default();
            Signature::of(&old).write(&mut w);
            w.buf.len()
        };
        assert_eq!(twice.len() - once.len(), sig_len);

        let source = source(&[&a, &b]);
        let reply = serve_request(&once, &source, &Limits::default()).expect("serve");
        assert!(items(&reply).iter().all(|i| i.codec == CODEC_PATCH));
        assert_eq!(
            decode_reply(&reply, &batch, &Limits::default()).expect("decode"),
            expected(&[a, b])
        );
    }

    #[test]
    fn a_basis_that_shares_nothing_falls_back_to_whole_chunks() {
        let chunk = pseudo_random(40_000, 4);
        let mut batch = vec![wanted(&chunk)];
        batch[0].basis = Some(basis(&pseudo_random(40_000, 5)));
        let reply = serve(&batch, &source(&[&chunk]));
        assert_eq!(items(&reply)[0].codec, CODEC_RAW);
        assert_eq!(
            decode_reply(&reply, &batch, &Limits::default()).expect("decode"),
            expected(&[chunk])
        );
    }

    /// Text edited in a few places crosses as a patch; edited all over, it crosses
    /// compressed, because a patch's new bytes are sent as they are.
    #[test]
    fn a_chunk_crosses_patched_or_compressed_whichever_is_smaller() {
        let words: [&[u8]; 8] = [
            b"alpha ",
            b"beta ",
            b"gamma ",
            b"offload ",
            b"sync\n",
            b"chunk ",
            b"patch ",
            b"fn ",
        ];
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut text = Vec::new();
        while text.len() < 200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(words[(x % 8) as usize]);
        }
        for (every, codec) in [(20_000, CODEC_PATCH), (400, CODEC_LZ4)] {
            let mut edited = text.clone();
            for i in (0..edited.len()).step_by(every) {
                edited[i] = b'#';
            }
            let mut batch = vec![wanted(&edited)];
            batch[0].basis = Some(basis(&text));
            let reply = serve(&batch, &source(&[&edited]));
            let item = &items(&reply)[0];
            let patched =
                crate::patch::patch(&edited, &Signature::of(&text)).map_or(usize::MAX, |p| p.len());
            let compressed = lz4_flex::block::compress(&edited).len();
            assert_eq!(item.codec, codec, "edits every {every} bytes");
            assert_eq!(item.payload.len(), patched.min(compressed));
            assert_eq!(
                decode_reply(&reply, &batch, &Limits::default()).expect("decode"),
                expected(&[edited])
            );
        }
    }

    #[test]
    fn a_basis_that_changed_on_the_receiver_gives_an_error_not_wrong_bytes() {
        let s = sample(20_000);
        let reply = serve(&s.batch, &s.source);
        let limits = Limits::default();
        let old = s.batch[2].basis.as_ref().expect("basis");

        // Same length, different content: the rebuilt chunk fails its hash.
        let mut changed = old.bytes.clone();
        changed[10] ^= 1;
        let mut batch = s.batch.clone();
        batch[2].basis = Some(Arc::new(Basis {
            bytes: changed,
            sig: old.sig.clone(),
        }));
        assert!(matches!(
            decode_reply(&reply, &batch, &limits),
            Err(SyncError::ChunkCorrupt { .. })
        ));

        // Shorter than its signature says.
        batch[2].basis = Some(Arc::new(Basis {
            bytes: old.bytes[1..].to_vec(),
            sig: old.sig.clone(),
        }));
        assert_invalid(decode_reply(&reply, &batch, &limits), "short basis");
    }

    #[test]
    fn every_truncation_of_a_reply_fails() {
        let s = sample(2_000);
        let reply = serve(&s.batch, &s.source);
        assert_eq!(
            items(&reply).iter().map(|i| i.codec).collect::<Vec<_>>(),
            [CODEC_LZ4, CODEC_RAW, CODEC_PATCH],
            "the sample exercises every codec"
        );
        for n in 0..reply.len() {
            assert!(
                decode_reply(&reply[..n], &s.batch, &Limits::default()).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
    }

    #[test]
    fn a_flipped_payload_byte_fails() {
        let s = sample(20_000);
        let reply = serve(&s.batch, &s.source);
        for item in items(&reply) {
            for at in [
                item.payload.start,
                item.payload.start + item.payload.len() / 2,
                item.payload.end - 1,
            ] {
                let mut flipped = reply.clone();
                flipped[at] ^= 0x01;
                assert!(
                    decode_reply(&flipped, &s.batch, &Limits::default()).is_err(),
                    "flipped byte {at} of a codec {} payload accepted",
                    item.codec
                );
            }
        }
        let raw = &items(&reply)[1];
        let mut flipped = reply.clone();
        flipped[raw.payload.start + 7] ^= 0x80;
        assert!(matches!(
            decode_reply(&flipped, &s.batch, &Limits::default()),
            Err(SyncError::ChunkCorrupt { .. })
        ));
    }

    #[test]
    fn a_reply_with_fewer_or_more_chunks_than_asked_fails() {
        let s = sample(5_000);
        let limits = Limits::default();
        let served = serve(&s.batch, &s.source);
        assert_invalid(
            decode_reply(&served, &s.batch[..2], &limits),
            "one too many",
        );
        let mut more = s.batch.clone();
        more.push(wanted(b"one more"));
        assert_invalid(decode_reply(&served, &more, &limits), "one too few");
        assert_invalid(decode_reply(&served, &[], &limits), "none asked");

        // The sender answers what it was asked, however the reply is cut.
        let two = serve(&s.batch[..2], &s.source);
        assert_invalid(decode_reply(&two, &s.batch, &limits), "a shorter reply");
        // A count that disagrees with the items that follow.
        assert_eq!(
            served[5], 3,
            "the count is the byte after magic and version"
        );
        for count in [2, 4] {
            let mut miscounted = served.clone();
            miscounted[5] = count;
            assert_invalid(decode_reply(&miscounted, &s.batch, &limits), "miscounted");
            assert_invalid(
                decode_reply(&miscounted, &s.batch[..2], &limits),
                "miscounted, fewer asked",
            );
        }
        let empty = reply(&[]);
        assert_eq!(
            decode_reply(&empty, &[], &limits).expect("empty batch"),
            Vec::new()
        );
    }

    #[test]
    fn a_chunk_of_another_length_than_asked_fails() {
        let limits = Limits::default();
        let chunk = pseudo_random(1000, 6);
        let batch = [wanted(&chunk)];
        let mut longer = chunk.clone();
        longer.push(0);
        assert_invalid(
            decode_reply(&reply(&[(CODEC_RAW, 1001, &longer)]), &batch, &limits),
            "longer",
        );
        assert_invalid(
            decode_reply(&reply(&[(CODEC_RAW, 999, &chunk[..999])]), &batch, &limits),
            "shorter",
        );
        // A raw item whose payload length disagrees with its raw_len.
        assert_invalid(
            decode_reply(&reply(&[(CODEC_RAW, 1000, &chunk[..999])]), &batch, &limits),
            "raw with enc_len != raw_len",
        );
        // An LZ4 item that expands beyond its declared length.
        let zeros = lz4_flex::block::compress(&[0u8; 5000]);
        let batch = [wanted(&[0u8; 1000])];
        assert_invalid(
            decode_reply(&reply(&[(CODEC_LZ4, 1000, &zeros)]), &batch, &limits),
            "lz4 longer than declared",
        );
        // Or stops short of it.
        let zeros = lz4_flex::block::compress(&[0u8; 999]);
        assert!(decode_reply(&reply(&[(CODEC_LZ4, 1000, &zeros)]), &batch, &limits).is_err());
        assert_eq!(
            decode_reply(
                &reply(&[(CODEC_LZ4, 1000, &lz4_flex::block::compress(&[0u8; 1000]))]),
                &batch,
                &limits
            )
            .expect("the honest item decodes"),
            vec![(batch[0].id, vec![0u8; 1000])]
        );
    }

    /// A few bytes that claim to decompress to gigabytes are refused from the item's
    /// header: the declared length must be the one asked for and at most
    /// `MAX_CHUNK_SIZE`, so no buffer is ever sized by what the sender claims.
    #[test]
    fn an_lz4_bomb_is_refused_before_allocating() {
        let limits = Limits {
            max_batch_bytes: usize::MAX,
            ..Limits::default()
        };
        let payload: &[u8] = &[0x1f, 0, 0, 0];
        for declared in [u64::from(u32::MAX), u64::MAX, MAX_CHUNK_SIZE as u64 + 1] {
            // Asked for honestly, answered with a bomb.
            assert_invalid(
                decode_reply(
                    &reply(&[(CODEC_LZ4, declared, payload)]),
                    &[wanted(b"small")],
                    &limits,
                ),
                "bomb against a small chunk",
            );
            // Even a receiver tricked into asking for a huge chunk does not allocate it.
            let huge = Wanted {
                id: ChunkId([7; 32]),
                len: u32::try_from(declared).unwrap_or(u32::MAX),
                basis: None,
            };
            assert_invalid(
                decode_reply(&reply(&[(CODEC_LZ4, declared, payload)]), &[huge], &limits),
                "bomb against a huge ask",
            );
        }
        // Even an honest chunk over the maximum is refused from its header (not after
        // decompressing it, when its hash is checked).
        let oversized = vec![0u8; MAX_CHUNK_SIZE + 1];
        let compressed = lz4_flex::block::compress(&oversized);
        assert_invalid(
            decode_reply(
                &reply(&[(CODEC_LZ4, oversized.len() as u64, &compressed)]),
                &[wanted(&oversized)],
                &limits,
            ),
            "a chunk over the maximum",
        );
    }

    #[test]
    fn a_patch_without_a_basis_and_unknown_codecs_are_refused() {
        let limits = Limits::default();
        let s = sample(20_000);
        let served = serve(&s.batch, &s.source);
        let mut no_basis = s.batch.clone();
        no_basis[2].basis = None;
        assert_invalid(decode_reply(&served, &no_basis, &limits), "patch, no basis");

        let chunk = b"some chunk bytes";
        for codec in [3u8, 7, 0xff] {
            assert_invalid(
                decode_reply(
                    &reply(&[(codec, chunk.len() as u64, chunk)]),
                    &[wanted(chunk)],
                    &limits,
                ),
                "unknown codec",
            );
        }
    }

    #[test]
    fn trailing_bytes_and_bad_magic_are_refused() {
        let s = sample(5_000);
        let limits = Limits::default();
        let reply = serve(&s.batch, &s.source);
        let mut trailing = reply.clone();
        trailing.push(0);
        assert_invalid(decode_reply(&trailing, &s.batch, &limits), "trailing");
        let mut magic = reply.clone();
        magic[0] = b'X';
        assert_invalid(decode_reply(&magic, &s.batch, &limits), "magic");
        let mut version = reply;
        version[4] = 2;
        assert_invalid(decode_reply(&version, &s.batch, &limits), "version");
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_id_are_corrupt() {
        let asked = [Wanted {
            id: ChunkId::of(b"a"),
            len: 1,
            basis: None,
        }];
        assert!(matches!(
            decode_reply(&reply(&[(CODEC_RAW, 1, b"b")]), &asked, &Limits::default()),
            Err(SyncError::ChunkCorrupt { .. })
        ));
        let text = b"abc".repeat(1000);
        let lz4 = lz4_flex::block::compress(&text);
        let asked = [Wanted {
            id: ChunkId::of(b"not that text"),
            len: text.len() as u32,
            basis: None,
        }];
        assert!(matches!(
            decode_reply(
                &reply(&[(CODEC_LZ4, text.len() as u64, &lz4)]),
                &asked,
                &Limits::default()
            ),
            Err(SyncError::ChunkCorrupt { .. })
        ));
    }

    #[test]
    fn batch_limits_are_enforced_on_both_sides() {
        let s = sample(20_000);
        let request = encode_request(&s.batch);
        let total: usize = s.chunks.iter().map(Vec::len).sum();
        let at = |max_batch_chunks, max_batch_bytes| Limits {
            max_batch_chunks,
            max_batch_bytes,
            ..Limits::default()
        };

        // The sender serves exactly up to its limits and refuses beyond.
        let reply = serve_request(&request, &s.source, &at(3, total)).expect("at the limits");
        assert!(matches!(
            serve_request(&request, &s.source, &at(2, total)),
            Err(SyncError::InvalidBatch { .. })
        ));
        assert!(matches!(
            serve_request(&request, &s.source, &at(3, total - 1)),
            Err(SyncError::InvalidBatch { .. })
        ));

        // The receiver likewise, counting decompressed bytes.
        decode_reply(&reply, &s.batch, &at(3, total)).expect("at the limit");
        assert_invalid(
            decode_reply(&reply, &s.batch, &at(3, total - 1)),
            "over max_batch_bytes",
        );
    }

    #[test]
    fn a_chunk_the_sender_lacks_is_not_found() {
        let s = sample(5_000);
        let mut batch = s.batch.clone();
        batch.push(wanted(b"nobody has this"));
        assert!(matches!(
            serve_request(&encode_request(&batch), &s.source, &Limits::default()),
            Err(SyncError::ChunkNotFound { .. })
        ));
    }

    /// A request written by hand: signatures as written by `sig`, then `(id, basis)` items.
    fn request(sigs: &[&dyn Fn(&mut Writer)], items: &[([u8; 32], u64)]) -> Vec<u8> {
        let mut w = Writer::with_magic(REQUEST_MAGIC);
        w.usize(sigs.len());
        for sig in sigs {
            sig(&mut w);
        }
        w.usize(items.len());
        for (id, basis) in items {
            w.bytes(id);
            w.varint(*basis);
        }
        w.buf
    }

    #[test]
    fn hostile_requests_are_refused_without_panics() {
        let s = sample(5_000);
        let limits = Limits::default();
        let serve = |request: &[u8]| serve_request(request, &s.source, &limits);
        let id = s.batch[2].id.0;
        let good_sig = |w: &mut Writer| Signature::of(&pseudo_random(5_000, 9)).write(w);

        // The hand-written form is the real one.
        serve(&request(&[&good_sig], &[(id, 1)])).expect("well-formed request");

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut huge = Writer::with_magic(REQUEST_MAGIC);
        huge.varint(u64::MAX);
        cases.push(("huge signature count", huge.buf));
        let mut huge = Writer::with_magic(REQUEST_MAGIC);
        huge.usize(0);
        huge.varint(u64::MAX);
        cases.push(("huge chunk count", huge.buf));
        let mut huge = Writer::with_magic(REQUEST_MAGIC);
        huge.usize(0);
        huge.usize(1000);
        huge.bytes(&id);
        huge.usize(0);
        cases.push(("count beyond the bytes", huge.buf));
        cases.push((
            "basis past the signatures",
            request(&[&good_sig], &[(id, 2)]),
        ));
        cases.push(("basis with no signatures", request(&[], &[(id, 1)])));
        cases.push(("basis u64::MAX", request(&[&good_sig], &[(id, u64::MAX)])));
        let shift = |w: &mut Writer| {
            w.u8(4);
            w.usize(1);
            w.varint(100);
            w.bytes(&[0; 8]);
        };
        cases.push(("shift out of range", request(&[&shift], &[(id, 1)])));
        let shift = |w: &mut Writer| {
            w.u8(0xff);
            w.usize(0);
        };
        cases.push(("shift 255", request(&[&shift], &[(id, 0)])));
        let empty_piece = |w: &mut Writer| {
            w.u8(0);
            w.usize(1);
            w.varint(0);
            w.bytes(&[0; 8]);
        };
        cases.push(("zero-length piece", request(&[&empty_piece], &[(id, 1)])));
        let long_piece = |w: &mut Writer| {
            w.u8(0);
            w.usize(1);
            w.varint(4097);
            w.bytes(&[0; 8]);
        };
        cases.push((
            "piece over the shift's max",
            request(&[&long_piece], &[(id, 1)]),
        ));
        let huge_piece = |w: &mut Writer| {
            w.u8(3);
            w.usize(1);
            w.varint(u64::MAX);
            w.bytes(&[0; 8]);
        };
        cases.push((
            "piece of u64::MAX bytes",
            request(&[&huge_piece], &[(id, 1)]),
        ));
        let huge_basis = |w: &mut Writer| {
            let n = crate::patch::MAX_BASIS / 32768 + 1;
            w.u8(3);
            w.usize(n);
            for _ in 0..n {
                w.varint(32768);
                w.bytes(&[0; 8]);
            }
        };
        cases.push(("basis over MAX_BASIS", request(&[&huge_basis], &[(id, 1)])));
        let mut trailing = request(&[&good_sig], &[(id, 1)]);
        trailing.push(0);
        cases.push(("trailing bytes", trailing));
        let mut magic = request(&[], &[(id, 0)]);
        magic[..4].copy_from_slice(BATCH_MAGIC);
        cases.push(("a batch's magic", magic));

        for (what, bytes) in &cases {
            match serve(bytes) {
                Err(SyncError::InvalidBatch { .. }) => {}
                other => panic!("{what}: expected InvalidBatch, got {other:?}"),
            }
        }

        let good = encode_request(&s.batch);
        for n in 0..good.len() {
            assert!(serve(&good[..n]).is_err(), "prefix of {n} bytes served");
        }
    }
}
