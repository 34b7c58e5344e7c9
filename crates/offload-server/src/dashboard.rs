//! The web dashboard at `/`: static assets embedded in the binary, and the two calls that
//! sign a browser in. A browser holds an API token like any client, kept in the tab's
//! session storage and sent as `Authorization: Bearer`, so no cookie exists and no request
//! from another site can act for the user. It gets one either by pasting the user's token
//! or from a one-time link (`offload dashboard`), which the page exchanges for a token that
//! expires. Everything the page shows comes from the JSON API and the event stream, and it
//! writes text into the page only as text: names, reasons and images are never markup.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use offload_core::api::{
    ApiError, DashboardLink, DashboardSession, DashboardSessionRequest, ErrorCode,
};
use offload_store::TokenKind;
use rust_embed::Embed;

use crate::auth::{random_secret, token_hash};
use crate::controller::now;
use crate::error::{ActionError, error_response};
use crate::http::{ApiJson, AppState, Caller};

/// How long a sign-in link works, once.
pub const LINK_LIFETIME_SECS: i64 = 300;

/// How long a dashboard session's token works.
pub const SESSION_LIFETIME_SECS: i64 = 12 * 3600;

#[derive(Embed)]
#[folder = "assets/dashboard/"]
struct Assets;

/// Only this page's own scripts, styles and API; no inline script, no frames, no other
/// origin. Together with text-only rendering, markup in a container's name or a reason
/// cannot run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the dashboard's page.
pub async fn index() -> Response {
    asset("index.html")
}

/// `GET /dashboard/{file}`: its scripts and styles.
pub async fn file(Path(file): Path<String>) -> Response {
    if file == "index.html" {
        return error_response(StatusCode::NOT_FOUND, ErrorCode::NoRoute, "no such file");
    }
    asset(&file)
}

fn asset(name: &str) -> Response {
    let Some(found) = Assets::get(name) else {
        return error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::NoRoute,
            "no such dashboard file",
        );
    };
    let mime = found.metadata.mimetype().to_owned();
    let mut response = (StatusCode::OK, found.data.into_owned()).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Makes a one-time sign-in link for the caller.
#[utoipa::path(post, path = "/v1/dashboard/link", tag = "dashboard",
    responses((status = 200, body = DashboardLink), (status = 401, body = ApiError)))]
pub async fn create_link(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<DashboardLink>, ActionError> {
    let code = random_secret();
    let stored = token_hash(&code);
    let created = now();
    let expires_at = created + LINK_LIFETIME_SECS;
    let user = who.user.clone();
    state
        .ctl
        .db(move |s| {
            s.insert_token(
                &stored,
                &user,
                TokenKind::DashboardLink,
                created,
                Some(expires_at),
            )
        })
        .await?;
    Ok(Json(DashboardLink { code, expires_at }))
}

/// Exchanges a sign-in link's secret, once, for a session token that expires.
#[utoipa::path(post, path = "/v1/dashboard/session", tag = "dashboard",
    request_body = DashboardSessionRequest,
    responses((status = 200, body = DashboardSession), (status = 401, body = ApiError)))]
pub async fn create_session(
    State(state): State<AppState>,
    audit: Option<axum::Extension<crate::audit::AuditSlot>>,
    ApiJson(req): ApiJson<DashboardSessionRequest>,
) -> Result<Json<DashboardSession>, ActionError> {
    let link = req.link.trim();
    if link.is_empty() || link.len() > 256 {
        return Err(ActionError::InvalidLink);
    }
    let hash = token_hash(link);
    let principal = state
        .ctl
        .db(move |s| s.consume_single_use(&hash, TokenKind::DashboardLink, now()))
        .await?
        .ok_or(ActionError::InvalidLink)?;
    let expires_at = now() + SESSION_LIFETIME_SECS;
    let token = state
        .ctl
        .issue_api_token(&principal.user, Some(expires_at))
        .await?;
    if let Some(axum::Extension(slot)) = audit {
        slot.set(&principal);
    }
    Ok(Json(DashboardSession {
        user: principal.user.to_string(),
        admin: principal.admin,
        token,
        expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_file_is_embedded() {
        for name in ["index.html", "app.js", "app.css"] {
            assert!(Assets::get(name).is_some(), "{name} is not embedded");
        }
    }

    #[tokio::test]
    async fn files_carry_the_content_security_policy() {
        let response = asset("app.js");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers.get(header::CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static(CONTENT_SECURITY_POLICY))
        );
        assert!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("javascript")),
            "{headers:?}"
        );
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_runs_no_inline_script_and_renders_text_only() {
        let page =
            String::from_utf8_lossy(&Assets::get("index.html").expect("page").data).into_owned();
        assert!(!page.contains("<script>"), "inline script in the page");
        assert!(!page.contains("onclick"), "inline handler in the page");
        let script =
            String::from_utf8_lossy(&Assets::get("app.js").expect("script").data).into_owned();
        assert!(!script.contains("innerHTML"), "markup written from data");
        assert!(!script.contains("insertAdjacentHTML"));
        assert!(!script.contains("eval("));
    }
}
