//! Live test of the Debian image fixture: builds (or reuses) the cached rootfs with
//! mmdebstrap, imports it into a private engine and runs what tests rely on. Needs root.

use offload_testkit::Engine;

const IMAGE: &str = "offload-testkit/debian:test";

#[test]
fn the_debian_image_has_bash_coreutils_python3_rsync_and_procps() {
    let engine = Engine::start("debian").expect("engine starts");
    let id = engine.import_debian(IMAGE).expect("debian image imports");
    assert!(id.starts_with("sha256:"), "{id}");
    // A second import finds the image and changes nothing.
    assert_eq!(engine.import_debian(IMAGE).expect("again"), id);

    let script = "set -e; \
        bash -c 'echo bash $BASH_VERSION' | cut -d. -f1; \
        ls --version | head -n1; \
        python3 -c 'import sys; print(\"python\", sys.version_info[0])'; \
        rsync --version | head -n1 | cut -d' ' -f1; \
        ps -o comm= -p 1; \
        cat /etc/debian_version | cut -d. -f1";
    let out = engine
        .docker_output([
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "bash",
            "-c",
            script,
        ])
        .expect("debian container runs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bash 5", "{out}");
    assert!(lines[1].contains("GNU coreutils"), "{out}");
    assert_eq!(lines[2], "python 3", "{out}");
    assert_eq!(lines[3], "rsync", "{out}");
    assert_eq!(lines[4], "bash", "{out}");
    assert_eq!(lines[5], "12", "{out}");

    let tarball = offload_testkit::debian_rootfs_tar().expect("cached");
    assert!(tarball.starts_with(offload_testkit::cache_dir().expect("cache dir")));
}
