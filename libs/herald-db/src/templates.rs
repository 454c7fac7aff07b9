//! Templates and their immutable versions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{Category, TemplateId, TemplateKey, ValueError};
use herald_templates::VersionContent;
use uuid::Uuid;

use crate::Result;
use crate::schema::{template_versions, templates};

/// A template to create with its first version.
#[derive(Debug, Clone)]
pub struct NewTemplate {
    /// The new template's id.
    pub id: TemplateId,
    /// Unique key.
    pub key: TemplateKey,
    /// Category.
    pub category: Category,
    /// Free text.
    pub description: String,
    /// Parts per locale and channel, validated.
    pub content: VersionContent,
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
    pub key: TemplateKey,
    /// Parts per locale and channel, validated.
    pub content: VersionContent,
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
    pub key: TemplateKey,
    /// Category.
    pub category: Category,
    /// Free text.
    pub description: String,
    /// This version's number.
    pub version: i32,
    /// The version submits use by default.
    pub active_version: i32,
    /// Parts per locale and channel (read from either stored shape).
    pub content: VersionContent,
    /// Parameters the parts use.
    pub parameters: Vec<String>,
    /// The parameters this version was validated with, if any.
    pub sample_parameters: Option<serde_json::Value>,
    /// Who created this version.
    pub created_by: String,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

/// A template joined with one of its versions, as stored.
#[derive(Queryable, Selectable)]
#[diesel(table_name = template_versions)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct Row {
    #[diesel(select_expression = templates::id)]
    id: Uuid,
    #[diesel(select_expression = templates::key)]
    key: String,
    #[diesel(select_expression = templates::category)]
    category: String,
    #[diesel(select_expression = templates::description)]
    description: String,
    version: i32,
    #[diesel(select_expression = templates::active_version)]
    active_version: i32,
    content: serde_json::Value,
    parameters: Vec<String>,
    sample_parameters: Option<serde_json::Value>,
    created_by: String,
    created_at: DateTime<Utc>,
}

/// Stored values were validated on the way in, so one that no longer parses names its
/// template (`Error::Corrupt` through `?`).
impl TryFrom<Row> for TemplateRecord {
    type Error = ValueError;

    fn try_from(row: Row) -> std::result::Result<Self, ValueError> {
        let corrupt = |what: &str| ValueError(format!("template `{}`: {what}", row.key));
        Ok(Self {
            id: row.id.into(),
            key: TemplateKey::parse(&row.key).map_err(|error| corrupt(&error.0))?,
            category: Category::parse(&row.category).map_err(|error| corrupt(&error.0))?,
            content: VersionContent::from_stored(row.content)
                .map_err(|error| corrupt(&format!("version {}: {error}", row.version)))?,
            description: row.description,
            version: row.version,
            active_version: row.active_version,
            parameters: row.parameters,
            sample_parameters: row.sample_parameters,
            created_by: row.created_by,
            created_at: row.created_at,
        })
    }
}

/// The stored form of a version's content.
fn stored(content: &VersionContent) -> Result<serde_json::Value> {
    serde_json::to_value(content)
        .map_err(|error| crate::Error::Corrupt(format!("template content: {error}")))
}

/// Rows into records; the first that no longer parses is `Error::Corrupt`.
fn records(rows: Vec<Row>) -> Result<Vec<TemplateRecord>> {
    rows.into_iter()
        .map(|row| TemplateRecord::try_from(row).map_err(crate::Error::from))
        .collect()
}

/// Creates a template and its version 1 (active) in one transaction. A taken key is
/// `Error::TemplateKeyTaken`.
pub async fn create(
    connection: &mut AsyncPgConnection,
    new: NewTemplate,
) -> Result<TemplateRecord> {
    let key = new.key.to_string();
    let content = stored(&new.content)?;
    connection
        .transaction::<_, crate::Error, _>(async |connection| {
            diesel::insert_into(templates::table)
                .values((
                    templates::id.eq(new.id.as_uuid()),
                    templates::key.eq(new.key.as_ref()),
                    templates::category.eq(new.category.as_ref()),
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
                    template_versions::content.eq(&content),
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
        .select(Row::as_select())
        .into_boxed();
    let query = match version {
        Some(version) => query.filter(template_versions::version.eq(version)),
        None => query.filter(template_versions::version.eq(templates::active_version)),
    };
    let row = query.first::<Row>(connection).await.optional()?;
    row.map(TemplateRecord::try_from)
        .transpose()
        .map_err(crate::Error::from)
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
        .select(Row::as_select())
        .order(templates::key.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after_key) = after_key {
        query = query.filter(templates::key.gt(after_key.to_owned()));
    }
    records(query.load::<Row>(connection).await?)
}

/// Adds the next version of the template `new.key` (activating it when asked) in one
/// transaction; the template row is locked, so concurrent updates get consecutive numbers.
/// `None` when no template has that key.
pub async fn add_version(
    connection: &mut AsyncPgConnection,
    new: NewVersion,
) -> Result<Option<TemplateRecord>> {
    let content = stored(&new.content)?;
    let version = connection
        .transaction::<_, crate::Error, _>(async |connection| {
            let Some(id) = templates::table
                .filter(templates::key.eq(new.key.as_ref()))
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
                    template_versions::content.eq(&content),
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
        Some(version) => find(connection, new.key.as_ref(), Some(version)).await,
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
    let records = records(
        templates::table
            .inner_join(template_versions::table)
            .filter(templates::key.eq(key))
            .select(Row::as_select())
            .order(template_versions::version.desc())
            .load::<Row>(connection)
            .await?,
    )?;
    Ok((!records.is_empty()).then_some(records))
}
