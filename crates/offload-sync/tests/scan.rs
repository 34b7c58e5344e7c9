//! `scan`: what it includes, what `.offloadignore` excludes, and what it skips.

mod common;

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;

use offload_sync::{EntryKind, Manifest, RelPath, ScanOptions, UsageBudget, disk_usage, scan};
use rustix::fs::{FileType, Mode};

use common::{make_symlink, write_file};

fn paths(m: &Manifest) -> Vec<&str> {
    m.entries.iter().map(|e| e.path.as_str()).collect()
}

fn touch(root: &Path, rel: &str) {
    write_file(
        &root.join(rel),
        rel.as_bytes(),
        0o644,
        1_600_000_000_000_000_000,
    );
}

#[test]
fn honours_offloadignore_and_only_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::write(
        root.join(".offloadignore"),
        "*.log\n!keep.log\nbuild/\n/top-only\n",
    )
    .expect("write ignore");
    for f in [
        "a.log",
        "keep.log",
        "src/b.log",
        "build/out.o",
        "src/build/x",
        "top-only",
        "src/top-only",
        ".hidden/file",
        "ignored-by-git",
        "sub/c.tmp",
        "sub/d.txt",
    ] {
        touch(root, f);
    }
    fs::write(root.join(".gitignore"), "ignored-by-git\n").expect("gitignore");
    fs::write(root.join("sub/.offloadignore"), "*.tmp\n").expect("nested ignore");
    fs::create_dir(root.join(".git")).expect("git dir");
    // offload's own names are never scanned.
    touch(root, ".offload-conflicts/late/x");
    touch(root, "src/.offload-tmp-stage-1");

    let scan = scan(root, &ScanOptions::default(), None).expect("scan");
    assert_eq!(
        paths(&scan.manifest),
        [
            ".git",
            ".gitignore",
            ".hidden",
            ".hidden/file",
            ".offloadignore",
            "ignored-by-git",
            "keep.log",
            "src",
            "src/top-only",
            "sub",
            "sub/.offloadignore",
            "sub/d.txt",
        ]
    );
    assert!(scan.skipped.is_empty());
}

#[test]
fn skips_fifos_sockets_and_unsyncable_symlinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    touch(root, "ok.txt");
    let dir = rustix::fs::open(root, rustix::fs::OFlags::DIRECTORY, Mode::empty()).expect("open");
    rustix::fs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .expect("mkfifo");
    let _listener = UnixListener::bind(root.join("sock")).expect("bind socket");
    make_symlink("/usr/bin/python3", &root.join("abs"));
    make_symlink("../outside", &root.join("escape"));
    make_symlink("ok.txt", &root.join("good"));

    let scan = scan(root, &ScanOptions::default(), None).expect("scan");
    assert_eq!(paths(&scan.manifest), ["good", "ok.txt"]);
    let mut skipped: Vec<_> = scan
        .skipped
        .iter()
        .map(|s| s.path.to_string_lossy().into_owned())
        .collect();
    skipped.sort();
    assert_eq!(skipped, ["abs", "escape", "fifo", "sock"]);
    assert!(scan.skipped.iter().all(|s| !s.reason.is_empty()));
}

#[test]
fn records_modes_without_special_bits_and_symlink_targets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write_file(
        &root.join("run.sh"),
        b"#!/bin/sh\n",
        0o4755,
        1_600_000_000_123_456_789,
    );
    make_symlink("run.sh", &root.join("link"));
    let scan = scan(root, &ScanOptions::default(), None).expect("scan");
    let run = scan
        .manifest
        .get(&RelPath::new("run.sh").expect("valid"))
        .expect("present");
    assert_eq!(run.mode, 0o755);
    assert_eq!(run.mtime_ns, 1_600_000_000_123_456_789);
    assert!(matches!(&run.kind, EntryKind::File { size: 10, chunks } if chunks.len() == 1));
    let link = scan
        .manifest
        .get(&RelPath::new("link").expect("valid"))
        .expect("present");
    assert_eq!(
        link.kind,
        EntryKind::Symlink {
            target: "run.sh".into()
        }
    );
}

/// A sparse 16 GiB file costs what it holds: sizing reads metadata only, so it is quick
/// and reports the allocated bytes, not the length.
#[test]
fn disk_usage_counts_allocated_blocks_of_a_sparse_file() {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut file = fs::File::create(root.join("sparse")).expect("create");
    file.seek(SeekFrom::Start(8 << 30)).expect("seek");
    file.write_all(&vec![7u8; 1 << 20]).expect("write");
    file.set_len(16 << 30).expect("set_len");
    file.sync_all().expect("fsync");
    touch(root, "dir/small");
    fs::write(root.join(".offloadignore"), "ignored\n").expect("ignore");
    fs::write(root.join("ignored"), vec![1u8; 4 << 20]).expect("ignored file");

    let started = std::time::Instant::now();
    let usage = disk_usage(root, &UsageBudget::default()).expect("usage");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(usage.complete);
    assert!(
        usage.allocated_bytes >= 1 << 20 && usage.allocated_bytes < 16 << 20,
        "{} bytes",
        usage.allocated_bytes
    );
    // sparse, dir, dir/small and .offloadignore; the ignored file is not counted.
    assert_eq!(usage.entries, 4);
}

/// A workspace larger than the budget is walked only as far as the budget goes, and the
/// answer says it is partial.
#[test]
fn disk_usage_stops_at_its_entry_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for i in 0..50 {
        touch(root, &format!("d{}/f{i}", i % 5));
    }
    let budget = UsageBudget {
        deadline: None,
        max_entries: 10,
    };
    let usage = disk_usage(root, &budget).expect("usage");
    assert!(!usage.complete);
    assert_eq!(usage.entries, 10);
    let whole = disk_usage(root, &UsageBudget::default()).expect("usage");
    assert!(whole.complete);
    assert_eq!(whole.entries, 55);
    assert!(whole.allocated_bytes > usage.allocated_bytes);
}

/// An `.offloadignore` that is a symlink is not followed: its rules do not apply, a
/// warning says so, and the file it points at outside the root is never read.
#[test]
fn a_symlinked_offloadignore_is_not_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ws");
    fs::create_dir(&root).expect("root");
    fs::write(tmp.path().join("host-rules"), "*\n").expect("outside rules");
    make_symlink("../host-rules", &root.join(".offloadignore"));
    touch(&root, "kept.txt");
    let scan = scan(&root, &ScanOptions::default(), None).expect("scan");
    assert_eq!(paths(&scan.manifest), ["kept.txt"]);
    assert!(
        scan.warnings
            .iter()
            .any(|w| w.contains(".offloadignore") && w.contains("not applied")),
        "{:?}",
        scan.warnings
    );
    // The escaping symlink itself is not synced either.
    assert_eq!(scan.skipped.len(), 1);
}
