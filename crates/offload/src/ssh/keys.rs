//! offload's own SSH keys on this machine: the user key that the local OpenSSH client
//! offers and the host key that `offload ssh --stdio` proves itself with. Both stay on
//! this machine beside the client's credentials, so the host key is the same wherever the
//! container runs and OpenSSH never sees it change after a move.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

/// The files of one client config's SSH identity: `<config dir>/<config stem>.ssh/`.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub dir: PathBuf,
}

/// The two key pairs, loaded.
pub struct Keys {
    /// The key the OpenSSH client offers; the stdio server accepts only its public half.
    pub user: PrivateKey,
    /// The key the stdio server signs with; the known-hosts file pins its public half.
    pub host: PrivateKey,
}

impl KeyFiles {
    /// The key directory for the client config at `config` (one per server and user).
    pub fn for_config(config: &Path) -> anyhow::Result<KeyFiles> {
        let config = std::path::absolute(config)
            .with_context(|| format!("cannot resolve {}", config.display()))?;
        let stem = config
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .context("the config file has no name to derive its SSH key directory from")?;
        let dir = config
            .parent()
            .context("the config file has no directory")?
            .join(format!("{stem}.ssh"));
        Ok(KeyFiles { dir })
    }

    pub fn user_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn host_key(&self) -> PathBuf {
        self.dir.join("host_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// Loads the keys, creating whichever is missing, and (re)writes the known-hosts file
    /// that pins the host key under `alias`. Safe to run from several processes at once:
    /// a key is never replaced once it exists.
    pub fn ensure(&self, alias: &str) -> anyhow::Result<Keys> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // Only this user may read the directory of private keys, whoever created it.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", self.dir.display()))?;
        let user = ensure_key(&self.user_key(), "offload user key")?;
        let host = ensure_key(&self.host_key(), "offload host key")?;
        let public = public_line(user.public_key())?;
        write_if_changed(&self.user_key().with_extension("pub"), &public, 0o644)?;
        let pinned = known_hosts_line(alias, host.public_key())?;
        write_if_changed(&self.known_hosts(), &pinned, 0o600)?;
        Ok(Keys { user, host })
    }

    /// Loads the keys without creating anything (the stdio server: the config that names
    /// these files was written by `offload ssh-config` or `offload ssh`).
    pub fn load(&self) -> anyhow::Result<Keys> {
        let user = load_key(&self.user_key())?;
        let host = load_key(&self.host_key())?;
        Ok(Keys { user, host })
    }
}

/// `<alias> <type> <base64>`: the one line of the known-hosts file.
pub fn known_hosts_line(alias: &str, key: &PublicKey) -> anyhow::Result<String> {
    let mut key = key.clone();
    key.set_comment("");
    let text = key.to_openssh().context("cannot encode the host key")?;
    Ok(format!("{alias} {}\n", text.trim_end()))
}

fn public_line(key: &PublicKey) -> anyhow::Result<String> {
    let text = key.to_openssh().context("cannot encode the user key")?;
    Ok(format!("{}\n", text.trim_end()))
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no offload SSH key at {}; run `offload ssh-config --write` (or `offload ssh ID`) first",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let key = PrivateKey::from_openssh(text.as_bytes())
        .with_context(|| format!("{} is not an OpenSSH private key", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{} is encrypted; offload's keys have no passphrase (remove the file and run `offload ssh-config` again)",
            path.display()
        );
    }
    Ok(key)
}

/// Loads the key at `path`, or creates it if there is none. A new key is written to a
/// temp file and linked into place without replacing anything, so two processes racing
/// here end up with the same key: the loser loads the winner's.
fn ensure_key(path: &Path, comment: &str) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        return load_key(path);
    }
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an SSH key")?;
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode an SSH key")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = temp_file(dir, 0o600)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    match file.persist_noclobber(path) {
        Ok(_) => {
            sync_dir(dir)?;
            Ok(key)
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => load_key(path),
        Err(e) => Err(e.error).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// A fresh temp file in `dir` with `mode`.
pub fn temp_file(dir: &Path, mode: u32) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix(".offload-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    Ok(file)
}

pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Replaces `path` with `text` atomically (temp file, fsync, rename, fsync of the
/// directory), unless it holds exactly that already.
pub fn write_atomically(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = temp_file(dir, mode)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(dir)
}

fn write_if_changed(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(path).ok();
    let mode_ok = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777 == mode)
        .unwrap_or(false);
    if current.as_deref() == Some(text) && mode_ok {
        return Ok(());
    }
    write_atomically(path, text, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_private_and_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = KeyFiles::for_config(&dir.path().join("alice.toml")).expect("files");
        assert_eq!(files.dir, dir.path().join("alice.ssh"));
        let first = files.ensure("offload-test").expect("keys");
        let again = files.ensure("offload-test").expect("keys again");
        assert_eq!(first.user.public_key(), again.user.public_key());
        assert_eq!(first.host.public_key(), again.host.public_key());
        assert_ne!(first.user.public_key(), first.host.public_key());
        for path in [files.user_key(), files.host_key(), files.known_hosts()] {
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let dir_mode = std::fs::metadata(&files.dir)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let pinned = std::fs::read_to_string(files.known_hosts()).expect("known hosts");
        assert!(pinned.starts_with("offload-test ssh-ed25519 "), "{pinned}");
        let loaded = files.load().expect("load");
        assert_eq!(loaded.host.public_key(), first.host.public_key());
    }

    #[test]
    fn loading_without_keys_says_what_to_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = KeyFiles::for_config(&dir.path().join("config.toml")).expect("files");
        let err = files.load().err().expect("no keys yet").to_string();
        assert!(err.contains("offload ssh-config --write"), "{err}");
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = KeyFiles::for_config(&dir.path().join("config.toml")).expect("files");
        std::fs::create_dir_all(&files.dir).expect("dir");
        std::fs::write(files.user_key(), "garbage").expect("write");
        let err = files.ensure("alias").err().expect("refused").to_string();
        assert!(err.contains("not an OpenSSH private key"), "{err}");
        assert_eq!(
            std::fs::read_to_string(files.user_key()).expect("read"),
            "garbage"
        );
    }
}
