//! The SMTP provider on lettre.

use herald_db::deliveries::DeliveryContext;
use herald_domain::Channel;
use herald_smtp::SmtpSettings;
use herald_templates::RenderedEmail;
use herald_worker::{Attempted, ChannelProvider, DeliveryError, Receipt};
use lettre::message::{Mailbox, MultiPart, SinglePart, header};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends email deliveries through one SMTP relay.
pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpProvider {
    /// Builds the pooled transport; connections open on first use.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        Ok(Self {
            transport: herald_smtp::transport(settings)?,
            from: settings.from_mailbox()?,
        })
    }

    fn message(&self, context: &DeliveryContext) -> Result<Message, DeliveryError> {
        let address = context
            .address
            .as_deref()
            .ok_or_else(|| DeliveryError::Permanent("the delivery has no email address".into()))?;
        let to: Mailbox = address.parse().map_err(|_| {
            DeliveryError::Permanent("the recipient address is not a valid mailbox".into())
        })?;
        let rendered: RenderedEmail = herald_worker::render(context)?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!("<{}@herald>", context.delivery_id)));
        let body = match (rendered.html.is_empty(), rendered.text.is_empty()) {
            (false, false) => builder.multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            )),
            (false, true) => builder.singlepart(
                SinglePart::builder()
                    .header(header::ContentType::TEXT_HTML)
                    .body(rendered.html),
            ),
            (true, _) => builder.singlepart(
                SinglePart::builder()
                    .header(header::ContentType::TEXT_PLAIN)
                    .body(rendered.text),
            ),
        };
        body.map_err(|error| {
            DeliveryError::Permanent(format!("could not build the message: {error}"))
        })
    }
}

impl ChannelProvider for SmtpProvider {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn deliver(&self, context: &DeliveryContext) -> Attempted {
        Attempted {
            provider: "smtp".into(),
            result: self.send(context).await,
        }
    }
}

impl SmtpProvider {
    async fn send(&self, context: &DeliveryContext) -> Result<Receipt, DeliveryError> {
        let message = self.message(context)?;
        match self.transport.send(message).await {
            Ok(response) => Ok(Receipt {
                invalid_addresses: Vec::new(),
                detail: format!(
                    "{} {}",
                    response.code(),
                    response.first_line().unwrap_or_default()
                ),
            }),
            // Reply texts often echo the recipient's address, so only the code is kept.
            Err(error) => match (error.status(), error.is_permanent()) {
                (Some(code), true) if is_hard_bounce(&code.to_string()) => {
                    Err(DeliveryError::AddressInvalid {
                        addresses: context.address.iter().cloned().collect(),
                        detail: format!("smtp rejected the recipient with {code} (hard bounce)"),
                    })
                }
                (Some(code), true) => Err(DeliveryError::Permanent(format!(
                    "smtp rejected the message with {code}"
                ))),
                (Some(code), false) => Err(DeliveryError::Retryable(format!(
                    "smtp deferred the message with {code}"
                ))),
                (None, _) if error.is_timeout() => {
                    Err(DeliveryError::Retryable("smtp timed out".into()))
                }
                (None, _) => Err(DeliveryError::Retryable(format!(
                    "smtp connection failed: {}",
                    error_kind(&error)
                ))),
            },
        }
    }
}

/// Reply codes that say the mailbox does not exist or cannot take mail, for good: 550
/// (mailbox unavailable), 551 (user not local), 553 (mailbox name not allowed).
fn is_hard_bounce(code: &str) -> bool {
    matches!(code, "550" | "551" | "553")
}

/// A short description of a transport error without any reply text.
fn error_kind(error: &lettre::transport::smtp::Error) -> &'static str {
    if error.is_client() {
        "client error"
    } else if error.is_response() {
        "unparseable response"
    } else if error.is_tls() {
        "tls failure"
    } else {
        "network error"
    }
}
