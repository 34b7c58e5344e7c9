//! `offload ssh --stdio`: the SSH server side of one connection, spoken on stdin and
//! stdout to the local OpenSSH client that runs it as its `ProxyCommand`.
//!
//! Authentication is local: the client must prove it holds offload's user key, and this
//! side proves it holds the host key that the ssh config pins. Authorization is the
//! caller's offload identity: every channel maps onto offload's own API with the stored
//! credentials, so another user's container is as unknown here as it is to the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use offload_core::api::ExecRequest;
use offload_core::session::{MAX_SESSION_VARS, check_session_var};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};

use super::relay::{self, Target};

/// What a `shell` request runs: the image's bash when it has one, as a login shell.
const LOGIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l";

/// The terminal a session asked for.
#[derive(Debug, Clone)]
struct Terminal {
    term: String,
    cols: u32,
    rows: u32,
}

/// What the connection learned about its client, for the message when it is refused.
#[derive(Default)]
pub struct Outcome {
    pub authenticated: AtomicBool,
    pub keys_refused: AtomicUsize,
}

/// One connection's handler (russh calls it for every request of the client).
pub struct Connection {
    target: Arc<Target>,
    user_key: PublicKey,
    outcome: Arc<Outcome>,
    /// Session channels opened but not started yet, with what they asked for.
    sessions: HashMap<ChannelId, Pending>,
}

/// A session channel before its command starts: the terminal and the variables it asked
/// for.
struct Pending {
    channel: Channel<Msg>,
    terminal: Option<Terminal>,
    env: Vec<String>,
}

impl Connection {
    fn accepts(&self, key: &PublicKey) -> bool {
        key.key_data() == self.user_key.key_data()
    }

    fn public_key_only() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    /// Starts the command of a session channel; `false` when the channel cannot run one
    /// (unknown, or started already).
    fn start(&mut self, channel: ChannelId, command: Vec<String>, session: &Session) -> bool {
        let Some(Pending {
            channel,
            terminal,
            env,
        }) = self.sessions.remove(&channel)
        else {
            return false;
        };
        let request = ExecRequest {
            command,
            tty: terminal.is_some(),
            size: terminal.as_ref().map(|t| {
                (
                    u16::try_from(t.cols).unwrap_or(u16::MAX),
                    u16::try_from(t.rows).unwrap_or(u16::MAX),
                )
            }),
            term: terminal.map(|t| t.term),
            env,
        };
        tokio::spawn(relay::exec(
            self.target.clone(),
            channel,
            session.handle(),
            request,
        ));
        true
    }
}

/// Replies to a channel request, as russh asks every handler to.
fn answer(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}

/// Whether a `direct-tcpip` destination is the container's own loopback; the port as the
/// container's port when it is one.
pub fn loopback_port(host: &str, port: u32) -> Result<u16, String> {
    let host_ok = host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "::1";
    if !host_ok {
        return Err(format!(
            "offload forwards only to the container's own loopback (localhost, 127.0.0.1 or ::1), not to {}",
            host.chars()
                .take(255)
                .filter(|c| !c.is_control())
                .collect::<String>()
        ));
    }
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port {port} is outside 1-65535")),
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Self::public_key_only())
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Self::public_key_only())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.accepts(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            self.outcome.keys_refused.fetch_add(1, Ordering::Relaxed);
            Ok(Self::public_key_only())
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.accepts(key.public_key) {
            self.outcome.authenticated.store(true, Ordering::Relaxed);
            Ok(Auth::Accept)
        } else {
            Ok(Self::public_key_only())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.insert(
            channel.id(),
            Pending {
                channel,
                terminal: None,
                env: Vec::new(),
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match loopback_port(host_to_connect, port_to_connect) {
            Ok(port) => {
                tokio::spawn(relay::forward(self.target.clone(), channel, reply, port));
            }
            Err(reason) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: ChannelOpenFailure::AdministrativelyProhibited.code(),
                        reason,
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.sessions.get_mut(&channel) {
            Some(Pending { terminal, .. }) => {
                *terminal = Some(Terminal {
                    term: term.to_owned(),
                    cols: col_width,
                    rows: row_height,
                });
                true
            }
            None => false,
        };
        answer(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // As sshd's `AcceptEnv LANG LC_*`: the locale and a few terminal hints pass, the
        // rest is refused and the container's own environment applies. The server checks
        // the same list again.
        let ok = match self.sessions.get_mut(&channel) {
            Some(pending) => {
                let fits =
                    pending.env.len() < MAX_SESSION_VARS && check_session_var(name, value).is_ok();
                if fits {
                    pending
                        .env
                        .retain(|var| var.split_once('=').map(|(n, _)| n) != Some(name));
                    pending.env.push(format!("{name}={value}"));
                }
                fits
            }
            None => false,
        };
        answer(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = ["/bin/sh", "-c", LOGIN_SHELL].map(str::to_owned).to_vec();
        let ok = self.start(channel, command, session);
        answer(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // As sshd does, the command line goes to the shell.
        let ok = match std::str::from_utf8(data) {
            Ok(line) => {
                let command = vec!["/bin/sh".to_owned(), "-c".to_owned(), line.to_owned()];
                self.start(channel, command, session)
            }
            Err(_) => false,
        };
        answer(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = name == "sftp"
            && match self.sessions.remove(&channel) {
                Some(Pending { channel, .. }) => {
                    tokio::spawn(relay::sftp(self.target.clone(), channel));
                    true
                }
                None => false,
            };
        answer(session, channel, ok)
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The channel's relay task receives it too and resizes the terminal.
        Ok(())
    }

    async fn signal(
        &mut self,
        _channel: ChannelId,
        _signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The channel's relay task receives it too and sends it to the command.
        Ok(())
    }
}

/// The server's settings: only public-key authentication, no idle timeout (the
/// connection is a local pipe; an idle `ssh -N -L` stays up), and quick rejections, since
/// there is no remote guesser to slow down.
fn config(host_key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-offload_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        max_auth_attempts: 10,
        ..Default::default()
    }
}

/// Serves one SSH connection on `io` until the client leaves. Fails with a clear sentence
/// when the client never authenticated with offload's key.
pub async fn serve<IO>(
    io: IO,
    target: Target,
    host_key: PrivateKey,
    user_key: PublicKey,
    identity_file: &std::path::Path,
) -> anyhow::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let outcome = Arc::new(Outcome::default());
    let connection = Connection {
        target: Arc::new(target),
        user_key,
        outcome: outcome.clone(),
        sessions: HashMap::new(),
    };
    // ssh ends its ProxyCommand with SIGHUP as it exits, also right after it gave up
    // authenticating: that is when the refusal below must still be said.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch for the SSH client hanging up")?;
    let session = async {
        match russh::server::run_stream(Arc::new(config(host_key)), io, connection).await {
            Ok(session) => session.await,
            Err(e) => Err(e),
        }
    };
    let result = tokio::select! {
        result = session => result,
        _ = hangup.recv() => Ok(()),
    };
    if !outcome.authenticated.load(Ordering::Relaxed) {
        let offered = if outcome.keys_refused.load(Ordering::Relaxed) == 0 {
            "the SSH client offered no key"
        } else {
            "the SSH client offered only keys that are not offload's"
        };
        anyhow::bail!(
            "{offered}; offload accepts only its own key {} (the IdentityFile that `offload ssh-config` writes; connect with `ssh NAME.offload` after `offload ssh-config --write`, or with `offload ssh NAME`)",
            identity_file.display()
        );
    }
    match result {
        Ok(()) => Ok(()),
        // The client hanging up is how every connection ends.
        Err(russh::Error::Disconnect | russh::Error::HUP | russh::Error::IO(_)) => Ok(()),
        Err(e) => Err(e).context("the SSH connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_reach_only_the_containers_loopback() {
        assert_eq!(loopback_port("localhost", 8000), Ok(8000));
        assert_eq!(loopback_port("LOCALHOST", 1), Ok(1));
        assert_eq!(loopback_port("127.0.0.1", 65535), Ok(65535));
        assert_eq!(loopback_port("::1", 22), Ok(22));
        for host in [
            "example.com",
            "10.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "localhost.evil",
            "",
        ] {
            let err = loopback_port(host, 80).expect_err(host);
            assert!(
                err.contains("only to the container's own loopback"),
                "{err}"
            );
        }
        for port in [0, 65536, u32::MAX] {
            let err = loopback_port("localhost", port).expect_err("port");
            assert!(err.contains("outside 1-65535"), "{err}");
        }
    }
}
