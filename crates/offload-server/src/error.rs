//! The errors an action can end in, and how each maps onto HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use offload_core::api::{ApiError, ErrorCode};

/// Why an action did not happen. Every variant is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required: send an API token (run `offload join` first)")]
    Unauthenticated,
    #[error("the token is not valid on this server")]
    InvalidToken,
    #[error(
        "this sign-in link is not valid: it was used already, it expired, or it was never \
         issued; run `offload dashboard` for a new one"
    )]
    InvalidLink,
    #[error("this needs an admin token")]
    Forbidden,
    #[error("user {0} is disabled by the operator of this server")]
    UserDisabled(String),
    #[error("{0}")]
    Quota(String),
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("generation {pushed} is not the container's current generation {current}")]
    StaleGeneration { pushed: u64, current: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ActionError {
    pub fn status(&self) -> StatusCode {
        match self {
            ActionError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ActionError::Unauthenticated | ActionError::InvalidToken | ActionError::InvalidLink => {
                StatusCode::UNAUTHORIZED
            }
            ActionError::Forbidden | ActionError::UserDisabled(_) => StatusCode::FORBIDDEN,
            ActionError::Quota(_) => StatusCode::CONFLICT,
            ActionError::NotFound(_) => StatusCode::NOT_FOUND,
            ActionError::Conflict(_) | ActionError::StaleGeneration { .. } => StatusCode::CONFLICT,
            ActionError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ActionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ActionError::BadRequest(_) => ErrorCode::BadRequest,
            ActionError::Unauthenticated => ErrorCode::Unauthenticated,
            ActionError::InvalidToken | ActionError::InvalidLink => ErrorCode::InvalidToken,
            ActionError::Forbidden => ErrorCode::Forbidden,
            ActionError::UserDisabled(_) => ErrorCode::UserDisabled,
            ActionError::Quota(_) => ErrorCode::QuotaExceeded,
            ActionError::NotFound(_) => ErrorCode::NotFound,
            ActionError::Conflict(_) => ErrorCode::Conflict,
            ActionError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            ActionError::Unavailable(_) => ErrorCode::Unavailable,
            ActionError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn body(&self) -> ApiError {
        ApiError {
            error: self.to_string(),
            code: self.code(),
        }
    }
}

impl From<offload_store::StoreError> for ActionError {
    fn from(e: offload_store::StoreError) -> Self {
        match e {
            offload_store::StoreError::NameTaken(name) => {
                ActionError::Conflict(format!("you already have a container named {name:?}"))
            }
            other => ActionError::Internal(other.to_string()),
        }
    }
}

impl From<offload_runtime::RuntimeError> for ActionError {
    fn from(e: offload_runtime::RuntimeError) -> Self {
        use offload_runtime::RuntimeError as E;
        match e {
            E::ImageUnavailable { .. } => ActionError::BadRequest(e.to_string()),
            E::Connect { .. } => ActionError::Unavailable(e.to_string()),
            E::NothingListens { .. } | E::NotRunning { .. } => ActionError::Conflict(e.to_string()),
            E::Port { .. } => ActionError::Unavailable(e.to_string()),
            E::NotFound { .. } | E::Engine { .. } => ActionError::Internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ActionError {
    fn from(e: tokio::task::JoinError) -> Self {
        ActionError::Internal(format!("background task failed: {e}"))
    }
}

impl IntoResponse for ActionError {
    fn into_response(self) -> Response {
        if matches!(self, ActionError::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

/// A plain error response with an explicit status and code.
pub fn error_response(status: StatusCode, code: ErrorCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: error.into(),
            code,
        }),
    )
        .into_response()
}
