//! `template create`, `get`, `list`, `update`, `activate`, `versions` and `preview`.

use anyhow::Context as _;
use herald_proto::common::Channel as WireChannel;
use herald_proto::template::template_service_client::TemplateServiceClient;
use herald_proto::template::{
    ActivateVersionRequest, CreateTemplateRequest, EmailPart, GetTemplateRequest,
    ListTemplatesRequest, ListVersionsRequest, RenderPreviewRequest, RenderPreviewResponse,
    Template, TemplateContent, UpdateTemplateRequest,
};

use crate::Outcome;
use crate::cli::{ConnectionArgs, TemplateCommand};
use crate::client::{connect, rpc_error};
use crate::display;

/// Runs one template subcommand.
pub(crate) async fn run(
    command: &TemplateCommand,
    connection: &ConnectionArgs,
) -> anyhow::Result<Outcome> {
    let mut client =
        TemplateServiceClient::new(connect(connection, &connection.certificates()).await?);
    match command {
        TemplateCommand::Create(args) => create(&mut client, args).await?,
        TemplateCommand::Get(args) => {
            let template = client
                .get_template(GetTemplateRequest {
                    key: args.key.clone(),
                    version: args.version,
                })
                .await
                .map_err(|status| rpc_error(&status))
                .with_context(|| format!("reading template `{}`", args.key))?
                .into_inner();
            print_one(&template, args.json)?;
        }
        TemplateCommand::List(args) => print_list(&list_all(&mut client).await?, args.json)?,
        TemplateCommand::Update(args) => {
            let template = client
                .update_template(UpdateTemplateRequest {
                    key: args.key.clone(),
                    content: Some(email_content(&args.email)),
                    sample_parameters: Some(samples(&args.email.samples).unwrap_or_default()),
                    activate: args.activate,
                    ..UpdateTemplateRequest::default()
                })
                .await
                .map_err(|status| rpc_error(&status))
                .with_context(|| format!("updating template `{}`", args.key))?
                .into_inner();
            print_one(&template, args.json)?;
        }
        TemplateCommand::Activate(args) => {
            let template = client
                .activate_version(ActivateVersionRequest {
                    key: args.key.clone(),
                    version: args.version,
                })
                .await
                .map_err(|status| rpc_error(&status))
                .with_context(|| format!("activating version {} of `{}`", args.version, args.key))?
                .into_inner();
            print_one(&template, args.json)?;
        }
        TemplateCommand::Versions(args) => {
            let versions = client
                .list_versions(ListVersionsRequest {
                    key: args.key.clone(),
                })
                .await
                .map_err(|status| rpc_error(&status))
                .with_context(|| format!("listing versions of `{}`", args.key))?
                .into_inner()
                .versions;
            print_list(&versions, args.json)?;
        }
        TemplateCommand::Preview(args) => {
            let preview = client
                .render_preview(RenderPreviewRequest {
                    key: args.key.clone(),
                    version: args.version,
                    locale: args.locale.clone().unwrap_or_default(),
                    channel: WireChannel::Email.into(),
                    parameters: samples(&args.params),
                    variant: String::new(),
                })
                .await
                .map_err(|status| rpc_error(&status))
                .with_context(|| format!("previewing template `{}`", args.key))?
                .into_inner();
            print_preview(preview, args.json)?;
        }
    }
    Ok(Outcome::Success)
}

/// `template create`: an email-only template, active at version 1.
async fn create(
    client: &mut TemplateServiceClient<tonic::transport::Channel>,
    args: &crate::cli::TemplateCreateArgs,
) -> anyhow::Result<()> {
    let request = CreateTemplateRequest {
        key: args.key.clone(),
        category: args.category.clone(),
        description: args.description.clone(),
        content: Some(email_content(&args.email)),
        sample_parameters: samples(&args.email.samples),
        ..CreateTemplateRequest::default()
    };
    let template = client
        .create_template(request)
        .await
        .map_err(|status| rpc_error(&status))
        .with_context(|| format!("creating template `{}`", args.key))?
        .into_inner();
    print_one(&template, args.json)?;
    Ok(())
}

/// An email-only template content.
fn email_content(email: &crate::cli::EmailPartArgs) -> TemplateContent {
    TemplateContent {
        email: Some(EmailPart {
            subject: email.subject.clone(),
            html: email.html.clone(),
            text: email.text.clone(),
        }),
        ..TemplateContent::default()
    }
}

/// Every template, page after page.
async fn list_all(
    client: &mut TemplateServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<Template>> {
    let mut templates = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_templates(ListTemplatesRequest {
                page_size: 100,
                page_token,
            })
            .await
            .map_err(|status| rpc_error(&status))
            .context("listing templates")?
            .into_inner();
        templates.extend(page.templates);
        if page.next_page_token.is_empty() {
            return Ok(templates);
        }
        page_token = page.next_page_token;
    }
}

/// Prints a rendered email preview: as JSON, or its subject and bodies.
fn print_preview(preview: RenderPreviewResponse, json: bool) -> anyhow::Result<()> {
    let email = preview
        .rendered
        .and_then(|rendered| rendered.email)
        .unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "version": preview.version,
            "locale": preview.locale,
            "email": { "subject": email.subject, "html": email.html, "text": email.text },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("encoding JSON")?
        );
    } else {
        println!("Version {} in locale {}", preview.version, preview.locale);
        println!("Subject: {}", email.subject);
        for (name, body) in [("html", &email.html), ("text", &email.text)] {
            if !body.is_empty() {
                println!("--- {name}\n{body}");
            }
        }
    }
    Ok(())
}

fn print_one(template: &Template, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(template)).context("encoding JSON")?
        );
    } else {
        print!("{}", to_text(template));
    }
    Ok(())
}

fn print_list(templates: &[Template], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = templates.iter().map(to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).context("encoding JSON")?
        );
    } else if templates.is_empty() {
        eprintln!("No templates.");
    } else {
        print!("{}", to_table(templates));
    }
    Ok(())
}

fn to_json(template: &Template) -> serde_json::Value {
    let email = template
        .content
        .as_ref()
        .and_then(|content| content.email.as_ref())
        .map_or(serde_json::Value::Null, |email| {
            serde_json::json!({ "subject": email.subject, "html": email.html, "text": email.text })
        });
    serde_json::json!({
        "key": template.key,
        "version": template.version,
        "category": template.category,
        "description": template.description,
        "parameters": template.parameters,
        "created_by": template.created_by,
        "created_at": display::timestamp_json(template.created_at.as_ref()),
        "content": { "email": email },
    })
}

fn to_text(template: &Template) -> String {
    use std::fmt::Write as _;

    let mut text = String::new();
    // Writing to a String cannot fail, so the results are ignored.
    let _ = writeln!(
        text,
        "Template {} (version {})",
        template.key, template.version
    );
    let _ = writeln!(text, "  category:    {}", template.category);
    if !template.description.is_empty() {
        let _ = writeln!(text, "  description: {}", template.description);
    }
    let _ = writeln!(text, "  parameters:  {}", template.parameters.join(", "));
    let _ = writeln!(text, "  created by:  {}", template.created_by);
    if let Some(created_at) = display::instant(template.created_at.as_ref()) {
        let _ = writeln!(text, "  created at:  {}", display::rfc3339(created_at));
    }
    if let Some(email) = template
        .content
        .as_ref()
        .and_then(|content| content.email.as_ref())
    {
        let _ = writeln!(text, "  Email");
        let _ = writeln!(text, "    subject: {}", email.subject);
        for (name, body) in [("html", &email.html), ("text", &email.text)] {
            if body.is_empty() {
                continue;
            }
            let _ = writeln!(text, "    {name}:");
            for line in body.lines() {
                let _ = writeln!(text, "      {line}");
            }
        }
    }
    text
}

/// One line per template, in aligned columns.
fn to_table(templates: &[Template]) -> String {
    let rows: Vec<[String; 5]> = templates
        .iter()
        .map(|template| {
            [
                template.key.clone(),
                template.version.to_string(),
                template.category.clone(),
                template.parameters.join(","),
                template.description.clone(),
            ]
        })
        .collect();
    display::table(
        "",
        ["KEY", "VERSION", "CATEGORY", "PARAMETERS", "DESCRIPTION"],
        &rows,
    )
}

/// `Some` struct of string values when any sample is given.
fn samples(pairs: &[(String, String)]) -> Option<prost_types::Struct> {
    (!pairs.is_empty()).then(|| {
        let object: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
            .collect();
        herald_proto::conversions::json_to_struct(&object)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome() -> Template {
        Template {
            key: "welcome".to_owned(),
            category: "onboarding".to_owned(),
            version: 1,
            parameters: vec!["username".to_owned()],
            content: Some(TemplateContent {
                email: Some(EmailPart {
                    subject: "Welcome {{username}}".to_owned(),
                    html: "<p>Hi {{username}}</p>".to_owned(),
                    text: String::new(),
                }),
                ..TemplateContent::default()
            }),
            ..Template::default()
        }
    }

    #[test]
    fn table_columns_are_aligned() {
        let mut longer = welcome();
        longer.key = "order-shipped".to_owned();
        let table = to_table(&[welcome(), longer]);
        assert_eq!(
            table,
            "KEY            VERSION  CATEGORY    PARAMETERS  DESCRIPTION\n\
             welcome        1        onboarding  username\n\
             order-shipped  1        onboarding  username\n"
        );
    }

    #[test]
    fn text_shows_email_parts_and_skips_empty_ones() {
        let text = to_text(&welcome());
        assert!(
            text.contains("    subject: Welcome {{username}}\n"),
            "{text}"
        );
        assert!(
            text.contains("    html:\n      <p>Hi {{username}}</p>\n"),
            "{text}"
        );
        assert!(!text.contains("text:"), "{text}");
    }
}
