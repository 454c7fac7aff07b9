//! The SMTP provider on lettre, sending through `SmtpPool` (connections reused, at most one
//! per concurrent delivery, no `NOOP` before each message).

use chrono::Utc;
use herald_domain::Channel;
use herald_smtp::{PoolError, ReplyClass, SmtpPool, SmtpSettings};
use herald_templates::RenderedEmail;
use herald_tracking::{Signer, TrackingSettings};
use herald_worker::{Attempted, ChannelProvider, DeliveryContext, DeliveryError, Receipt};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, SinglePart, header};

/// Sends email deliveries through one SMTP relay.
pub struct SmtpProvider {
    pool: SmtpPool,
    from: Mailbox,
    tracking: Option<Signer>,
}

/// Connections to the relay when `smtp.max_connections` is not set and no concurrency is
/// given (`SmtpProvider::new`).
const DEFAULT_CONNECTIONS: usize = 8;

impl SmtpProvider {
    /// Builds the connection pool (`smtp.max_connections`, else a few connections);
    /// connections open on first use.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        Self::with_concurrency(settings, DEFAULT_CONNECTIONS)
    }

    /// Builds the connection pool sized to `concurrency` deliveries at once (unless
    /// `smtp.max_connections` sets it), so every concurrent send has a connection to reuse and
    /// none is opened and closed per message.
    pub fn with_concurrency(settings: &SmtpSettings, concurrency: usize) -> anyhow::Result<Self> {
        let connections = settings.max_connections.map_or(concurrency, |max| {
            usize::try_from(max).unwrap_or(usize::MAX)
        });
        Ok(Self {
            pool: SmtpPool::new(settings, connections)?,
            from: settings.from_mailbox()?,
            tracking: None,
        })
    }

    /// Rewrites the HTML of every email for open and click tracking when `settings` enable
    /// it (except for users who opted out).
    #[must_use]
    pub fn with_tracking(mut self, settings: &TrackingSettings) -> Self {
        self.tracking = settings.enabled.then(|| Signer::new(settings));
        self
    }

    /// The rendered HTML with tracking links and the open pixel, unless tracking is off or
    /// the user opted out. A rewrite failure sends the HTML as rendered: tracking never
    /// holds a message back.
    fn tracked_html(&self, context: &DeliveryContext, html: String) -> String {
        let Some(signer) = self.tracking.as_ref() else {
            return html;
        };
        if context.tracking_opt_out || html.is_empty() {
            return html;
        }
        match herald_tracking::rewrite_html(&html, signer, context.delivery_id, Utc::now()) {
            Ok(rewritten) => rewritten,
            Err(error) => {
                tracing::warn!(delivery.id = %context.delivery_id, error = %error, "Sending the email without tracking.");
                html
            }
        }
    }

    fn message(&self, context: &DeliveryContext) -> Result<Message, DeliveryError> {
        let address = context
            .address
            .as_deref()
            .ok_or_else(|| DeliveryError::Permanent("the delivery has no email address".into()))?;
        let to: Mailbox = address.parse().map_err(|_| {
            DeliveryError::Permanent("the recipient address is not a valid mailbox".into())
        })?;
        let mut rendered: RenderedEmail = herald_worker::render(context)?;
        rendered.html = self.tracked_html(context, std::mem::take(&mut rendered.html));
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
        let envelope = message.envelope().clone();
        let error = match self.pool.send(&envelope, &message.formatted()).await {
            Ok(response) => {
                return Ok(Receipt {
                    invalid_addresses: Vec::new(),
                    detail: format!(
                        "{} {}",
                        response.code(),
                        response.first_line().unwrap_or_default()
                    ),
                });
            }
            Err(PoolError::Smtp(error)) => error,
            Err(PoolError::ConnectTimeout | PoolError::Timeout) => {
                return Err(DeliveryError::Retryable("smtp timed out".into()));
            }
            Err(PoolError::Connect(_)) => {
                return Err(DeliveryError::Retryable(
                    "smtp connection failed: network error".into(),
                ));
            }
            Err(PoolError::Unsupported(extension)) => {
                return Err(DeliveryError::Permanent(format!(
                    "the smtp relay does not support {extension}"
                )));
            }
            // The message went out and its reply was lost: the relay may have accepted it.
            Err(PoolError::Unconfirmed(None)) => {
                return Err(DeliveryError::Unknown(
                    "smtp sent the message and timed out waiting for its reply".into(),
                ));
            }
            Err(PoolError::Unconfirmed(Some(error))) => {
                return Err(DeliveryError::Unknown(format!(
                    "smtp sent the message and got no reply to it: {}",
                    error_kind(&error)
                )));
            }
        };
        // Reply texts often echo the recipient's address, so only the code is kept.
        match error
            .status()
            .map(|code| (code, herald_smtp::classify(code)))
        {
            Some((code, ReplyClass::HardBounce)) => Err(DeliveryError::AddressInvalid {
                addresses: context.address.iter().cloned().collect(),
                detail: format!("smtp rejected the recipient with {code} (hard bounce)"),
            }),
            Some((code, ReplyClass::Rejected)) => Err(DeliveryError::Permanent(format!(
                "smtp rejected the message with {code}"
            ))),
            // lettre reports only negative replies as errors; a positive one here would be a
            // protocol surprise, retried like a deferral.
            Some((code, ReplyClass::Deferred | ReplyClass::Accepted)) => Err(
                DeliveryError::Retryable(format!("smtp deferred the message with {code}")),
            ),
            None if error.is_timeout() => Err(DeliveryError::Retryable("smtp timed out".into())),
            None => Err(DeliveryError::Retryable(format!(
                "smtp connection failed: {}",
                error_kind(&error)
            ))),
        }
    }
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
