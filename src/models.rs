//! One model file per table: the row types and the queries on them, taking `&mut DbConnection`.

pub mod admin_generation;
pub mod machine;
pub mod refresh_token;
pub mod user;

/// Now, as stored: UTC without a zone, truncated to microseconds, the precision both
/// backends keep, so a value read back equals the value written.
pub fn now() -> chrono::NaiveDateTime {
    let micros = chrono::Utc::now().timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .naive_utc()
}

/// Whether a query failed on a foreign key (a row for a user deleted meanwhile).
pub fn is_foreign_key_violation(err: &diesel::result::Error) -> bool {
    matches!(
        err,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _
        )
    )
}

/// Whether a query failed on a unique constraint (a duplicate email or machine name).
pub fn is_unique_violation(err: &diesel::result::Error) -> bool {
    matches!(
        err,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}
