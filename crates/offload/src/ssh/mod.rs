//! `offload ssh-config`, `offload ssh ID` and `offload ssh --stdio ID`: the local OpenSSH
//! client reaches a container wherever it runs, through offload's own API (see the "ssh"
//! section of docs/architecture.md).

mod config;
mod keys;
mod relay;
mod server;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use offload_agent::client::{Api, ClientConfig, config_path};
use offload_core::api::ContainerView;
use offload_core::{ContainerId, Name, UserName};

use self::config::{HostNames, HostSettings, SUFFIX};
use self::keys::KeyFiles;
use crate::cli::SshArgs;
use crate::shell::urlencode;

/// The WebSocket that every channel rides on.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where the credentials are and whether they were named explicitly (then every
/// `ProxyCommand` must name them too: ssh may run it with another environment).
struct Credentials {
    path: PathBuf,
    explicit: bool,
    config: ClientConfig,
}

impl Credentials {
    fn load(flag: Option<&Path>) -> anyhow::Result<Credentials> {
        let explicit =
            flag.is_some() || std::env::var_os("OFFLOAD_CONFIG").is_some_and(|v| !v.is_empty());
        let path = config_path(flag)?;
        let path = std::path::absolute(&path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let config = ClientConfig::load(&path)?;
        Ok(Credentials {
            path,
            explicit,
            config,
        })
    }

    fn keys(&self) -> anyhow::Result<KeyFiles> {
        KeyFiles::for_config(&self.path)
    }

    /// The name the host key is pinned under: one per server and user, the same for every
    /// container, wherever it runs.
    fn alias(&self) -> String {
        let digest =
            blake3::hash(format!("{}\n{}", self.config.server, self.config.user).as_bytes());
        let hex = digest.to_hex();
        match UserName::parse(&self.config.user) {
            Ok(user) => format!("offload-{user}-{}", &hex[..12]),
            Err(_) => format!("offload-{}", &hex[..12]),
        }
    }

    fn settings(&self) -> anyhow::Result<HostSettings> {
        let program = std::env::current_exe().context("cannot find the offload binary")?;
        Ok(HostSettings {
            program,
            config: self.explicit.then(|| self.path.clone()),
            user: UserName::parse(&self.config.user)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| "offload".to_owned()),
            alias: self.alias(),
            keys: self.keys()?,
        })
    }

    fn api(&self) -> anyhow::Result<Api> {
        Api::new(self.config.clone())
    }
}

/// The host names of a container as the server lists it; a container whose id or name
/// is not valid is left out rather than written into a config file.
fn host_names(view: &ContainerView) -> Option<HostNames> {
    let id = ContainerId::parse(&view.id).ok()?;
    let name = Name::parse(&view.name)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| id.to_string());
    Some(HostNames {
        id: id.to_string(),
        name,
    })
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .context("cannot find your home directory: set HOME")
}

/// `offload ssh-config [--write]`.
pub async fn config_command(flag: Option<&Path>, write: bool) -> anyhow::Result<i32> {
    let credentials = Credentials::load(flag)?;
    let settings = credentials.settings()?;
    let api = credentials.api()?;
    let views: Vec<ContainerView> = api.get("/v1/containers").await?;
    let mut hosts = Vec::new();
    for view in &views {
        match host_names(view) {
            Some(names) => hosts.push(names),
            None => tracing::warn!(id = %view.id, "left out a container whose id is not valid"),
        }
    }
    credentials.keys()?.ensure(&settings.alias)?;
    let text = config::render(&settings, &hosts)?;
    if !write {
        print!("{text}");
        return Ok(0);
    }
    let name = config::file_name(credentials.explicit.then_some(credentials.path.as_path()));
    let (ours, user_config) = config::install(&home()?, &name, &text)?;
    println!(
        "wrote {} ({} container{}) and included it from {}; connect with `ssh NAME{SUFFIX}`",
        ours.display(),
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        user_config.display()
    );
    Ok(0)
}

/// `offload ssh ID [-- CMD...]` and `offload ssh --stdio ID`.
pub async fn ssh_command(flag: Option<&Path>, args: SshArgs) -> anyhow::Result<i32> {
    if args.stdio {
        return stdio(flag, &args.id).await;
    }
    let credentials = Credentials::load(flag)?;
    let settings = credentials.settings()?;
    let api = credentials.api()?;
    let wanted = config::container_of(&args.id)?;
    let view: ContainerView = api
        .get(&format!("/v1/containers/{}", urlencode(wanted)))
        .await?;
    let names = host_names(&view).context("the server answered with an invalid container id")?;
    credentials.keys()?.ensure(&settings.alias)?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.args(settings.ssh_arguments()?);
    if args.tty {
        ssh.arg("-t");
    }
    // `--` ends ssh's options, so neither the host nor the command is read as one.
    ssh.arg("--").arg(format!("{}{SUFFIX}", names.name));
    ssh.args(&args.command);
    let error = ssh.exec();
    bail!("cannot run ssh (install OpenSSH's client, Debian's openssh-client): {error}")
}

/// The `ProxyCommand`: the SSH server side of one connection on stdin and stdout.
async fn stdio(flag: Option<&Path>, host: &str) -> anyhow::Result<i32> {
    let credentials = Credentials::load(flag)?;
    let wanted = config::container_of(host)?;
    let api = credentials.api()?;
    // Resolved before the handshake, so an unknown container (or another user's, which
    // looks the same) ends the connection with the server's own sentence.
    let view: ContainerView = api
        .get(&format!("/v1/containers/{}", urlencode(wanted)))
        .await?;
    let id =
        ContainerId::parse(&view.id).context("the server answered with an invalid container id")?;
    let files = credentials.keys()?;
    let keys = files.load()?;
    let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let target = relay::Target {
        api,
        id: id.to_string(),
    };
    server::serve(
        io,
        target,
        keys.host,
        keys.user.public_key().clone(),
        &files.user_key(),
    )
    .await?;
    Ok(0)
}
