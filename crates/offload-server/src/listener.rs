//! The TLS listener. A client that speaks plain HTTP to the TLS port gets a 400 with a
//! JSON error telling it to use https, instead of a dropped connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAIN_HTTP_BODY: &str =
    r#"{"error":"this port speaks HTTPS only; use an https:// URL","code":"https_required"}"#;

fn plain_http_response() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// Lets TLS handshakes through and answers anything else.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainHttpGuard;

impl<S: Send + 'static> Accept<TcpStream, S> for PlainHttpGuard {
    type Stream = TcpStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TcpStream, S)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        Box::pin(async move {
            let _ = stream.set_nodelay(true);
            let mut first = [0u8; 1];
            let peeked =
                tokio::time::timeout(std::time::Duration::from_secs(10), stream.peek(&mut first))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "no data from client")
                    })??;
            if peeked == 1 && first[0] != TLS_HANDSHAKE {
                let _ = stream.write_all(plain_http_response().as_bytes()).await;
                let _ = stream.shutdown().await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plain HTTP on the TLS port",
                ));
            }
            Ok((stream, service))
        })
    }
}

/// Serves `app` over TLS on `tcp` until `handle` shuts it down.
pub async fn serve(
    tcp: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    handle: axum_server::Handle<std::net::SocketAddr>,
) -> io::Result<()> {
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(config)).acceptor(PlainHttpGuard);
    axum_server::from_tcp(tcp)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(app.into_make_service())
        .await
}
