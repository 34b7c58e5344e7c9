//! The OpenSSH client configuration that `offload ssh-config` prints and `--write` saves:
//! one `Host NAME.offload ID.offload` block per container, all going through
//! `offload ssh --stdio %n` with offload's own pinned keys, and the one `Include` line
//! that makes `~/.ssh/config` read it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::keys::{KeyFiles, write_atomically};

/// The suffix that marks offload's hosts.
pub const SUFFIX: &str = ".offload";

/// What every host block says, apart from its names.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// The `offload` binary that serves the connection.
    pub program: PathBuf,
    /// `--config FILE` to pass on, when the credentials are not at the default place.
    pub config: Option<PathBuf>,
    /// The offload user (OpenSSH wants some `User`; the container runs as its own).
    pub user: String,
    /// The name the host key is pinned under, the same for every container.
    pub alias: String,
    pub keys: KeyFiles,
}

/// One container's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNames {
    pub id: String,
    pub name: String,
}

impl HostSettings {
    /// The `ProxyCommand` value: a shell command line (OpenSSH runs it with `sh -c`) whose
    /// `%n` OpenSSH replaces with the host name as typed.
    pub fn proxy_command(&self) -> anyhow::Result<String> {
        let mut words = vec![shell_quote(&path_text(&self.program)?)];
        if let Some(config) = &self.config {
            words.push("--config".to_owned());
            words.push(shell_quote(&path_text(config)?));
        }
        words.extend(["ssh", "--stdio", "%n"].map(str::to_owned));
        // `%` starts a token in ProxyCommand; the literal ones are in the paths.
        let line = words
            .iter()
            .map(|w| {
                if w == "%n" {
                    w.clone()
                } else {
                    w.replace('%', "%%")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        Ok(line)
    }

    /// The options every host gets, as `(keyword, value)` in config-file syntax.
    pub fn options(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        Ok(vec![
            ("ProxyCommand", self.proxy_command()?),
            ("User", self.user.clone()),
            ("HostKeyAlias", self.alias.clone()),
            (
                "UserKnownHostsFile",
                config_path_value(&self.keys.known_hosts())?,
            ),
            ("GlobalKnownHostsFile", "/dev/null".to_owned()),
            ("StrictHostKeyChecking", "yes".to_owned()),
            ("IdentityFile", config_path_value(&self.keys.user_key())?),
            ("IdentitiesOnly", "yes".to_owned()),
        ])
    }

    /// `-o Keyword=value` arguments for the `ssh` command line, so `offload ssh` works
    /// without any config file.
    pub fn ssh_arguments(&self) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        for (keyword, value) in self.options()? {
            args.push("-o".to_owned());
            args.push(format!("{keyword}={value}"));
        }
        Ok(args)
    }
}

/// The whole file: a block per container, then a catch-all for containers started since.
pub fn render(settings: &HostSettings, hosts: &[HostNames]) -> anyhow::Result<String> {
    let options = settings.options()?;
    let mut text = String::from(
        "# Written by `offload ssh-config`; it is rewritten whenever that runs with --write.\n\
         # Every host goes through `offload ssh --stdio`, wherever the container runs.\n",
    );
    let mut block = |patterns: String| {
        text.push('\n');
        text.push_str(&format!("Host {patterns}\n"));
        for (keyword, value) in &options {
            text.push_str(&format!("    {keyword} {value}\n"));
        }
    };
    for host in hosts {
        if host.name == host.id {
            block(format!("{}{SUFFIX}", host.id));
        } else {
            block(format!("{}{SUFFIX} {}{SUFFIX}", host.name, host.id));
        }
    }
    block(format!("*{SUFFIX}"));
    Ok(text)
}

/// The container named in an OpenSSH host name: `box.offload` → `box`. A name without
/// the suffix is taken as it is.
pub fn container_of(host: &str) -> anyhow::Result<&str> {
    let host = host.trim();
    let bare = if host.len() > SUFFIX.len()
        && host.is_char_boundary(host.len() - SUFFIX.len())
        && host[host.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
    {
        &host[..host.len() - SUFFIX.len()]
    } else {
        host
    };
    if bare.is_empty() || bare.eq_ignore_ascii_case(SUFFIX) {
        bail!("expected a container as NAME.offload or ID.offload, got {host:?}");
    }
    Ok(bare)
}

/// `~/.ssh/offload.config` for the default credentials, `~/.ssh/offload-STEM.config` for
/// `--config STEM.toml`, so two servers' configs do not overwrite each other.
pub fn file_name(config: Option<&Path>) -> String {
    let stem: String = config
        .and_then(|c| c.file_stem())
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if stem.is_empty() {
        "offload.config".to_owned()
    } else {
        format!("offload-{stem}.config")
    }
}

/// The `Include` line for `path`.
pub fn include_line(path: &Path) -> anyhow::Result<String> {
    Ok(format!("Include {}", config_path_value(path)?))
}

/// `config` with `line` added at the top, or `None` when an `Include` of `path` is there
/// already (anywhere: a user who moved it meant to). The rest is kept byte for byte.
pub fn with_include(config: &str, path: &Path, line: &str) -> Option<String> {
    let wanted = path.to_string_lossy();
    let present = config.lines().any(|raw| {
        let raw = raw.trim();
        let (keyword, rest) = match raw.find(|c: char| c.is_whitespace() || c == '=') {
            Some(at) => (
                &raw[..at],
                raw[at..].trim_start_matches(|c: char| c.is_whitespace() || c == '='),
            ),
            None => (raw, ""),
        };
        keyword.eq_ignore_ascii_case("include")
            && config_words(rest).iter().any(|word| *word == wanted)
    });
    if present {
        return None;
    }
    Some(format!("{line}\n{config}"))
}

/// Writes the offload file and makes `~/.ssh/config` include it; returns both paths.
pub fn install(home: &Path, name: &str, text: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ssh_dir = home.join(".ssh");
    if !ssh_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ssh_dir)
            .with_context(|| format!("cannot create {}", ssh_dir.display()))?;
    }
    let ours = ssh_dir.join(name);
    write_atomically(&ours, text, 0o600)?;

    let user_config = ssh_dir.join("config");
    // A config that is a symlink (a dotfiles checkout) is edited where it points, so the
    // link stays.
    let target = match std::fs::symlink_metadata(&user_config) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(&user_config)
            .with_context(|| format!("cannot follow the symlink {}", user_config.display()))?,
        _ => user_config.clone(),
    };
    let (current, mode) = match std::fs::read(&target) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).with_context(|| {
                format!(
                    "{} is not UTF-8 text; add the Include line by hand",
                    target.display()
                )
            })?;
            let mode = std::fs::metadata(&target)
                .map(|m| m.permissions().mode() & 0o7777)
                .with_context(|| format!("cannot read {}", target.display()))?;
            (text, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", target.display())),
    };
    if let Some(updated) = with_include(&current, &ours, &include_line(&ours)?) {
        write_atomically(&target, &updated, mode)?;
    }
    Ok((ours, user_config))
}

/// A path as a config-file argument: quoted when it has spaces, `%` doubled (OpenSSH
/// expands tokens in these paths).
fn config_path_value(path: &Path) -> anyhow::Result<String> {
    let text = path_text(path)?.replace('%', "%%");
    if text.contains('"') {
        bail!(
            "{} has a double quote, which ssh_config cannot hold",
            path.display()
        );
    }
    if text.contains(char::is_whitespace) {
        Ok(format!("\"{text}\""))
    } else {
        Ok(text)
    }
}

fn path_text(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8, which ssh_config cannot hold",
            path.display()
        )
    })?;
    if text.contains(['\n', '\r', '\0']) {
        bail!("{text:?} has a line break, which ssh_config cannot hold");
    }
    Ok(text.to_owned())
}

/// Quotes a word for `sh -c` when it needs it.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'-' | b'_' | b'+' | b':' | b'=' | b'@' | b','
                )
        })
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The words of a config-file argument list, with double quotes removed.
fn config_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '#' if !quoted && !started => break,
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(program: &str, config: Option<&str>) -> HostSettings {
        HostSettings {
            program: PathBuf::from(program),
            config: config.map(PathBuf::from),
            user: "alice".into(),
            alias: "offload-alice-0123".into(),
            keys: KeyFiles {
                dir: PathBuf::from("/home/alice/.config/offload/config.ssh"),
            },
        }
    }

    #[test]
    fn each_container_gets_its_name_and_id_then_a_catch_all() {
        let hosts = [HostNames {
            id: "c0ffee".into(),
            name: "box".into(),
        }];
        let text = render(&settings("/usr/bin/offload", None), &hosts).expect("render");
        let blocks: Vec<&str> = text.lines().filter(|l| l.starts_with("Host ")).collect();
        assert_eq!(
            blocks,
            ["Host box.offload c0ffee.offload", "Host *.offload"]
        );
        for wanted in [
            "    ProxyCommand /usr/bin/offload ssh --stdio %n",
            "    HostKeyAlias offload-alice-0123",
            "    UserKnownHostsFile /home/alice/.config/offload/config.ssh/known_hosts",
            "    StrictHostKeyChecking yes",
            "    IdentityFile /home/alice/.config/offload/config.ssh/id_ed25519",
            "    IdentitiesOnly yes",
            "    User alice",
        ] {
            assert_eq!(text.matches(wanted).count(), 2, "{wanted} in\n{text}");
        }
    }

    #[test]
    fn the_proxy_command_passes_the_config_and_quotes_paths_for_the_shell() {
        let s = settings("/opt/my tools/offload", Some("/home/a/100%/it's.toml"));
        assert_eq!(
            s.proxy_command().expect("command"),
            r"'/opt/my tools/offload' --config '/home/a/100%%/it'\''s.toml' ssh --stdio %n"
        );
        let mut spaced = settings("/usr/bin/offload", None);
        spaced.keys.dir = PathBuf::from("/home/a b/k");
        let options = spaced.options().expect("options");
        assert!(options.contains(&("IdentityFile", "\"/home/a b/k/id_ed25519\"".to_owned())));
    }

    #[test]
    fn paths_that_ssh_config_cannot_hold_are_refused() {
        let mut s = settings("/usr/bin/offload", None);
        s.keys.dir = PathBuf::from("/home/a\"b");
        assert!(s.options().is_err());
        let s = settings("/usr/bin/off\nload", None);
        assert!(s.proxy_command().is_err());
    }

    #[test]
    fn host_names_lose_the_suffix() {
        assert_eq!(container_of("box.offload").expect("box"), "box");
        assert_eq!(container_of("my.box.OFFLOAD").expect("box"), "my.box");
        assert_eq!(container_of("c0ffee").expect("id"), "c0ffee");
        assert!(container_of(".offload").is_err());
        assert!(container_of("").is_err());
    }

    #[test]
    fn the_include_goes_on_top_once_and_keeps_the_rest() {
        let path = Path::new("/home/a/.ssh/offload.config");
        let line = include_line(path).expect("line");
        let user = "Host github.com\n    User git\n# no newline at the end";
        let once = with_include(user, path, &line).expect("added");
        assert_eq!(once, format!("{line}\n{user}"));
        assert_eq!(with_include(&once, path, &line), None);
        // Written by hand, in other spellings, it counts too.
        for spelled in [
            "include /home/a/.ssh/offload.config\n",
            "  Include=\"/home/a/.ssh/offload.config\" # offload\n",
            "Host *\nInclude /etc/x /home/a/.ssh/offload.config\n",
        ] {
            assert_eq!(with_include(spelled, path, &line), None, "{spelled}");
        }
        // Another include is not ours.
        assert!(with_include("Include /home/a/.ssh/other.config\n", path, &line).is_some());
    }

    #[test]
    fn install_creates_a_private_ssh_dir_and_is_idempotent() {
        let home = tempfile::tempdir().expect("home");
        let (ours, user_config) =
            install(home.path(), "offload.config", "Host x\n").expect("install");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&home.path().join(".ssh")), 0o700);
        assert_eq!(mode(&ours), 0o600);
        let first = std::fs::read_to_string(&user_config).expect("config");
        assert_eq!(first, format!("Include {}\n", ours.display()));
        install(home.path(), "offload.config", "Host y\n").expect("again");
        assert_eq!(
            std::fs::read_to_string(&user_config).expect("config"),
            first
        );
        assert_eq!(std::fs::read_to_string(&ours).expect("ours"), "Host y\n");
    }

    #[test]
    fn install_edits_a_symlinked_config_where_it_points_and_keeps_its_mode() {
        let home = tempfile::tempdir().expect("home");
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).expect("ssh dir");
        let dotfiles = home.path().join("dotfiles-ssh-config");
        std::fs::write(&dotfiles, "Host *\n    ServerAliveInterval 30\n").expect("write");
        std::fs::set_permissions(&dotfiles, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::fs::symlink(&dotfiles, ssh.join("config")).expect("symlink");
        let (ours, _) = install(home.path(), "offload.config", "Host x\n").expect("install");
        assert!(
            std::fs::symlink_metadata(ssh.join("config"))
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        let text = std::fs::read_to_string(&dotfiles).expect("read");
        assert_eq!(
            text,
            format!(
                "Include {}\nHost *\n    ServerAliveInterval 30\n",
                ours.display()
            )
        );
        let mode = std::fs::metadata(&dotfiles)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn config_file_names_follow_the_credentials() {
        assert_eq!(file_name(None), "offload.config");
        assert_eq!(
            file_name(Some(Path::new("/x/alice.toml"))),
            "offload-alice.config"
        );
        assert_eq!(
            file_name(Some(Path::new("/x/we ird.toml"))),
            "offload-we-ird.config"
        );
    }
}
