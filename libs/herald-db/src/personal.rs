//! Personal data as its columns hold it: one type per kind of value, and every repository
//! reads and writes those columns through them.
//!
//! - `PersonalText`: a value a person can be reached or identified by: a delivery's address
//!   (email, phone number), a user's email and phone, an inbox item's title, body and link, an
//!   event's detail (a clicked URL, a provider's answer).
//! - `PersonalJson`: structured values about a person: template parameters, caller metadata,
//!   a user's device tokens.
//!
//! Both are encrypted at rest: their columns are `bytea`, holding what
//! `herald_crypto::Cipher::seal` writes (envelope encryption under the process's keyring,
//! with the key id beside each value). Values written before encryption (the migration marks
//! them `PLAINTEXT`) still read; `herald-api-server keys rotate` seals them. `Debug` never
//! shows the value, so a record that holds one can be logged by mistake without leaking it;
//! `expose` is the one way in.

pub mod keys;

use std::fmt;
use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Bytea;

/// Personal text: an address, a phone number, an inbox item's content.
#[derive(Clone, Default, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Bytea)]
pub struct PersonalText(String);

/// Borrowed personal text, for writing a value without copying it.
#[derive(Clone, Copy)]
pub(crate) struct PersonalStr<'a>(pub(crate) &'a str);

/// Personal JSON: template parameters, caller metadata, device tokens.
#[derive(Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Bytea)]
pub struct PersonalJson(serde_json::Value);

impl PersonalText {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: for sending it, or for showing it to someone allowed to see it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value itself, owned.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl PersonalJson {
    /// Wraps `value`.
    pub fn new(value: serde_json::Value) -> Self {
        Self(value)
    }

    /// The value itself: for rendering with it, or for showing it to someone allowed to see it.
    pub fn expose(&self) -> &serde_json::Value {
        &self.0
    }

    /// The value itself, owned.
    pub fn into_inner(self) -> serde_json::Value {
        self.0
    }
}

impl From<&str> for PersonalText {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for PersonalText {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<serde_json::Value> for PersonalJson {
    fn from(value: serde_json::Value) -> Self {
        Self(value)
    }
}

impl fmt::Debug for PersonalText {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PersonalText(<redacted>)")
    }
}

impl fmt::Debug for PersonalStr<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PersonalStr(<redacted>)")
    }
}

impl fmt::Debug for PersonalJson {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PersonalJson(<redacted>)")
    }
}

/// A personal value as a batch reads it: opened, or why it did not open (its key is not
/// configured, or it was altered). Reading a batch of rows through it makes such a value fail
/// its own row only, never the statement that read the batch.
#[derive(Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Bytea)]
pub(crate) enum Readable<T> {
    /// The value.
    Open(T),
    /// Why it did not open.
    Unreadable(String),
}

impl<T> Readable<T> {
    /// The value, or a `ValueError` naming `column` and why it did not open.
    pub(crate) fn into_result(self, column: &str) -> Result<T, herald_domain::ValueError> {
        match self {
            Self::Open(value) => Ok(value),
            Self::Unreadable(why) => Err(herald_domain::ValueError(format!(
                "{column} does not open: {why}"
            ))),
        }
    }
}

impl<T> fmt::Debug for Readable<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(_) => formatter.write_str("Readable::Open(<redacted>)"),
            Self::Unreadable(why) => write!(formatter, "Readable::Unreadable({why})"),
        }
    }
}

impl<T> FromSql<Bytea, Pg> for Readable<T>
where
    T: FromSql<Bytea, Pg>,
{
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(match T::from_sql(bytes) {
            Ok(value) => Self::Open(value),
            Err(error) => Self::Unreadable(error.to_string()),
        })
    }
}

impl<T> ToSql<Bytea, Pg> for Readable<T>
where
    T: ToSql<Bytea, Pg>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        match self {
            Self::Open(value) => value.to_sql(out),
            Self::Unreadable(_) => Err("a value that did not open is never written back".into()),
        }
    }
}

/// Writes `plaintext` sealed under the process's keyring.
fn seal(plaintext: &[u8], out: &mut Output<'_, '_, Pg>) -> serialize::Result {
    let sealed = herald_crypto::keyring()?.cipher().seal(plaintext)?;
    out.write_all(&sealed)?;
    Ok(IsNull::No)
}

/// Opens a stored value with the process's keyring.
fn open(stored: PgValue<'_>) -> deserialize::Result<Vec<u8>> {
    Ok(herald_crypto::keyring()?.cipher().open(stored.as_bytes())?)
}

impl ToSql<Bytea, Pg> for PersonalText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        seal(self.0.as_bytes(), out)
    }
}

impl ToSql<Bytea, Pg> for PersonalStr<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        seal(self.0.as_bytes(), out)
    }
}

impl FromSql<Bytea, Pg> for PersonalText {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(Self(String::from_utf8(open(bytes)?)?))
    }
}

impl ToSql<Bytea, Pg> for PersonalJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        seal(&serde_json::to_vec(&self.0)?, out)
    }
}

impl FromSql<Bytea, Pg> for PersonalJson {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(Self(serde_json::from_slice(&open(bytes)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::{PersonalJson, PersonalText};

    #[test]
    fn debug_output_never_shows_the_value() {
        let address = PersonalText::new("ada@example.com");
        let parameters = PersonalJson::new(serde_json::json!({"name": "Ada"}));
        let shown = format!("{address:?} {parameters:?} {:?}", Some(&address));
        assert!(!shown.contains("ada") && !shown.contains("Ada"), "{shown}");
        assert_eq!(address.expose(), "ada@example.com");
        assert_eq!(parameters.expose()["name"], "Ada");
    }
}
