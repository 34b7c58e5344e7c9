//! The compact binary form of manifests and deltas that the sync protocol carries.
//!
//! JSON spelled every chunk id as 64 hex digits inside an object; this form spends 32 bytes
//! on an id and a varint on each length, which is what lets a delta of a small edit cost
//! less than rsync's file list. Integers are LEB128 varints, signed ones zigzag-encoded;
//! strings and byte runs carry their length first.
//!
//! ```text
//! manifest: "OFSM" | version u8 = 1 | count | count × entry
//! delta:    "OFSD" | version u8 = 1 | count | count × entry | count | count × path
//! entry:    path | kind u8 (0 dir, 1 file, 2 symlink) | mode | mtime_ns (zigzag)
//!           file:    size | count | count × ( id [32] | len )
//!           symlink: target
//! ```
//!
//! Decoding trusts nothing: every count is bounded by the bytes left before it sizes an
//! allocation, paths are parsed as [`RelPath`]s, and the result is validated as a
//! [`Manifest`] or [`Delta`] against the caller's [`Limits`].

use crate::chunk::{ChunkId, ChunkRef};
use crate::delta::Delta;
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, Manifest};
use crate::path::RelPath;

const MANIFEST_MAGIC: &[u8; 4] = b"OFSM";
const DELTA_MAGIC: &[u8; 4] = b"OFSD";
const VERSION: u8 = 1;

/// Appends to a byte buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_magic(magic: &[u8; 4]) -> Self {
        let mut w = Writer::default();
        w.bytes(magic);
        w.u8(VERSION);
        w
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn usize(&mut self, v: usize) {
        self.varint(v as u64);
    }

    pub fn i64(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn str(&mut self, s: &str) {
        self.usize(s.len());
        self.bytes(s.as_bytes());
    }

    pub fn entry(&mut self, e: &Entry) {
        self.str(e.path.as_str());
        match &e.kind {
            EntryKind::Dir => self.u8(0),
            EntryKind::File { .. } => self.u8(1),
            EntryKind::Symlink { .. } => self.u8(2),
        }
        self.varint(u64::from(e.mode));
        self.i64(e.mtime_ns);
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::File { size, chunks } => {
                self.varint(*size);
                self.usize(chunks.len());
                for c in chunks {
                    self.bytes(&c.id.0);
                    self.varint(u64::from(c.len));
                }
            }
            EntryKind::Symlink { target } => self.str(target),
        }
    }
}

/// Reads from an untrusted byte buffer; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Checks the magic and version at the start.
    pub fn expect_magic(&mut self, magic: &[u8; 4]) -> Result<(), SyncError> {
        if self.take(4)? != magic {
            return Err(self.bad("wrong magic"));
        }
        let version = self.u8()?;
        if version != VERSION {
            return Err(self.bad(format!("unsupported version {version}")));
        }
        Ok(())
    }

    pub fn bad(&self, reason: impl Into<String>) -> SyncError {
        SyncError::InvalidBatch {
            reason: format!("{}: {}", self.what, reason.into()),
        }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SyncError> {
        if self.buf.len() < n {
            return Err(self.bad("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], SyncError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, SyncError> {
        Ok(self.take(1)?[0])
    }

    pub fn varint(&mut self) -> Result<u64, SyncError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.bad("integer overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("integer overflows 64 bits"))
    }

    pub fn u32(&mut self) -> Result<u32, SyncError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.bad(format!("{v} does not fit 32 bits")))
    }

    /// A count of items each at least `min_item` bytes long, bounded by what is left.
    pub fn count(&mut self, min_item: usize) -> Result<usize, SyncError> {
        let v = self.varint()?;
        match usize::try_from(v) {
            Ok(n) if n <= self.buf.len() / min_item.max(1) => Ok(n),
            _ => Err(self.bad(format!("count {v} larger than the message can hold"))),
        }
    }

    pub fn i64(&mut self) -> Result<i64, SyncError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn str(&mut self) -> Result<&'a str, SyncError> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| self.bad("string is not UTF-8"))
    }

    pub fn path(&mut self) -> Result<RelPath, SyncError> {
        RelPath::new(self.str()?)
    }

    pub fn entry(&mut self) -> Result<Entry, SyncError> {
        let path = self.path()?;
        let kind = self.u8()?;
        let mode = self.u32()?;
        let mtime_ns = self.i64()?;
        let kind = match kind {
            0 => EntryKind::Dir,
            1 => {
                let size = self.varint()?;
                let n = self.count(33)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = ChunkId(self.array()?);
                    let len = self.u32()?;
                    chunks.push(ChunkRef { id, len });
                }
                EntryKind::File { size, chunks }
            }
            2 => EntryKind::Symlink {
                target: self.str()?.to_owned(),
            },
            other => return Err(self.bad(format!("unknown entry kind {other}"))),
        };
        Ok(Entry {
            path,
            kind,
            mode,
            mtime_ns,
        })
    }

    pub fn finish(&self) -> Result<(), SyncError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

/// Smallest encoded entry: a one-byte path, kind, mode and mtime.
const MIN_ENTRY: usize = 5;

impl Manifest {
    /// The binary form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(MANIFEST_MAGIC);
        w.usize(self.entries.len());
        for e in &self.entries {
            w.entry(e);
        }
        w.buf
    }

    /// Parses and validates a manifest from untrusted bytes.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, SyncError> {
        let mut r = Reader::new(bytes, "manifest");
        r.expect_magic(MANIFEST_MAGIC)?;
        let n = r.count(MIN_ENTRY)?;
        if n > limits.max_entries {
            return Err(r.bad(format!("{n} entries exceed the limit")));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(r.entry()?);
        }
        r.finish()?;
        let manifest = Manifest {
            entries,
            ..Manifest::empty()
        };
        manifest.validate(limits)?;
        Ok(manifest)
    }

    /// The BLAKE3 hash of the binary form: two peers with equal digests hold equal trees.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }
}

impl Delta {
    /// The binary form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(DELTA_MAGIC);
        w.usize(self.upserts.len());
        for e in &self.upserts {
            w.entry(e);
        }
        w.usize(self.deletes.len());
        for p in &self.deletes {
            w.str(p.as_str());
        }
        w.buf
    }

    /// Parses and validates a delta from untrusted bytes.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, SyncError> {
        let mut r = Reader::new(bytes, "delta");
        r.expect_magic(DELTA_MAGIC)?;
        let n = r.count(MIN_ENTRY)?;
        if n > limits.max_entries {
            return Err(r.bad(format!("{n} upserts exceed the limit")));
        }
        let mut upserts = Vec::with_capacity(n);
        for _ in 0..n {
            upserts.push(r.entry()?);
        }
        let n = r.count(2)?;
        if n > limits.max_entries {
            return Err(r.bad(format!("{n} deletes exceed the limit")));
        }
        let mut deletes = Vec::with_capacity(n);
        for _ in 0..n {
            deletes.push(r.path()?);
        }
        r.finish()?;
        let delta = Delta { upserts, deletes };
        delta.validate(limits)?;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RelPath {
        RelPath::new(s).expect("valid path")
    }

    fn sample() -> Manifest {
        Manifest::new(vec![
            Entry {
                path: path("d"),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_ns: -5,
            },
            Entry {
                path: path("d/f"),
                kind: EntryKind::File {
                    size: 7,
                    chunks: vec![ChunkRef {
                        id: ChunkId::of(b"1234567"),
                        len: 7,
                    }],
                },
                mode: 0o644,
                mtime_ns: 1_700_000_000_123_456_789,
            },
            Entry {
                path: path("d/l"),
                kind: EntryKind::Symlink {
                    target: "f".to_owned(),
                },
                mode: 0o777,
                mtime_ns: 0,
            },
        ])
    }

    #[test]
    fn manifest_and_delta_round_trip() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(
            Manifest::from_bytes(&bytes, &Limits::default()).expect("decode"),
            m
        );
        assert!(bytes.len() < m.to_json().expect("json").len() / 2);
        let d = Delta {
            upserts: m.entries[1..2].to_vec(),
            deletes: vec![path("gone/x"), path("gone")],
        };
        assert_eq!(
            Delta::from_bytes(&d.to_bytes(), &Limits::default()).expect("decode"),
            d
        );
    }

    #[test]
    fn hostile_bytes_are_refused() {
        let limits = Limits::default();
        let good = sample().to_bytes();
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(
                Manifest::from_bytes(&good[..n], &limits).is_err(),
                "prefix {n}"
            );
        }
        // A huge count is refused before it sizes an allocation.
        let mut huge = Writer::with_magic(MANIFEST_MAGIC);
        huge.varint(u64::MAX);
        assert!(Manifest::from_bytes(&huge.buf, &limits).is_err());
        // An escaping path cannot be represented.
        let mut w = Writer::with_magic(DELTA_MAGIC);
        w.usize(0);
        w.usize(1);
        w.str("../etc/passwd");
        let err = Delta::from_bytes(&w.buf, &limits).expect_err("escaping path");
        assert!(matches!(err, SyncError::InvalidPath { .. }), "{err}");
        // Trailing garbage is refused.
        let mut long = good.clone();
        long.push(0);
        assert!(Manifest::from_bytes(&long, &limits).is_err());
        // A size that disagrees with the chunks is refused by validation.
        let mut bad = sample();
        if let EntryKind::File { size, .. } = &mut bad.entries[1].kind {
            *size = 8;
        }
        assert!(Manifest::from_bytes(&bad.to_bytes(), &limits).is_err());
    }

    #[test]
    fn digest_follows_content() {
        let a = sample();
        let mut b = sample();
        assert_eq!(a.digest(), b.digest());
        b.entries[0].mtime_ns += 1;
        assert_ne!(a.digest(), b.digest());
    }
}
