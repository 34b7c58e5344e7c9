//! Property tests: scan → diff → fetch over the wire protocol → apply reproduces any
//! generated tree exactly, into an empty directory, into a different existing tree, and
//! below a conflicts prefix.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use offload_sync::{
    ApplyOptions, Chain, ChunkSource, Manifest, RelPath, ScanOptions, TreeChunks, apply, diff, scan,
};
use proptest::prelude::*;

use common::{
    assert_same_tree, fast_opts, fetch, ids, make_symlink, pseudo_random, snapshot, write_file,
};

#[derive(Debug, Clone)]
enum Content {
    Random { seed: u64, len: usize },
    Repeat { byte: u8, len: usize },
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Random { seed, len } => pseudo_random(*len, *seed),
            Content::Repeat { byte, len } => {
                let pattern: Vec<u8> = (0..37u8).map(|i| byte.wrapping_add(i % 5)).collect();
                pattern.iter().copied().cycle().take(*len).collect()
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Spec {
    File {
        content: Content,
        mode: u32,
        mtime: i64,
    },
    Symlink {
        ups: usize,
        name: String,
    },
    Dir {
        children: BTreeMap<String, Spec>,
        mode: u32,
        mtime: i64,
    },
}

const BASE_NS: i64 = 1_600_000_000_000_000_000;

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "c", "d.txt", "E", "sp ace", "ü", "-x", ".hid",
    ])
    .prop_map(str::to_owned)
}

fn mtime() -> impl Strategy<Value = i64> {
    (0i64..1_000_000).prop_map(|n| BASE_NS + n * 1_000_003_007)
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => (any::<u64>(), 0usize..5000).prop_map(|(seed, len)| Content::Random { seed, len }),
        2 => (any::<u8>(), 0usize..300_000).prop_map(|(byte, len)| Content::Repeat { byte, len }),
        1 => (any::<u64>(), 0usize..600_000).prop_map(|(seed, len)| Content::Random { seed, len }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let file_mode = prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o400, 0o700, 0o664]);
    let dir_mode = prop::sample::select(vec![0o755u32, 0o700, 0o750, 0o555]);
    let leaf = prop_oneof![
        4 => (content(), file_mode, mtime())
            .prop_map(|(content, mode, mtime)| Spec::File { content, mode, mtime }),
        1 => (0usize..3, name()).prop_map(|(ups, name)| Spec::Symlink { ups, name }),
        1 => (dir_mode.clone(), mtime()).prop_map(|(mode, mtime)| Spec::Dir {
            children: BTreeMap::new(),
            mode,
            mtime
        }),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        (
            prop::collection::btree_map(name(), inner, 0..5),
            dir_mode.clone(),
            mtime(),
        )
            .prop_map(|(children, mode, mtime)| Spec::Dir {
                children,
                mode,
                mtime,
            })
    })
}

fn tree() -> impl Strategy<Value = BTreeMap<String, Spec>> {
    prop::collection::btree_map(name(), spec(), 0..6)
}

fn build(dir: &Path, children: &BTreeMap<String, Spec>, depth: usize) {
    for (name, spec) in children {
        let path = dir.join(name);
        match spec {
            Spec::File {
                content,
                mode,
                mtime,
            } => write_file(&path, &content.bytes(), *mode, *mtime),
            Spec::Symlink { ups, name } => {
                let target = format!("{}{name}", "../".repeat((*ups).min(depth)));
                make_symlink(&target, &path);
            }
            Spec::Dir { children, .. } => {
                fs::create_dir(&path).expect("mkdir");
                build(&path, children, depth + 1);
            }
        }
    }
    // Directory metadata last: children change a directory's mtime, and a read-only
    // directory takes no children.
    for (name, spec) in children {
        if let Spec::Dir { mode, mtime, .. } = spec {
            let path = dir.join(name);
            common::set_mtime(&path, *mtime);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("chmod");
        }
    }
}

fn scanned(root: &Path) -> Manifest {
    let scan = scan(root, &ScanOptions::default(), None).expect("scan");
    assert!(
        scan.skipped.is_empty(),
        "unexpected skips: {:?}",
        scan.skipped
    );
    scan.manifest
        .validate(&Default::default())
        .expect("scan output validates");
    scan.manifest
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sync_into_empty_dir_reproduces_tree(spec in tree()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).expect("mkdir");
        fs::create_dir(&dst).expect("mkdir");
        build(&src, &spec, 0);

        let manifest = scanned(&src);
        let empty = Manifest::empty();
        let delta = diff(&empty, &manifest);
        let sender = TreeChunks::new(&src, &manifest).expect("index sender");
        let local = TreeChunks::new(&dst, &empty).expect("index receiver");
        let fetched = fetch(&delta, &empty, &local, &sender);
        prop_assert!(fetched.wanted.iter().all(|w| w.basis.is_none()));
        // Everything the tree holds came over the wire.
        let source = fetched.chunks;
        apply(&dst, &delta, &source, &fast_opts()).expect("apply");
        assert_same_tree(&snapshot(&src), &snapshot(&dst));
        // The receiver's own scan agrees with the sender's manifest.
        prop_assert_eq!(scanned(&dst), manifest.clone());

        // The same delta below a conflicts prefix reproduces the tree there.
        let prefix = RelPath::new(".offload-conflicts/late").expect("valid");
        let opts = ApplyOptions { prefix: Some(prefix), ..fast_opts() };
        apply(&dst, &delta, &source, &opts).expect("apply under prefix");
        if !delta.is_empty() {
            assert_same_tree(&snapshot(&src), &snapshot(&dst.join(".offload-conflicts/late")));
        }
        // The conflicts directory is never part of a scan.
        prop_assert_eq!(scanned(&dst), manifest);
    }

    #[test]
    fn sync_into_existing_tree_makes_it_identical(old in tree(), new in tree()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).expect("mkdir");
        fs::create_dir(&dst).expect("mkdir");
        build(&dst, &old, 0);
        build(&src, &new, 0);

        let old_manifest = scanned(&dst);
        let new_manifest = scanned(&src);
        let delta = diff(&old_manifest, &new_manifest);
        delta.validate(&Default::default()).expect("diff output validates");

        let local = TreeChunks::new(&dst, &old_manifest).expect("index local");
        let remote = TreeChunks::new(&src, &new_manifest).expect("index remote");
        let needed = delta.needed_chunks(|id| local.contains(id));
        let fetched = fetch(&delta, &old_manifest, &local, &remote);
        let source = Chain::new(vec![&local, &fetched.chunks]);
        let opts = ApplyOptions { allow_mass_delete: true, ..fast_opts() };
        apply(&dst, &delta, &source, &opts).expect("apply");

        assert_same_tree(&snapshot(&src), &snapshot(&dst));
        // Exactly the chunks the receiver lacked crossed, each once (`fetch` checks the
        // sender read each wanted chunk once).
        prop_assert_eq!(ids(&fetched.wanted), needed);
        // Applying again is a no-op that still converges.
        let again = diff(&scanned(&dst), &new_manifest);
        prop_assert!(again.is_empty(), "second diff not empty: {:?}", again);
    }
}
