//! A minimal root filesystem built from the host's static busybox, for images without a registry.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tar::{Builder, EntryType, Header};

use crate::command;

/// Where Debian's `busybox-static` installs the binary; `OFFLOAD_TESTKIT_BUSYBOX` overrides it.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The `PATH` baked into the image; every directory in it resolves to `/bin`.
pub(crate) const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A fixed mtime keeps the tar reproducible.
const MTIME: u64 = 1_700_000_000;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Builds a rootfs tar: `/bin/busybox` plus a symlink per applet in `/bin` (with `/sbin`,
/// `/usr/bin`, `/usr/sbin` pointing there), `/etc/passwd` and `/etc/group` with root and
/// nobody, and the directories `/tmp` (1777), `/root` and `/workspace`.
///
/// Suitable for `docker import` or bollard's `create_image` with `from_src("-")`.
pub fn busybox_rootfs_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = busybox_path();
    let binary = fs::read(&busybox).with_context(|| {
        format!(
            "failed to read {} (install Debian's busybox-static)",
            busybox.display()
        )
    })?;
    let listing = command::run_ok(
        Command::new(&busybox).arg("--list"),
        None,
        Duration::from_secs(30),
    )
    .with_context(|| format!("failed to list the applets of {}", busybox.display()))?;
    let applets: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|applet| is_plain_name(applet) && *applet != "busybox")
        .collect();
    if !applets.contains(&"sh") {
        bail!(
            "{} has no `sh` applet; it cannot serve as a test image",
            busybox.display()
        );
    }

    let mut tar = Builder::new(Vec::with_capacity(binary.len() + 256 * 1024));
    append_rootfs(&mut tar, &binary, &applets).context("failed to build the busybox rootfs tar")?;
    tar.into_inner()
        .context("failed to finish the busybox rootfs tar")
}

fn append_rootfs(tar: &mut Builder<Vec<u8>>, binary: &[u8], applets: &[&str]) -> io::Result<()> {
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
        ("workspace", 0o755),
    ] {
        let mut header = entry_header(EntryType::Directory, mode, 0);
        tar.append_data(&mut header, dir, io::empty())?;
    }
    for (link, target) in [
        ("sbin", "bin"),
        ("usr/bin", "../bin"),
        ("usr/sbin", "../bin"),
        ("usr/local", "."),
        ("var/tmp", "../tmp"),
    ] {
        let mut header = entry_header(EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut header, link, target)?;
    }

    let mut header = entry_header(EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut header, "bin/busybox", binary)?;
    for applet in applets {
        let mut header = entry_header(EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }

    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut header = entry_header(EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut header, path, text.as_bytes())?;
    }
    Ok(())
}

fn entry_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header
}

fn busybox_path() -> PathBuf {
    std::env::var_os("OFFLOAD_TESTKIT_BUSYBOX")
        .map_or_else(|| PathBuf::from(BUSYBOX_PATH), PathBuf::from)
}

/// Applet names become paths in the tar, so keep them to one plain component.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    #[test]
    fn rootfs_has_shell_users_and_writable_tmp() {
        if !std::path::Path::new(&busybox_path()).exists() {
            eprintln!("skipping: no busybox at {}", busybox_path().display());
            return;
        }
        let bytes = busybox_rootfs_tar().expect("rootfs tar");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = HashMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mode = entry.header().mode().expect("mode");
            let link = entry
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().into_owned());
            let mut body = String::new();
            if entry.header().entry_type() == EntryType::Regular && path.starts_with("etc/") {
                entry.read_to_string(&mut body).expect("text");
            }
            entries.insert(path, (mode, link, body));
        }
        assert_eq!(entries["bin/sh"].1.as_deref(), Some("busybox"));
        assert_eq!(entries["bin/sleep"].1.as_deref(), Some("busybox"));
        assert_eq!(entries["bin/busybox"].0, 0o755);
        assert_eq!(entries["tmp"].0, 0o1777);
        assert!(entries.contains_key("workspace"));
        assert!(entries["etc/passwd"].2.starts_with("root:x:0:0:"));
        assert!(entries["etc/group"].2.starts_with("root:x:0:"));
    }

    #[test]
    fn applet_names_must_be_single_components() {
        assert!(is_plain_name("sh"));
        assert!(!is_plain_name("../sh"));
        assert!(!is_plain_name(""));
        assert!(!is_plain_name(".."));
    }
}
