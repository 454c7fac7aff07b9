//! The database error type, with constraint violations mapped by name.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL cannot be reached or the pool timed out: callers answer `UNAVAILABLE`.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A template with this key already exists (`templates::create`).
    #[error("a template named `{key}` already exists")]
    TemplateKeyTaken {
        /// The key asked for.
        key: String,
    },
    /// A unique constraint without a variant of its own rejected the write; the constraint's
    /// name says which.
    #[error("unique constraint {constraint} violated")]
    Conflict {
        /// The violated constraint, e.g. `templates_key_unique`.
        constraint: String,
    },
    /// A requested change was refused before anything was written; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A stored value does not parse into its domain type (a bug or a bad manual edit).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The encryption keys could not be loaded, or a personal value could not be sealed or
    /// opened with them.
    #[error("encryption keys: {0}")]
    Keys(#[from] herald_crypto::Error),
    /// Any other database error.
    #[error("database query failed")]
    Query(#[source] DieselError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DieselError> for Error {
    fn from(error: DieselError) -> Self {
        if let DieselError::DeserializationError(source) | DieselError::SerializationError(source) =
            &error
            && let Some(keys) = keys_error(source.as_ref())
        {
            return Self::Keys(keys);
        }
        match &error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::Conflict {
                    constraint: info.constraint_name().unwrap_or_default().to_owned(),
                }
            }
            // diesel-async reports a statement it could not send or whose answer never came
            // (the connection was closed or reset under it) as `UnableToSendCommand`.
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )
            | DieselError::BrokenTransactionManager => Self::Unavailable(error.to_string()),
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().contains("connection closed")
                    || info.message().contains("terminating connection") =>
            {
                Self::Unavailable(error.to_string())
            }
            _ => Self::Query(error),
        }
    }
}

/// The key problem somewhere in `error`'s chain (diesel wraps a column's error in its own), so
/// that a personal column that could not be sealed or opened says why (which key).
fn keys_error(error: &(dyn std::error::Error + 'static)) -> Option<herald_crypto::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(keys) = error.downcast_ref::<herald_crypto::Error>() {
            return Some(keys.clone());
        }
        current = error.source();
    }
    None
}

/// A stored value that no longer parses into its domain type.
impl From<herald_domain::ValueError> for Error {
    fn from(error: herald_domain::ValueError) -> Self {
        Self::Corrupt(error.0)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl Error {
    /// True when the error means PostgreSQL is unreachable rather than the request being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};

    use super::Error;

    #[test]
    fn a_statement_that_could_not_reach_postgresql_means_unavailable_not_a_bug() {
        let lost = |kind, message: &str| {
            Error::from(DieselError::DatabaseError(
                kind,
                Box::new(message.to_owned()),
            ))
        };
        for error in [
            lost(DatabaseErrorKind::UnableToSendCommand, "connection closed"),
            lost(
                DatabaseErrorKind::UnableToSendCommand,
                "error communicating with the server: Connection reset by peer (os error 104)",
            ),
            lost(DatabaseErrorKind::ClosedConnection, "closed"),
            lost(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            Error::from(DieselError::BrokenTransactionManager),
        ] {
            assert!(error.is_unavailable(), "{error:?}");
        }
        assert!(!lost(DatabaseErrorKind::CheckViolation, "violates check").is_unavailable());
    }
}
