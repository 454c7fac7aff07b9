//! `herald.template.v1.TemplateService`. Writes need the admin role; submitters may read.

use herald_db::templates::{self, NewTemplate, TemplateRecord};
use herald_domain::{Category, Role, TemplateId, TemplateKey};
use herald_proto::conversions;
use herald_proto::template::{
    self as pb, CreateTemplateRequest, GetTemplateRequest, ListTemplatesRequest,
    ListTemplatesResponse, template_service_server::TemplateService,
};
use herald_templates::{EmailPart, TemplateContent};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::auth::{Caller, caller};
use crate::error::{Result, ServiceError};

const MAX_DESCRIPTION: usize = 1000;
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 100;

pub(crate) struct TemplateApi {
    state: AppState,
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
        let content = content_from_proto(request.content);
        let parameters = herald_templates::validate(&content)
            .map_err(|error| ServiceError::InvalidArgument(format!("content.{error}")))?;
        let content_json = serde_json::to_value(&content)
            .map_err(|error| herald_db::Error::Corrupt(format!("template content: {error}")))?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = templates::create(
            &mut connection,
            NewTemplate {
                id: TemplateId::generate(),
                key: key.to_string(),
                category: category.to_string(),
                description: request.description,
                content: content_json,
                parameters,
                created_by: caller.identity.to_string(),
            },
        )
        .await
        .map_err(|error| match error {
            herald_db::Error::Conflict { constraint } if constraint == "templates_key_unique" => {
                ServiceError::AlreadyExists(format!("key: a template named `{key}` already exists"))
            }
            other => other.into(),
        })?;
        tracing::info!(template.key = %key, caller = %caller.identity, "Template created.");
        template_message(record)
    }

    async fn get(&self, request: GetTemplateRequest) -> Result<pb::Template> {
        let key = TemplateKey::parse(&request.key)
            .map_err(|error| ServiceError::invalid("key", error))?;
        let version = request
            .version
            .map(|version| {
                i32::try_from(version)
                    .ok()
                    .filter(|version| *version >= 1)
                    .ok_or_else(|| ServiceError::invalid("version", "must be at least 1"))
            })
            .transpose()?;
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
                .map(|record| hex::encode(&record.key))
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

fn content_from_proto(content: Option<pb::TemplateContent>) -> TemplateContent {
    let content = content.unwrap_or_default();
    TemplateContent {
        email: content.email.map(|email| EmailPart {
            subject: email.subject,
            html: email.html,
            text: email.text,
        }),
    }
}

fn template_message(record: TemplateRecord) -> Result<pb::Template> {
    let content: TemplateContent = serde_json::from_value(record.content)
        .map_err(|error| herald_db::Error::Corrupt(format!("template content: {error}")))?;
    Ok(pb::Template {
        key: record.key,
        category: record.category,
        description: record.description,
        version: u32::try_from(record.version).unwrap_or_default(),
        content: Some(pb::TemplateContent {
            email: content.email.map(|email| pb::EmailPart {
                subject: email.subject,
                html: email.html,
                text: email.text,
            }),
        }),
        parameters: record.parameters,
        created_by: record.created_by,
        created_at: Some(conversions::timestamp(record.created_at)),
    })
}

#[tonic::async_trait]
impl TemplateService for TemplateApi {
    #[tracing::instrument(name = "herald.template.v1.TemplateService/CreateTemplate", skip_all)]
    async fn create_template(
        &self,
        request: Request<CreateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let caller = caller(&request)?;
        caller.require(Role::Admin, "CreateTemplate")?;
        Ok(Response::new(
            self.create(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(name = "herald.template.v1.TemplateService/GetTemplate", skip_all)]
    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        caller(&request)?.require(Role::Submit, "GetTemplate")?;
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    #[tracing::instrument(name = "herald.template.v1.TemplateService/ListTemplates", skip_all)]
    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        caller(&request)?.require(Role::Submit, "ListTemplates")?;
        Ok(Response::new(self.list(request.into_inner()).await?))
    }
}
