//! Operator tools over users and tokens: list users, disable and enable one (a disabled
//! user's tokens stop working at once and their agent is cut off; their containers keep
//! running), revoke tokens, and list every container. Admin tokens only.

use axum::Json;
use axum::extract::{Path, State};
use offload_core::api::{ContainerView, RevokeRequest, RevokeResponse, UserView};
use offload_core::{Location, UserName};
use offload_store::Principal;

use crate::auth::token_hash;
use crate::clock::now;
use crate::error::ActionError;
use crate::http::{ApiJson, AppState, Caller};

fn admin_only(who: &Principal) -> Result<(), ActionError> {
    if who.admin {
        Ok(())
    } else {
        Err(ActionError::Forbidden)
    }
}

fn user_name(name: &str) -> Result<UserName, ActionError> {
    UserName::parse(name).map_err(|e| ActionError::BadRequest(format!("invalid user name: {e}")))
}

/// Every user with their containers, tokens, agent and when they were last seen.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin",
    responses((status = 200, body = [UserView]), (status = 401, body = offload_core::api::ApiError),
        (status = 403, body = offload_core::api::ApiError)))]
pub async fn list_users(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<UserView>>, ActionError> {
    admin_only(&who)?;
    let at = now();
    let (users, containers) = state
        .ctl
        .db(move |s| Ok((s.users(at)?, s.containers(None)?)))
        .await?;
    let views = users
        .into_iter()
        .map(|u| {
            let theirs: Vec<_> = containers.iter().filter(|c| c.owner == u.name).collect();
            UserView {
                agent: {
                    let hosts: Vec<String> = state
                        .ctl
                        .hub
                        .devices(&u.name)
                        .iter()
                        .map(|link| link.capacity.hostname.clone())
                        .collect();
                    (!hosts.is_empty()).then(|| hosts.join(", "))
                },
                name: u.name.to_string(),
                admin: u.admin,
                disabled_at: u.disabled_at,
                last_seen_at: u.last_seen_at,
                tokens: u.tokens,
                containers: theirs.len(),
                at_edge: theirs
                    .iter()
                    .filter(|c| c.location == Location::Edge)
                    .count(),
            }
        })
        .collect();
    Ok(Json(views))
}

/// Disables a user: their tokens stop working at once and their agent is cut off; their
/// containers keep running until the operator stops them.
#[utoipa::path(post, path = "/v1/admin/users/{name}/disable", tag = "admin",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = offload_core::api::ApiError),
        (status = 403, body = offload_core::api::ApiError), (status = 404, body = offload_core::api::ApiError)))]
pub async fn disable_user(
    state: State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ActionError> {
    set_disabled(state, caller, &name, true).await
}

/// Enables a disabled user again: their tokens work again.
#[utoipa::path(post, path = "/v1/admin/users/{name}/enable", tag = "admin",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = offload_core::api::ApiError),
        (status = 403, body = offload_core::api::ApiError), (status = 404, body = offload_core::api::ApiError)))]
pub async fn enable_user(
    state: State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ActionError> {
    set_disabled(state, caller, &name, false).await
}

async fn set_disabled(
    State(state): State<AppState>,
    Caller(who): Caller,
    name: &str,
    disabled: bool,
) -> Result<Json<UserView>, ActionError> {
    admin_only(&who)?;
    let user = user_name(name)?;
    if disabled && user == who.user {
        return Err(ActionError::BadRequest(
            "you cannot disable yourself: another admin can".into(),
        ));
    }
    let key = user.clone();
    let at = disabled.then(now);
    let found = state.ctl.db(move |s| s.set_user_disabled(&key, at)).await?;
    if !found {
        return Err(ActionError::NotFound(format!("user {user}")));
    }
    if disabled && state.ctl.hub.cut_off(&user) {
        tracing::info!(%user, "disabled: cut off the user's agent");
    }
    tracing::info!(%user, disabled, by = %who.user, "user access changed");
    let Json(users) = list_users(State(state), Caller(who)).await?;
    users
        .into_iter()
        .find(|u| u.name == user.as_str())
        .map(Json)
        .ok_or_else(|| ActionError::NotFound(format!("user {user}")))
}

/// Revokes every token of a user (their agent is cut off and they must join again), or
/// one token given in full.
#[utoipa::path(post, path = "/v1/admin/tokens/revoke", tag = "admin", request_body = RevokeRequest,
    responses((status = 200, body = RevokeResponse), (status = 400, body = offload_core::api::ApiError),
        (status = 403, body = offload_core::api::ApiError), (status = 404, body = offload_core::api::ApiError)))]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    Caller(who): Caller,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ActionError> {
    admin_only(&who)?;
    let (user, revoked) = match (req.user, req.token) {
        (Some(name), None) => {
            let user = user_name(&name)?;
            let key = user.clone();
            let revoked = state.ctl.db(move |s| s.revoke_tokens_of(&key)).await?;
            (user, revoked)
        }
        (None, Some(token)) => {
            let hash = token_hash(token.trim());
            match state.ctl.db(move |s| s.revoke_token(&hash)).await? {
                Some(user) => (user, 1),
                None => return Err(ActionError::NotFound("token: no such token".into())),
            }
        }
        _ => {
            return Err(ActionError::BadRequest(
                "name either a user (every token of theirs) or one token".into(),
            ));
        }
    };
    if state.ctl.hub.cut_off(&user) {
        tracing::info!(%user, "tokens revoked: cut off the user's agent");
    }
    tracing::info!(%user, revoked, by = %who.user, "tokens revoked");
    Ok(Json(RevokeResponse { revoked }))
}

/// Every container of every user.
#[utoipa::path(get, path = "/v1/admin/containers", tag = "admin",
    responses((status = 200, body = [ContainerView]), (status = 403, body = offload_core::api::ApiError)))]
pub async fn all_containers(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Vec<ContainerView>>, ActionError> {
    admin_only(&who)?;
    let records = state.ctl.db(|s| s.containers(None)).await?;
    Ok(Json(state.ctl.views(&records).await?))
}
