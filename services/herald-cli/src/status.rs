//! `get` and `wait`: a notification's status and its deliveries.

use anyhow::Context as _;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{GetNotificationRequest, Notification, NotificationStatus};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::Outcome;
use crate::cli::{ConnectionArgs, GetArgs, WaitArgs};
use crate::client::{RpcError, connect, rpc_error};
use crate::display;

/// Prints one notification.
pub(crate) async fn get(args: &GetArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let mut client =
        SubmitServiceClient::new(connect(connection, &connection.certificates()).await?);
    let notification = fetch(&mut client, &args.id).await?;
    print(&notification, args.json)?;
    Ok(Outcome::Success)
}

/// Polls until the notification is final or `--timeout` passes, then prints it.
pub(crate) async fn wait(args: &WaitArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + args.timeout;
    let mut client =
        SubmitServiceClient::new(connect(connection, &connection.certificates()).await?);
    loop {
        let notification = match fetch(&mut client, &args.id).await {
            Ok(notification) => Some(notification),
            // A restarting server is worth waiting for; anything else will not fix itself.
            Err(error) if is_unavailable(&error) => None,
            Err(error) => return Err(error),
        };
        if let Some(notification) = &notification
            && let Some(outcome) = final_outcome(notification.status)
        {
            print(notification, args.json)?;
            return Ok(outcome);
        }
        let now = Instant::now();
        if now >= deadline {
            let timeout = humantime::format_duration(args.timeout);
            match &notification {
                Some(notification) => {
                    print(notification, args.json)?;
                    eprintln!(
                        "Timed out after {timeout}: notification {} is still {}.",
                        args.id,
                        display::notification_status(notification.status)
                    );
                }
                None => eprintln!("Timed out after {timeout}: the server is unavailable."),
            }
            return Ok(Outcome::TimedOut);
        }
        tokio::time::sleep(args.interval.min(deadline - now)).await;
    }
}

fn is_unavailable(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<RpcError>()
        .is_some_and(|rpc_error| rpc_error.code == tonic::Code::Unavailable)
}

async fn fetch(
    client: &mut SubmitServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<Notification> {
    let response = client
        .get_notification(GetNotificationRequest {
            notification_id: id.to_owned(),
        })
        .await
        .map_err(|status| rpc_error(&status))?;
    response
        .into_inner()
        .notification
        .context("the server answered without a notification")
}

/// Whether a notification status is final: every delivery has ended.
pub(crate) fn is_final(status: i32) -> bool {
    final_outcome(status).is_some()
}

fn final_outcome(status: i32) -> Option<Outcome> {
    match NotificationStatus::try_from(status).ok()? {
        NotificationStatus::Delivered => Some(Outcome::Success),
        NotificationStatus::PartiallyDelivered => Some(Outcome::Partial),
        // Suppressed on purpose (rate limit, preferences): final, and nothing was sent.
        NotificationStatus::Failed | NotificationStatus::Suppressed => Some(Outcome::Failed),
        NotificationStatus::Unspecified
        | NotificationStatus::Accepted
        | NotificationStatus::InProgress => None,
    }
}

fn print(notification: &Notification, json: bool) -> anyhow::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(&to_json(notification)).context("encoding JSON")?;
        println!("{text}");
    } else {
        print!("{}", to_text(notification));
    }
    Ok(())
}

/// The notification as a JSON object with readable enum names and RFC 3339 timestamps.
fn to_json(notification: &Notification) -> serde_json::Value {
    let deliveries: Vec<serde_json::Value> = notification
        .deliveries
        .iter()
        .map(|delivery| {
            serde_json::json!({
                "id": delivery.id,
                "recipient_index": delivery.recipient_index,
                "user_id": delivery.user_id,
                "channel": display::channel(delivery.channel),
                "state": display::delivery_state(delivery.state),
                "attempts": delivery.attempts,
                "last_error": delivery.last_error,
                "created_at": display::timestamp_json(delivery.created_at.as_ref()),
                "updated_at": display::timestamp_json(delivery.updated_at.as_ref()),
                "queued_at": display::timestamp_json(delivery.queued_at.as_ref()),
                "delivered_at": display::timestamp_json(delivery.delivered_at.as_ref()),
            })
        })
        .collect();
    serde_json::json!({
        "id": notification.id,
        "status": display::notification_status(notification.status),
        "template_key": notification.template_key,
        "template_version": notification.template_version,
        "category": notification.category,
        "priority": display::priority(notification.priority),
        "submitted_by": notification.submitted_by,
        "created_at": display::timestamp_json(notification.created_at.as_ref()),
        "metadata": notification.metadata,
        "deliveries": deliveries,
    })
}

/// The notification as indented text, one block per delivery.
fn to_text(notification: &Notification) -> String {
    use std::fmt::Write as _;

    let created_at = display::instant(notification.created_at.as_ref());
    let mut text = String::new();
    // Writing to a String cannot fail, so the results are ignored.
    let _ = writeln!(
        text,
        "Notification {}: {}",
        notification.id,
        display::notification_status(notification.status)
    );
    let _ = writeln!(
        text,
        "  template:     {} (version {})",
        notification.template_key, notification.template_version
    );
    let _ = writeln!(text, "  category:     {}", notification.category);
    let _ = writeln!(
        text,
        "  priority:     {}",
        display::priority(notification.priority)
    );
    let _ = writeln!(text, "  submitted by: {}", notification.submitted_by);
    if let Some(created_at) = created_at {
        let _ = writeln!(text, "  created at:   {}", display::rfc3339(created_at));
    }
    if !notification.metadata.is_empty() {
        let mut metadata: Vec<_> = notification.metadata.iter().collect();
        metadata.sort();
        let pairs: Vec<String> = metadata
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let _ = writeln!(text, "  metadata:     {}", pairs.join(", "));
    }
    for delivery in &notification.deliveries {
        let _ = write!(
            text,
            "  Delivery {} (recipient {}",
            delivery.id, delivery.recipient_index
        );
        if !delivery.user_id.is_empty() {
            let _ = write!(text, ", user {}", delivery.user_id);
        }
        let _ = writeln!(text, ")");
        let _ = writeln!(
            text,
            "    {} {}, {} attempt{}",
            display::channel(delivery.channel),
            display::delivery_state(delivery.state),
            delivery.attempts,
            if delivery.attempts == 1 { "" } else { "s" }
        );
        if let Some(delivered_at) = display::instant(delivery.delivered_at.as_ref()) {
            let _ = write!(text, "    delivered at {}", display::rfc3339(delivered_at));
            if let Some(created_at) = created_at {
                let _ = write!(
                    text,
                    " ({} after submit)",
                    display::elapsed(created_at, delivered_at)
                );
            }
            let _ = writeln!(text);
        } else if let Some(updated_at) = display::instant(delivery.updated_at.as_ref()) {
            let _ = writeln!(text, "    updated at {}", display::rfc3339(updated_at));
        }
        if !delivery.last_error.is_empty() {
            let _ = writeln!(text, "    last error: {}", delivery.last_error);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use herald_proto::common;
    use herald_proto::submit::{Delivery, DeliveryState};

    use super::*;

    fn delivered_notification() -> Notification {
        Notification {
            id: "n-1".to_owned(),
            status: NotificationStatus::Delivered as i32,
            template_key: "welcome".to_owned(),
            template_version: 2,
            category: "onboarding".to_owned(),
            priority: common::Priority::Normal as i32,
            submitted_by: "spiffe://herald.local/service/orders".to_owned(),
            created_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            deliveries: vec![Delivery {
                id: "d-1".to_owned(),
                channel: common::Channel::Email as i32,
                state: DeliveryState::Delivered as i32,
                attempts: 1,
                delivered_at: Some(prost_types::Timestamp {
                    seconds: 101,
                    nanos: 500_000_000,
                }),
                ..Delivery::default()
            }],
            ..Notification::default()
        }
    }

    #[test]
    fn text_output_shows_status_and_each_delivery() {
        let text = to_text(&delivered_notification());
        assert!(text.starts_with("Notification n-1: DELIVERED\n"), "{text}");
        assert!(text.contains("EMAIL DELIVERED, 1 attempt\n"), "{text}");
        assert!(text.contains("(1.500s after submit)"), "{text}");
    }

    #[test]
    fn json_output_uses_readable_names_and_rfc3339() {
        let json = to_json(&delivered_notification());
        assert_eq!(json["status"], "DELIVERED");
        assert_eq!(json["deliveries"][0]["state"], "DELIVERED");
        assert_eq!(
            json["deliveries"][0]["delivered_at"],
            "1970-01-01T00:01:41.500Z"
        );
        assert_eq!(json["deliveries"][0]["queued_at"], serde_json::Value::Null);
    }

    #[test]
    fn only_delivered_failed_and_partial_are_final() {
        assert!(is_final(NotificationStatus::Delivered as i32));
        assert!(is_final(NotificationStatus::Failed as i32));
        assert!(is_final(NotificationStatus::PartiallyDelivered as i32));
        assert!(!is_final(NotificationStatus::InProgress as i32));
        assert!(!is_final(NotificationStatus::Accepted as i32));
        assert!(!is_final(99));
    }
}
