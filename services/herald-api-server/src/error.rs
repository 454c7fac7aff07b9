//! The one mapping from handler errors to gRPC statuses.

use tonic::Status;

/// What a handler can fail with. Every variant maps to exactly one gRPC code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// A request field is invalid; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named entity does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The entity exists, or the idempotency key was used for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well formed but the stored state does not allow it (e.g. rendering a
    /// channel the template version has no part for).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller lacks a permission (or is not a configured principal).
    #[error(transparent)]
    Denied(Status),
    /// Storage failed.
    #[error(transparent)]
    Database(#[from] herald_db::Error),
}

impl ServiceError {
    pub(crate) fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::InvalidArgument(format!("{field}: {problem}"))
    }
}

impl From<Status> for ServiceError {
    fn from(status: Status) -> Self {
        Self::Denied(status)
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument(message) => Status::invalid_argument(message),
            ServiceError::NotFound(message) => Status::not_found(message),
            ServiceError::AlreadyExists(message) => Status::already_exists(message),
            ServiceError::FailedPrecondition(message) => Status::failed_precondition(message),
            ServiceError::Denied(status) => status,
            ServiceError::Database(error) if error.is_unavailable() => {
                tracing::warn!(error = %error, "Database unavailable; answering UNAVAILABLE.");
                Status::unavailable("storage is temporarily unavailable; retry with backoff")
            }
            ServiceError::Database(error) => {
                tracing::error!(error = ?error, "Database error.");
                Status::internal("internal error")
            }
        }
    }
}

/// `Result` for handlers.
pub(crate) type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A handler's result as the RPC's answer.
pub(crate) fn respond<T>(result: Result<T>) -> std::result::Result<tonic::Response<T>, Status> {
    Ok(tonic::Response::new(result?))
}
