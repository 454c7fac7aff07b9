//! `submit-batch`: many independent notifications from a JSON Lines file, sent through
//! `SubmitBatch` in calls of up to 1,000 items, with one result line per item.
//!
//! Each input line is one notification:
//!
//! ```json
//! {"template": "order-shipped", "to": ["ada@example.com"], "params": {"item_name": "kettle"},
//!  "idempotency_key": "order-42-shipped", "priority": "high"}
//! ```
//!
//! Fields: `template` (required), `version`, `to` (email addresses), `recipients` (objects
//! with `email`, `user_id`, `phone`, `locale`, `chat_destination`, for anything beyond plain
//! addresses), `params` (any JSON object), `channels` (default `["email"]`), `priority`
//! (`low`, `normal`, `high`, `critical`), `category`, `idempotency_key`, `metadata` (string
//! values), `send_at` (RFC 3339).

use std::io::BufRead as _;

use anyhow::Context as _;
use herald_proto::common;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    Recipient, SubmitBatchRequest, SubmitBatchResult, SubmitRequest, TemplateRef,
};
use serde::Deserialize;

use crate::Outcome;
use crate::cli::{ConnectionArgs, SubmitBatchArgs};
use crate::client::{code_name, connect, rpc_error};

/// Most items in one `SubmitBatch` call (the server's limit).
const MAX_ITEMS_PER_CALL: usize = 1000;

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    template: String,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    recipients: Vec<ItemRecipient>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    category: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
    #[serde(default)]
    send_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ItemRecipient {
    user_id: String,
    email: String,
    phone: String,
    locale: String,
    chat_destination: String,
}

/// Reads `--file` (or stdin for `-`), submits it in calls of up to 1,000 items and prints one
/// line per item: `<line> <id>` (`duplicate` appended for a replay) or
/// `<line> error <Code> <message>`; JSON objects with `--json`.
pub(crate) async fn run(
    args: &SubmitBatchArgs,
    connection: &ConnectionArgs,
) -> anyhow::Result<Outcome> {
    let reader: Box<dyn std::io::BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        ))
    };
    let mut items = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.context("reading the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let item: Item = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a notification", index + 1))?;
        items.push((
            index + 1,
            request(item).with_context(|| format!("line {}", index + 1))?,
        ));
    }
    let mut client =
        SubmitServiceClient::new(connect(connection, &connection.certificates()).await?);
    let mut refused = 0_usize;
    for chunk in items.chunks(
        usize::try_from(args.per_call)
            .unwrap_or(MAX_ITEMS_PER_CALL)
            .clamp(1, MAX_ITEMS_PER_CALL),
    ) {
        let results = client
            .submit_batch(SubmitBatchRequest {
                items: chunk.iter().map(|(_, request)| request.clone()).collect(),
            })
            .await
            .map_err(|status| rpc_error(&status))
            .context("submitting a batch")?
            .into_inner()
            .results;
        for ((line, _), result) in chunk.iter().zip(&results) {
            refused += usize::from(result.accepted.is_none());
            println!("{}", render(*line, result, args.json));
        }
    }
    Ok(if refused == 0 {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

fn render(line: usize, result: &SubmitBatchResult, json: bool) -> String {
    let code = code_name(tonic::Code::from_i32(result.code));
    match (&result.accepted, json) {
        (Some(accepted), false) if accepted.duplicate => {
            format!("{line} {} duplicate", accepted.notification_id)
        }
        (Some(accepted), false) => format!("{line} {}", accepted.notification_id),
        (None, false) => format!("{line} error {code} {}", result.message),
        (Some(accepted), true) => serde_json::json!({
            "line": line,
            "notification_id": accepted.notification_id,
            "duplicate": accepted.duplicate,
        })
        .to_string(),
        (None, true) => serde_json::json!({
            "line": line,
            "code": code,
            "message": result.message,
        })
        .to_string(),
    }
}

fn request(item: Item) -> anyhow::Result<SubmitRequest> {
    let channels = if item.channels.is_empty() {
        vec![common::Channel::Email as i32]
    } else {
        item.channels
            .iter()
            .map(|name| {
                common::Channel::from_str_name(&format!(
                    "CHANNEL_{}",
                    name.to_ascii_uppercase().replace('-', "_")
                ))
                .map(|channel| channel as i32)
                .with_context(|| format!("unknown channel `{name}`"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let priority = match item.priority.as_deref() {
        None => common::Priority::Normal,
        Some(name) => {
            common::Priority::from_str_name(&format!("PRIORITY_{}", name.to_ascii_uppercase()))
                .with_context(|| format!("unknown priority `{name}`"))?
        }
    };
    let send_at = item
        .send_at
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map(|instant| herald_proto::conversions::timestamp(instant.to_utc()))
                .with_context(|| format!("send_at `{text}` is not an RFC 3339 instant"))
        })
        .transpose()?;
    let recipients = item
        .to
        .into_iter()
        .map(|email| Recipient {
            email,
            ..Recipient::default()
        })
        .chain(item.recipients.into_iter().map(|recipient| Recipient {
            user_id: recipient.user_id,
            email: recipient.email,
            locale: recipient.locale,
            phone: recipient.phone,
            chat_destination: recipient.chat_destination,
        }))
        .collect();
    Ok(SubmitRequest {
        template: Some(TemplateRef {
            key: item.template,
            version: item.version,
        }),
        parameters: Some(herald_proto::conversions::json_to_struct(&item.params)),
        recipients,
        channels,
        priority: priority as i32,
        category: item.category,
        idempotency_key: item.idempotency_key,
        metadata: item.metadata,
        send_at,
    })
}

#[cfg(test)]
mod tests;
