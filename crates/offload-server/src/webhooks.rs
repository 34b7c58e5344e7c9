//! Webhooks: each configured receiver gets every event (or the kinds it names) as a JSON
//! POST, in the stream's order, signed with `X-Offload-Signature: sha256=HEX`, the
//! HMAC-SHA256 of the body under the shared secret.
//!
//! Each webhook has a task of its own that reads the event stream like any watcher
//! (`EventLog::watch`, which falls back to SQLite when it lags), so a slow or dead receiver
//! never holds up the server: the backlog is the stream the store keeps anyway, not a queue
//! in memory. A delivery that fails (no answer, a timeout, 5xx, 408, 429) is retried with
//! exponential backoff and jitter, [`MAX_ATTEMPTS`] times in all (about four minutes);
//! then the receiver is taken as down, the events up to the newest one are skipped, and
//! that is logged. Another 4xx is the receiver's refusal of that event: it is not retried.
//! How far each webhook got is kept in the store, so after a restart it goes on from there.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use offload_core::events::Event;
use offload_store::Store;
use rand::RngExt;
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::db;
use crate::events::{EventLog, Viewer};

/// Attempts per event, the first included.
pub const MAX_ATTEMPTS: u32 = 10;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-offload-signature";

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempt + 1` (the first retry is `attempt == 1`): 1 s, 2 s,
/// 4 s … up to a minute, less up to a fifth at random so receivers that came back are not
/// hit by every server at once.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.0..0.2);
    base.mul_f64(1.0 - jitter)
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth trying again: no answer, 5xx, 408 or 429.
    Retry(String),
    /// The receiver refused this event for good (another 4xx).
    Refused(String),
}

struct Webhook {
    url: String,
    secret: String,
    kinds: Vec<String>,
    http: reqwest::Client,
}

impl Webhook {
    fn wants(&self, event: &Event) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.body.kind())
    }

    async fn attempt(&self, event: &Event, body: &[u8]) -> Attempt {
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-offload-event", event.body.kind())
            .header("x-offload-delivery", event.id.to_string())
            .header(SIGNATURE_HEADER, signature(self.secret.as_bytes(), body))
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Err(e) => Attempt::Retry(e.to_string()),
            Ok(answer) => {
                let status = answer.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Attempt::Retry(format!("answered {status}"))
                } else {
                    Attempt::Refused(format!("answered {status}"))
                }
            }
        }
    }

    /// Delivers one event, retrying; `false` when the receiver is taken as down.
    async fn deliver(&self, event: &Event) -> bool {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an event for a webhook");
                return true;
            }
        };
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(event, &body).await {
                Attempt::Delivered => return true,
                Attempt::Refused(why) => {
                    tracing::warn!(url = %self.url, event = event.id, %why,
                        "a webhook refused an event; not retried");
                    return true;
                }
                Attempt::Retry(why) if attempt < MAX_ATTEMPTS => {
                    let wait = backoff(attempt);
                    tracing::debug!(url = %self.url, event = event.id, attempt, %why,
                        ?wait, "webhook delivery failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry(why) => {
                    tracing::warn!(url = %self.url, event = event.id, %why,
                        attempts = MAX_ATTEMPTS, "a webhook does not answer; giving up");
                }
            }
        }
        false
    }
}

/// Starts one delivery task per configured webhook. The configuration was validated.
pub fn start(log: &Arc<EventLog>, store: &Arc<Store>, hooks: &[WebhookConfig]) {
    for config in hooks {
        let secret = match config.load_secret() {
            Ok(secret) => secret,
            Err(e) => {
                tracing::error!(url = %config.url, error = %e, "webhook not started");
                continue;
            }
        };
        let http = match reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("offload/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(url = %config.url, error = %e, "webhook not started");
                continue;
            }
        };
        let hook = Webhook {
            url: config.url.clone(),
            secret,
            kinds: config.events.clone(),
            http,
        };
        tokio::spawn(run(log.clone(), store.clone(), hook));
    }
}

async fn run(log: Arc<EventLog>, store: Arc<Store>, hook: Webhook) {
    let url = hook.url.clone();
    // A new webhook starts with what happens from now on, not with the stored past.
    let cursor = match db::call(&store, move |s| s.webhook_cursor(&url)).await {
        Ok(Some(id)) => Ok(id),
        Ok(None) => db::call(&store, |s| s.stream_head()).await,
        Err(e) => Err(e),
    };
    let mut after = match cursor {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(url = %hook.url, error = %e, "cannot start a webhook");
            return;
        }
    };
    tracing::info!(url = %hook.url, after, "webhook delivering");
    loop {
        let mut events = log.watch(Viewer::Admin, after, true);
        let mut skip_to = None;
        while let Some(event) = events.recv().await {
            if hook.wants(&event) && !hook.deliver(&event).await {
                skip_to = Some(event.id);
                break;
            }
            after = event.id;
            let (url, id) = (hook.url.clone(), after);
            if let Err(e) = db::call(&store, move |s| s.set_webhook_cursor(&url, id)).await {
                tracing::warn!(error = %e, "cannot note a webhook's progress");
            }
        }
        let Some(failed) = skip_to else {
            // The stream ended (the server is stopping).
            return;
        };
        let head = db::call(&store, |s| s.stream_head())
            .await
            .unwrap_or(failed)
            .max(failed);
        tracing::warn!(url = %hook.url, skipped = head - after, "a webhook was down: events skipped");
        after = head;
        let (url, id) = (hook.url.clone(), after);
        if let Err(e) = db::call(&store, move |s| s.set_webhook_cursor(&url, id)).await {
            tracing::warn!(error = %e, "cannot note a webhook's progress");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_with_jitter_below() {
        for (attempt, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)] {
            let wait = backoff(attempt).as_secs_f64();
            assert!(wait <= full && wait >= full * 0.8, "{attempt}: {wait}");
        }
        let total: f64 = (1..MAX_ATTEMPTS).map(|a| backoff(a).as_secs_f64()).sum();
        assert!((150.0..=300.0).contains(&total), "{total}");
    }
}
