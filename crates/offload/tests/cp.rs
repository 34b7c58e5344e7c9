//! End to end: `offload cp` between this machine and a container, in the cloud and after
//! a move to the edge, on real engines through the real server and agent; and what bad
//! input, a broken connection and a full disk get.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cloud, Edge, User, eventually, stderr, stdout, tree};

/// A file of pseudo-random bytes (not compressible, not all zeros).
fn random_file(path: &Path, bytes: usize) {
    let mut data = Vec::with_capacity(bytes);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ bytes as u64;
    while data.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(bytes);
    std::fs::write(path, data).expect("write");
}

fn hash(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).expect("read")).to_string()
}

fn set_mtime(path: &Path, secs: u64) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .expect("open");
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("mtime");
}

/// A tree with a 20 MB file, modes, a symlink, an empty directory and old mtimes.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep/er")).expect("dirs");
    std::fs::create_dir_all(root.join("empty")).expect("dirs");
    random_file(&root.join("big.bin"), 20 << 20);
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").expect("file");
    std::fs::write(root.join("src/deep/er/leaf.txt"), "leaf\n").expect("file");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho run\n").expect("file");
    std::fs::write(root.join("secret.key"), "key\n").expect("file");
    std::fs::set_permissions(root.join("run.sh"), PermissionsExt::from_mode(0o755)).expect("mode");
    std::fs::set_permissions(root.join("secret.key"), PermissionsExt::from_mode(0o600))
        .expect("mode");
    std::os::unix::fs::symlink("src/main.rs", root.join("link")).expect("symlink");
    for file in ["big.bin", "run.sh", "src/main.rs", "src/deep/er/leaf.txt"] {
        set_mtime(&root.join(file), 1_500_000_000);
    }
    std::fs::set_permissions(root.join("src/deep"), PermissionsExt::from_mode(0o750))
        .expect("mode");
}

fn mtime(path: &Path) -> i64 {
    std::fs::symlink_metadata(path).expect("meta").mtime()
}

fn cp(user: &User, src: &str, dst: &str) -> std::process::Output {
    user.run(&["cp", src, dst])
}

fn cp_ok(user: &User, src: &str, dst: &str) {
    let out = cp(user, src, dst);
    assert_eq!(
        out.status.code(),
        Some(0),
        "offload cp {src} {dst}: {}",
        stderr(&out)
    );
}

fn cp_fails(user: &User, src: &str, dst: &str, code: i32, says: &str) -> String {
    let out = cp(user, src, dst);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "offload cp {src} {dst}: {err}"
    );
    assert!(err.contains(says), "offload cp {src} {dst}: {err}");
    err
}

/// Both ways, for the container wherever it runs now; `workspace` is its workspace on
/// the host that runs it.
fn copies_both_ways(user: &User, id: &str, workspace: &Path, local: &Path, round: &str) {
    let tree_dir = local.join(format!("tree-{round}"));
    make_tree(&tree_dir);
    let expected = tree(&tree_dir);

    // Up: a directory into an existing directory lands inside it.
    cp_ok(
        user,
        tree_dir.to_str().expect("utf-8"),
        &format!("{id}:/workspace/"),
    );
    let up = workspace.join(format!("tree-{round}"));
    assert_eq!(tree(&up), expected, "{round}: the tree in the container");
    assert_eq!(mtime(&up.join("big.bin")), 1_500_000_000);
    assert_eq!(mtime(&up.join("src/deep/er/leaf.txt")), 1_500_000_000);
    assert_eq!(hash(&up.join("big.bin")), hash(&tree_dir.join("big.bin")));

    // Down: into a new name, then into an existing directory.
    let back = local.join(format!("back-{round}"));
    cp_ok(
        user,
        &format!("{id}:tree-{round}"),
        back.to_str().expect("utf-8"),
    );
    assert_eq!(tree(&back), expected, "{round}: the tree copied back");
    assert_eq!(mtime(&back.join("big.bin")), 1_500_000_000);
    let into = local.join(format!("into-{round}"));
    std::fs::create_dir(&into).expect("dir");
    cp_ok(
        user,
        &format!("{id}:/workspace/tree-{round}"),
        into.to_str().expect("utf-8"),
    );
    assert_eq!(tree(&into.join(format!("tree-{round}"))), expected);
    // Contents only (`dir/.`) into an existing directory.
    let contents = local.join(format!("contents-{round}"));
    std::fs::create_dir(&contents).expect("dir");
    cp_ok(
        user,
        &format!("{id}:tree-{round}/src/."),
        contents.to_str().expect("utf-8"),
    );
    assert!(contents.join("main.rs").is_file());
    assert!(contents.join("deep/er/leaf.txt").is_file());

    // One file each way, byte-identical, outside the workspace too: it is the
    // container's own filesystem.
    let file = local.join(format!("one-{round}.bin"));
    random_file(&file, 3 << 20);
    cp_ok(
        user,
        file.to_str().expect("utf-8"),
        &format!("{id}:/tmp/one.bin"),
    );
    let out = user.run(&["shell", id, "--", "sha256sum", "/tmp/one.bin"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let down = local.join(format!("one-back-{round}.bin"));
    cp_ok(
        user,
        &format!("{id}:/tmp/one.bin"),
        down.to_str().expect("utf-8"),
    );
    assert_eq!(hash(&down), hash(&file));
    // Overwriting a file replaces it whole.
    std::fs::write(&file, "short now").expect("write");
    cp_ok(
        user,
        file.to_str().expect("utf-8"),
        &format!("{id}:/tmp/one.bin"),
    );
    let out = user.run(&["shell", id, "--", "cat", "/tmp/one.bin"]);
    assert_eq!(stdout(&out), "short now");
}

#[test]
fn copies_both_ways_in_the_cloud_and_after_a_move_to_the_edge() {
    let cloud = Cloud::start("cp-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("cp-edge", &alice);
    let id = alice.start_sleeper("box");
    let local = tempfile::tempdir().expect("temp dir");

    copies_both_ways(&alice, "box", &cloud.workspace(&id), local.path(), "cloud");

    let out = alice.run(&["move", &id, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(alice.show(&id)["location"], "edge");
    copies_both_ways(&alice, &id, &edge.workspace(&id), local.path(), "edge");
    // What was copied in at the edge reaches the cloud copy as any edit does.
    let cloud_copy = cloud.workspace(&id).join("tree-edge/big.bin");
    eventually(60, "the copied tree to reach the cloud", || {
        cloud_copy.is_file() && hash(&cloud_copy) == hash(&local.path().join("tree-edge/big.bin"))
    });
}

#[test]
fn files_copied_in_belong_to_the_containers_user() {
    let cloud = Cloud::start("cp-user");
    let rootfs = offload_testkit::busybox_rootfs_tar().expect("rootfs");
    let image = "offload-test/busybox-nobody:latest";
    cloud
        .engine
        .import_rootfs(
            image,
            rootfs,
            &[
                r#"CMD ["/bin/sh"]"#,
                "ENV PATH=/bin",
                "WORKDIR /",
                "USER nobody",
            ],
        )
        .expect("image imports");
    let alice = cloud.user("alice");
    let id = alice
        .ok(&["start", "--name", "plain", image, "--", "sleep", "86400"])
        .trim()
        .to_owned();
    let local = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(local.path().join("d")).expect("dir");
    std::fs::write(local.path().join("d/f"), "x").expect("file");
    cp_ok(
        &alice,
        local.path().join("d").to_str().expect("utf-8"),
        "plain:/workspace/d",
    );
    for path in ["d", "d/f"] {
        let meta = std::fs::metadata(cloud.workspace(&id).join(path)).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path}");
    }
    // And the container's user can work with them.
    let out = alice.run(&[
        "shell",
        "plain",
        "--",
        "sh",
        "-c",
        "echo more >> /workspace/d/f && id -u",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "65534");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cloud = Cloud::start("cp-bad");
    let alice = cloud.user("alice");
    let bob = cloud.user("bob");
    let id = alice.start_sleeper("box");
    let local = tempfile::tempdir().expect("temp dir");
    let out_dir = local.path().join("out");
    std::fs::create_dir(&out_dir).expect("dir");
    let out = out_dir.to_str().expect("utf-8").to_owned();
    let file = local.path().join("f.txt");
    std::fs::write(&file, "data").expect("file");
    let file = file.to_str().expect("utf-8").to_owned();

    // Shape of the arguments: exit 2.
    cp_fails(&alice, &file, &out, 2, "one side must be a container path");
    cp_fails(&alice, "box:/a", "box:/b", 2, "between two containers");
    // Paths that climb out of the container's root.
    cp_fails(
        &alice,
        "box:../../etc/passwd",
        &out,
        1,
        "leads out of the container's root",
    );
    cp_fails(
        &alice,
        &file,
        "box:/../x",
        1,
        "leads out of the container's root",
    );
    // Missing things.
    cp_fails(
        &alice,
        "box:/workspace/nothing",
        &out,
        1,
        "no such file or directory",
    );
    cp_fails(&alice, &file, "box:/nothing/here/f", 1, "does not exist");
    cp_fails(
        &alice,
        "box:/etc/passwd",
        &format!("{out}/no/such/dir/"),
        1,
        "does not exist",
    );
    // Another user's container is a missing one.
    let theirs = cp_fails(&bob, &file, "box:/workspace/f", 1, "no such container");
    let missing = cp_fails(&bob, &file, "nobox:/workspace/f", 1, "no such container");
    assert_eq!(theirs.replace("box", "X"), missing.replace("nobox", "X"));
    assert!(!cloud.workspace(&id).join("f").exists());
    // A symlink in the container that points at the host's directories resolves inside
    // the container.
    let host_dir = local.path().join("host");
    std::fs::create_dir(&host_dir).expect("dir");
    std::fs::write(host_dir.join("secret"), "host secret").expect("file");
    let link = format!("ln -s {} /workspace/esc", host_dir.display());
    let shell = alice.run(&["shell", "box", "--", "sh", "-c", &link]);
    assert_eq!(shell.status.code(), Some(0), "{}", stderr(&shell));
    cp_fails(
        &alice,
        "box:esc/secret",
        &out,
        1,
        "no such file or directory",
    );
    cp_fails(&alice, &file, "box:esc/planted", 1, "does not exist");
    assert_eq!(std::fs::read_dir(&host_dir).expect("ls").count(), 1);
    // A symlink already standing at the local target is not followed into.
    let victim = local.path().join("victim");
    std::fs::create_dir(&victim).expect("dir");
    let shell = alice.run(&[
        "shell",
        "box",
        "--",
        "sh",
        "-c",
        "mkdir -p /workspace/d && echo x > /workspace/d/f",
    ]);
    assert_eq!(shell.status.code(), Some(0), "{}", stderr(&shell));
    std::os::unix::fs::symlink(&victim, out_dir.join("d")).expect("symlink");
    cp_fails(&alice, "box:d", &out, 1, "not a directory");
    assert_eq!(std::fs::read_dir(&victim).expect("ls").count(), 0);
    // A directory onto a file.
    cp_fails(&alice, "box:d", &file, 1, "onto the file");
    // A stopped container: a conflict that says what to do.
    alice.ok(&["stop", "box"]);
    cp_fails(&alice, &file, "box:/workspace/f", 1, "offload restart");
    assert!(!cloud.workspace(&id).join("f").exists());
    // Nothing half-written was left anywhere.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".offload-cp"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The local files whose names are not temporary ones.
fn final_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".offload-cp"))
        .collect()
}

/// Waits, polling often (the copy must be caught early), until a temporary file in `dir`
/// holds more than 1 MiB.
fn under_way(dir: &Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                e.file_name().to_string_lossy().starts_with(".offload-cp")
                    && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
            })
        });
        if started {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_broken_connection_or_a_full_disk_leaves_no_partial_file_under_its_name() {
    let mut cloud = Cloud::start("cp-broken");
    let alice = cloud.user("alice");
    let id = alice.start_sleeper("box");
    let out = alice.run(&[
        "shell",
        "box",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/workspace/big.bin",
        "bs=1M",
        "count=300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let local = tempfile::tempdir().expect("temp dir");

    // A full local disk: a 4 MiB tmpfs, a 300 MB file.
    let small = local.path().join("small");
    std::fs::create_dir(&small).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    cp_fails(
        &alice,
        "box:big.bin",
        small.to_str().expect("utf-8"),
        1,
        "disk is full",
    );
    assert_eq!(
        std::fs::read_dir(&small).expect("ls").count(),
        0,
        "nothing left behind"
    );

    // The connection breaks in the middle of a download: the server is frozen once the
    // copy is under way, then killed.
    let down = local.path().join("down");
    std::fs::create_dir(&down).expect("dir");
    let child = std::process::Command::new(common::offload_bin())
        .arg("--config")
        .arg(&alice.config)
        .args(["cp", "box:big.bin"])
        .arg(&down)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cp runs");
    let server_pid = cloud.server.as_ref().expect("server").id();
    let pid = rustix::process::Pid::from_raw(server_pid as i32).expect("pid");
    under_way(&down, "the download");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("freeze");
    assert!(final_names(&down).is_empty(), "no file under its name yet");
    cloud.kill_server();
    let output = child.wait_with_output().expect("cp ends");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("broke during the copy"), "{err}");
    assert!(final_names(&down).is_empty(), "{:?}", final_names(&down));
    assert_eq!(
        std::fs::read_dir(&down).expect("ls").count(),
        0,
        "the partial file was removed"
    );

    // The same for an upload.
    cloud.start_server();
    let big = local.path().join("up.bin");
    random_file(&big, 300 << 20);
    let child = std::process::Command::new(common::offload_bin())
        .arg("--config")
        .arg(&alice.config)
        .arg("cp")
        .arg(&big)
        .arg("box:/workspace/up.bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cp runs");
    let workspace = cloud.workspace(&id);
    let server_pid = cloud.server.as_ref().expect("server").id();
    let pid = rustix::process::Pid::from_raw(server_pid as i32).expect("pid");
    under_way(&workspace, "the upload");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("freeze");
    cloud.kill_server();
    let output = child.wait_with_output().expect("cp ends");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("broke during the copy"), "{err}");
    assert!(
        !workspace.join("up.bin").exists(),
        "no partial file under its name"
    );
}
