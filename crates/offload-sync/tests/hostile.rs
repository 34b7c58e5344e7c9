//! Hostile manifests and deltas: each is refused with a clear error, nothing outside the
//! root changes (a sentinel directory sits next to it), and a refused delta changes
//! nothing inside the root either.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use offload_sync::{
    ApplyOptions, Chain, ChunkId, ChunkRef, ChunkSource, Delta, Entry, EntryKind, Limits, Manifest,
    MemoryChunks, RelPath, SyncError, apply, chunk_bytes,
};
use proptest::prelude::*;

use common::{fast_opts, make_symlink, snapshot, write_file};

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl Fixture {
    /// `root` holds `keep`, `d/f` and a planted `evil -> ../sentinel`; `sentinel/secret`
    /// sits next to it.
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().to_owned();
        let root = base.join("root");
        write_file(
            &root.join("keep"),
            b"keep",
            0o644,
            1_600_000_000_000_000_000,
        );
        write_file(&root.join("d/f"), b"f", 0o644, 1_600_000_000_000_000_000);
        write_file(
            &base.join("sentinel/secret"),
            b"secret",
            0o600,
            1_600_000_000_000_000_000,
        );
        make_symlink("../sentinel", &root.join("evil"));
        Fixture {
            _tmp: tmp,
            base,
            root,
        }
    }

    /// Applies and asserts that nothing at all changed, returning the error.
    fn refused(&self, delta: &Delta, source: &dyn ChunkSource, opts: &ApplyOptions) -> SyncError {
        let before = snapshot(&self.base);
        let result = apply(&self.root, delta, source, opts);
        assert_eq!(
            snapshot(&self.base),
            before,
            "a refused delta changed the disk"
        );
        match result {
            Ok(report) => panic!("hostile delta applied: {report:?}"),
            Err(e) => e,
        }
    }

    fn sentinel_intact(&self) {
        let sentinel = snapshot(&self.base.join("sentinel"));
        assert_eq!(sentinel.len(), 1, "sentinel gained entries: {sentinel:?}");
        assert_eq!(
            fs::read(self.base.join("sentinel/secret")).expect("read"),
            b"secret"
        );
    }
}

fn rel(s: &str) -> RelPath {
    RelPath::new(s).expect("valid test path")
}

fn file(path: &str, content: &[u8]) -> (Entry, MemoryChunks) {
    let chunks = chunk_bytes(content);
    let mut mem = MemoryChunks::new();
    let mut offset = 0;
    for c in &chunks {
        mem.insert(c.id, content[offset..offset + c.len as usize].to_vec())
            .expect("insert");
        offset += c.len as usize;
    }
    let entry = Entry {
        path: rel(path),
        kind: EntryKind::File {
            size: content.len() as u64,
            chunks,
        },
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
    };
    (entry, mem)
}

fn dir(path: &str) -> Entry {
    Entry {
        path: rel(path),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: rel(path),
        kind: EntryKind::Symlink {
            target: target.to_owned(),
        },
        mode: 0o777,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

fn upserts(entries: Vec<Entry>) -> Delta {
    Delta {
        upserts: entries,
        deletes: Vec::new(),
    }
}

fn assert_msg(err: &SyncError, needle: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} does not mention {needle:?}"
    );
    assert_eq!(msg, msg.trim_end_matches('.'), "message ends with a period");
}

#[test]
fn hostile_paths_cannot_be_deserialised() {
    let long = "x".repeat(256);
    for path in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "a\u{0}b",
        "",
        "./a",
        long.as_str(),
    ] {
        let json = serde_json::json!({
            "upserts": [{"path": path, "kind": {"type": "dir"}, "mode": 493, "mtime_ns": 0}],
            "deletes": []
        });
        let err = serde_json::from_value::<Delta>(json).expect_err(path);
        assert!(err.to_string().contains("invalid path"), "{err}");
        let json = serde_json::json!({"upserts": [], "deletes": [path]});
        assert!(
            serde_json::from_value::<Delta>(json).is_err(),
            "delete {path:?}"
        );
    }
}

#[test]
fn absolute_and_escaping_symlinks_are_refused() {
    let fx = Fixture::new();
    let none = MemoryChunks::new();
    for target in ["/etc", "..", "../sentinel", "a/../../x", "d/../.."] {
        let err = fx.refused(&upserts(vec![link("l", target)]), &none, &fast_opts());
        assert!(
            matches!(err, SyncError::InvalidEntry { .. }),
            "{target}: {err}"
        );
    }
    let err = fx.refused(
        &upserts(vec![dir("x"), link("x/l", "../../sentinel")]),
        &none,
        &fast_opts(),
    );
    assert_msg(&err, "escapes the root");
    fx.sentinel_intact();
}

#[test]
fn symlink_then_file_through_it_is_refused() {
    let fx = Fixture::new();
    let (f, chunks) = file("a/x", b"pwned");
    for target in ["..", "d", "keep"] {
        let delta = upserts(vec![link("a", target), f.clone()]);
        let err = fx.refused(&delta, &chunks, &fast_opts());
        assert!(matches!(err, SyncError::InvalidEntry { .. }), "{err}");
    }
    let (inner, chunks) = file("a/x", b"pwned");
    let delta = upserts(vec![file("a", b"plain").0, inner]);
    let err = fx.refused(&delta, &chunks, &fast_opts());
    assert_msg(&err, "parent a is a file or symlink");
    fx.sentinel_intact();
}

#[test]
fn writes_through_a_planted_symlink_are_refused() {
    let fx = Fixture::new();
    let (f, chunks) = file("evil/pwned", b"pwned");
    let err = fx.refused(&upserts(vec![f]), &chunks, &fast_opts());
    assert_msg(&err, "which is a symlink on disk");
    let err = fx.refused(&upserts(vec![dir("evil/sub")]), &chunks, &fast_opts());
    assert!(matches!(err, SyncError::Refused { .. }), "{err}");

    // Deleting through it finds nothing of ours there and leaves the sentinel alone.
    let delta = Delta {
        upserts: Vec::new(),
        deletes: vec![rel("evil/secret")],
    };
    apply(&fx.root, &delta, &chunks, &fast_opts()).expect("delete of a path not in the tree");
    fx.sentinel_intact();

    // A conflicts prefix that is a planted symlink is refused too.
    fs::remove_file(fx.root.join("evil")).expect("rm");
    make_symlink("../sentinel", &fx.root.join(".offload-conflicts"));
    let (f, chunks) = file("x", b"late");
    let opts = ApplyOptions {
        prefix: Some(rel(".offload-conflicts/late")),
        ..fast_opts()
    };
    let err = fx.refused(&upserts(vec![f]), &chunks, &opts);
    assert_msg(&err, ".offload-conflicts");
    fx.sentinel_intact();
}

#[test]
fn duplicates_and_contradictions_are_refused() {
    let fx = Fixture::new();
    let (f, chunks) = file("n", b"new");
    let err = fx.refused(&upserts(vec![f.clone(), f.clone()]), &chunks, &fast_opts());
    assert_msg(&err, "upserted twice");
    let delta = Delta {
        upserts: vec![f],
        deletes: vec![rel("n")],
    };
    assert_msg(&fx.refused(&delta, &chunks, &fast_opts()), "named twice");
    let (g, chunks) = file("d/g", b"g");
    let delta = Delta {
        upserts: vec![g],
        deletes: vec![rel("d")],
    };
    assert_msg(
        &fx.refused(&delta, &chunks, &fast_opts()),
        "deleted by the same delta",
    );
}

#[test]
fn sizes_and_chunks_that_disagree_are_refused() {
    let fx = Fixture::new();
    let (mut f, chunks) = file("n", b"new content");
    if let EntryKind::File { size, .. } = &mut f.kind {
        *size += 1;
    }
    assert_msg(
        &fx.refused(&upserts(vec![f]), &chunks, &fast_opts()),
        "disagrees with its chunks",
    );

    let too_long = Entry {
        path: rel("big"),
        kind: EntryKind::File {
            size: 300 * 1024,
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"x"),
                len: 300 * 1024,
            }],
        },
        mode: 0o644,
        mtime_ns: 0,
    };
    assert_msg(
        &fx.refused(&upserts(vec![too_long]), &chunks, &fast_opts()),
        "out of range",
    );

    let (mut setuid, chunks) = file("n", b"x");
    setuid.mode = 0o4755;
    assert_msg(
        &fx.refused(&upserts(vec![setuid]), &chunks, &fast_opts()),
        "beyond 0o777",
    );
}

/// A source that lies about content.
struct Liar;

impl ChunkSource for Liar {
    fn get(&self, _id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        Ok(b"not what you asked for".to_vec())
    }
    fn contains(&self, _id: &ChunkId) -> bool {
        true
    }
}

#[test]
fn bad_or_missing_chunks_leave_the_tree_untouched() {
    let fx = Fixture::new();
    let (f, _) = file("keep", b"replacement that never lands");
    // A delete and a directory in the same delta must not happen either.
    let delta = Delta {
        upserts: vec![dir("newdir"), f],
        deletes: vec![rel("d/f")],
    };
    let err = fx.refused(&delta, &Liar, &fast_opts());
    assert!(matches!(err, SyncError::ChunkCorrupt { .. }), "{err}");
    // A liar behind a source that verifies is still caught: a chain vouches for its
    // chunks only if every source in it does.
    let honest = MemoryChunks::new();
    let chain = Chain::new(vec![&honest, &Liar]);
    assert!(!chain.verified());
    let err = fx.refused(&delta, &chain, &fast_opts());
    assert!(matches!(err, SyncError::ChunkCorrupt { .. }), "{err}");
    let err = fx.refused(&delta, &MemoryChunks::new(), &fast_opts());
    assert!(matches!(err, SyncError::ChunkNotFound { .. }), "{err}");
    // No staging leftovers.
    let names: Vec<_> = fs::read_dir(&fx.root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn counts_over_the_limit_are_refused() {
    let fx = Fixture::new();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let delta = upserts((0..11).map(|i| dir(&format!("d{i}"))).collect());
    let opts = ApplyOptions {
        limits: limits.clone(),
        ..fast_opts()
    };
    assert_msg(
        &fx.refused(&delta, &MemoryChunks::new(), &opts),
        "over the limit",
    );
    let manifest = Manifest::new((0..11).map(|i| dir(&format!("d{i}"))).collect());
    assert!(manifest.validate(&limits).is_err());
    assert!(manifest.validate(&Limits::default()).is_ok());
}

#[test]
fn reserved_names_are_refused() {
    let fx = Fixture::new();
    for path in [".offload-conflicts/x", "a/.offload-tmp-stage-1"] {
        let entry = dir(path);
        let err = fx.refused(&upserts(vec![entry]), &MemoryChunks::new(), &fast_opts());
        assert_msg(&err, "reserved");
    }
}

#[test]
fn replacing_a_directory_with_untracked_content_is_refused() {
    let fx = Fixture::new();
    let (f, chunks) = file("d", b"now a file");
    // `d/f` exists on disk but the delta does not delete it.
    let err = fx.refused(&upserts(vec![f.clone()]), &chunks, &fast_opts());
    assert_msg(&err, "does not delete");
    // Deleting what is there makes it legal.
    let delta = Delta {
        upserts: vec![f],
        deletes: vec![rel("d/f")],
    };
    apply(&fx.root, &delta, &chunks, &fast_opts()).expect("replace dir by file");
    assert_eq!(fs::read(fx.root.join("d")).expect("read"), b"now a file");
}

#[test]
fn deleting_a_directory_keeps_untracked_files() {
    let fx = Fixture::new();
    write_file(&fx.root.join("d/untracked"), b"mine", 0o644, 0);
    let delta = Delta {
        upserts: Vec::new(),
        deletes: vec![rel("d/f"), rel("d")],
    };
    let report = apply(&fx.root, &delta, &MemoryChunks::new(), &fast_opts()).expect("apply");
    assert_eq!(report.kept_dirs, vec![rel("d")]);
    assert!(!fx.root.join("d/f").exists());
    assert_eq!(
        fs::read(fx.root.join("d/untracked")).expect("read"),
        b"mine"
    );
}

#[test]
fn mass_deletion_is_refused_unless_allowed() {
    let fx = Fixture::new();
    let delta = Delta {
        upserts: Vec::new(),
        deletes: vec![rel("keep"), rel("d/f"), rel("d"), rel("evil")],
    };
    assert_msg(
        &fx.refused(&delta, &MemoryChunks::new(), &fast_opts()),
        "every entry",
    );
    // Deleting all but one entry is an ordinary delta.
    let partial = Delta {
        upserts: Vec::new(),
        deletes: vec![rel("keep"), rel("d/f"), rel("d")],
    };
    apply(&fx.root, &partial, &MemoryChunks::new(), &fast_opts()).expect("partial delete");
    let opts = ApplyOptions {
        allow_mass_delete: true,
        ..fast_opts()
    };
    apply(&fx.root, &delta, &MemoryChunks::new(), &opts).expect("allowed");
    assert_eq!(fs::read_dir(&fx.root).expect("ls").count(), 0);
    fx.sentinel_intact();
}

#[test]
fn manifest_validation_catches_structural_lies() {
    let limits = Limits::default();
    let (f, _) = file("f", b"x");
    let (under_file, _) = file("f/x", b"y");
    let m = Manifest::new(vec![f.clone(), under_file.clone()]);
    assert!(
        m.validate(&limits)
            .expect_err("must be refused")
            .to_string()
            .contains("parent is a file")
    );
    let m = Manifest::new(vec![link("l", "f"), f.clone(), file("l/x", b"y").0]);
    assert!(m.validate(&limits).is_err());
    let m = Manifest::new(vec![file("missing/x", b"y").0]);
    assert!(
        m.validate(&limits)
            .expect_err("must be refused")
            .to_string()
            .contains("parent directory missing")
    );
    let m = Manifest::new(vec![f.clone(), f.clone()]);
    assert!(
        m.validate(&limits)
            .expect_err("must be refused")
            .to_string()
            .contains("duplicated")
    );
    let mut unsorted = Manifest::new(vec![dir("a"), dir("b")]);
    unsorted.entries.reverse();
    assert!(unsorted.validate(&limits).is_err());
    // JSON round trip validates on the way in.
    let good = Manifest::new(vec![dir("a"), file("a/x", b"1").0, link("a/l", "x")]);
    let json = good.to_json().expect("json");
    assert_eq!(Manifest::from_json(&json, &limits).expect("parse"), good);
    let bad = String::from_utf8(json)
        .expect("utf-8")
        .replace("\"x\"", "\"/etc/passwd\"");
    assert!(Manifest::from_json(bad.as_bytes(), &limits).is_err());
}

fn hostile_component() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "..",
        ".",
        "",
        "a",
        "b",
        "evil",
        "d",
        "keep",
        "/",
        "\u{0}",
        "x\\..",
        ".offload-tmp-x",
    ])
    .prop_map(str::to_owned)
}

fn hostile_entry() -> impl Strategy<Value = serde_json::Value> {
    let path = prop::collection::vec(hostile_component(), 1..4).prop_map(|c| c.join("/"));
    let target = prop::sample::select(vec![
        "..",
        "../..",
        "/tmp",
        "a",
        "../sentinel",
        "evil",
        "evil/..",
        "d/../..",
        "b/secret",
    ]);
    (path, 0u8..3, target, any::<u32>()).prop_map(|(path, kind, target, mode)| {
        let kind = match kind {
            0 => serde_json::json!({"type": "dir"}),
            1 => {
                let id = ChunkId::of(b"pwned").to_hex();
                serde_json::json!({"type": "file", "size": 5, "chunks": [{"id": id, "len": 5}]})
            }
            _ => serde_json::json!({"type": "symlink", "target": target}),
        };
        serde_json::json!({"path": path, "kind": kind, "mode": mode % 0o1000, "mtime_ns": 0})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a peer sends, nothing outside the root is touched.
    #[test]
    fn arbitrary_deltas_never_touch_outside_root(
        entries in prop::collection::vec(hostile_entry(), 0..8),
        deletes in prop::collection::vec(
            prop::collection::vec(hostile_component(), 1..3).prop_map(|c| c.join("/")), 0..4),
    ) {
        let fx = Fixture::new();
        let json = serde_json::json!({"upserts": entries, "deletes": deletes});
        if let Ok(delta) = serde_json::from_value::<Delta>(json) {
            let mut chunks = MemoryChunks::new();
            chunks.insert(ChunkId::of(b"pwned"), b"pwned".to_vec()).expect("insert");
            let _ = apply(&fx.root, &delta, &chunks, &fast_opts());
        }
        fx.sentinel_intact();
        prop_assert!(Path::new(&fx.base.join("sentinel")).is_dir());
    }
}
