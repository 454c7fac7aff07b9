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
    /// Parts per locale and channel as JSON (`herald_templates::VersionContent`).
    pub content: serde_json::Value,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// The parameters the version was validated with, if any.
    pub sample_parameters: Option<serde_json::Value>,
    /// The admin creating it.
    pub created_by: String,
}

/// A new version of an existing template.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The template's key.
    pub key: String,
    /// Parts per locale and channel as JSON.
    pub content: serde_json::Value,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// The parameters the version was validated with.
    pub sample_parameters: Option<serde_json::Value>,
    /// The admin creating it.
    pub created_by: String,
    /// Whether the new version becomes the active one.
    pub activate: bool,
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
    /// Parts per locale and channel (either stored shape; see `VersionContent::from_stored`).
    pub content: serde_json::Value,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// The parameters this version was validated with, if any.
    pub sample_parameters: Option<serde_json::Value>,
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
    template_versions::sample_parameters,
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
    template_versions::sample_parameters,
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
    Option<serde_json::Value>,
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
        sample_parameters,
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
        sample_parameters,
        created_by,
        created_at,
    }
}

/// Creates a template and its version 1 (active) in one transaction. A taken key is
/// `Error::TemplateKeyTaken`.
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
                    template_versions::sample_parameters.eq(&new.sample_parameters),
                    template_versions::created_by.eq(&new.created_by),
                ))
                .execute(connection)
                .await?;
            Ok(())
        })
        .await
        .map_err(|error| match error {
            crate::Error::Conflict { constraint } if constraint == "templates_key_unique" => {
                crate::Error::TemplateKeyTaken { key: key.clone() }
            }
            other => other,
        })?;
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

/// Adds the next version of the template `new.key` (activating it when asked) in one
/// transaction; the template row is locked, so concurrent updates get consecutive numbers.
/// `None` when no template has that key.
pub async fn add_version(
    connection: &mut AsyncPgConnection,
    new: NewVersion,
) -> Result<Option<TemplateRecord>> {
    let version = connection
        .transaction::<_, crate::Error, _>(async |connection| {
            let Some(id) = templates::table
                .filter(templates::key.eq(&new.key))
                .select(templates::id)
                .for_update()
                .first::<Uuid>(connection)
                .await
                .optional()?
            else {
                return Ok(None);
            };
            let latest: Option<i32> = template_versions::table
                .filter(template_versions::template_id.eq(id))
                .select(diesel::dsl::max(template_versions::version))
                .first(connection)
                .await?;
            let version = latest.unwrap_or(0) + 1;
            diesel::insert_into(template_versions::table)
                .values((
                    template_versions::template_id.eq(id),
                    template_versions::version.eq(version),
                    template_versions::content.eq(&new.content),
                    template_versions::parameters.eq(&new.parameters),
                    template_versions::sample_parameters.eq(&new.sample_parameters),
                    template_versions::created_by.eq(&new.created_by),
                ))
                .execute(connection)
                .await?;
            if new.activate {
                set_active(connection, id, version).await?;
            }
            Ok(Some(version))
        })
        .await?;
    match version {
        Some(version) => find(connection, &new.key, Some(version)).await,
        None => Ok(None),
    }
}

/// Makes `version` the active version of the template `key` and returns it; `None` when the
/// template or the version does not exist.
pub async fn activate(
    connection: &mut AsyncPgConnection,
    key: &str,
    version: i32,
) -> Result<Option<TemplateRecord>> {
    let Some(record) = find(connection, key, Some(version)).await? else {
        return Ok(None);
    };
    set_active(connection, *record.id.as_uuid(), version).await?;
    find(connection, key, Some(version)).await
}

async fn set_active(connection: &mut AsyncPgConnection, id: Uuid, version: i32) -> Result<()> {
    diesel::update(templates::table.filter(templates::id.eq(id)))
        .set((
            templates::active_version.eq(version),
            templates::updated_at.eq(Utc::now()),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

/// Every version of the template `key`, newest first; `None` when no template has that key.
pub async fn list_versions(
    connection: &mut AsyncPgConnection,
    key: &str,
) -> Result<Option<Vec<TemplateRecord>>> {
    let records: Vec<TemplateRecord> = templates::table
        .inner_join(template_versions::table)
        .filter(templates::key.eq(key))
        .select(RECORD_COLUMNS)
        .order(template_versions::version.desc())
        .load::<RecordRow>(connection)
        .await?
        .into_iter()
        .map(record)
        .collect();
    Ok((!records.is_empty()).then_some(records))
}
