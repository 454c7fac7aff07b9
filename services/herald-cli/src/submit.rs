//! `submit`: one notification from command-line arguments.

use anyhow::Context as _;
use herald_proto::common;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{Recipient, SubmitRequest, TemplateRef};

use crate::Outcome;
use crate::cli::{ConnectionArgs, SubmitArgs};
use crate::client::{connect, rpc_error};

/// Submits the notification and prints its id (or JSON with `--json`).
pub(crate) async fn run(args: &SubmitArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let mut client =
        SubmitServiceClient::new(connect(connection, &connection.certificates()).await?);
    let response = client
        .submit(request(args))
        .await
        .map_err(|status| rpc_error(&status))
        .context("submitting the notification")?
        .into_inner();
    if args.json {
        let json = serde_json::json!({
            "notification_id": response.notification_id,
            "duplicate": response.duplicate,
        });
        println!("{json}");
    } else {
        // Only the id goes to stdout so that scripts can capture it.
        println!("{}", response.notification_id);
        if response.duplicate {
            eprintln!("The idempotency key was used before: this is the original notification.");
        }
    }
    Ok(Outcome::Success)
}

fn request(args: &SubmitArgs) -> SubmitRequest {
    let mut parameters = args.params_json.clone().unwrap_or_default();
    for (name, value) in &args.params {
        parameters.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    let user_id = args.user_id.clone().unwrap_or_default();
    SubmitRequest {
        send_at: None,
        template: Some(TemplateRef {
            key: args.template.clone(),
            version: args.template_version,
        }),
        parameters: Some(herald_proto::conversions::json_to_struct(&parameters)),
        recipients: args
            .to
            .iter()
            .map(|email| Recipient {
                user_id: user_id.clone(),
                email: email.clone(),
                locale: args.locale.clone().unwrap_or_default(),
                ..Recipient::default()
            })
            .collect(),
        channels: args
            .channels
            .iter()
            .map(|channel| common::Channel::from(*channel) as i32)
            .collect(),
        priority: common::Priority::from(args.priority) as i32,
        category: args.category.clone().unwrap_or_default(),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        metadata: args.metadata.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn submit_args(arguments: &[&str]) -> SubmitArgs {
        let cli = Cli::try_parse_from(["herald-cli", "submit"].iter().chain(arguments));
        match cli {
            Ok(Cli {
                command: Command::Submit(args),
                ..
            }) => args,
            other => panic!("expected a submit command, got {other:?}"),
        }
    }

    #[test]
    fn params_override_params_json_and_every_recipient_gets_the_user_id() {
        let args = submit_args(&[
            "--template",
            "welcome",
            "--to",
            "ada@example.com",
            "--to",
            "bob@example.com",
            "--user-id",
            "u-1",
            "--params-json",
            r#"{"username": "json", "count": 3}"#,
            "--param",
            "username=Ada",
            "--metadata",
            "source=cli",
        ]);
        let request = request(&args);
        let parameters =
            herald_proto::conversions::struct_to_json(request.parameters.unwrap_or_default());
        assert_eq!(
            serde_json::Value::Object(parameters),
            serde_json::json!({ "username": "Ada", "count": 3 })
        );
        assert_eq!(request.recipients.len(), 2);
        assert!(
            request
                .recipients
                .iter()
                .all(|recipient| recipient.user_id == "u-1")
        );
        assert_eq!(request.channels, [common::Channel::Email as i32]);
        assert_eq!(request.priority, common::Priority::Normal as i32);
        assert_eq!(
            request.metadata.get("source").map(String::as_str),
            Some("cli")
        );
        assert_eq!(request.idempotency_key, "");
    }
}
