//! Errors of the domain, and which one goes where.
//!
//! - [`DomainError`]: what the domain's operations on requests and batches return: input that
//!   breaks a rule (the caller answers it as a client error), a conflict with stored state, or
//!   a database failure. The api maps it onto its HTTP answers (`llm_api::error`); nothing here
//!   knows about status codes.
//! - Other modules return their own `thiserror` enums (the registry's `RegistryError`, the
//!   relay's `RelayError`, ...) or `sqlx::Error`.
//! - [`is_unavailable`] tells a lost database from a bug; [`replicate`] copies a database error
//!   for each caller of a group-committed statement.

use serde::Serialize;

/// Why a domain operation on requests or batches did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Input that cannot be read as what it claims to be (e.g. mock controls that are not an
    /// object).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule (missing prompt, unknown model, ...).
    #[error("{message}")]
    Validation {
        field: Option<&'static str>,
        message: String,
    },
    /// Items of a batch that break the rules, each with its index.
    #[error("{} of the items are invalid", .0.len())]
    InvalidItems(Vec<ItemError>),
    /// The input conflicts with what is stored (an `Idempotency-Key` reused for another body).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DomainError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field: Some(field),
            message: message.into(),
        }
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(err))
    }
}

/// One invalid item of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub message: String,
}

/// Whether a database error means "cannot reach the database" rather than a bug.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || (c.starts_with("08") && c != "08P01")))
}

/// A copy of `err` for one more of the callers that met it (`sqlx::Error` is not `Clone`): a
/// batch of the worker's calls run as one statement answers each caller on its own. The copy
/// keeps the message, the SQLSTATE code and kind of a database error, and the classification
/// of [`is_unavailable`] (so a caller decides "retry later" as it would for the original).
pub fn replicate(err: &sqlx::Error) -> sqlx::Error {
    use sqlx::Error as E;
    match err {
        E::PoolTimedOut => E::PoolTimedOut,
        E::PoolClosed => E::PoolClosed,
        E::WorkerCrashed => E::WorkerCrashed,
        E::RowNotFound => E::RowNotFound,
        E::Protocol(message) => E::Protocol(message.clone()),
        E::Io(io) => E::Io(std::io::Error::new(io.kind(), io.to_string())),
        E::Tls(tls) => E::Tls(tls.to_string().into()),
        E::Database(db) => E::Database(Box::new(ReplicatedDbError::of(db.as_ref()))),
        other => E::Protocol(other.to_string()),
    }
}

/// A database error as [`replicate`] copies it.
#[derive(Debug)]
struct ReplicatedDbError {
    message: String,
    code: Option<String>,
    constraint: Option<String>,
    table: Option<String>,
    kind: fn() -> sqlx::error::ErrorKind,
}

impl ReplicatedDbError {
    fn of(db: &dyn sqlx::error::DatabaseError) -> Self {
        use sqlx::error::ErrorKind as K;
        Self {
            message: db.message().to_owned(),
            code: db.code().map(std::borrow::Cow::into_owned),
            constraint: db.constraint().map(str::to_owned),
            table: db.table().map(str::to_owned),
            // `ErrorKind` is neither `Clone` nor exhaustive.
            kind: match db.kind() {
                K::UniqueViolation => || K::UniqueViolation,
                K::ForeignKeyViolation => || K::ForeignKeyViolation,
                K::NotNullViolation => || K::NotNullViolation,
                K::CheckViolation => || K::CheckViolation,
                K::ExclusionViolation => || K::ExclusionViolation,
                _ => || K::Other,
            },
        }
    }
}

impl std::fmt::Display for ReplicatedDbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReplicatedDbError {}

impl sqlx::error::DatabaseError for ReplicatedDbError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.as_deref().map(std::borrow::Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        (self.kind)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(code: &str, kind: fn() -> sqlx::error::ErrorKind) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ReplicatedDbError {
            message: format!("failed with {code}"),
            code: Some(code.to_owned()),
            constraint: Some("a_constraint".into()),
            table: None,
            kind,
        }))
    }

    #[test]
    fn a_replicated_error_keeps_message_code_and_classification() {
        let originals = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset by peer",
            )),
            sqlx::Error::Tls("handshake".into()),
            db_error("57P01", || sqlx::error::ErrorKind::Other),
            db_error("08006", || sqlx::error::ErrorKind::Other),
            db_error("40P01", || sqlx::error::ErrorKind::Other),
            db_error("23505", || sqlx::error::ErrorKind::UniqueViolation),
            sqlx::Error::RowNotFound,
            sqlx::Error::Protocol("odd".into()),
        ];
        for original in &originals {
            let copy = replicate(original);
            assert_eq!(
                is_unavailable(&copy),
                is_unavailable(original),
                "{original}"
            );
            assert_eq!(copy.to_string(), original.to_string());
            if let (sqlx::Error::Database(a), sqlx::Error::Database(b)) = (original, &copy) {
                assert_eq!(a.code(), b.code());
                assert_eq!(a.kind(), b.kind());
                assert_eq!(a.constraint(), b.constraint());
            }
        }
        assert!(is_unavailable(&replicate(&originals[4])));
        assert!(!is_unavailable(&replicate(&originals[6])));
    }
}
