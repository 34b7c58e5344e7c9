//! Desktop notifications (the freedesktop notification service on the session D-Bus): a
//! query with Accept and Decline buttons where the notification server has actions, and
//! the server's notices (pressure, a move starting and ending). The terminal keeps showing
//! everything too; without a session bus or a notification server (servers, CI, ssh) the
//! terminal is all there is.

use std::time::Duration;

use offload_core::api::QueryView;
use tokio::sync::oneshot;

/// The desktop's notification server, found at start.
#[derive(Debug, Clone)]
pub struct Desktop {
    /// Whether it shows buttons (the `actions` capability).
    actions: bool,
    server: String,
}

impl Desktop {
    /// The notification server of this desktop session, if there is one.
    pub async fn connect() -> Option<Desktop> {
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && !std::env::var_os("XDG_RUNTIME_DIR")
                .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists())
        {
            return None;
        }
        let found = tokio::task::spawn_blocking(probe).await.ok()?;
        match found {
            Ok(desktop) => {
                tracing::info!(server = %desktop.server, actions = desktop.actions,
                    "desktop notifications on");
                Some(desktop)
            }
            Err(why) => {
                tracing::info!(%why, "no desktop notifications: the terminal only");
                None
            }
        }
    }

    /// Shows a notice; failures are logged, never fatal.
    pub fn notice(&self, summary: &str, body: &str) {
        let (summary, body) = (summary.to_owned(), body.to_owned());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = show(&summary, &body, &[], None) {
                tracing::debug!(error = %e, "a desktop notification failed");
            }
        });
    }

    /// Shows a query; the receiver gets `true` for Accept and `false` for Decline when the
    /// user clicks one (never, where the server has no buttons or the notice is closed).
    pub fn ask(&self, query: &QueryView, deadline_secs: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let whither = match query.to_node {
            Some(_) => "to another node of the cloud",
            None => "to this machine",
        };
        let summary = format!("Move {} {whither}?", query.container_name);
        let mut body = format!("{}\nAnswer within {deadline_secs} s.", query.reason);
        if !self.actions {
            body.push_str(&format!(
                "\noffload accept {id} / offload decline {id}",
                id = query.id
            ));
        }
        let actions: &[(&str, &str)] = if self.actions {
            &[("accept", "Accept"), ("decline", "Decline")]
        } else {
            &[]
        };
        let timeout = Duration::from_secs(deadline_secs);
        let buttons = actions.to_vec();
        tokio::task::spawn_blocking(
            move || match show(&summary, &body, &buttons, Some(timeout)) {
                Ok(Some(answer)) => {
                    let _ = tx.send(answer);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "a desktop notification failed"),
            },
        );
        rx
    }
}

#[cfg(feature = "desktop")]
fn probe() -> Result<Desktop, String> {
    let info = notify_rust::get_server_information().map_err(|e| e.to_string())?;
    let capabilities = notify_rust::get_capabilities().map_err(|e| e.to_string())?;
    Ok(Desktop {
        actions: capabilities.iter().any(|c| c == "actions"),
        server: format!("{} {}", info.name, info.version),
    })
}

#[cfg(not(feature = "desktop"))]
fn probe() -> Result<Desktop, String> {
    Err("this offload was built without desktop notifications".into())
}

/// Shows a notification and, when it has buttons, waits for one: `Some(true)` for
/// `accept`, `Some(false)` for `decline`, `None` when it closed otherwise.
#[cfg(feature = "desktop")]
fn show(
    summary: &str,
    body: &str,
    actions: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Result<Option<bool>, String> {
    let mut notification = notify_rust::Notification::new();
    notification
        .appname("offload")
        .summary(summary)
        .body(body)
        .icon("network-transmit-receive");
    for (id, label) in actions {
        notification.action(id, label);
    }
    if let Some(timeout) = timeout {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        notification.timeout(notify_rust::Timeout::Milliseconds(ms));
    }
    let handle = notification.show().map_err(|e| e.to_string())?;
    if actions.is_empty() {
        return Ok(None);
    }
    let mut answer = None;
    handle.wait_for_action(|action| {
        answer = match action {
            "accept" => Some(true),
            "decline" => Some(false),
            _ => None,
        };
    });
    Ok(answer)
}

#[cfg(not(feature = "desktop"))]
fn show(
    _summary: &str,
    _body: &str,
    _actions: &[(&str, &str)],
    _timeout: Option<Duration>,
) -> Result<Option<bool>, String> {
    Err("this offload was built without desktop notifications".into())
}
