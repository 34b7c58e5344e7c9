//! The sync session over the in-process transport: pulls and pushes round-trip trees,
//! incremental pulls cross little and read nothing that did not change, and a failing
//! transport fails the session cleanly, leaving the receiver's tree as it was.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use offload_sync::protocol::PushReport;
use offload_sync::session::{self, InProcess, Pull, SessionError, Transport};
use offload_sync::{Manifest, ScanOptions, SyncError, diff, scan};

use common::{assert_same_tree, pseudo_random, snapshot, write_file};

const OLD_NS: i64 = 1_600_000_000_000_000_000;

fn scan_of(root: &Path) -> Manifest {
    scan(root, &ScanOptions::default(), None).unwrap().manifest
}

/// A tree with a large file (large chunks), small files in directories and a symlink.
fn make_tree(root: &Path, seed: u64) {
    fs::create_dir_all(root.join("src/deep")).unwrap();
    write_file(
        &root.join("big.bin"),
        &pseudo_random(9 << 20, seed),
        0o644,
        OLD_NS,
    );
    for i in 0..40u64 {
        write_file(
            &root.join(format!("src/f{i:02}.rs")),
            &pseudo_random(1000 + 97 * i as usize, seed + i),
            0o644,
            OLD_NS + i as i64,
        );
    }
    write_file(&root.join("src/deep/run.sh"), b"#!/bin/sh\n", 0o755, OLD_NS);
    std::os::unix::fs::symlink("src/f01.rs", root.join("link")).unwrap();
}

fn pull_into(transport: &InProcess, root: &Path, previous: Option<&Manifest>) -> session::Pulled {
    session::pull(
        transport,
        &Pull {
            root,
            previous,
            base: previous,
            progress: None,
        },
    )
    .unwrap()
}

#[test]
fn a_pull_copies_a_tree_then_crosses_only_an_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_tree(&src, 1);
    fs::create_dir(&dst).unwrap();
    let sender = InProcess::new(&src, None);

    let fresh = pull_into(&sender, &dst, None);
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
    assert_eq!(fresh.manifest, scan_of(&src));
    assert!(fresh.stats.to_receiver > 9 << 20, "{:?}", fresh.stats);
    assert!(fresh.stats.requests >= 2);

    // One byte flipped in the large file: a patch of a few KiB, one file read on each side.
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[5 << 20] ^= 1;
    write_file(&src.join("big.bin"), &big, 0o644, OLD_NS + 1_000_000_000);
    let edit = pull_into(&sender, &dst, Some(&fresh.manifest));
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
    assert_eq!(edit.stats.chunks_fetched, 1, "{:?}", edit.stats);
    assert_eq!(edit.stats.chunks_patched, 1);
    assert!(edit.stats.to_receiver < 64 << 10, "{:?}", edit.stats);
    assert_eq!(sender.last_scan().unwrap().0.hashed_bytes, 9 << 20);
    assert_eq!(
        edit.stats.local_scan.hashed_bytes, 0,
        "the receiver trusts its stat"
    );

    // Nothing changed: no chunk, no file read on either side.
    let idle = pull_into(&sender, &dst, Some(&edit.manifest));
    assert_eq!(idle.stats.chunks_fetched, 0);
    assert_eq!(idle.stats.requests, 1, "one round trip for the manifest");
    assert_eq!(sender.last_scan().unwrap().0.hashed_bytes, 0);
    assert_eq!(idle.stats.local_scan.hashed_bytes, 0);
    assert!(idle.stats.to_receiver < 1024, "{:?}", idle.stats);
}

#[test]
fn a_pull_follows_deletions_and_replaces_a_different_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_tree(&src, 2);
    make_tree(&dst, 3);
    write_file(
        &dst.join("only-here"),
        b"gone after the pull",
        0o644,
        OLD_NS,
    );
    fs::remove_dir_all(src.join("src/deep")).unwrap();
    let pulled = pull_into(&InProcess::new(&src, None), &dst, None);
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
    assert_eq!(pulled.manifest, scan_of(&dst));
}

#[test]
fn a_push_applies_the_senders_changes_to_the_receiver() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, edge) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    make_tree(&cloud, 4);
    fs::create_dir(&edge).unwrap();
    let server = InProcess::new(&cloud, None);
    let acked = pull_into(&server, &edge, None).manifest;

    // The edge edits, adds and deletes; the push carries the delta from what was acked.
    let mut big = fs::read(edge.join("big.bin")).unwrap();
    big.splice(0..0, pseudo_random(1024, 9));
    write_file(&edge.join("big.bin"), &big, 0o644, OLD_NS + 5);
    write_file(
        &edge.join("src/new.txt"),
        &pseudo_random(300_000, 10),
        0o600,
        OLD_NS,
    );
    fs::remove_file(edge.join("src/f03.rs")).unwrap();
    let current = scan_of(&edge);
    let delta = diff(&acked, &current);
    let pushed = session::push(&server, &edge, &current, &delta).unwrap();
    assert_same_tree(&snapshot(&edge), &snapshot(&cloud));
    assert_eq!(pushed.report.deleted, 1);
    assert!(pushed.batches >= 1);
    // The inserted KiB crosses as a patch, the new file whole: far less than the big file.
    assert!(
        pushed.to_receiver < (1 << 20),
        "pushed {} bytes",
        pushed.to_receiver
    );
    // The cloud's next manifest is what the edge holds.
    assert_eq!(*server.current_manifest().unwrap(), current);
}

/// Fails the `n`th call of `fail_on` (counting from 0), passing everything else through;
/// with `transient`, its failures are the link's, and a pull asks again.
struct Failing<'a> {
    inner: &'a InProcess,
    fail_on: &'static str,
    n: usize,
    calls: AtomicUsize,
    transient: bool,
}

impl Failing<'_> {
    fn check(&self, call: &'static str) -> Result<(), SyncError> {
        if call == self.fail_on && self.calls.fetch_add(1, Ordering::SeqCst) == self.n {
            let kind = if self.transient { " (transient)" } else { "" };
            return Err(SyncError::Refused {
                reason: format!("the link dropped during {call}{kind}"),
            });
        }
        Ok(())
    }
}

impl Transport for Failing<'_> {
    type Error = SyncError;
    fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, SyncError> {
        self.check("manifest")?;
        self.inner.manifest(base)
    }
    fn fetch(&self, request: Vec<u8>) -> Result<Vec<u8>, SyncError> {
        self.check("fetch")?;
        self.inner.fetch(request)
    }
    fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, SyncError> {
        self.check("plan")?;
        self.inner.plan(delta)
    }
    fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), SyncError> {
        self.check("upload")?;
        self.inner.upload(plan, batch, chunks)
    }
    fn push(&self, plan: u64) -> Result<PushReport, SyncError> {
        self.check("push")?;
        self.inner.push(plan)
    }
    fn is_transient(error: &SyncError) -> bool {
        matches!(error, SyncError::Refused { reason } if reason.contains("(transient)"))
    }
}

#[test]
fn a_failing_transport_fails_the_pull_and_leaves_the_receiver_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    // Enough data for several batches, so the apply is running when the link drops.
    fs::create_dir(&src).unwrap();
    for i in 0..3u64 {
        write_file(
            &src.join(format!("big{i}")),
            &pseudo_random(12 << 20, 20 + i),
            0o644,
            OLD_NS,
        );
    }
    make_tree(&dst, 5);
    let before = snapshot(&dst);
    let sender = InProcess::new(&src, None);
    for (call, n) in [("manifest", 0), ("fetch", 0), ("fetch", 1)] {
        let failing = Failing {
            inner: &sender,
            fail_on: call,
            n,
            calls: AtomicUsize::new(0),
            transient: false,
        };
        let err = session::pull(
            &failing,
            &Pull {
                root: &dst,
                previous: None,
                base: None,
                progress: None,
            },
        )
        .expect_err("the pull fails");
        assert!(
            matches!(&err, SessionError::Transport(e) if e.to_string().contains("link dropped")),
            "{call} #{n}: {err}"
        );
        assert_same_tree(&before, &snapshot(&dst));
        let leftovers: Vec<_> = fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(offload_sync::TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }
    // The same transport, unbroken, completes the pull.
    pull_into(&sender, &dst, None);
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
}

/// A link that drops in the middle of a pull's chunk batches: the batch is asked for
/// again and the pull completes, with only that batch crossing twice, not the tree.
#[test]
fn a_pull_resumes_after_the_link_drops_mid_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    for i in 0..4u64 {
        write_file(
            &src.join(format!("big{i}")),
            &pseudo_random(12 << 20, 40 + i),
            0o644,
            OLD_NS,
        );
    }
    fs::create_dir(&dst).unwrap();
    let sender = InProcess::new(&src, None);
    let unbroken = {
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        pull_into(&sender, &other, None).stats
    };
    let dropping = Failing {
        inner: &sender,
        fail_on: "fetch",
        n: 1,
        calls: AtomicUsize::new(0),
        transient: true,
    };
    let pulled = session::pull(
        &dropping,
        &Pull {
            root: &dst,
            previous: None,
            base: None,
            progress: None,
        },
    )
    .expect("the pull resumes");
    assert_eq!(pulled.stats.fetch_retries, 1);
    assert_eq!(pulled.stats.attempts, 1, "it did not start over");
    assert_eq!(pulled.manifest, scan_of(&src));
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
    // The dropped batch's request crossed twice; no chunk did.
    assert_eq!(pulled.stats.to_receiver, unbroken.to_receiver);
    assert_eq!(pulled.stats.requests, unbroken.requests + 1);

    // A link that stays down: the pull gives up after its retries, and the receiver's
    // tree is as it was.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    struct Down<'a>(&'a InProcess);
    impl Transport for Down<'_> {
        type Error = SyncError;
        fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, SyncError> {
            self.0.manifest(base)
        }
        fn fetch(&self, _: Vec<u8>) -> Result<Vec<u8>, SyncError> {
            Err(SyncError::Refused {
                reason: "the link is down".into(),
            })
        }
        fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, SyncError> {
            self.0.plan(delta)
        }
        fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), SyncError> {
            self.0.upload(plan, batch, chunks)
        }
        fn push(&self, plan: u64) -> Result<PushReport, SyncError> {
            self.0.push(plan)
        }
        fn is_transient(_: &SyncError) -> bool {
            true
        }
        fn retry_wait(_: u32) -> std::time::Duration {
            std::time::Duration::from_millis(1)
        }
    }
    let started = std::time::Instant::now();
    let err = session::pull(
        &Down(&sender),
        &Pull {
            root: &empty,
            previous: None,
            base: None,
            progress: None,
        },
    )
    .expect_err("a link that stays down fails the pull");
    assert!(err.to_string().contains("the link is down"), "{err}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(session::FETCH_RETRIES.into()),
        "it gave up before its retries"
    );
    assert!(fs::read_dir(&empty).unwrap().next().is_none());
}

#[test]
fn a_failing_transport_fails_the_push_and_leaves_the_receiver_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, edge) = (tmp.path().join("cloud"), tmp.path().join("edge"));
    make_tree(&cloud, 6);
    fs::create_dir(&edge).unwrap();
    let server = InProcess::new(&cloud, None);
    let acked = pull_into(&server, &edge, None).manifest;
    write_file(
        &edge.join("src/new.bin"),
        &pseudo_random(20 << 20, 11),
        0o644,
        OLD_NS,
    );
    fs::remove_file(edge.join("link")).unwrap();
    let current = scan_of(&edge);
    let delta = diff(&acked, &current);
    let before = snapshot(&cloud);
    for call in ["plan", "upload", "push"] {
        let failing = Failing {
            inner: &server,
            fail_on: call,
            n: 0,
            calls: AtomicUsize::new(0),
            transient: false,
        };
        let err = session::push(&failing, &edge, &current, &delta).expect_err("the push fails");
        assert!(matches!(&err, SessionError::Transport(_)), "{call}: {err}");
        assert_same_tree(&before, &snapshot(&cloud));
    }
    session::push(&server, &edge, &current, &delta).unwrap();
    assert_same_tree(&snapshot(&edge), &snapshot(&cloud));
}

#[test]
fn a_pull_refuses_a_manifest_that_does_not_check_out() {
    struct Garbage<'a>(&'a InProcess);
    impl Transport for Garbage<'_> {
        type Error = SyncError;
        fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, SyncError> {
            let mut body = self.0.manifest(base)?;
            let last = body.len() - 1;
            body[last] ^= 0xff;
            Ok(body)
        }
        fn fetch(&self, request: Vec<u8>) -> Result<Vec<u8>, SyncError> {
            self.0.fetch(request)
        }
        fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, SyncError> {
            self.0.plan(delta)
        }
        fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), SyncError> {
            self.0.upload(plan, batch, chunks)
        }
        fn push(&self, plan: u64) -> Result<PushReport, SyncError> {
            self.0.push(plan)
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_tree(&src, 7);
    make_tree(&dst, 8);
    let before = snapshot(&dst);
    let sender = InProcess::new(&src, None);
    let err = session::pull(
        &Garbage(&sender),
        &Pull {
            root: &dst,
            previous: None,
            base: None,
            progress: None,
        },
    )
    .expect_err("refused");
    assert!(matches!(err, SessionError::Invalid { .. }), "{err}");
    assert_same_tree(&before, &snapshot(&dst));
}

/// A workspace written just before a move (as the container's last writes are): once the
/// pre-copy has pulled it, a final pull of the unchanged tree reads no file on either side,
/// so the downtime does not grow with the workspace.
#[test]
fn a_final_pull_of_a_tree_written_just_before_the_pre_copy_reads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    // Written a second before the pre-copy (the timestamps of a filesystem with
    // sub-second precision).
    let just_now = |path: &Path, bytes: &[u8]| {
        fs::write(path, bytes).unwrap();
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        common::set_mtime(path, (ns - 1_000_000_000) / 1000 * 1000 + 123);
    };
    just_now(&src.join("data"), &pseudo_random(12 << 20, 30));
    just_now(&src.join("small"), b"written now");
    let sender = InProcess::new(&src, None);
    let pre_copy = pull_into(&sender, &dst, None);
    assert_eq!(sender.last_scan().unwrap().0.hashed_bytes, (12 << 20) + 11);
    let last = pull_into(&sender, &dst, Some(&pre_copy.manifest));
    assert_eq!(last.stats.chunks_fetched, 0);
    assert_eq!(
        sender.last_scan().unwrap().0.hashed_bytes,
        0,
        "the sender re-read files it had scanned"
    );
    assert_eq!(last.stats.local_scan.hashed_bytes, 0);
    assert_same_tree(&snapshot(&src), &snapshot(&dst));
}

/// Whole-second mtimes may come from a filesystem that cannot tell two writes within a
/// second apart: such a file written just before a scan is read again by the next one.
#[test]
fn a_file_with_a_whole_second_mtime_just_before_a_scan_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir(&root).unwrap();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    write_file(&root.join("f"), b"coarse", 0o644, secs * 1_000_000_000);
    let first = scan(&root, &ScanOptions::default(), None).unwrap();
    let again = scan(&root, &ScanOptions::default(), Some(&first.manifest)).unwrap();
    assert_eq!(again.stats.hashed_bytes, 6);
}

#[test]
fn an_estimate_counts_what_a_pull_would_fetch_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_tree(&src, 3);
    fs::create_dir(&dst).unwrap();
    let sender = InProcess::new(&src, None);
    let ask = |previous: Option<&Manifest>| {
        session::estimate_pull(
            &sender,
            &Pull {
                root: &dst,
                previous,
                base: previous,
                progress: None,
            },
        )
        .unwrap()
    };

    // Into an empty tree: every file, and nothing written.
    let fresh = ask(None);
    let tree = scan_of(&src).total_file_bytes();
    assert_eq!(fresh.tree_bytes, tree);
    assert!(fresh.bytes <= tree && fresh.bytes > 9 << 20, "{fresh:?}");
    assert_eq!(fresh.files, 42);
    assert_eq!(fresh.deletes, 0);
    assert!(fs::read_dir(&dst).unwrap().next().is_none());
    // Into no tree at all: the same, and no directory made.
    let none = tmp.path().join("none");
    let missing = session::estimate_pull(
        &sender,
        &Pull {
            root: &none,
            previous: None,
            base: None,
            progress: None,
        },
    )
    .unwrap();
    assert_eq!((missing.bytes, missing.files), (fresh.bytes, fresh.files));
    assert!(!none.exists());

    // The estimate matches what the pull then fetches.
    let pulled = pull_into(&sender, &dst, None);
    let crossed: u64 = pulled.stats.to_receiver - pulled.stats.manifest_bytes;
    assert!(crossed >= fresh.bytes, "{crossed} < {}", fresh.bytes);

    // After the pull, one small file changed and one removed: that file alone.
    write_file(&src.join("src/f03.rs"), b"changed", 0o644, OLD_NS + 7);
    fs::remove_file(src.join("src/f04.rs")).unwrap();
    let before = snapshot(&dst);
    let after = ask(Some(&pulled.manifest));
    assert_eq!((after.files, after.deletes), (1, 1), "{after:?}");
    assert_eq!(after.bytes, 7);
    assert_same_tree(&before, &snapshot(&dst));
}
