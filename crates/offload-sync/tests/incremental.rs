//! Repeated syncs move only what changed: a 1-byte edit needs one chunk, which crosses as
//! a patch of a few KiB, a 1 KiB insert at the start one or two, a rename none; a rescan
//! of an unchanged tree reads no file; the receiver reuses chunks of its own old files.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use offload_sync::protocol::{decode_update, encode_update};
use offload_sync::{
    Chain, ChunkParams, ChunkSource, ChunkStore, EntryKind, Limits, Manifest, ScanOptions,
    TreeChunks, apply, diff, scan,
};

use common::{Counting, assert_same_tree, fast_opts, fetch, pseudo_random, snapshot, write_file};

const OLD_NS: i64 = 1_600_000_000_000_000_000;

fn rescan(root: &Path, previous: Option<&Manifest>) -> offload_sync::Scan {
    scan(root, &ScanOptions::default(), previous).expect("scan")
}

/// What one sync moved.
struct Crossed {
    /// Chunks that had to cross.
    chunks: usize,
    /// Bytes of the chunk requests (ids and signatures of bases).
    request_bytes: usize,
    /// Bytes of the chunk replies.
    reply_bytes: usize,
}

/// Syncs `src` into `dst` the way the agent will: the manifest crosses as an update
/// against the receiver's, the chunks through the wire protocol. Returns what crossed.
fn sync(src: &Path, src_manifest: &Manifest, dst: &Path, dst_manifest: &Manifest) -> Crossed {
    let limits = Limits::default();
    let update = encode_update(src_manifest, Some(dst_manifest));
    let remote = decode_update(&update, Some(dst_manifest), &limits).expect("decode update");
    assert_eq!(&remote, src_manifest);

    let delta = diff(dst_manifest, &remote);
    let local = TreeChunks::new(dst, dst_manifest).expect("index receiver");
    let sender = TreeChunks::new(src, src_manifest).expect("index sender");
    let fetched = fetch(&delta, dst_manifest, &local, &sender);
    let received = Counting::new(&fetched.chunks);
    apply(
        dst,
        &delta,
        &Chain::new(vec![&local, &received]),
        &fast_opts(),
    )
    .expect("apply");
    assert_same_tree(&snapshot(src), &snapshot(dst));
    assert!(
        received.served() >= fetched.wanted.len(),
        "every needed chunk came from the batch"
    );
    Crossed {
        chunks: fetched.wanted.len(),
        request_bytes: fetched.request_bytes,
        reply_bytes: fetched.reply_bytes,
    }
}

/// Distinct chunks of all files of `manifest`.
fn distinct_chunks(manifest: &Manifest) -> usize {
    let mut ids = HashSet::new();
    for entry in &manifest.entries {
        if let EntryKind::File { chunks, .. } = &entry.kind {
            ids.extend(chunks.iter().map(|c| c.id));
        }
    }
    ids.len()
}

struct Pair {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

fn pair_with_big_file(content: &[u8]) -> (Pair, Manifest, Manifest) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).expect("mkdir");
    write_file(&src.join("big.bin"), content, 0o644, OLD_NS);
    write_file(&src.join("small.txt"), b"small", 0o644, OLD_NS);
    let m_src = rescan(&src, None).manifest;
    let first = sync(&src, &m_src, &dst, &Manifest::empty());
    assert_eq!(
        first.chunks,
        distinct_chunks(&m_src),
        "everything crosses once"
    );
    assert!(first.chunks >= content.len() / offload_sync::MAX_CHUNK_SIZE);
    let m_dst = rescan(&dst, None).manifest;
    assert_eq!(m_dst, m_src);
    (
        Pair {
            _tmp: tmp,
            src,
            dst,
        },
        m_src,
        m_dst,
    )
}

/// Large-tier chunks (about 1 MiB) keep a large file's chunk list short; the cost of an
/// edit stays small because the changed chunk crosses as a patch against the old one.
#[test]
fn one_byte_edit_needs_one_chunk_that_crosses_as_a_small_patch() {
    let mut content = pseudo_random(8 << 20, 42);
    assert_eq!(
        ChunkParams::for_size(content.len() as u64),
        ChunkParams::LARGE
    );
    let (pair, m_src, m_dst) = pair_with_big_file(&content);
    content[5_000_000] ^= 0x55;
    write_file(
        &pair.src.join("big.bin"),
        &content,
        0o644,
        OLD_NS + 1_000_000_000,
    );
    let rescanned = rescan(&pair.src, Some(&m_src));
    assert_eq!(
        rescanned.stats.hashed_files, 1,
        "only the edited file is read"
    );
    let crossed = sync(&pair.src, &rescanned.manifest, &pair.dst, &m_dst);
    assert_eq!(
        crossed.chunks, 1,
        "a 1-byte edit should need exactly one new chunk"
    );
    assert!(
        crossed.reply_bytes < 8 << 10 && crossed.request_bytes < 32 << 10,
        "a 1-byte edit crossed as a {} byte request and a {} byte reply",
        crossed.request_bytes,
        crossed.reply_bytes
    );
}

#[test]
fn insert_at_start_needs_one_or_two_chunks() {
    let content = pseudo_random(8 << 20, 43);
    let (pair, m_src, m_dst) = pair_with_big_file(&content);
    let mut edited = pseudo_random(1024, 44);
    edited.extend_from_slice(&content);
    write_file(
        &pair.src.join("big.bin"),
        &edited,
        0o644,
        OLD_NS + 1_000_000_000,
    );
    let rescanned = rescan(&pair.src, Some(&m_src));
    let crossed = sync(&pair.src, &rescanned.manifest, &pair.dst, &m_dst);
    assert!(
        (1..=2).contains(&crossed.chunks),
        "a 1 KiB insert needed {} chunks",
        crossed.chunks
    );
    assert!(
        crossed.reply_bytes < 16 << 10,
        "a 1 KiB insert crossed as a {} byte reply",
        crossed.reply_bytes
    );
}

#[test]
fn rename_needs_no_chunks_and_reads_the_old_file_before_deleting_it() {
    let content = pseudo_random(3 << 20, 45);
    let (pair, _, m_dst) = pair_with_big_file(&content);
    fs::rename(pair.src.join("big.bin"), pair.src.join("renamed.bin")).expect("rename");
    let m_src = rescan(&pair.src, None).manifest;
    let delta = diff(&m_dst, &m_src);
    assert_eq!(delta.deletes.len(), 1);
    let crossed = sync(&pair.src, &m_src, &pair.dst, &m_dst);
    assert_eq!(crossed.chunks, 0);
    assert_eq!(crossed.reply_bytes, 0, "no batch is asked for");
}

#[test]
fn rescan_of_unchanged_tree_reads_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for i in 0..20 {
        write_file(
            &root.join(format!("dir{}/f{i}", i % 4)),
            &pseudo_random(1 << 20, i),
            0o644,
            OLD_NS,
        );
    }
    let first = rescan(root, None);
    assert_eq!(first.stats.hashed_bytes, 20 << 20);
    let second = rescan(root, Some(&first.manifest));
    assert_eq!(second.stats.hashed_bytes, 0);
    assert_eq!(second.stats.reused_files, 20);
    assert_eq!(second.manifest, first.manifest);

    // Same size and mtime but a new inode (an editor's save-by-rename that kept the
    // mtime): read again, and the new content is seen.
    let path = root.join("dir0/f0");
    let tmp_path = root.join("dir0/f0.new");
    write_file(&tmp_path, &pseudo_random(1 << 20, 999), 0o644, OLD_NS);
    fs::rename(&tmp_path, &path).expect("rename");
    let third = rescan(root, Some(&second.manifest));
    assert_eq!(third.stats.hashed_files, 1);
    assert_ne!(third.manifest, second.manifest);

    // A manifest that came over the wire has no stat side table: size + mtime decide.
    let json = third.manifest.to_json().expect("json");
    let parsed = Manifest::from_json(&json, &Default::default()).expect("parse");
    assert_eq!(rescan(root, Some(&parsed)).stats.hashed_files, 0);
}

#[test]
fn a_cache_forgets_a_damaged_chunk_so_it_is_fetched_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open_cache(tmp.path().join("cache")).expect("open");
    let data = pseudo_random(50_000, 9);
    let id = offload_sync::ChunkId::of(&data);
    store.put(&id, &data).expect("put");
    let hex = id.to_hex();
    let path = tmp.path().join("cache").join(&hex[..2]).join(&hex);
    fs::write(&path, b"torn by a crash").expect("corrupt");
    assert!(store.get(&id).is_err(), "damage is an error, not data");
    assert!(!store.contains(&id), "and the chunk counts as missing");
    store.put(&id, &data).expect("fetched again");
    assert_eq!(store.get(&id).expect("get"), data);
}

#[test]
fn chunk_store_verifies_and_serves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(tmp.path().join("chunks")).expect("open");
    let data = pseudo_random(100_000, 7);
    let id = offload_sync::ChunkId::of(&data);
    assert!(!store.contains(&id));
    assert!(
        store
            .put(&offload_sync::ChunkId::of(b"other"), &data)
            .is_err()
    );
    store.put(&id, &data).expect("put");
    store.put(&id, &data).expect("put again is a no-op");
    assert_eq!(store.get(&id).expect("get"), data);
    // Bit rot on disk is an error, not bad data.
    let hex = id.to_hex();
    let path = tmp.path().join("chunks").join(&hex[..2]).join(&hex);
    let mut rotten = data.clone();
    rotten[10] ^= 1;
    fs::write(&path, rotten).expect("corrupt");
    assert!(store.get(&id).is_err());
    store.remove(&id).expect("remove");
    assert!(matches!(
        store.get(&id),
        Err(offload_sync::SyncError::ChunkNotFound { .. })
    ));
}

#[test]
fn tree_chunks_detects_a_file_changed_since_the_scan() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write_file(&root.join("f"), &pseudo_random(200_000, 1), 0o644, OLD_NS);
    let manifest = rescan(root, None).manifest;
    let tree = TreeChunks::new(root, &manifest).expect("index");
    write_file(&root.join("f"), &pseudo_random(200_000, 2), 0o644, OLD_NS);
    let id = match &manifest.entries[0].kind {
        offload_sync::EntryKind::File { chunks, .. } => chunks[0].id,
        other => panic!("not a file: {other:?}"),
    };
    assert!(matches!(
        tree.get(&id),
        Err(offload_sync::SyncError::SourceChanged { .. })
    ));
}
