//! Chunk identity (`ChunkId`, `ChunkRef`) and the content-defined chunker (FastCDC 2020).

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Smallest chunk FastCDC cuts in a small file (except a file's last chunk). Protocol
/// constant.
pub const MIN_CHUNK_SIZE: usize = 16 * 1024;
/// Average chunk size FastCDC aims for in a small file. Protocol constant.
pub const AVG_CHUNK_SIZE: usize = 64 * 1024;
/// Largest chunk FastCDC cuts in a small file. Protocol constant.
pub const SMALL_MAX_CHUNK_SIZE: usize = 256 * 1024;
/// Files of at least this many bytes are cut with [`ChunkParams::LARGE`]. Protocol constant.
pub const LARGE_FILE_SIZE: u64 = 8 << 20;
/// Largest chunk FastCDC cuts in any file; also the largest chunk any peer accepts.
/// Protocol constant.
pub const MAX_CHUNK_SIZE: usize = 4 << 20;
/// FastCDC normalisation level. Protocol constant (the crate's default).
pub const NORMALIZATION: Normalization = Normalization::Level1;

/// FastCDC's three sizes. A file is cut with the parameters of its size class
/// ([`ChunkParams::for_size`]): small files in chunks of about 64 KiB, so an edit resends
/// little; large ones in chunks of about 1 MiB, so their chunk lists stay short (a 1 GiB
/// file lists about a thousand chunks, not sixteen thousand). An edit inside a large chunk
/// still crosses as a patch against the receiver's old bytes (`crate::patch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl ChunkParams {
    /// Files below [`LARGE_FILE_SIZE`].
    pub const SMALL: ChunkParams = ChunkParams {
        min: MIN_CHUNK_SIZE,
        avg: AVG_CHUNK_SIZE,
        max: SMALL_MAX_CHUNK_SIZE,
    };
    /// Files of [`LARGE_FILE_SIZE`] or more.
    pub const LARGE: ChunkParams = ChunkParams {
        min: 512 * 1024,
        avg: 1 << 20,
        max: MAX_CHUNK_SIZE,
    };
    /// Pieces of a chunk compared against a receiver's old bytes (`crate::patch`).
    pub const PATCH: ChunkParams = ChunkParams {
        min: 128,
        avg: 512,
        max: 4096,
    };

    /// The parameters for a file of `size` bytes.
    pub fn for_size(size: u64) -> ChunkParams {
        if size >= LARGE_FILE_SIZE {
            ChunkParams::LARGE
        } else {
            ChunkParams::SMALL
        }
    }

    fn masks(&self) -> (u64, u64) {
        v2020::select_masks(self.avg, NORMALIZATION)
    }

    /// Length of the next chunk at the start of `window`, which must hold either at
    /// least `self.max` bytes or the whole rest of the input.
    fn next_cut(&self, window: &[u8], (mask_s, mask_l): (u64, u64)) -> usize {
        let (_, len) = v2020::cut(
            window,
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        len
    }

    /// Chunk boundaries (end offsets) of `data` with these parameters.
    pub fn cut_points(&self, data: &[u8]) -> Vec<usize> {
        let masks = self.masks();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            pos += self.next_cut(&data[pos..], masks);
            out.push(pos);
        }
        out
    }
}

/// The BLAKE3 hash of a chunk's bytes, which names it. Serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ChunkId {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("chunk id must be 64 lowercase hex digits");
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| "chunk id must be 64 lowercase hex digits")?;
        Ok(ChunkId(out))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One chunk of a file: its id and length. A file is the concatenation of its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// Streams `reader` (a file of `size` bytes, which picks the [`ChunkParams`]) through the
/// chunker, calling `on_chunk` with each chunk's bytes in order; returns the total length.
/// Memory stays bounded (a window of a few chunks) whatever the input size, and the cut
/// points equal those of [`cut_points`] on the whole input.
pub fn for_each_chunk<R, E>(
    mut reader: R,
    size: u64,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E>
where
    R: Read,
    E: From<io::Error>,
{
    let params = ChunkParams::for_size(size);
    let window = 4 * params.max;
    let masks = params.masks();
    let mut buf = vec![0u8; window.min(usize::try_from(size).unwrap_or(window).max(params.max))];
    let window = buf.len();
    let (mut start, mut end) = (0usize, 0usize);
    let mut eof = false;
    let mut total = 0u64;
    loop {
        if !eof && end - start < params.max {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < window {
                match reader.read(&mut buf[end..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if start == end {
            return Ok(total);
        }
        let len = params.next_cut(&buf[start..end], masks);
        on_chunk(&buf[start..start + len])?;
        start += len;
        total += len as u64;
    }
}

/// Chunk boundaries (end offsets) of `data`, as [`for_each_chunk`] would cut a file
/// holding it.
pub fn cut_points(data: &[u8]) -> Vec<usize> {
    ChunkParams::for_size(data.len() as u64).cut_points(data)
}

/// Chunks of an in-memory buffer.
pub fn chunk_bytes(data: &[u8]) -> Vec<ChunkRef> {
    let mut start = 0;
    cut_points(data)
        .into_iter()
        .map(|end| {
            let bytes = &data[start..end];
            start = end;
            ChunkRef {
                id: ChunkId::of(bytes),
                len: bytes.len() as u32,
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64*), independent of any crate.
    pub(crate) fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Pins the protocol: if fastcdc, its parameters or our use of it change, these cut
    /// points move and every peer's chunk cache stops matching. Change only on purpose,
    /// together with a protocol version bump.
    #[test]
    fn golden_cut_points() {
        let data = pseudo_random(2 * 1024 * 1024, 0x0FF1_0AD5);
        let cuts = cut_points(&data);
        assert_eq!(cuts, GOLDEN_CUTS, "chunk cut points changed");
        assert_eq!(
            ChunkId::of(&data[..cuts[0]]).to_hex(),
            GOLDEN_FIRST_ID,
            "chunk id of the first chunk changed"
        );
    }

    /// The large-file parameters, pinned the same way.
    #[test]
    fn golden_cut_points_of_a_large_file() {
        let data = pseudo_random(LARGE_FILE_SIZE as usize + 4 * 1024 * 1024, 0x0FF1_0AD6);
        let cuts = cut_points(&data);
        assert_eq!(cuts, GOLDEN_LARGE_CUTS, "large-file cut points changed");
    }

    const GOLDEN_LARGE_CUTS: &[usize] = &[
        2409598, 3639275, 4774420, 5925918, 7236940, 9624763, 10169875, 11295705, 12582912,
    ];

    const GOLDEN_CUTS: &[usize] = &[
        130449, 230094, 318270, 434884, 501692, 536336, 594498, 683898, 703212, 750302, 814533,
        974682, 1010631, 1113604, 1197177, 1239988, 1375721, 1415145, 1457045, 1538421, 1609823,
        1738704, 1774563, 1799658, 1961627, 2075936, 2097152,
    ];
    const GOLDEN_FIRST_ID: &str =
        "4fb587bfd9b0283380c7ec126c6833e1d60645944098ac247905a96194c5f617";

    #[test]
    fn streaming_matches_whole_buffer_and_fastcdc() {
        let mut data = pseudo_random(3 * 1024 * 1024 + 17, 7);
        // A long run of equal bytes forces maximum-size cuts.
        data.extend(std::iter::repeat_n(0u8, 700 * 1024));
        let whole = cut_points(&data);
        let reference: Vec<usize> = v2020::FastCDC::with_level(
            &data,
            MIN_CHUNK_SIZE,
            AVG_CHUNK_SIZE,
            SMALL_MAX_CHUNK_SIZE,
            NORMALIZATION,
        )
        .map(|c| c.offset + c.length)
        .collect();
        assert_eq!(whole, reference);

        // A reader that returns odd short reads must not change the cuts.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(12_345);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut streamed = Vec::new();
        let mut pos = 0;
        let total = for_each_chunk::<_, io::Error>(Trickle(&data), data.len() as u64, |c| {
            assert!(c.len() <= SMALL_MAX_CHUNK_SIZE);
            pos += c.len();
            streamed.push(pos);
            Ok(())
        })
        .expect("in-memory read");
        assert_eq!(total as usize, data.len());
        assert_eq!(streamed, whole);
    }

    /// Large files are cut with the large parameters, streamed or whole, and the cuts
    /// equal fastcdc's own.
    #[test]
    fn large_files_use_large_chunks() {
        let data = pseudo_random(LARGE_FILE_SIZE as usize + 3 * 1024 * 1024 + 5, 11);
        let whole = cut_points(&data);
        let reference: Vec<usize> = v2020::FastCDC::with_level(
            &data,
            ChunkParams::LARGE.min,
            ChunkParams::LARGE.avg,
            ChunkParams::LARGE.max,
            NORMALIZATION,
        )
        .map(|c| c.offset + c.length)
        .collect();
        assert_eq!(whole, reference);
        assert!(whole.len() < data.len() / ChunkParams::LARGE.min);
        let mut streamed = Vec::new();
        let mut pos = 0;
        for_each_chunk::<_, io::Error>(&data[..], data.len() as u64, |c| {
            pos += c.len();
            streamed.push(pos);
            Ok(())
        })
        .expect("in-memory read");
        assert_eq!(streamed, whole);
        assert_eq!(
            ChunkParams::for_size(LARGE_FILE_SIZE - 1),
            ChunkParams::SMALL
        );
    }

    #[test]
    fn chunk_id_hex_roundtrip() {
        let id = ChunkId::of(b"hello");
        let json = serde_json::to_string(&id).expect("serialise");
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).expect("parse"), id);
        assert!(serde_json::from_str::<ChunkId>(&json.to_uppercase()).is_err());
        assert!(serde_json::from_str::<ChunkId>("\"abc\"").is_err());
    }
}
