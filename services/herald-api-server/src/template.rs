//! `herald.template.v1.TemplateService`. Writes (create, update, activate) need
//! `templates.write`; reads (get, list, versions, preview) need `templates.read`, which
//! submitters hold, so they can check keys, parameters and rendered output before sending.

use std::collections::HashMap;

use herald_db::templates::{self, NewTemplate, NewVersion, TemplateRecord};
use herald_db::variants::VariantCounts;
use herald_domain::{Category, TemplateId, TemplateKey};
use herald_proto::conversions::{self, channel_from_i32};
use herald_proto::template::{
    self as pb, ActivateVersionRequest, CreateTemplateRequest, GetTemplateRequest,
    GetVariantStatsRequest, GetVariantStatsResponse, ListTemplatesRequest, ListTemplatesResponse,
    ListVersionsRequest, ListVersionsResponse, RenderPreviewRequest, RenderPreviewResponse,
    UpdateTemplateRequest, template_service_server::TemplateService,
};
use herald_templates::{Locale, VersionContent, VersionError};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::auth::{Caller, parts};
use crate::error::{Result, ServiceError, respond};
use stats::variant_stats_message;

mod stats;

const MAX_DESCRIPTION: usize = 1000;
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 100;

pub(crate) struct TemplateApi {
    state: AppState,
}

/// A version's content from a request, checked and with its parameters inferred.
struct ValidVersion {
    content: VersionContent,
    parameters: Vec<String>,
    sample_parameters: Option<serde_json::Value>,
}

impl TemplateApi {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn create(
        &self,
        caller: &Caller,
        request: CreateTemplateRequest,
    ) -> Result<pb::Template> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let category = Category::parse(&request.category)
            .map_err(|error| ServiceError::invalid("category", error))?;
        if request.description.chars().count() > MAX_DESCRIPTION {
            return Err(ServiceError::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
        crate::fields::text("description", &request.description)?;
        let version = valid_version(
            request.content,
            &request.default_locale,
            request.locales,
            request.sample_parameters,
            &self.state.settings.inbox.action_url_schemes,
        )?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::create(
            &mut connection,
            NewTemplate {
                id: TemplateId::generate(),
                key: key.clone(),
                category,
                description: request.description,
                content: version.content,
                parameters: version.parameters,
                sample_parameters: version.sample_parameters,
                created_by: caller.identity.to_string(),
            },
        )
        .await
        .map_err(|error| match error {
            herald_db::Error::TemplateKeyTaken { key } => {
                ServiceError::AlreadyExists(format!("key: a template named `{key}` already exists"))
            }
            other => other.into(),
        })?;
        tracing::info!(template.key = %key, caller = %caller.identity, "Template created.");
        template_message(record)
    }

    async fn update(
        &self,
        caller: &Caller,
        request: UpdateTemplateRequest,
    ) -> Result<pb::Template> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        if request.sample_parameters.is_none() {
            return Err(ServiceError::invalid(
                "sample_parameters",
                "is required: every part of every locale must render with it",
            ));
        }
        let version = valid_version(
            request.content,
            &request.default_locale,
            request.locales,
            request.sample_parameters,
            &self.state.settings.inbox.action_url_schemes,
        )?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::add_version(
            &mut connection,
            NewVersion {
                key: key.clone(),
                content: version.content,
                parameters: version.parameters,
                sample_parameters: version.sample_parameters,
                created_by: caller.identity.to_string(),
                activate: request.activate,
            },
        )
        .await?
        .ok_or_else(|| not_found(&key))?;
        // This replica's submits see the change at once; the others when the trigger's
        // notification reaches them.
        self.state.templates.invalidate(key.as_ref());
        tracing::info!(
            template.key = %key,
            template.version = record.version,
            activated = request.activate,
            caller = %caller.identity,
            "Template version created."
        );
        template_message(record)
    }

    async fn activate(
        &self,
        caller: &Caller,
        request: ActivateVersionRequest,
    ) -> Result<pb::Template> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let version = version_number(Some(request.version))?
            .ok_or_else(|| ServiceError::invalid("version", "must be at least 1"))?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::find(&mut connection, key.as_ref(), Some(version))
            .await?
            .ok_or_else(|| not_found_version(&key, version))?;
        // Versions are validated before they are saved; this re-check covers versions stored
        // before sample parameters existed (they are compiled only) and guards the rule that
        // a version with a missing parameter is never made active.
        record
            .content
            .validate(record.sample_parameters.as_ref())
            .and_then(|_| {
                record.content.check_action_urls(
                    record.sample_parameters.as_ref(),
                    &self.state.settings.inbox.action_url_schemes,
                )
            })
            .map_err(|error| {
                ServiceError::FailedPrecondition(format!(
                    "version: version {version} of `{key}` cannot be activated: {error}"
                ))
            })?;
        let record = templates::activate(&mut connection, key.as_ref(), version)
            .await?
            .ok_or_else(|| not_found_version(&key, version))?;
        self.state.templates.invalidate(key.as_ref());
        tracing::info!(
            template.key = %key,
            template.version = version,
            caller = %caller.identity,
            "Template version activated."
        );
        template_message(record)
    }

    async fn versions(&self, request: ListVersionsRequest) -> Result<ListVersionsResponse> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let records = templates::list_versions(&mut connection, key.as_ref())
            .await?
            .ok_or_else(|| not_found(&key))?;
        Ok(ListVersionsResponse {
            versions: records
                .into_iter()
                .map(template_message)
                .collect::<Result<_>>()?,
        })
    }

    async fn preview(&self, request: RenderPreviewRequest) -> Result<RenderPreviewResponse> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let version = version_number(request.version)?;
        let locale = optional_locale(&request.locale)
            .map_err(|error| ServiceError::invalid("locale", error))?;
        let channel = channel_from_i32(request.channel)
            .map_err(|error| ServiceError::invalid("channel", error))?;
        let parameters = parameters_json("parameters", request.parameters.unwrap_or_default())?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::find(&mut connection, key.as_ref(), version)
            .await?
            .ok_or_else(|| match version {
                Some(version) => not_found_version(&key, version),
                None => not_found(&key),
            })?;
        let variant = (!request.variant.is_empty()).then_some(request.variant.as_str());
        let (used, rendered) = record
            .content
            .render_variant(locale.as_ref(), channel, variant, &parameters)
            .map_err(|error| match error {
                VersionError::NoPart { channel } => ServiceError::FailedPrecondition(format!(
                    "channel: version {} of `{key}` has no {channel} part",
                    record.version
                )),
                error @ VersionError::NoVariant { .. } => {
                    ServiceError::InvalidArgument(format!("{error} (version {})", record.version))
                }
                error @ VersionError::Part { .. } => ServiceError::invalid("parameters", error),
                other => herald_db::Error::Corrupt(format!("template content: {other}")).into(),
            })?;
        Ok(RenderPreviewResponse {
            version: u32::try_from(record.version).unwrap_or_default(),
            locale: used.to_string(),
            rendered: Some(rendered.into()),
            variant: request.variant,
        })
    }

    /// Per version and variant: the counts of one aggregate query, laid out in the variants'
    /// order (zeros for variants without deliveries), with rates and z-tests against the
    /// control (the version's first variant).
    async fn variant_stats(
        &self,
        request: GetVariantStatsRequest,
    ) -> Result<GetVariantStatsResponse> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let version = version_number(request.version)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let records = match version {
            Some(version) => vec![
                templates::find(&mut connection, key.as_ref(), Some(version))
                    .await?
                    .ok_or_else(|| not_found_version(&key, version))?,
            ],
            None => templates::list_versions(&mut connection, key.as_ref())
                .await?
                .ok_or_else(|| not_found(&key))?,
        };
        let mut counts: HashMap<(i32, String), VariantCounts> =
            herald_db::variants::counts(&mut connection, key.as_ref(), version)
                .await?
                .into_iter()
                .map(|counts| ((counts.version, counts.variant.clone()), counts))
                .collect();
        let mut variants = Vec::new();
        for record in records {
            let rows: Vec<VariantCounts> = record
                .content
                .variant_names()
                .into_iter()
                .map(|name| {
                    counts
                        .remove(&(record.version, name.to_owned()))
                        .unwrap_or_else(|| VariantCounts {
                            version: record.version,
                            variant: name.to_owned(),
                            sent: 0,
                            delivered: 0,
                            opened: 0,
                            clicked: 0,
                        })
                })
                .collect();
            let Some(control) = rows.first().cloned() else {
                continue;
            };
            variants.extend(
                rows.into_iter().enumerate().map(|(index, row)| {
                    variant_stats_message(row, (index > 0).then_some(&control))
                }),
            );
        }
        if variants.is_empty() {
            return Err(ServiceError::FailedPrecondition(match version {
                Some(version) => format!("version: version {version} of `{key}` has no variants"),
                None => format!("key: no version of `{key}` has variants"),
            }));
        }
        Ok(GetVariantStatsResponse { variants })
    }

    async fn get(&self, request: GetTemplateRequest) -> Result<pb::Template> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let version = version_number(request.version)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::find(&mut connection, key.as_ref(), version)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!("key: no template named `{key}` at that version"))
            })?;
        template_message(record)
    }

    async fn list(&self, request: ListTemplatesRequest) -> Result<ListTemplatesResponse> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size <= MAX_PAGE_SIZE => size,
            _ => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ));
            }
        };
        let after_key = if request.page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(&request.page_token).map_err(|_| {
                ServiceError::invalid("page_token", "is not a token this server issued")
            })?;
            Some(String::from_utf8(bytes).map_err(|_| {
                ServiceError::invalid("page_token", "is not a token this server issued")
            })?)
        };
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let mut records = templates::list(
            &mut connection,
            after_key.as_deref(),
            i64::from(page_size) + 1,
        )
        .await?;
        let next_page_token = if records.len() > page_size as usize {
            records.truncate(page_size as usize);
            records
                .last()
                .map(|record| hex::encode(record.key.as_ref()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListTemplatesResponse {
            templates: records
                .into_iter()
                .map(template_message)
                .collect::<Result<_>>()?,
            next_page_token,
        })
    }
}

fn not_found(key: &TemplateKey) -> ServiceError {
    ServiceError::NotFound(format!("key: no template named `{key}`"))
}

fn not_found_version(key: &TemplateKey, version: i32) -> ServiceError {
    ServiceError::NotFound(format!(
        "version: template `{key}` has no version {version}"
    ))
}

fn version_number(version: Option<u32>) -> Result<Option<i32>> {
    version
        .map(|version| {
            i32::try_from(version)
                .ok()
                .filter(|version| *version >= 1)
                .ok_or_else(|| ServiceError::invalid("version", "must be at least 1"))
        })
        .transpose()
}

fn optional_locale(tag: &str) -> Result<Option<Locale>, herald_templates::LocaleError> {
    (!tag.is_empty()).then(|| Locale::parse(tag)).transpose()
}

fn parameters_json(field: &str, parameters: prost_types::Struct) -> Result<serde_json::Value> {
    let object = conversions::struct_to_json(parameters);
    herald_templates::check_parameters(field, &object)
        .map_err(|error| ServiceError::InvalidArgument(error.to_string()))?;
    crate::fields::object_text(field, &object)?;
    Ok(serde_json::Value::Object(object))
}

/// Builds a version from a create or update request and validates all of it before anything
/// is written: locale tags, the default locale, every part of every locale (compiled, and
/// rendered strictly with the sample parameters when given). The legacy single `content`
/// field is the default locale's content, and errors in it are reported as `content.…`.
fn valid_version(
    content: Option<pb::TemplateContent>,
    default_locale: &str,
    locales: HashMap<String, pb::TemplateContent>,
    sample_parameters: Option<prost_types::Struct>,
    action_url_schemes: &[String],
) -> Result<ValidVersion> {
    let default_locale = if default_locale.is_empty() {
        Locale::parse(herald_templates::DEFAULT_LOCALE)
    } else {
        Locale::parse(default_locale)
    }
    .map_err(|error| ServiceError::invalid("default_locale", error))?;
    let mut version = VersionContent {
        default_locale: default_locale.clone(),
        locales: Default::default(),
    };
    for (tag, content) in locales {
        let locale = Locale::parse(&tag)
            .map_err(|error| ServiceError::invalid(&format!("locales[{tag}]"), error))?;
        if version.locales.contains_key(&locale) {
            return Err(ServiceError::invalid(
                &format!("locales[{tag}]"),
                format!("is the same locale as another entry (`{locale}`)"),
            ));
        }
        version.locales.insert(locale, content.into());
    }
    let legacy = content.is_some() || version.locales.is_empty();
    if legacy {
        if version.locales.contains_key(&default_locale) {
            return Err(ServiceError::invalid(
                "content",
                format!(
                    "is the default locale's content, which locales[{default_locale}] also gives; give it once"
                ),
            ));
        }
        version
            .locales
            .insert(default_locale.clone(), content.unwrap_or_default().into());
    }
    let sample_parameters = sample_parameters
        .map(|samples| parameters_json("sample_parameters", samples))
        .transpose()?;
    let invalid = |error| match error {
        VersionError::Part { locale, error } if legacy && locale == default_locale => {
            ServiceError::InvalidArgument(format!("content.{error}"))
        }
        other => ServiceError::InvalidArgument(other.to_string()),
    };
    let parameters = version
        .validate(sample_parameters.as_ref())
        .map_err(invalid)?;
    version
        .check_action_urls(sample_parameters.as_ref(), action_url_schemes)
        .map_err(invalid)?;
    Ok(ValidVersion {
        content: version,
        parameters,
        sample_parameters,
    })
}

fn template_message(record: TemplateRecord) -> Result<pb::Template> {
    let version = record.content;
    let default_content = version.default_content().cloned().map(Into::into);
    Ok(pb::Template {
        key: record.key.to_string(),
        category: record.category.to_string(),
        description: record.description,
        version: u32::try_from(record.version).unwrap_or_default(),
        content: default_content,
        parameters: record.parameters,
        created_by: record.created_by,
        created_at: Some(conversions::timestamp(record.created_at)),
        default_locale: version.default_locale.to_string(),
        locales: version
            .locales
            .into_iter()
            .map(|(locale, content)| (locale.to_string(), content.into()))
            .collect(),
        sample_parameters: record
            .sample_parameters
            .as_ref()
            .and_then(serde_json::Value::as_object)
            .map(conversions::json_to_struct),
        active_version: u32::try_from(record.active_version).unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl TemplateService for TemplateApi {
    async fn create_template(
        &self,
        request: Request<CreateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.create(&caller, request).await)
    }

    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        respond(self.get(request.into_inner()).await)
    }

    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        respond(self.list(request.into_inner()).await)
    }

    async fn update_template(
        &self,
        request: Request<UpdateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.update(&caller, request).await)
    }

    async fn activate_version(
        &self,
        request: Request<ActivateVersionRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.activate(&caller, request).await)
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        respond(self.versions(request.into_inner()).await)
    }

    async fn get_variant_stats(
        &self,
        request: Request<GetVariantStatsRequest>,
    ) -> Result<Response<GetVariantStatsResponse>, Status> {
        respond(self.variant_stats(request.into_inner()).await)
    }

    async fn render_preview(
        &self,
        request: Request<RenderPreviewRequest>,
    ) -> Result<Response<RenderPreviewResponse>, Status> {
        respond(self.preview(request.into_inner()).await)
    }
}
