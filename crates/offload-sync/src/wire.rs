//! Wire encoding of chunk batches: `encode_chunks` / `decode_chunks`, each chunk
//! compressed with LZ4 on its own (or stored raw when that is not smaller, or when a probe
//! of its middle shows it does not compress).
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "OFSC" | version u8 = 1 | count u32
//! count × ( id [32] | codec u8 (0 raw, 1 lz4 block) | raw_len u32 | enc_len u32 | enc_len bytes )
//! ```
//!
//! Decoding trusts nothing: the count, every length and the total decompressed size are
//! bounded before any allocation, LZ4 decodes into a buffer of exactly `raw_len` bytes,
//! and every chunk must hash to its id.

use crate::chunk::{ChunkId, MAX_CHUNK_SIZE};
use crate::error::SyncError;
use crate::manifest::Limits;
use crate::source::verify_chunk;

const MAGIC: &[u8; 4] = b"OFSC";
const VERSION: u8 = 1;
const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 4;
const CHUNK_HEADER_LEN: usize = 32 + 1 + 4 + 4;

/// Encodes chunks into one batch. The caller vouches that each id is the hash of its
/// bytes (the decoder checks); chunks longer than [`MAX_CHUNK_SIZE`] are refused.
pub fn encode_chunks<'a, I>(chunks: I) -> Result<Vec<u8>, SyncError>
where
    I: IntoIterator<Item = (ChunkId, &'a [u8])>,
{
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    for (id, bytes) in chunks {
        if bytes.len() > MAX_CHUNK_SIZE {
            return Err(SyncError::ChunkCorrupt {
                id,
                reason: format!("{} bytes exceed the maximum chunk size", bytes.len()),
            });
        }
        let compressed = if worth_compressing(bytes) {
            lz4_flex::block::compress(bytes)
        } else {
            Vec::new()
        };
        let (codec, payload) = if !compressed.is_empty() && compressed.len() < bytes.len() {
            (CODEC_LZ4, &compressed[..])
        } else {
            (CODEC_RAW, bytes)
        };
        out.extend_from_slice(&id.0);
        out.push(codec);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        count = count
            .checked_add(1)
            .ok_or_else(|| SyncError::InvalidBatch {
                reason: "too many chunks".to_owned(),
            })?;
    }
    out[5..9].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// Bytes of a chunk's middle compressed to judge the whole chunk.
const PROBE: usize = 4096;

/// Whether LZ4 is likely to shrink `bytes`: a probe from the middle must compress by at
/// least 5%. Already compressed or encrypted data (archives, images, random bytes) then
/// costs one small compression instead of one of the whole chunk.
pub(crate) fn worth_compressing(bytes: &[u8]) -> bool {
    if bytes.len() < 2 * PROBE {
        return true;
    }
    let start = bytes.len() / 2 - PROBE / 2;
    let probe = &bytes[start..start + PROBE];
    lz4_flex::block::compress(probe).len() * 100 < PROBE * 95
}

fn bad(reason: impl Into<String>) -> SyncError {
    SyncError::InvalidBatch {
        reason: reason.into(),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SyncError> {
        if self.buf.len() < n {
            return Err(bad("truncated batch"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SyncError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SyncError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes and verifies a batch made by [`encode_chunks`].
pub fn decode_chunks(bytes: &[u8], limits: &Limits) -> Result<Vec<(ChunkId, Vec<u8>)>, SyncError> {
    let mut r = Reader { buf: bytes };
    if r.take(4)? != MAGIC {
        return Err(bad("not a chunk batch (bad magic)"));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(bad(format!("unsupported batch version {version}")));
    }
    let count = r.u32()? as usize;
    if count > limits.max_batch_chunks {
        return Err(bad(format!(
            "{count} chunks exceed the limit of {}",
            limits.max_batch_chunks
        )));
    }
    // Each chunk needs at least its header, so a count the input cannot hold is refused
    // before it sizes an allocation.
    if count > r.buf.len() / CHUNK_HEADER_LEN {
        return Err(bad("count larger than the batch can hold"));
    }
    let mut out = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let mut id = [0u8; 32];
        id.copy_from_slice(r.take(32)?);
        let id = ChunkId(id);
        let codec = r.u8()?;
        let raw_len = r.u32()? as usize;
        let enc_len = r.u32()? as usize;
        if raw_len > MAX_CHUNK_SIZE {
            return Err(bad(format!(
                "chunk {id} claims {raw_len} bytes, over the maximum"
            )));
        }
        total = total.saturating_add(raw_len);
        if total > limits.max_batch_bytes {
            return Err(bad(format!(
                "batch exceeds {} decompressed bytes",
                limits.max_batch_bytes
            )));
        }
        let payload = r.take(enc_len)?;
        let data = match codec {
            CODEC_RAW => {
                if enc_len != raw_len {
                    return Err(bad(format!("raw chunk {id} has inconsistent lengths")));
                }
                payload.to_vec()
            }
            CODEC_LZ4 => {
                let mut data = vec![0u8; raw_len];
                let n = lz4_flex::block::decompress_into(payload, &mut data)
                    .map_err(|e| bad(format!("chunk {id} does not decompress: {e}")))?;
                if n != raw_len {
                    return Err(bad(format!(
                        "chunk {id} decompresses to {n} bytes, not {raw_len}"
                    )));
                }
                data
            }
            other => return Err(bad(format!("chunk {id} has unknown codec {other}"))),
        };
        verify_chunk(&id, &data)?;
        out.push((id, data));
    }
    if !r.buf.is_empty() {
        return Err(bad("trailing bytes after the last chunk"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(ChunkId, Vec<u8>)> {
        let text = b"hello offload ".repeat(4000);
        let mut noise = vec![0u8; 50_000];
        let mut x = 0x1234_5678_u32;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        [text, noise, Vec::new()]
            .into_iter()
            .map(|b| (ChunkId::of(&b), b))
            .collect()
    }

    fn encode(chunks: &[(ChunkId, Vec<u8>)]) -> Vec<u8> {
        encode_chunks(chunks.iter().map(|(id, b)| (*id, &b[..]))).expect("encode")
    }

    #[test]
    fn roundtrip_compresses_text_and_keeps_noise_raw() {
        let chunks = sample();
        let wire = encode(&chunks);
        let raw_total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        assert!(wire.len() < raw_total, "text should compress");
        assert_eq!(
            decode_chunks(&wire, &Limits::default()).expect("decode"),
            chunks
        );
    }

    #[test]
    fn refuses_tampered_batches() {
        let limits = Limits::default();
        let chunks = sample();
        let wire = encode(&chunks);

        // Every truncation fails cleanly.
        for cut in [0, 3, 8, 9, 40, wire.len() - 1] {
            assert!(
                decode_chunks(&wire[..cut], &limits).is_err(),
                "cut at {cut}"
            );
        }
        // A flipped payload byte breaks either decompression or the hash.
        let mut flipped = wire.clone();
        let last = flipped.len() - 100;
        flipped[last] ^= 0xff;
        assert!(decode_chunks(&flipped, &limits).is_err());
        // Bytes that do not match the id.
        let forged = encode_chunks([(ChunkId::of(b"a"), &b"b"[..])]).expect("encode");
        assert!(matches!(
            decode_chunks(&forged, &limits),
            Err(SyncError::ChunkCorrupt { .. })
        ));
        // Trailing garbage.
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(decode_chunks(&trailing, &limits).is_err());
    }

    #[test]
    fn bounds_allocations_from_hostile_headers() {
        let limits = Limits::default();
        // A count of 4 billion with no data behind it.
        let mut huge_count = MAGIC.to_vec();
        huge_count.push(VERSION);
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_chunks(&huge_count, &limits).is_err());

        // One chunk claiming 4 GiB decompressed from a few bytes.
        let mut bomb = MAGIC.to_vec();
        bomb.push(VERSION);
        bomb.extend_from_slice(&1u32.to_le_bytes());
        bomb.extend_from_slice(&[7u8; 32]);
        bomb.push(CODEC_LZ4);
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        bomb.extend_from_slice(&4u32.to_le_bytes());
        bomb.extend_from_slice(&[0x1f, 0, 0, 0]);
        assert!(matches!(
            decode_chunks(&bomb, &limits),
            Err(SyncError::InvalidBatch { .. })
        ));

        // A lz4 block that expands beyond its declared length.
        let data = vec![0u8; 100_000];
        let compressed = lz4_flex::block::compress(&data);
        let mut liar = MAGIC.to_vec();
        liar.push(VERSION);
        liar.extend_from_slice(&1u32.to_le_bytes());
        liar.extend_from_slice(&ChunkId::of(&data).0);
        liar.push(CODEC_LZ4);
        liar.extend_from_slice(&1000u32.to_le_bytes());
        liar.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        liar.extend_from_slice(&compressed);
        assert!(decode_chunks(&liar, &limits).is_err());

        // The total decompressed size is bounded too.
        let small = Limits {
            max_batch_bytes: 60_000,
            ..Limits::default()
        };
        assert!(decode_chunks(&encode(&sample()), &small).is_err());
        let few = Limits {
            max_batch_chunks: 2,
            ..Limits::default()
        };
        assert!(decode_chunks(&encode(&sample()), &few).is_err());
    }
}
