//! A Debian 12 root filesystem built from Debian's packages with `mmdebstrap`, for tests
//! that need what users' real images have (bash, coreutils, python3, rsync, procps).
//!
//! It is built once per machine and cached as a tarball in the test cache directory:
//! `OFFLOAD_TESTKIT_CACHE`, else `$XDG_CACHE_HOME/offload-testkit`, else
//! `~/.cache/offload-testkit`. Test processes run in parallel (nextest), so the build holds
//! an exclusive lock on `debian.lock` there and publishes the tarball by renaming it into
//! place: a reader sees either no tarball or a complete one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command;

/// The suite: Debian 12.
pub const DEBIAN_SUITE: &str = "bookworm";

/// What the image holds besides Debian's `minbase` variant (essential and required
/// packages, with apt).
pub const DEBIAN_PACKAGES: &[&str] = &["bash", "coreutils", "python3", "rsync", "procps"];

/// Bump when the recipe changes, so an old cached tarball is not used.
const RECIPE: u32 = 1;

/// A build downloads about 50 MB and unpacks some 170 MB; allow a slow mirror.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Documentation, manuals and translations take space and no test reads them.
const EXCLUDED: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
];

/// The path of the Debian rootfs tarball, building it first if the cache has none.
pub fn debian_rootfs_tar() -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let tarball = dir.join(format!("debian-{DEBIAN_SUITE}-{RECIPE}.tar"));
    if tarball.exists() {
        return Ok(tarball);
    }
    let lock_path = dir.join("debian.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("failed to open {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("failed to lock {}", lock_path.display()))?;
    // Another process may have built it while this one waited for the lock.
    if tarball.exists() {
        return Ok(tarball);
    }
    remove_abandoned_builds(&dir);
    let build = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&dir)
        .with_context(|| format!("failed to create a build directory in {}", dir.display()))?;
    let partial = build.path().join("rootfs.tar");
    let mut cmd = mmdebstrap_command(&partial);
    command::run_ok(&mut cmd, None, BUILD_TIMEOUT).context(
        "failed to build the Debian test image with mmdebstrap (install Debian's mmdebstrap; \
         it needs root or user namespaces, and Debian's package mirror)",
    )?;
    if !partial.is_file() {
        bail!("mmdebstrap finished but wrote no {}", partial.display());
    }
    fs::rename(&partial, &tarball).with_context(|| {
        format!(
            "failed to move {} to {}",
            partial.display(),
            tarball.display()
        )
    })?;
    drop(lock);
    Ok(tarball)
}

fn mmdebstrap_command(target: &Path) -> Command {
    let mut cmd = Command::new(
        std::env::var_os("OFFLOAD_TESTKIT_MMDEBSTRAP").unwrap_or_else(|| "mmdebstrap".into()),
    );
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", DEBIAN_PACKAGES.join(",")))
        .arg("--quiet");
    for rule in EXCLUDED {
        cmd.arg(format!("--dpkgopt={rule}"));
    }
    cmd.arg(DEBIAN_SUITE).arg(target);
    // Without a mirror, mmdebstrap uses Debian's own (with updates and security).
    if let Some(mirror) = std::env::var_os("OFFLOAD_TESTKIT_DEBIAN_MIRROR") {
        cmd.arg(mirror);
    }
    cmd
}

/// Build directories that a killed build left behind; only called under the lock.
fn remove_abandoned_builds(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".build-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The test cache directory (see the module documentation).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OFFLOAD_TESTKIT_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("offload-testkit"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find a cache directory: set OFFLOAD_TESTKIT_CACHE or HOME")?;
    Ok(PathBuf::from(home).join(".cache").join("offload-testkit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_is_minbase_with_the_packages_tests_rely_on() {
        let cmd = mmdebstrap_command(Path::new("/tmp/x.tar"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--variant=minbase".to_owned()), "{args:?}");
        assert!(
            args.contains(&"--include=bash,coreutils,python3,rsync,procps".to_owned()),
            "{args:?}"
        );
        let suite = args.iter().position(|a| a == DEBIAN_SUITE).expect("suite");
        assert_eq!(args[suite + 1], "/tmp/x.tar");
    }
}
