//! Workspaces set aside when a cluster node was lost while its copy of a container may
//! still run there, and the conflict sets kept from them.
//!
//! On a shared workspace root, a copy on a node nobody reaches could go on writing the very
//! files its replacement works on. So before the replacement starts, the workspace is
//! copied and the copy takes the workspace's place (`rename`): the lost copy's bind mount
//! still holds the old directory, now `<root>/.fenced/<id>-g<generation>`, and whatever it
//! writes lands there, never in the new copy's files. When the lost copy is known to be
//! stopped, everything in that directory whose status changed after the fence began
//! (`st_ctime`, which no process can set) is copied into the workspace under
//! `.offload-conflicts/node-<node>-generation-<g>-<time>/`, as an edge copy's late changes
//! are, and the directory goes.
//!
//! Every step can be interrupted and taken again: a record (`<id>-g<g>.json`, written
//! first, durably) says what is fenced; `<id>-g<g>.copied` is a finished copy; the rename
//! of the workspace to `<id>-g<g>` is what makes the fence hold.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use offload_core::ContainerId;
use offload_sync::{CONFLICTS_DIR, CopyReport, RelPath, Select, SyncError, copy_tree};
use serde::{Deserialize, Serialize};

/// The directory of fences, below the workspace root (a name no container id can take).
pub const FENCED_DIR: &str = ".fenced";

/// One lost copy whose workspace is (being) set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub container_id: ContainerId,
    /// The lost copy's generation.
    pub generation: u64,
    /// The node it ran on: its engine ID and its name.
    pub node: String,
    pub node_name: String,
    /// Unix seconds.
    pub fenced_at: i64,
    /// From this instant on (`st_ctime` in nanoseconds, on the workspace filesystem's own
    /// clock) what the lost copy writes is late.
    pub since_ctime_ns: i64,
}

/// What went wrong with a fence.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot copy the workspace: {0}")]
    Copy(#[from] SyncError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FenceError + 'a {
    move |source| FenceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What collecting a fence kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The conflict set's path in the workspace; `None` when the lost copy wrote nothing
    /// after the fence began (or its workspace had never been set aside).
    pub dir: Option<String>,
    pub files: u64,
    pub bytes: u64,
}

/// The fences below one workspace root.
#[derive(Debug, Clone)]
pub struct FencedWorkspaces {
    root: PathBuf,
}

impl FencedWorkspaces {
    pub fn new(root: PathBuf) -> Self {
        FencedWorkspaces { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.join(FENCED_DIR)
    }

    fn stem(id: &ContainerId, generation: u64) -> String {
        format!("{id}-g{generation}")
    }

    fn record_path(&self, fence: &Fence) -> PathBuf {
        self.dir().join(format!(
            "{}.json",
            Self::stem(&fence.container_id, fence.generation)
        ))
    }

    /// Where the lost copy's workspace lives once it is set aside.
    pub fn aside_path(&self, fence: &Fence) -> PathBuf {
        self.dir()
            .join(Self::stem(&fence.container_id, fence.generation))
    }

    fn copying_path(&self, fence: &Fence) -> PathBuf {
        self.aside_path(fence).with_extension("copying")
    }

    fn copied_path(&self, fence: &Fence) -> PathBuf {
        self.aside_path(fence).with_extension("copied")
    }

    fn workspace(&self, id: &ContainerId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Every fence recorded. A record that cannot be read is left alone and logged.
    pub fn list(&self) -> Vec<Fence> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot list the fenced workspaces");
                return Vec::new();
            }
        };
        let mut fences = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Fence>(&b).map_err(|e| e.to_string()))
            {
                Ok(fence) if self.record_path(&fence) == path => fences.push(fence),
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "a fence record names another container; leaving it alone")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a fence record; leaving it alone")
                }
            }
        }
        fences.sort_by(|a, b| {
            (a.container_id.as_str(), a.generation).cmp(&(b.container_id.as_str(), b.generation))
        });
        fences
    }

    /// The fence recorded for a copy, if any.
    pub fn find(&self, id: &ContainerId, generation: u64) -> Option<Fence> {
        self.list()
            .into_iter()
            .find(|f| &f.container_id == id && f.generation == generation)
    }

    /// Records the fence of a lost copy, durably, before anything is set aside. A record
    /// that exists already for the same copy is kept: its earlier instant is the safer one.
    pub fn begin(
        &self,
        id: &ContainerId,
        generation: u64,
        node: &str,
        node_name: &str,
        fenced_at: i64,
    ) -> Result<Fence, FenceError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("set permissions of", &dir))?;
        let mut fence = Fence {
            container_id: id.clone(),
            generation,
            node: node.to_owned(),
            node_name: node_name.to_owned(),
            fenced_at,
            since_ctime_ns: 0,
        };
        let path = self.record_path(&fence);
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(existing) = serde_json::from_slice::<Fence>(&bytes)
            && existing.container_id == fence.container_id
            && existing.generation == generation
        {
            return Ok(existing);
        }
        let temp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&temp);
        let mut file = File::create_new(&temp).map_err(io_err("create", &temp))?;
        // The instant on the filesystem's clock, as the ctimes it is compared with.
        let meta = file.metadata().map_err(io_err("stat", &temp))?;
        fence.since_ctime_ns = meta
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec());
        let json = serde_json::to_vec_pretty(&fence).map_err(|e| FenceError::Io {
            op: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        file.write_all(&json).map_err(io_err("write", &temp))?;
        file.sync_all().map_err(io_err("flush", &temp))?;
        std::fs::rename(&temp, &path).map_err(io_err("rename", &temp))?;
        sync_dir(&dir)?;
        Ok(fence)
    }

    /// Whether the lost copy's workspace is set aside and the new one is in its place.
    pub fn is_set_aside(&self, fence: &Fence) -> bool {
        self.aside_path(fence).is_dir() && self.workspace(&fence.container_id).is_dir()
    }

    /// Sets the lost copy's workspace aside: copies it, then renames the workspace to the
    /// fence's directory and the copy into its place. Taken again after an interruption,
    /// it finishes what is left.
    pub fn set_aside(&self, fence: &Fence) -> Result<(), FenceError> {
        let workspace = self.workspace(&fence.container_id);
        let aside = self.aside_path(fence);
        let copied = self.copied_path(fence);
        if !aside.exists() {
            if !workspace.is_dir() {
                return Err(FenceError::Io {
                    op: "set aside",
                    path: workspace,
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            if !copied.exists() {
                self.copy_whole(&workspace, fence)?;
            }
            std::fs::rename(&workspace, &aside).map_err(io_err("rename", &workspace))?;
        }
        if !workspace.exists() {
            if !copied.exists() {
                // Interrupted between the two renames, and the copy lost since: the new
                // workspace starts from the set-aside one.
                self.copy_whole(&aside, fence)?;
            }
            std::fs::rename(&copied, &workspace).map_err(io_err("rename", &copied))?;
        }
        sync_dir(&self.dir())?;
        sync_dir(&self.root)
    }

    /// Copies `from` to the fence's `.copied` directory, through a `.copying` one.
    fn copy_whole(&self, from: &Path, fence: &Fence) -> Result<CopyReport, FenceError> {
        let copying = self.copying_path(fence);
        match std::fs::remove_dir_all(&copying) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &copying)(e)),
        }
        std::fs::create_dir(&copying).map_err(io_err("create", &copying))?;
        let report = copy_tree(from, &copying, None, Select::All)?;
        // The workspace's own mode: any user the image runs as writes its workspace.
        let mode = std::fs::metadata(from)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o777);
        std::fs::set_permissions(&copying, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("set permissions of", &copying))?;
        let copied = self.copied_path(fence);
        std::fs::rename(&copying, &copied).map_err(io_err("rename", &copying))?;
        sync_dir(&self.dir())?;
        tracing::info!(id = %fence.container_id, files = report.files, bytes = report.bytes, "copied a lost copy's workspace");
        Ok(report)
    }

    /// Keeps what the lost copy wrote after the fence began as a conflict set in the
    /// workspace, then drops the fence. Call it only once that copy cannot write any more.
    pub fn collect(&self, fence: &Fence) -> Result<Collected, FenceError> {
        let aside = self.aside_path(fence);
        let mut collected = Collected {
            dir: None,
            files: 0,
            bytes: 0,
        };
        if aside.is_dir() {
            let workspace = self.workspace(&fence.container_id);
            let base = format!(
                "node-{}-generation-{}-{}",
                safe_name(&fence.node_name),
                fence.generation,
                fence.fenced_at
            );
            // A set left by an interrupted collection keeps its name; this one takes the
            // next free one.
            let mut name = base.clone();
            let mut n = 1;
            while workspace
                .join(CONFLICTS_DIR)
                .join(&name)
                .symlink_metadata()
                .is_ok()
            {
                name = format!("{base}.{n}");
                n += 1;
            }
            let below = RelPath::new(format!("{CONFLICTS_DIR}/{name}"))?;
            let report = copy_tree(
                &aside,
                &workspace,
                Some(&below),
                Select::ChangedSince {
                    ctime_ns: fence.since_ctime_ns,
                },
            )?;
            if !report.is_empty() {
                collected.dir = Some(below.as_str().to_owned());
                collected.files = report.files + report.symlinks;
                collected.bytes = report.bytes;
            }
        }
        self.discard(fence)?;
        Ok(collected)
    }

    /// Drops a fence and everything it kept on disk: the container is gone, or its
    /// generation never moved past the lost copy (nothing was set aside).
    pub fn discard(&self, fence: &Fence) -> Result<(), FenceError> {
        for dir in [
            self.aside_path(fence),
            self.copying_path(fence),
            self.copied_path(fence),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &dir)(e)),
            }
        }
        let record = self.record_path(fence);
        match std::fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &record)(e)),
        }
        sync_dir(&self.dir())
    }
}

/// A node's name as one path component: what is not `[A-Za-z0-9._-]` becomes `_`.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "node".to_owned(),
        rest => rest.to_owned(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), FenceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("flush", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ContainerId {
        ContainerId::random()
    }

    /// The lost copy keeps the old directory: what it writes after the fence never reaches
    /// the new workspace, and comes back as a conflict set.
    #[test]
    fn a_set_aside_workspace_keeps_the_lost_copys_writes_apart() {
        let root = tempfile::tempdir().unwrap();
        let fences = FencedWorkspaces::new(root.path().to_owned());
        let id = id();
        let ws = root.path().join(id.as_str());
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(ws.join("src/main.c"), b"acknowledged").unwrap();
        std::fs::write(ws.join("log"), b"line 1\n").unwrap();
        // The lost copy has the file open as it is fenced.
        let mut open_log = std::fs::OpenOptions::new()
            .append(true)
            .open(ws.join("log"))
            .unwrap();

        std::thread::sleep(std::time::Duration::from_millis(20));
        let fence = fences
            .begin(&id, 3, "n0de", "node/2", 1_700_000_000)
            .unwrap();
        assert_eq!(fences.list(), vec![fence.clone()]);
        assert!(!fences.is_set_aside(&fence));
        fences.set_aside(&fence).unwrap();
        assert!(fences.is_set_aside(&fence));
        fences.set_aside(&fence).unwrap();

        // The new workspace has everything, with the workspace's mode.
        assert_eq!(
            std::fs::read(ws.join("src/main.c")).unwrap(),
            b"acknowledged"
        );
        let mode = std::fs::metadata(&ws).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        // The lost copy writes on, as through its bind mount of the old directory: into
        // the set-aside directory only.
        let aside = fences.aside_path(&fence);
        open_log.write_all(b"line 2 (late)\n").unwrap();
        std::fs::write(aside.join("made-late"), b"new").unwrap();
        assert_eq!(std::fs::read(ws.join("log")).unwrap(), b"line 1\n");
        assert_eq!(
            std::fs::read(aside.join("log")).unwrap(),
            b"line 1\nline 2 (late)\n"
        );
        // The new copy writes the same file meanwhile.
        std::fs::write(ws.join("log"), b"line 1\nnew copy\n").unwrap();

        let collected = fences.collect(&fence).unwrap();
        let dir = collected.dir.expect("a conflict set");
        assert_eq!(
            dir,
            ".offload-conflicts/node-node_2-generation-3-1700000000"
        );
        assert_eq!(collected.files, 2, "only what changed late");
        assert_eq!(
            std::fs::read(ws.join(&dir).join("made-late")).unwrap(),
            b"new"
        );
        assert_eq!(
            std::fs::read(ws.join(&dir).join("log")).unwrap(),
            b"line 1\nline 2 (late)\n"
        );
        assert!(!ws.join(&dir).join("src").exists());
        assert_eq!(
            std::fs::read(ws.join("log")).unwrap(),
            b"line 1\nnew copy\n"
        );
        assert!(!aside.exists());
        assert!(fences.list().is_empty());
    }

    #[test]
    fn an_interrupted_fence_is_finished_from_where_it_stopped() {
        let root = tempfile::tempdir().unwrap();
        let fences = FencedWorkspaces::new(root.path().to_owned());
        let id = id();
        let ws = root.path().join(id.as_str());
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("f"), b"data").unwrap();
        let fence = fences.begin(&id, 1, "n", "n", 1).unwrap();
        // A second begin keeps the first record (and its earlier instant).
        let again = fences.begin(&id, 1, "n", "n", 2).unwrap();
        assert_eq!(again, fence);

        // Interrupted after the workspace was renamed away, before the copy took its place.
        fences.copy_whole(&ws, &fence).unwrap();
        std::fs::rename(&ws, fences.aside_path(&fence)).unwrap();
        assert!(!ws.exists());
        fences.set_aside(&fence).unwrap();
        assert_eq!(std::fs::read(ws.join("f")).unwrap(), b"data");

        // A half-made copy is thrown away and made again.
        let fence2 = fences.begin(&id, 2, "n", "n", 3).unwrap();
        std::fs::create_dir_all(fences.copying_path(&fence2).join("junk")).unwrap();
        fences.set_aside(&fence2).unwrap();
        assert!(!fences.copying_path(&fence2).exists());
        assert_eq!(std::fs::read(ws.join("f")).unwrap(), b"data");
        assert!(!ws.join("junk").exists());

        // A lost copy that wrote nothing late leaves no conflict set.
        let collected = fences.collect(&fence2).unwrap();
        assert_eq!(collected.dir, None);
        fences.discard(&fence).unwrap();
        assert!(fences.list().is_empty());
        assert!(
            std::fs::read_dir(root.path().join(FENCED_DIR))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn node_names_become_one_safe_component() {
        assert_eq!(safe_name("worker-1.lab"), "worker-1.lab");
        assert_eq!(safe_name("../../etc"), "_.._etc");
        assert_eq!(safe_name(".."), "node");
        assert_eq!(safe_name("a b/c"), "a_b_c");
    }
}
