//! The audit log: who did what to which container, query or user, and every refused
//! attempt. A middleware around the API records each action (a request that changes
//! something or opens a channel) and each denial (401, 403, and a 404 on a container that
//! exists but is another user's) once the answer is known; the caller is whoever the
//! `Caller` extractor authenticated. `GET /v1/admin/audit` reads it back (admins only).

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use offload_core::api::AuditView;
use offload_core::{ContainerId, UserName};
use offload_store::{AuditEntry, Principal, Store};
use serde::Deserialize;

use crate::db;
use crate::error::ActionError;
use crate::http::{ApiQuery, AppState, Caller};

/// Most entries one read returns.
const MAX_READ: usize = 10_000;

/// Where the extractor that authenticates a request leaves the caller for the audit
/// middleware, which sees the request before and the response after the handler.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<Principal>>>);

impl AuditSlot {
    pub fn set(&self, who: &Principal) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(who.clone());
    }

    fn take(&self) -> Option<Principal> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a request does, from its method and route: `None` for reads, which are audited
/// only when refused.
fn action(method: &Method, route: &str) -> Option<&'static str> {
    let action = match (method.as_str(), route) {
        ("POST", "/v1/containers") => "start",
        ("DELETE", "/v1/containers/{id}") => "remove",
        ("POST", "/v1/containers/{id}/stop") => "stop",
        ("POST", "/v1/containers/{id}/restart") => "restart",
        ("POST", "/v1/containers/{id}/move") => "move",
        ("GET", "/v1/containers/{id}/exec") => "shell",
        ("GET", "/v1/containers/{id}/sftp") => "sftp",
        ("GET", "/v1/containers/{id}/ports/{port}") => "port",
        ("GET", "/v1/containers/{id}/logs") => "logs",
        ("POST", "/v1/queries/{qid}/accept") => "accept",
        ("POST", "/v1/queries/{qid}/decline") => "decline",
        ("POST", "/v1/join") => "join",
        ("POST", "/v1/dashboard/link") => "dashboard_link",
        ("POST", "/v1/dashboard/session") => "dashboard_sign_in",
        ("GET", "/v1/agent") => "agent",
        ("POST", "/v1/admin/pressure") => "admin_pressure",
        ("POST", "/v1/admin/drain") => "admin_drain",
        ("POST", "/v1/admin/cloud/drain") => "admin_drain",
        ("DELETE", "/v1/admin/cloud/drain") => "admin_drain_end",
        ("POST", "/v1/admin/users/{name}/disable") => "admin_disable",
        ("POST", "/v1/admin/users/{name}/enable") => "admin_enable",
        ("POST", "/v1/admin/tokens/revoke") => "admin_revoke",
        _ if route.starts_with("/v1/admin/") && method != Method::GET => "admin",
        _ => return None,
    };
    Some(action)
}

/// The segment of `path` that stands where `route` has `{id}` or `{name}`.
fn target(route: &str, path: &str) -> Option<String> {
    let at = route
        .split('/')
        .position(|s| s == "{id}" || s == "{qid}" || s == "{name}")?;
    let raw = path.split('/').nth(at)?;
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    Some(decoded.chars().take(128).collect())
}

/// Records the request once its answer is known.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let Some(route) = route else {
        return response;
    };
    // The agents' own traffic (sync, channels) would drown the log; only its refusals
    // are kept.
    let routine = route.starts_with("/v1/containers/{id}/workspace")
        || route.starts_with("/v1/agent/channel");
    let denied = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let action = action(&method, &route);
    if !denied && status != StatusCode::NOT_FOUND && (action.is_none() || routine) {
        return response;
    }
    let who = slot.take();
    let target = target(&route, &path);
    let store = state.ctl.store().clone();
    let clock = state.ctl.clock;
    tokio::spawn(async move {
        let (outcome, detail) = judge(&store, who.as_ref(), &target, status, denied).await;
        if action.is_none() && outcome != "denied" {
            return;
        }
        let entry = AuditEntry {
            id: 0,
            at_ms: i64::try_from(clock.since_epoch().as_millis()).unwrap_or(i64::MAX),
            user: who.map(|p| p.user),
            action: action.unwrap_or("read").to_owned(),
            target,
            outcome: outcome.to_owned(),
            status: status.as_u16(),
            detail: if detail.is_empty() {
                format!("{method} {path}")
            } else {
                format!("{method} {path}: {detail}")
            },
        };
        if let Err(e) = db::call(&store, move |s| s.append_audit(&entry)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    });
    response
}

/// `ok`, `denied` or `failed`, and why.
async fn judge(
    store: &Arc<Store>,
    who: Option<&Principal>,
    target: &Option<String>,
    status: StatusCode,
    denied: bool,
) -> (&'static str, String) {
    if denied {
        let why = match status {
            StatusCode::FORBIDDEN => "not an admin",
            _ if who.is_none() => "no valid token",
            _ => "refused",
        };
        return ("denied", why.to_owned());
    }
    if status == StatusCode::NOT_FOUND {
        // A 404 on a container that exists is another user's: the caller saw "missing",
        // the operator sees the attempt.
        if let (Some(who), Some(target)) = (who, target)
            && let Ok(id) = ContainerId::parse(target)
        {
            let key = id.clone();
            if let Ok(Some(record)) = db::call(store, move |s| s.container(&key)).await
                && record.owner != who.user
                && !who.admin
            {
                return (
                    "denied",
                    format!("another user's container (of {})", record.owner),
                );
            }
        }
        return ("failed", "not found".to_owned());
    }
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
        ("ok", String::new())
    } else {
        ("failed", status.canonical_reason().unwrap_or("").to_owned())
    }
}

/// Records an action taken on the server host itself (`offload admin token create`).
pub fn record_local(store: &Store, action: &str, target: &str, detail: &str) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let entry = AuditEntry {
        id: 0,
        at_ms,
        user: None,
        action: action.to_owned(),
        target: Some(target.to_owned()),
        outcome: "ok".to_owned(),
        status: 0,
        detail: detail.to_owned(),
    };
    if let Err(e) = store.append_audit(&entry) {
        tracing::error!(error = %e, "cannot write the audit log");
    }
}

/// The query string of `GET /v1/admin/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this user's entries.
    pub user: Option<String>,
    /// Only entries at or after this Unix time in milliseconds.
    pub since_ms: Option<i64>,
    /// The newest this many (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// The audit log, oldest first (admin only).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = [AuditView]), (status = 400, body = offload_core::api::ApiError),
        (status = 401, body = offload_core::api::ApiError), (status = 403, body = offload_core::api::ApiError)))]
pub async fn read_audit(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditView>>, ActionError> {
    if !who.admin {
        return Err(ActionError::Forbidden);
    }
    let user = match query.user.as_deref() {
        Some(name) => Some(
            UserName::parse(name)
                .map_err(|e| ActionError::BadRequest(format!("invalid user name: {e}")))?,
        ),
        None => None,
    };
    let since = query.since_ms.unwrap_or(0);
    let limit = query.limit.unwrap_or(1000).clamp(1, MAX_READ);
    let entries = state
        .ctl
        .db(move |s| s.audit(user.as_ref(), since, limit))
        .await?;
    Ok(Json(entries.into_iter().map(view).collect()))
}

fn view(entry: AuditEntry) -> AuditView {
    AuditView {
        id: entry.id,
        at_ms: entry.at_ms,
        user: entry.user.map(|u| u.to_string()),
        action: entry.action,
        target: entry.target,
        outcome: entry.outcome,
        status: entry.status,
        detail: entry.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_targets_come_from_the_route() {
        assert_eq!(
            action(&Method::POST, "/v1/containers/{id}/move"),
            Some("move")
        );
        assert_eq!(
            action(&Method::GET, "/v1/containers/{id}/exec"),
            Some("shell")
        );
        assert_eq!(action(&Method::GET, "/v1/containers/{id}"), None);
        assert_eq!(action(&Method::POST, "/v1/admin/anything"), Some("admin"));
        assert_eq!(
            target(
                "/v1/containers/{id}/ports/{port}",
                "/v1/containers/box%201/ports/80"
            ),
            Some("box 1".to_owned())
        );
        assert_eq!(target("/v1/containers", "/v1/containers"), None);
    }
}
