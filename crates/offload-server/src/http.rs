//! The HTTP adapter: routes under `/v1`, authentication, JSON in and out, and the
//! OpenAPI document. Handlers translate requests into controller calls and nothing more.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use offload_core::api::{
    ApiError, CloudDrainReport, ContainerView, DeviceView, DrainReport, DrainRequest, JoinRequest,
    JoinResponse, MonitorView, MoveEstimate, MoveRequest, PressureRequest, QueryView, StartRequest,
    WhoAmI,
};
use offload_store::{Principal, TokenLookup};
use offload_sync::protocol::{PushReport, PushRequest};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::token_hash;
use crate::controller::{Controller, now};
use crate::error::{ActionError, error_response};
use offload_core::api::ErrorCode;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub ctl: Arc<Controller>,
    pub ca_pem: Arc<str>,
}

/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 64 << 10;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "offload",
        description = "Moves users' containers between a shared cloud host and their own machines."
    ),
    paths(
        workspace_manifest,
        workspace_fetch,
        workspace_plan,
        workspace_upload,
        workspace_push,
        crate::exec::exec_socket,
        crate::files::sftp_socket,
        crate::tunnel::port_socket,
        crate::logs::logs_socket,
        crate::agent_ws::agent_socket,
        crate::agent_ws::agent_channel_socket
    ),
    components(schemas(
        ApiError,
        offload_core::api::ErrorCode,
        offload_core::api::ExecRequest,
        offload_core::api::ExecControl,
        offload_core::api::SftpControl,
        offload_core::api::PortControl,
        offload_core::api::LogsControl,
        offload_core::agent::AgentMessage,
        offload_core::agent::ServerMessage,
        offload_core::agent::Command,
        offload_core::agent::Reply,
        offload_core::agent::AgentError,
        offload_core::agent::AgentErrorCode,
        offload_core::events::Event,
        offload_core::events::EventBody,
        offload_core::api::AuditView,
        offload_core::api::DashboardLink,
        offload_core::api::DashboardSession
    ))
)]
struct ApiDoc;

/// The JSON endpoints, each with its part of the OpenAPI document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_containers, start_container))
        .routes(routes!(show_container, remove_container))
        .routes(routes!(stop_container))
        .routes(routes!(restart_container))
        .routes(routes!(move_container))
        .routes(routes!(estimate_move))
        .routes(routes!(container_image))
        .routes(routes!(list_queries))
        .routes(routes!(list_devices))
        .routes(routes!(accept_query))
        .routes(routes!(decline_query))
        .routes(routes!(admin_pressure))
        .routes(routes!(admin_drain))
        .routes(routes!(admin_drain_cloud, admin_end_cloud_drain))
        .routes(routes!(monitor_status))
        .routes(routes!(join))
        .routes(routes!(ca_certificate))
        .routes(routes!(whoami))
        .routes(routes!(crate::events::events_stream))
        .routes(routes!(crate::audit::read_audit))
        .routes(routes!(crate::users::list_users))
        .routes(routes!(crate::users::disable_user))
        .routes(routes!(crate::users::enable_user))
        .routes(routes!(crate::users::revoke_tokens))
        .routes(routes!(crate::users::all_containers))
        .routes(routes!(crate::dashboard::create_link))
        .routes(routes!(crate::dashboard::create_session))
}

/// The OpenAPI document of the whole API, as `/v1/openapi.json` serves it and
/// docs/openapi.json records it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

/// The whole API router, with its OpenAPI document at `/v1/openapi.json`.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api().split_for_parts();
    let openapi = Arc::new(openapi);
    api.layer(refuse_declared_over(MAX_JSON_BODY))
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route(
            "/v1/containers/{id}/exec",
            axum::routing::get(crate::exec::exec_socket),
        )
        .route(
            "/v1/containers/{id}/sftp",
            axum::routing::get(crate::files::sftp_socket),
        )
        .route(
            "/v1/containers/{id}/ports/{port}",
            axum::routing::get(crate::tunnel::port_socket),
        )
        .route(
            "/v1/containers/{id}/logs",
            axum::routing::get(crate::logs::logs_socket),
        )
        .route(
            "/v1/agent",
            axum::routing::get(crate::agent_ws::agent_socket),
        )
        .route(
            "/v1/agent/channel/{session}",
            axum::routing::get(crate::agent_ws::agent_channel_socket),
        )
        // After the layer above: the sync routes check their own, larger limits.
        .nest("/v1/containers/{id}/workspace", sync_routes())
        .route("/metrics", axum::routing::get(metrics))
        .route("/", axum::routing::get(crate::dashboard::index))
        .route(
            "/dashboard/{file}",
            axum::routing::get(crate::dashboard::file),
        )
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NoRoute,
                "no such API endpoint; see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ))
        .with_state(state)
}

/// Refuses (413) a request whose declared `Content-Length` exceeds `max` before any of
/// its body is read; the body limit layer still bounds bodies sent without one.
fn refuse_declared_over(
    max: usize,
) -> axum::middleware::FromFnLayer<
    impl Fn(Request, axum::middleware::Next) -> futures::future::BoxFuture<'static, Response> + Clone,
    (),
    (Request,),
> {
    axum::middleware::from_fn(move |request: Request, next: axum::middleware::Next| {
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let refuse = declared.is_some_and(|n| n > max as u64);
        Box::pin(async move {
            if refuse {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::BodyTooLarge,
                    format!("the request body is larger than {max} bytes"),
                );
            }
            next.run(request).await
        }) as futures::future::BoxFuture<'static, Response>
    })
}

/// A query string whose rejections are API errors (400) with a JSON body.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                rejection.body_text(),
            )),
        }
    }
}

/// A JSON body whose rejections are API errors (400, 413, 415) with a JSON body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                // A body of the wrong shape (axum's 422) is bad input like any other: 400.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
                    _ => ErrorCode::InvalidJson,
                };
                let message = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        format!("the request body is larger than {MAX_JSON_BODY} bytes")
                    }
                    _ => rejection.body_text(),
                };
                Err(error_response(status, code, message))
            }
        }
    }
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ActionError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(ActionError::Unauthenticated)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(ActionError::InvalidToken)?;
        let hash = token_hash(token);
        let who = match state.ctl.db(move |s| s.api_token(&hash, now())).await? {
            TokenLookup::Valid(who) => who,
            TokenLookup::Disabled(user) => return Err(ActionError::UserDisabled(user.to_string())),
            TokenLookup::Invalid => return Err(ActionError::InvalidToken),
        };
        state.ctl.seen(&who.user).await;
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.set(&who);
        }
        Ok(Caller(who))
    }
}

/// Lists the caller's containers.
#[utoipa::path(get, path = "/v1/containers", tag = "containers",
    responses((status = 200, body = [ContainerView]), (status = 401, body = ApiError)))]
async fn list_containers(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<ContainerView>>, ActionError> {
    let records = state.ctl.list(&who).await?;
    Ok(Json(state.ctl.views(&records).await?))
}

/// Creates a container in the cloud and starts it.
#[utoipa::path(post, path = "/v1/containers", tag = "containers", request_body = StartRequest,
    responses((status = 201, body = ContainerView), (status = 400, body = ApiError),
        (status = 401, body = ApiError), (status = 409, body = ApiError),
        (status = 413, body = ApiError)))]
async fn start_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<StartRequest>,
) -> Result<(StatusCode, Json<ContainerView>), ActionError> {
    let record = state.ctl.start(&who, req).await?;
    Ok((StatusCode::CREATED, Json(ContainerView::from(&record))))
}

/// One container, by id or name.
#[utoipa::path(get, path = "/v1/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 200, body = ContainerView), (status = 404, body = ApiError)))]
async fn show_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerView>, ActionError> {
    let record = state.ctl.find(&who, &id).await?;
    Ok(Json(state.ctl.view(&record).await?))
}

/// Removes a container and its workspace.
#[utoipa::path(delete, path = "/v1/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ActionError> {
    state.ctl.remove(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a container; its workspace stays.
#[utoipa::path(post, path = "/v1/containers/{id}/stop", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 200, body = ContainerView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn stop_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerView>, ActionError> {
    let record = state.ctl.stop(&who, &id).await?;
    Ok(Json(ContainerView::from(&record)))
}

/// Starts a stopped container again.
#[utoipa::path(post, path = "/v1/containers/{id}/start", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 200, body = ContainerView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn restart_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerView>, ActionError> {
    let record = state.ctl.restart(&who, &id).await?;
    Ok(Json(ContainerView::from(&record)))
}

/// Exchanges a join token's secret for an API token.
#[utoipa::path(post, path = "/v1/join", tag = "auth", request_body = JoinRequest,
    responses((status = 200, body = JoinResponse), (status = 401, body = ApiError)))]
async fn join(
    State(state): State<AppState>,
    audit: Option<axum::Extension<crate::audit::AuditSlot>>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, ActionError> {
    let hash = token_hash(&req.secret);
    let principal = state
        .ctl
        .db(move |s| s.consume_join_token(&hash, now()))
        .await?
        .ok_or(ActionError::InvalidToken)?;
    let token = state.ctl.issue_api_token(&principal.user, None).await?;
    tracing::info!(user = %principal.user, "client joined");
    if let Some(axum::Extension(slot)) = audit {
        slot.set(&principal);
    }
    Ok(Json(JoinResponse {
        user: principal.user.to_string(),
        admin: principal.admin,
        token,
    }))
}

/// The server's CA certificate (PEM). Clients compare its fingerprint with the one in
/// their join token before they send any secret.
#[utoipa::path(get, path = "/v1/ca", tag = "auth",
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file")))]
async fn ca_certificate(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca_pem.to_string(),
    )
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
async fn whoami(Caller(who): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: who.user.to_string(),
        admin: who.admin,
    })
}

/// Moves a container to the edge or back to the cloud. The move runs in the background;
/// `GET /v1/containers/{id}` shows its progress and, when it ends, its report.
#[utoipa::path(post, path = "/v1/containers/{id}/move", tag = "moves", request_body = MoveRequest,
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 202, body = ContainerView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn move_container(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<(StatusCode, Json<ContainerView>), ActionError> {
    let record = state.ctl.request_move(&who, &id, req).await?;
    Ok((StatusCode::ACCEPTED, Json(state.ctl.view(&record).await?)))
}

/// What a move to the edge would do now: the bytes that would cross (from the agent's
/// diff of its copy of the workspace) and the predicted times (from the owner's recent
/// moves). Nothing moves.
#[utoipa::path(post, path = "/v1/containers/{id}/move/estimate", tag = "moves",
    request_body = MoveRequest,
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 200, body = MoveEstimate), (status = 400, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn estimate_move(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Json<MoveEstimate>, ActionError> {
    Ok(Json(state.ctl.estimate_move(&who, &id, &req).await?))
}

/// The workspace sync endpoints the agent uses (see `offload_sync::protocol`). Their
/// bodies are binary and larger than other API calls: deltas, chunk requests and batches.
fn sync_routes() -> Router<AppState> {
    use axum::routing::{MethodRouter, get, post};
    let limited = |max: usize, route: MethodRouter<AppState>| {
        route
            .layer(DefaultBodyLimit::max(max))
            .layer(refuse_declared_over(max))
    };
    Router::new()
        .route("/manifest", get(workspace_manifest))
        .route("/fetch", limited(MAX_SYNC_REQUEST, post(workspace_fetch)))
        .route("/plan", limited(MAX_SYNC_DELTA, post(workspace_plan)))
        .route("/chunks", limited(MAX_SYNC_BATCH, post(workspace_upload)))
        .route("/push", limited(MAX_SYNC_REQUEST, post(workspace_push)))
}

/// Largest chunk request or push commit.
const MAX_SYNC_REQUEST: usize = 16 << 20;
/// Largest push delta.
const MAX_SYNC_DELTA: usize = 256 << 20;
/// Largest chunk batch: the batch limit plus room for its framing.
const MAX_SYNC_BATCH: usize = crate::workspace::MAX_BATCH_BYTES + (1 << 20);

fn binary(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestQuery {
    /// Digest (hex) of a manifest of this workspace the caller holds.
    base: Option<String>,
}

/// The manifest of the cloud copy of a workspace, as a delta from the caller's base when
/// the server still holds it.
#[utoipa::path(get, path = "/v1/containers/{id}/workspace/manifest", tag = "sync",
    params(("id" = String, Path, description = "container id or name"),
        ("base" = Option<String>, Query,
            description = "digest (64 hex digits) of a manifest of this workspace the caller holds")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
            description = "the binary manifest, or its delta from `base` (`offload_sync::binary`)"),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn workspace_manifest(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ManifestQuery>,
) -> Result<Response, ActionError> {
    let base = match query.base.as_deref() {
        None => None,
        Some(hex) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex, &mut digest).map_err(|_| {
                ActionError::BadRequest("base must be a digest of 64 hex digits".into())
            })?;
            Some(digest)
        }
    };
    let record = state.ctl.find(&who, &id).await?;
    let update = state.ctl.sync.manifest_update(&record.id, base).await?;
    Ok(binary(update))
}

/// Chunks of the cloud copy, raw, compressed or patched against the caller's old bytes.
#[utoipa::path(post, path = "/v1/containers/{id}/workspace/fetch", tag = "sync",
    params(("id" = String, Path, description = "container id or name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "a chunk request, with signatures of the caller's old bytes (`offload_sync::wire`); at most 16 MiB"),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
            description = "a chunk batch: raw, LZ4 or patch per chunk, in request order"),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "a file changed since the scan: fetch the manifest again"),
        (status = 413, body = ApiError)))]
async fn workspace_fetch(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ActionError> {
    let record = state.ctl.find(&who, &id).await?;
    let batch = state.ctl.sync.fetch(&record.id, body.to_vec()).await?;
    Ok(binary(batch))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    generation: u64,
    #[serde(default)]
    conflict: bool,
}

/// Takes a push's delta; answers the chunk requests the pusher must serve.
#[utoipa::path(post, path = "/v1/containers/{id}/workspace/plan", tag = "sync",
    params(("id" = String, Path, description = "container id or name"),
        ("generation" = u64, Query, description = "the pushing copy's generation"),
        ("conflict" = Option<bool>, Query, description = "a fenced copy's conflict set")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the push's binary delta against the manifest last acknowledged; at most 256 MiB"),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
            description = "the push plan: the chunk requests the pusher must serve"),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "`stale_generation`: the copy is fenced"),
        (status = 413, body = ApiError)))]
async fn workspace_plan(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PlanQuery>,
    body: Bytes,
) -> Result<Response, ActionError> {
    let plan = state
        .ctl
        .plan_push(&who, &id, query.generation, query.conflict, body.to_vec())
        .await?;
    Ok(binary(plan))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    plan: u64,
    batch: usize,
}

/// The pusher's answer to one chunk request of its plan.
#[utoipa::path(post, path = "/v1/containers/{id}/workspace/chunks", tag = "sync",
    params(("id" = String, Path, description = "container id or name"),
        ("plan" = u64, Query, description = "the plan the batch answers"),
        ("batch" = usize, Query, description = "the index of the plan's chunk request")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "a chunk batch answering one request of the plan; at most 65 MiB"),
    responses((status = 204, description = "verified into the staging store"),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 413, body = ApiError)))]
async fn workspace_upload(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Bytes,
) -> Result<StatusCode, ActionError> {
    state
        .ctl
        .upload_chunks(&who, &id, query.plan, query.batch, body.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a planned push; answers once the files are durably in place.
#[utoipa::path(post, path = "/v1/containers/{id}/workspace/push", tag = "sync",
    params(("id" = String, Path, description = "container id or name")),
    request_body(content = Object, content_type = "application/json",
        description = "`offload_sync::protocol::PushRequest`: the plan and the pushing generation"),
    responses((status = 200, body = Object,
            description = "`offload_sync::protocol::PushReport`, once the files are durably in place"),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn workspace_push(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<PushReport>, ActionError> {
    let request: PushRequest = serde_json::from_slice(&body)
        .map_err(|e| ActionError::BadRequest(format!("invalid push: {e}")))?;
    Ok(Json(state.ctl.push(&who, &id, request).await?))
}

/// The container's image as a `docker save` archive, for an edge that cannot pull it.
#[utoipa::path(get, path = "/v1/containers/{id}/image", tag = "sync",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 200, description = "image archive", content_type = "application/x-tar")))]
async fn container_image(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ActionError> {
    let record = state.ctl.find(&who, &id).await?;
    let size = state
        .ctl
        .runtime()
        .image(record.image.as_str())
        .await
        .ok()
        .flatten()
        .map(|i| i.size);
    let stream = state
        .ctl
        .runtime()
        .export_image(record.image.as_str())
        .await?;
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-tar"),
    );
    if let Some(size) = size
        && let Ok(value) = axum::http::HeaderValue::from_str(&size.to_string())
    {
        response.headers_mut().insert("x-offload-image-size", value);
    }
    Ok(response)
}

/// The caller's queries, newest first.
#[utoipa::path(get, path = "/v1/queries", tag = "queries",
    responses((status = 200, body = [QueryView]), (status = 401, body = ApiError)))]
async fn list_queries(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<QueryView>>, ActionError> {
    Ok(Json(state.ctl.queries(&who).await?))
}

/// The caller's connected devices: each agent's name, what it offers and what runs there.
#[utoipa::path(get, path = "/v1/devices", tag = "agent",
    responses((status = 200, body = [DeviceView]), (status = 401, body = ApiError)))]
async fn list_devices(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<DeviceView>>, ActionError> {
    Ok(Json(state.ctl.devices_of(&who).await?))
}

/// Accepts a query: the container moves to the caller's machine.
#[utoipa::path(post, path = "/v1/queries/{qid}/accept", tag = "queries",
    params(("qid" = String, Path, description = "query id")),
    responses((status = 200, body = QueryView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn accept_query(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(qid): Path<String>,
) -> Result<Json<QueryView>, ActionError> {
    Ok(Json(
        state
            .ctl
            .answer(&who, &qid, offload_monitor::Answer::Accept)
            .await?,
    ))
}

/// Declines a query: the container stays in the cloud and is not asked again for a while.
#[utoipa::path(post, path = "/v1/queries/{qid}/decline", tag = "queries",
    params(("qid" = String, Path, description = "query id")),
    responses((status = 200, body = QueryView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn decline_query(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(qid): Path<String>,
) -> Result<Json<QueryView>, ActionError> {
    Ok(Json(
        state
            .ctl
            .answer(&who, &qid, offload_monitor::Answer::Decline)
            .await?,
    ))
}

/// Asks now, as if pressure were seen (admin only).
#[utoipa::path(post, path = "/v1/admin/pressure", tag = "admin", request_body = PressureRequest,
    responses((status = 200, body = [QueryView]), (status = 403, body = ApiError)))]
async fn admin_pressure(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<PressureRequest>,
) -> Result<Json<Vec<QueryView>>, ActionError> {
    let user = match req.user {
        Some(u) => Some(
            offload_core::UserName::parse(&u)
                .map_err(|e| ActionError::BadRequest(e.to_string()))?,
        ),
        None => None,
    };
    Ok(Json(state.ctl.ask_now(&who, user).await?))
}

/// Drains a cluster node (admin only): nothing more is placed there, and its containers
/// move to other nodes with their workspaces.
#[utoipa::path(post, path = "/v1/admin/drain", tag = "admin", request_body = DrainRequest,
    responses((status = 200, body = DrainReport), (status = 400, body = ApiError),
        (status = 403, body = ApiError)))]
async fn admin_drain(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<DrainRequest>,
) -> Result<Json<DrainReport>, ActionError> {
    if req.node.trim().is_empty() || req.node.len() > 256 {
        return Err(ActionError::BadRequest(
            "name the node to drain by its name or ID".into(),
        ));
    }
    Ok(Json(state.ctl.drain(&who, &req.node).await?))
}

/// Drains the whole cloud (admin only): nothing new starts or returns there until the
/// drain ends, and every owner whose agent is connected is asked now.
#[utoipa::path(post, path = "/v1/admin/cloud/drain", tag = "admin",
    responses((status = 200, body = CloudDrainReport), (status = 403, body = ApiError)))]
async fn admin_drain_cloud(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<CloudDrainReport>, ActionError> {
    Ok(Json(state.ctl.drain_cloud(&who).await?))
}

/// Ends a drain of the cloud (admin only); 409 if the cloud was not draining.
#[utoipa::path(delete, path = "/v1/admin/cloud/drain", tag = "admin",
    responses((status = 204), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn admin_end_cloud_drain(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<StatusCode, ActionError> {
    if state.ctl.end_cloud_drain(&who).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ActionError::Conflict("the cloud is not draining".into()))
    }
}

/// The resource monitor's view: usage, forecast, watermarks, pressure, and the caller's
/// containers (every container for an admin).
#[utoipa::path(get, path = "/v1/monitor", tag = "admin",
    responses((status = 200, body = MonitorView), (status = 401, body = ApiError)))]
async fn monitor_status(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<MonitorView>, ActionError> {
    let mut view = state.ctl.monitor_view().await?;
    // Host totals are everyone's business; other users' containers are not (I3).
    if !who.admin {
        view.containers.retain(|c| c.owner == who.user.as_str());
    }
    Ok(Json(view))
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(State(state): State<AppState>) -> Result<Response, ActionError> {
    let text = state.ctl.metrics_text().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
