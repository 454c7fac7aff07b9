//! Templates and their immutable versions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::TemplateId;
use uuid::Uuid;

use crate::Result;
use crate::schema::{template_versions, templates};

/// A template to create with its first version.
#[derive(Debug, Clone)]
pub struct NewTemplate {
    /// The new template's id.
    pub id: TemplateId,
    /// Unique key.
    pub key: String,
    /// Category.
    pub category: String,
    /// Free text.
    pub description: String,
    /// Parts per channel as JSON (`{"email": {...}}`).
    pub content: serde_json::Value,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// The admin creating it.
    pub created_by: String,
}

/// One version of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRecord {
    /// The template's id.
    pub id: TemplateId,
    /// Unique key.
    pub key: String,
    /// Category.
    pub category: String,
    /// Free text.
    pub description: String,
    /// This version's number.
    pub version: i32,
    /// The version submits use by default.
    pub active_version: i32,
    /// Parts per channel.
    pub content: serde_json::Value,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// Who created this version.
    pub created_by: String,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

type RecordColumns = (
    templates::id,
    templates::key,
    templates::category,
    templates::description,
    template_versions::version,
    templates::active_version,
    template_versions::content,
    template_versions::parameters,
    template_versions::created_by,
    template_versions::created_at,
);

const RECORD_COLUMNS: RecordColumns = (
    templates::id,
    templates::key,
    templates::category,
    templates::description,
    template_versions::version,
    templates::active_version,
    template_versions::content,
    template_versions::parameters,
    template_versions::created_by,
    template_versions::created_at,
);

type RecordRow = (
    Uuid,
    String,
    String,
    String,
    i32,
    i32,
    serde_json::Value,
    Vec<String>,
    String,
    DateTime<Utc>,
);

fn record(
    (
        id,
        key,
        category,
        description,
        version,
        active_version,
        content,
        parameters,
        created_by,
        created_at,
    ): RecordRow,
) -> TemplateRecord {
    TemplateRecord {
        id: id.into(),
        key,
        category,
        description,
        version,
        active_version,
        content,
        parameters,
        created_by,
        created_at,
    }
}

/// Creates a template and its version 1 (active) in one transaction. A taken key is
/// `Error::Conflict { constraint: "templates_key_unique" }`.
pub async fn create(
    connection: &mut AsyncPgConnection,
    new: NewTemplate,
) -> Result<TemplateRecord> {
    let key = new.key.clone();
    connection
        .transaction::<_, crate::Error, _>(async |connection| {
            diesel::insert_into(templates::table)
                .values((
                    templates::id.eq(new.id.as_uuid()),
                    templates::key.eq(&new.key),
                    templates::category.eq(&new.category),
                    templates::description.eq(&new.description),
                    templates::active_version.eq(1),
                    templates::created_by.eq(&new.created_by),
                ))
                .execute(connection)
                .await?;
            diesel::insert_into(template_versions::table)
                .values((
                    template_versions::template_id.eq(new.id.as_uuid()),
                    template_versions::version.eq(1),
                    template_versions::content.eq(&new.content),
                    template_versions::parameters.eq(&new.parameters),
                    template_versions::created_by.eq(&new.created_by),
                ))
                .execute(connection)
                .await?;
            Ok(())
        })
        .await?;
    find(connection, &key, None)
        .await?
        .ok_or_else(|| crate::Error::Corrupt(format!("template {key} vanished after insert")))
}

/// The template with `key` at `version`, or at its active version when `version` is `None`.
pub async fn find(
    connection: &mut AsyncPgConnection,
    key: &str,
    version: Option<i32>,
) -> Result<Option<TemplateRecord>> {
    let query = templates::table
        .inner_join(template_versions::table)
        .filter(templates::key.eq(key))
        .select(RECORD_COLUMNS)
        .into_boxed();
    let query = match version {
        Some(version) => query.filter(template_versions::version.eq(version)),
        None => query.filter(template_versions::version.eq(templates::active_version)),
    };
    Ok(query
        .first::<RecordRow>(connection)
        .await
        .optional()?
        .map(record))
}

/// Up to `limit` templates at their active versions, ordered by key, after `after_key`.
pub async fn list(
    connection: &mut AsyncPgConnection,
    after_key: Option<&str>,
    limit: i64,
) -> Result<Vec<TemplateRecord>> {
    let mut query = templates::table
        .inner_join(template_versions::table)
        .filter(template_versions::version.eq(templates::active_version))
        .select(RECORD_COLUMNS)
        .order(templates::key.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after_key) = after_key {
        query = query.filter(templates::key.gt(after_key.to_owned()));
    }
    Ok(query
        .load::<RecordRow>(connection)
        .await?
        .into_iter()
        .map(record)
        .collect())
}
