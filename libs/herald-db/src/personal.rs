//! Personal data as its columns hold it: one type per kind of value, and every repository
//! reads and writes those columns through them.
//!
//! - `PersonalText`: a value a person can be reached or identified by: a delivery's address
//!   (email, phone number), a user's email and phone, an inbox item's title, body and link.
//! - `PersonalJson`: structured values about a person: template parameters, caller metadata,
//!   a user's device tokens.
//!
//! Both store the value as it is today (`text`, `jsonb`). Encrypting these columns at rest
//! (ciphertext and a key id instead of the value) changes these two types and the columns'
//! SQL types, not the repositories' callers. `Debug` never shows the value, so a record that
//! holds one can be logged by mistake without leaking it; `expose` is the one way in.

use std::fmt;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Jsonb, Text};

/// Personal text: an address, a phone number, an inbox item's content.
#[derive(Clone, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct PersonalText(String);

/// Personal JSON: template parameters, caller metadata, device tokens.
#[derive(Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
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

impl fmt::Debug for PersonalJson {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PersonalJson(<redacted>)")
    }
}

impl ToSql<Text, Pg> for PersonalText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.0.as_str(), out)
    }
}

impl FromSql<Text, Pg> for PersonalText {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <String as FromSql<Text, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Jsonb, Pg> for PersonalJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <serde_json::Value as ToSql<Jsonb, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Jsonb, Pg> for PersonalJson {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<Jsonb, Pg>>::from_sql(bytes).map(Self)
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
