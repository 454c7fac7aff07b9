//! The template a bench submits: read, or created with the admin certificate when missing.

use anyhow::Context as _;
use herald_proto::template::template_service_client::TemplateServiceClient;
use herald_proto::template::{
    CreateTemplateRequest, EmailPart, GetTemplateRequest, Template, TemplateContent,
};
use herald_tls::ClientCertificates;
use tonic::transport::Channel;

use crate::cli::{BenchTemplateArgs, ConnectionArgs};
use crate::client::{connect, rpc_error};

/// The template the bench creates when `--template` does not exist. `n` and `run` are filled
/// per notification so that every rendered email differs.
const SUBJECT: &str = "Herald bench {{run}} #{{n}}";
const HTML: &str = "<p>Herald bench notification <b>{{n}}</b> of run {{run}}.</p>";
const TEXT: &str = "Herald bench notification {{n}} of run {{run}}.";

/// Reads the template, creating it with the admin certificate when it does not exist yet.
/// Fails when it cannot be used for email.
pub(super) async fn ensure_template(
    source: &BenchTemplateArgs,
    connection: &ConnectionArgs,
    channels: &[Channel],
) -> anyhow::Result<Template> {
    let channel = channels.first().context("no connection to the server")?;
    let mut reader = TemplateServiceClient::new(channel.clone());
    let existing = reader
        .get_template(GetTemplateRequest {
            key: source.key.clone(),
            version: None,
        })
        .await;
    let template = match existing {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            create_template(source, connection, &mut reader).await?
        }
        Err(status) => {
            return Err(rpc_error(&status))
                .with_context(|| format!("reading template `{}`", source.key));
        }
    };
    if template
        .content
        .as_ref()
        .and_then(|content| content.email.as_ref())
        .is_none()
    {
        anyhow::bail!(
            "template `{}` has no email part, but the bench sends email",
            template.key
        );
    }
    Ok(template)
}

pub(super) async fn create_template(
    source: &BenchTemplateArgs,
    connection: &ConnectionArgs,
    reader: &mut TemplateServiceClient<Channel>,
) -> anyhow::Result<Template> {
    let admin = ClientCertificates {
        ca: connection.ca.clone(),
        cert: source.admin_cert.clone(),
        key: source.admin_key.clone(),
    };
    let mut admin_client = TemplateServiceClient::new(
        connect(connection, &admin)
            .await
            .context("connecting with the admin certificate to create the bench template")?,
    );
    let request = CreateTemplateRequest {
        key: source.key.clone(),
        category: source.category.clone(),
        description: "Created by herald-cli bench.".to_owned(),
        content: Some(TemplateContent {
            email: Some(EmailPart {
                subject: SUBJECT.to_owned(),
                html: HTML.to_owned(),
                text: TEXT.to_owned(),
            }),
            ..TemplateContent::default()
        }),
        ..CreateTemplateRequest::default()
    };
    match admin_client.create_template(request).await {
        Ok(response) => {
            eprintln!("Created template `{}`.", source.key);
            Ok(response.into_inner())
        }
        // Someone else created it between our read and our create; theirs is as good.
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(reader
            .get_template(GetTemplateRequest {
                key: source.key.clone(),
                version: None,
            })
            .await
            .map_err(|status| rpc_error(&status))
            .with_context(|| format!("reading template `{}`", source.key))?
            .into_inner()),
        Err(status) => {
            Err(rpc_error(&status)).with_context(|| format!("creating template `{}`", source.key))
        }
    }
}
