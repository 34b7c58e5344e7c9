//! The benchmark's workspaces: deterministic random trees, the edits each scenario makes,
//! and the copies that reset a destination to a scenario's starting state.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

/// Name of the single large file of the big-file scenarios.
pub const BIG_FILE: &str = "big.bin";

/// Small files per directory, so no directory grows unrealistically large.
const FILES_PER_DIR: usize = 100;

/// Deterministic pseudo-random bytes (xorshift64*): fast, incompressible, reproducible.
pub struct Noise(u64);

impl Noise {
    /// A stream for `seed`; distinct seeds give unrelated streams (the seed is mixed with
    /// splitmix64, whose output is never zero for the xorshift state here).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Noise((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        out
    }
}

/// The mtime every generated file gets: an hour ago, so no scan treats it as "racy" (just
/// written, possibly changing within the timestamp granularity) and re-reads it.
fn settled_mtime() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

fn write_settled(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("failed to create {path:?}"))?;
    file.write_all(bytes)
        .and_then(|()| file.set_modified(settled_mtime()))
        .with_context(|| format!("failed to write {path:?}"))
}

/// Writes a `size`-byte random file, streaming so a large one never sits in memory whole.
fn write_big(path: &Path, size: usize, seed: u64) -> Result<()> {
    const BLOCK: usize = 4 << 20;
    let mut noise = Noise::new(seed);
    let mut file = File::create(path).with_context(|| format!("failed to create {path:?}"))?;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK);
        noise.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("failed to write {path:?}"))?;
        left -= n;
    }
    file.set_modified(settled_mtime())
        .with_context(|| format!("failed to set the mtime of {path:?}"))
}

/// A tree holding one `size`-byte random file.
pub fn big_file_tree(root: &Path, size: usize) -> Result<()> {
    fs::create_dir_all(root).with_context(|| format!("failed to create {root:?}"))?;
    write_big(&root.join(BIG_FILE), size, 0xB16_F11E)
}

/// `count` random files of 1–16 KiB below `root/small/dNN/`. Returns their total size.
pub fn small_files(root: &Path, count: usize, seed: u64) -> Result<u64> {
    let mut noise = Noise::new(seed);
    let mut total = 0u64;
    for i in 0..count {
        let dir = root
            .join("small")
            .join(format!("d{:02}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("failed to create {dir:?}"))?;
        }
        let len = noise.between(1024, 16 * 1024);
        write_settled(&dir.join(format!("f{i:04}.bin")), &noise.bytes(len))?;
        total += len as u64;
    }
    Ok(total)
}

/// Gives every directory below `root` (and `root`) the settled mtime files get, as in a
/// workspace that has sat for a while. rsync compares mtimes to the second by default, so
/// a directory made in the same second as its copy would keep the copy's mtime.
pub fn settle_dirs(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("failed to list {root:?}"))? {
        let entry = entry.with_context(|| format!("failed to list {root:?}"))?;
        if entry.file_type()?.is_dir() {
            settle_dirs(&entry.path())?;
        }
    }
    File::open(root)
        .and_then(|dir| dir.set_modified(settled_mtime()))
        .with_context(|| format!("failed to set the mtime of {root:?}"))
}

/// The path of small file `i` as [`small_files`] names it.
fn small_file_path(root: &Path, i: usize) -> std::path::PathBuf {
    root.join("small")
        .join(format!("d{:02}", i / FILES_PER_DIR))
        .join(format!("f{i:04}.bin"))
}

/// A fresh workspace: `big_files` random files of `big_size` bytes under `big/` plus
/// `small` small files. Returns the total file bytes.
pub fn fresh_tree(root: &Path, big_files: usize, big_size: usize, small: usize) -> Result<u64> {
    let big = root.join("big");
    fs::create_dir_all(&big).with_context(|| format!("failed to create {big:?}"))?;
    for i in 0..big_files {
        write_big(
            &big.join(format!("file{i:02}.bin")),
            big_size,
            0xF7E5_0000 + i as u64,
        )?;
    }
    Ok(small_files(root, small, 0x5EED)? + (big_files * big_size) as u64)
}

/// Scenario 1: flips one byte in the middle of the big file, in place.
pub fn edit_one_byte(root: &Path) -> Result<()> {
    let path = root.join(BIG_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {path:?}"))?;
    let middle = file.metadata()?.len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, middle)?;
    byte[0] ^= 0xff;
    file.write_all_at(&byte, middle)
        .with_context(|| format!("failed to edit {path:?}"))
}

/// Scenario 2: inserts 1 KiB of random bytes at the start of the big file (rewritten in
/// place, as an editor that truncates and writes would).
pub fn insert_at_start(root: &Path) -> Result<()> {
    let path = root.join(BIG_FILE);
    let old = fs::read(&path).with_context(|| format!("failed to read {path:?}"))?;
    let mut file = File::options()
        .write(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("failed to open {path:?}"))?;
    file.write_all(&Noise::new(0x1_0000).bytes(1024))
        .and_then(|()| file.write_all(&old))
        .with_context(|| format!("failed to rewrite {path:?}"))
}

/// Scenario 3: edits every `every`-th of `count` small files in place, overwriting 100
/// random bytes at a random offset (a typical source edit: the size stays, the mtime
/// moves). Returns how many files changed.
pub fn edit_small_files(root: &Path, count: usize, every: usize) -> Result<usize> {
    let mut noise = Noise::new(0xED17);
    let mut changed = 0;
    for i in (0..count).step_by(every) {
        let path = small_file_path(root, i);
        let file = File::options()
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {path:?}"))?;
        let len = file.metadata()?.len() as usize;
        let patch = noise.bytes(100.min(len));
        let at = noise.between(0, len - patch.len());
        file.write_all_at(&patch, at as u64)
            .with_context(|| format!("failed to edit {path:?}"))?;
        changed += 1;
    }
    Ok(changed)
}

/// Runs a command, failing with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let output = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// `cp -a from to` (`to` must not exist): an exact copy, mtimes and modes included.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(from).arg(to)).map(drop)
}

/// Removes `path` if present and leaves an empty directory there.
pub fn empty_dir(path: &Path) -> Result<()> {
    remove(path)?;
    fs::create_dir_all(path).with_context(|| format!("failed to create {path:?}"))
}

/// Removes `path` and everything below it, if present.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("failed to remove {path:?}"))
        }
        _ => Ok(()),
    }
}

/// Flushes every dirty page to disk (`sync`), so one measurement's writes are not paid for
/// by the next, and so "cp/rsync + sync" is as durable as offload's fsynced apply.
pub fn flush_all() -> Result<()> {
    run(&mut Command::new("sync")).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_fills_odd_lengths() {
        let a = Noise::new(7).bytes(1001);
        assert_eq!(a, Noise::new(7).bytes(1001));
        // Neighbouring seeds must not share a stream (files would deduplicate).
        for seed in 0..64 {
            assert_ne!(Noise::new(seed).bytes(64), Noise::new(seed + 1).bytes(64));
        }
        assert_eq!(a.len(), 1001);
    }

    #[test]
    fn edits_change_what_they_claim() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        big_file_tree(tmp.path(), 10_000)?;
        let before = fs::read(tmp.path().join(BIG_FILE))?;
        edit_one_byte(tmp.path())?;
        let after = fs::read(tmp.path().join(BIG_FILE))?;
        let diffs = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert_eq!((after.len(), diffs), (10_000, 1));

        insert_at_start(tmp.path())?;
        let inserted = fs::read(tmp.path().join(BIG_FILE))?;
        assert_eq!(&inserted[1024..], &after[..]);

        small_files(tmp.path(), 30, 1)?;
        let old: Vec<_> = (0..30)
            .map(|i| fs::read(small_file_path(tmp.path(), i)))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(edit_small_files(tmp.path(), 30, 10)?, 3);
        for (i, old) in old.iter().enumerate() {
            let new = fs::read(small_file_path(tmp.path(), i))?;
            assert_eq!(new.len(), old.len());
            assert_eq!(new != *old, i % 10 == 0, "file {i}");
        }
        Ok(())
    }
}
