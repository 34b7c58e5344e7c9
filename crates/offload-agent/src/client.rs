//! The client side of the API: the stored credentials, the HTTPS client that trusts only
//! the server's CA, and the join flow that pins that CA.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use offload_core::api::{ApiError, ErrorCode, JoinRequest, JoinResponse};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What `offload join` stores: where the server is, how to trust it, who we are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub server: String,
    pub user: String,
    pub admin: bool,
    pub token: String,
    pub ca_pem: String,
}

/// The config file to use: `--config`, then `OFFLOAD_CONFIG`, then the user's config dir.
pub fn config_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("OFFLOAD_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("cannot find a config directory: set HOME, XDG_CONFIG_HOME or OFFLOAD_CONFIG")?;
    Ok(base.join("offload").join("config.toml"))
}

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "no offload credentials at {}; run `offload join SERVER_URL TOKEN` first",
                    path.display()
                )
            } else {
                anyhow::anyhow!("cannot read {}: {e}", path.display())
            }
        })?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Writes the file with mode 0600, atomically and durably.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Directories we create hold a secret: nobody else needs to list them.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let text = toml::to_string(self)?;
        // A fresh, randomly named temp file is created 0600 by tempfile; a fixed name
        // could be a stale file of another mode, which opening it would keep.
        let mut file = tempfile::Builder::new()
            .prefix(".offload-config.")
            .tempfile_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        let written = file
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.as_file().sync_all());
        written.with_context(|| format!("cannot write in {}", dir.display()))?;
        file.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        // Earlier versions wrote through this fixed name; a leftover may hold credentials
        // readable by others.
        let _ = std::fs::remove_file(path.with_extension("toml.tmp"));
        Ok(())
    }
}

/// The one CA certificate in a stored config. More than one is refused: `offload join`
/// stores only the certificate its token pinned, so a second one was put there by someone
/// else (or by a version that trusted whatever `/v1/ca` answered).
fn config_ca(ca_pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    let mut certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("invalid CA certificate in the config")?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        0 => bail!("the config holds no CA certificate; run `offload join SERVER_URL TOKEN` again"),
        n => bail!(
            "the config trusts {n} CA certificates, but a join pins exactly one; run `offload join SERVER_URL TOKEN` again"
        ),
    }
}

/// Builds a rustls client configuration that trusts exactly the config's CA.
pub fn rustls_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(config_ca(ca_pem)?)
        .context("unusable CA certificate in the config")?;
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Deadlines of the client's requests and how it finds dead connections.
///
/// A link can die silently (a partition drops packets without a reset): without these a
/// request waits on a dead connection forever, and so does every later request that the
/// pool puts on the same HTTP/2 connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Establishing a connection: TCP, TLS and, for WebSockets, the upgrade.
    pub connect: Duration,
    /// The deadline of a request whose body is small; the server may take this long to
    /// answer (a push commit applies and fsyncs before it answers).
    pub request: Duration,
    /// The slowest transfer rate still taken for a live link, in bytes per second: a
    /// large body gets `request` plus its size at this rate, not a fixed short deadline.
    pub min_rate: u64,
    /// No byte read for this long fails the request, whatever its size (a streamed image).
    pub read_idle: Duration,
    /// HTTP/2 pings, also on idle connections, and how long their answer may take: a
    /// connection that misses one is closed, so the next request gets a fresh one.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(120),
            min_rate: 256 << 10,
            read_idle: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// The largest answer to a binary request: a chunk batch (`offload_sync` bounds it).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

impl Timeouts {
    /// The deadline of a request that moves `bytes` in either direction.
    pub fn for_bytes(&self, bytes: u64) -> Duration {
        let rate = self.min_rate.max(1);
        self.request + Duration::from_secs_f64(bytes as f64 / rate as f64)
    }
}

/// The HTTP/2 receive windows of the agent's connection to the server, per stream and in
/// all (bytes).
const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;

fn http_client(ca_pem: &str, timeouts: &Timeouts) -> anyhow::Result<reqwest::Client> {
    let cert = reqwest::Certificate::from_der(config_ca(ca_pem)?.as_ref())
        .context("invalid CA certificate in the config")?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([cert])
        // Chunk batches are megabytes: a window smaller than the link's bandwidth-delay
        // product caps a pull at window / round trip (hyper's adaptive window stayed near
        // its 64 KiB start: 0.2x of a 100 Mbit/s link at 40 ms, bench/links.sh). These
        // cover 1 Gbit/s up to 100 ms; memory stays bounded by the batch size.
        .http2_initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
        .http2_initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
        .http2_keep_alive_interval(timeouts.keepalive_interval)
        .http2_keep_alive_timeout(timeouts.keepalive_timeout)
        .http2_keep_alive_while_idle(true)
        .tcp_keepalive(timeouts.keepalive_interval)
        .tcp_keepalive_interval(timeouts.keepalive_interval)
        .tcp_keepalive_retries(3)
        .read_timeout(timeouts.read_idle)
        .no_proxy()
        .connect_timeout(timeouts.connect)
        .build()?)
}

/// An authenticated connection to the server.
#[derive(Clone)]
pub struct Api {
    pub config: ClientConfig,
    pub timeouts: Timeouts,
    http: reqwest::Client,
    /// The TLS configuration of WebSockets, built once: its session cache lets later
    /// connections resume instead of a full handshake (a port forward opens one per
    /// connection).
    websocket_tls: Arc<rustls::ClientConfig>,
}

/// A failed call: the server's own sentence, or why the server could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{}", .body.error)]
    Api { status: u16, body: ApiError },
    #[error("cannot reach the offload server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from the server ({status}): {text}")]
    Unexpected { status: u16, text: String },
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl CallError {
    /// The API's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }
}

impl Api {
    pub fn new(config: ClientConfig) -> anyhow::Result<Self> {
        Self::with_timeouts(config, Timeouts::default())
    }

    pub fn with_timeouts(config: ClientConfig, timeouts: Timeouts) -> anyhow::Result<Self> {
        let http = http_client(&config.ca_pem, &timeouts)?;
        let websocket_tls = rustls_config(&config.ca_pem)?;
        Ok(Api {
            config,
            timeouts,
            http,
            websocket_tls,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.server.trim_end_matches('/'))
    }

    /// Sends a request and decodes its JSON answer; `None` for an empty success.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<Option<T>, CallError> {
        let response = self.raw(request, &url).await?;
        let status = response.status().as_u16();
        let bytes = body_bytes(response, url).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CallError::Unexpected {
                status,
                text: e.to_string(),
            })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let url = self.url(path);
        let request = self.http.get(&url).timeout(self.timeouts.request);
        self.send(request, url.clone())
            .await?
            .ok_or(CallError::Unexpected {
                status: 200,
                text: "empty body".into(),
            })
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let url = self.url(path);
        let request = self
            .http
            .post(&url)
            .json(body)
            .timeout(self.timeouts.request);
        self.send(request, url.clone())
            .await?
            .ok_or(CallError::Unexpected {
                status: 200,
                text: "empty body".into(),
            })
    }

    /// GETs a binary answer (a manifest update).
    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes, CallError> {
        let url = self.url(path);
        // A manifest may be large: sized like the largest binary answer.
        let request = self
            .http
            .get(&url)
            .timeout(self.timeouts.for_bytes(MAX_ANSWER_BYTES));
        let response = self.raw(request, &url).await?;
        body_bytes(response, url).await
    }

    /// POSTs raw bytes and returns the binary answer (a chunk batch, a push plan).
    pub async fn exchange_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, CallError> {
        let url = self.url(path);
        // The answer (a chunk batch) may be as large as the protocol allows.
        let bytes = body.len() as u64 + MAX_ANSWER_BYTES;
        let request = self
            .binary_post(&url, body)
            .timeout(self.timeouts.for_bytes(bytes));
        let response = self.raw(request, &url).await?;
        body_bytes(response, url).await
    }

    /// POSTs raw bytes and expects no answer body.
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<(), CallError> {
        let url = self.url(path);
        let deadline = self.timeouts.for_bytes(body.len() as u64);
        self.raw(self.binary_post(&url, body).timeout(deadline), &url)
            .await
            .map(|_| ())
    }

    fn binary_post(&self, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(body)
    }

    /// GETs a streaming answer (an image archive). Its size is open, so it has no total
    /// deadline: a stall longer than `read_idle` or a dead connection ends it.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response, CallError> {
        let url = self.url(path);
        self.raw(self.http.get(&url), &url).await
    }

    async fn raw(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, CallError> {
        let response = request
            .bearer_auth(&self.config.token)
            .send()
            .await
            .map_err(|e| CallError::Unreachable {
                url: url.to_owned(),
                reason: describe_reqwest(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(body) => Err(CallError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(CallError::Unexpected {
                status: status.as_u16(),
                text: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    /// A WebSocket to the server, authenticated, trusting only the server's CA.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > {
        Ok(self.websocket_call(path).await?)
    }

    /// [`Api::websocket`] with the failure typed: the server's refusal keeps its status
    /// and code, so a caller can tell a container that is moving (409, 503) from one
    /// that does not exist (404).
    pub async fn websocket_call(
        &self,
        path: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        CallError,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.url(path).replacen("https://", "wss://", 1);
        let local = |reason: String| CallError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| local(format!("invalid server URL: {e}")))?;
        let bearer = format!("Bearer {}", self.config.token)
            .parse()
            .map_err(|_| local("invalid token in the config".to_owned()))?;
        request.headers_mut().insert("authorization", bearer);
        let connector = tokio_tungstenite::Connector::Rustls(self.websocket_tls.clone());
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        // TCP, TLS and the upgrade under one deadline: on a dead link each could hang.
        let Ok(connected) = tokio::time::timeout(self.timeouts.connect, connecting).await else {
            return Err(CallError::Unreachable {
                url: self.config.server.clone(),
                reason: format!("no answer within {} s", self.timeouts.connect.as_secs_f64()),
            });
        };
        match connected {
            Ok((socket, _)) => {
                if let tokio_tungstenite::MaybeTlsStream::Rustls(tls) = socket.get_ref() {
                    keep_alive(tls.get_ref().0, &self.timeouts);
                }
                Ok(socket)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                match serde_json::from_slice::<ApiError>(body) {
                    Ok(body) => Err(CallError::Api { status, body }),
                    Err(_) => Err(CallError::Unexpected {
                        status,
                        text: "the WebSocket upgrade was refused".to_owned(),
                    }),
                }
            }
            Err(e) => Err(CallError::Unreachable {
                url: self.config.server.clone(),
                reason: e.to_string(),
            }),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<(), CallError> {
        let url = self.url(path);
        let request = self.http.delete(&url).timeout(self.timeouts.request);
        self.send::<serde_json::Value>(request, url.clone())
            .await
            .map(|_| ())
    }
}

/// Turns on TCP keepalive, so the kernel too gives up on a peer that stopped answering.
fn keep_alive(stream: &tokio::net::TcpStream, timeouts: &Timeouts) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(timeouts.keepalive_interval)
        .with_interval(timeouts.keepalive_interval)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot turn on TCP keepalive");
    }
}

/// Validates a server URL as the user typed it.
pub fn parse_server_url(raw: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(raw).with_context(|| format!("invalid server URL {raw:?}"))?;
    if url.scheme() != "https" {
        bail!("the server URL must start with https:// (got {raw:?})");
    }
    if url.host_str().is_none() {
        bail!("the server URL {raw:?} names no host");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `offload join`: fetch the CA, check it against the token's fingerprint, and only then
/// send the secret over a connection that trusts that CA alone.
pub async fn join(server: &str, token: &str) -> anyhow::Result<ClientConfig> {
    let server = parse_server_url(server)?;
    let token = offload_core::token::JoinToken::parse(token)?;
    // Unauthenticated fetch: what we get is checked against the pinned fingerprint below
    // before anything secret crosses.
    let timeouts = Timeouts::default();
    let insecure = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .no_proxy()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .build()?;
    let ca_url = format!("{server}/v1/ca");
    let response = insecure
        .get(&ca_url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {server}: {}", describe_reqwest(&e)))?;
    if !response.status().is_success() {
        bail!(
            "{server} did not serve its CA certificate ({}); is it an offload server?",
            response.status()
        );
    }
    let answer = response.text().await?;
    let ca_pem = pinned_ca(&answer, &token.ca_fingerprint)?;
    let http = http_client(&ca_pem, &timeouts)?;
    let url = format!("{server}/v1/join");
    let response = http
        .post(&url)
        .timeout(timeouts.request)
        .json(&JoinRequest {
            secret: token.secret.clone(),
        })
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {server}: {}", describe_reqwest(&e)))?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| status.to_string());
        bail!("the server refused the join token: {message} (tokens are single-use and expire)");
    }
    let joined: JoinResponse =
        serde_json::from_slice(&bytes).context("unexpected answer to the join")?;
    Ok(ClientConfig {
        server,
        user: joined.user,
        admin: joined.admin,
        token: joined.token,
        ca_pem,
    })
}

/// The certificate in a `/v1/ca` answer whose SHA-256 fingerprint is `fingerprint`, as
/// PEM. Only that one is returned: trusting the rest of an unauthenticated answer would
/// let whoever wrote it add a CA of their own beside the real one.
pub fn pinned_ca(answer: &str, fingerprint: &str) -> anyhow::Result<String> {
    let mut cursor = std::io::Cursor::new(answer.as_bytes());
    let mut seen = Vec::new();
    loop {
        let start = usize::try_from(cursor.position()).unwrap_or(answer.len());
        let section = rustls_pki_types::pem::from_buf(&mut cursor)
            .map_err(|e| anyhow::anyhow!("the server sent an invalid CA certificate: {e}"))?;
        let Some((kind, der)) = section else { break };
        if kind != rustls_pki_types::pem::SectionKind::Certificate {
            continue;
        }
        let found = hex::encode(Sha256::digest(&der));
        if found.eq_ignore_ascii_case(fingerprint) {
            let end = usize::try_from(cursor.position()).unwrap_or(answer.len());
            let block = answer.get(start..end).unwrap_or_default();
            let begin = block.find("-----BEGIN").unwrap_or(0);
            let mut pem = block[begin..].trim_end().to_owned();
            pem.push('\n');
            // The PEM text we keep must be the certificate we checked.
            let kept = CertificateDer::from_pem_slice(pem.as_bytes())
                .context("the server sent an invalid CA certificate")?;
            if kept.as_ref() != der.as_slice() {
                bail!("the server sent an invalid CA certificate");
            }
            return Ok(pem);
        }
        seen.push(found);
    }
    if seen.is_empty() {
        bail!("the server sent no CA certificate; is it an offload server?");
    }
    bail!(
        "the server's CA fingerprint {} does not match the token's {fingerprint}; refusing to join (wrong server, or someone in between)",
        seen.join(", ")
    )
}

/// The whole body of a successful answer.
async fn body_bytes(response: reqwest::Response, url: String) -> Result<bytes::Bytes, CallError> {
    response.bytes().await.map_err(|e| CallError::Unreachable {
        url,
        reason: describe_reqwest(&e),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> ClientConfig {
        ClientConfig {
            server: "https://127.0.0.1:7443".into(),
            user: "alice".into(),
            admin: false,
            token: "secret".into(),
            ca_pem: String::new(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn credentials_are_private_even_over_a_stale_world_readable_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offload").join("config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let stale = path.with_extension("toml.tmp");
        std::fs::write(&stale, "left by an earlier run").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();

        config().save(&path).unwrap();

        assert_eq!(mode(&path), 0o600);
        assert_eq!(ClientConfig::load(&path).unwrap().token, "secret");
        // Nothing readable by others is left beside it.
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let entry = entry.unwrap().path();
            assert_eq!(mode(&entry), 0o600, "{}", entry.display());
        }
    }

    #[test]
    fn saving_over_a_world_readable_config_makes_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        config().save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn large_bodies_get_deadlines_from_a_minimum_rate() {
        let timeouts = Timeouts {
            request: Duration::from_secs(30),
            min_rate: 1 << 20,
            ..Timeouts::default()
        };
        assert_eq!(timeouts.for_bytes(0), Duration::from_secs(30));
        assert_eq!(timeouts.for_bytes(64 << 20), Duration::from_secs(30 + 64));
        // A rate of zero is read as the slowest one, not a division by zero.
        let stalled = Timeouts {
            min_rate: 0,
            ..timeouts
        };
        assert!(stalled.for_bytes(1 << 20) > Duration::from_secs(1000));
    }
}
