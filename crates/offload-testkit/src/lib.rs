//! Test fixtures for offload's end-to-end tests: private Docker engines, local images, polling.
//!
//! Each [`Engine`] is a `dockerd` of its own (own data root, exec root, containerd, socket and
//! trust key) under a short directory in `/tmp`, so any number of tests, in any number of
//! processes, can run engines side by side. Nothing is pulled: [`Engine::import_busybox`]
//! builds a small image from the host's static busybox, and [`Engine::import_debian`] a
//! Debian 12 image from Debian's packages (built once with `mmdebstrap` and cached in the
//! test cache directory, see [`cache_dir`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use offload_testkit::{Engine, wait_until};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cloud = Engine::start("cloud")?;
//! cloud.import_busybox("offload-test/busybox:latest")?;
//! cloud.docker_output([
//!     "run", "-d", "--name", "job", "--network", "none", "--init",
//!     "offload-test/busybox:latest", "sleep", "1000",
//! ])?;
//! wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
//!     cloud
//!         .docker_output(["inspect", "-f", "{{.State.Running}}", "job"])
//!         .is_ok_and(|s| s.trim() == "true")
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! The functions block; from async tests call them through `tokio::task::spawn_blocking` or
//! before the runtime starts.
//!
//! Environment overrides: `OFFLOAD_TESTKIT_DOCKERD` and `OFFLOAD_TESTKIT_DOCKER` (binaries),
//! `OFFLOAD_TESTKIT_BUSYBOX` (static busybox), `OFFLOAD_TESTKIT_TMP` (parent of engine
//! directories, default `/tmp`; keep it short because of the unix socket path limit),
//! `OFFLOAD_TESTKIT_KEEP=1` (keep engine directories and logs after the engine stops),
//! `OFFLOAD_TESTKIT_CACHE` (the test cache directory), `OFFLOAD_TESTKIT_MMDEBSTRAP` and
//! `OFFLOAD_TESTKIT_DEBIAN_MIRROR` (the Debian image's builder and mirror).

mod browser;
mod busybox;
mod command;
mod debian;
mod engine;
mod process;
mod swarm;
mod wait;

pub use browser::{Browser, Element, chromium_paths};
pub use busybox::{BUSYBOX_PATH, busybox_rootfs_tar};
pub use debian::{DEBIAN_PACKAGES, DEBIAN_SUITE, cache_dir, debian_rootfs_tar};
pub use engine::{Engine, EngineKind, EngineOptions};
pub use process::is_alive as process_alive;
pub use swarm::{NODE_LABEL, Swarm, SwarmNode};
pub use wait::{free_loopback_port, wait_for, wait_until};
