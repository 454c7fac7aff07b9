//! Where alerts go: a Slack-compatible incoming webhook and email.

use std::time::Duration;

use herald_smtp::SmtpSettings;
use herald_smtp::lettre::message::Mailbox;
use herald_smtp::lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use herald_webhook::{ChatMessage, Destination, DestinationSettings};
use secrecy::ExposeSecret;

use crate::AlertSettings;

/// One alert, free of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    pub(crate) subject: String,
    pub(crate) text: String,
}

struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// The configured destinations.
pub(crate) struct Sinks {
    webhook: Option<Destination>,
    email: Option<Email>,
}

impl Sinks {
    pub(crate) fn new(alerts: &AlertSettings, smtp: &SmtpSettings) -> anyhow::Result<Self> {
        let webhook = if alerts.webhook_url.expose_secret().is_empty() {
            None
        } else {
            let settings = if alerts.webhook_secret.expose_secret().is_empty() {
                DestinationSettings::Slack {
                    url: alerts.webhook_url.clone(),
                }
            } else {
                DestinationSettings::Signed {
                    url: alerts.webhook_url.clone(),
                    secret: alerts.webhook_secret.clone(),
                }
            };
            Some(Destination::new(&settings, Duration::from_secs(5))?)
        };
        let email = if alerts.email_to.is_empty() {
            None
        } else {
            Some(Email {
                transport: herald_smtp::transport(smtp)?,
                from: smtp.from_mailbox()?,
                to: alerts
                    .email_to
                    .iter()
                    .map(|address| address.parse())
                    .collect::<Result<_, _>>()?,
            })
        };
        Ok(Self { webhook, email })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.email.is_none()
    }

    /// Sends `alert` everywhere; `true` when at least one destination accepted it (or none is
    /// configured, in which case the log line is the alert).
    pub(crate) async fn send(&self, alert: &Alert) -> bool {
        tracing::warn!(alert.subject = %alert.subject, "Developer alert.");
        if self.is_empty() {
            return true;
        }
        let mut accepted = false;
        if let Some(destination) = &self.webhook {
            let mut fields = serde_json::Map::new();
            fields.insert("subject".into(), alert.subject.clone().into());
            let message = ChatMessage {
                id: format!("alert-{}", uuid::Uuid::now_v7()),
                text: format!("*{}*\n{}", alert.subject, alert.text),
                event_type: "alert.developer".into(),
                fields,
            };
            match destination.send(&message).await {
                Ok(_) => accepted = true,
                Err(error) => tracing::warn!(error = %error, "Alert webhook failed."),
            }
        }
        if let Some(email) = &self.email {
            match self.email_message(email, alert) {
                Ok(message) => match email.transport.send(message).await {
                    Ok(_) => accepted = true,
                    Err(error) => {
                        tracing::warn!(smtp.code = ?error.status(), "Alert email failed.")
                    }
                },
                Err(error) => tracing::warn!(error = %error, "Could not build the alert email."),
            }
        }
        accepted
    }

    fn email_message(
        &self,
        email: &Email,
        alert: &Alert,
    ) -> Result<Message, herald_smtp::lettre::error::Error> {
        let mut builder = Message::builder()
            .from(email.from.clone())
            .subject(alert.subject.clone());
        for to in &email.to {
            builder = builder.to(to.clone());
        }
        builder.body(alert.text.clone())
    }
}
