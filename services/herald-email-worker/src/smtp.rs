//! The SMTP provider on lettre.

use std::time::Duration;

use herald_config::Validate;
use herald_db::deliveries::DeliveryContext;
use herald_domain::Channel;
use herald_templates::TemplateContent;
use herald_worker::{ChannelProvider, DeliveryError, Receipt};
use lettre::message::{Mailbox, MultiPart, SinglePart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP (local development and tests only).
    None,
    /// STARTTLS upgrade, required.
    #[default]
    Starttls,
    /// Implicit TLS (SMTPS, usually port 465).
    Tls,
}

/// The SMTP relay Herald sends through.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    /// Relay host name.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub security: SmtpSecurity,
    /// User name for SMTP AUTH; empty disables authentication.
    pub username: String,
    /// Password for SMTP AUTH.
    pub password: SecretString,
    /// The `From` mailbox, e.g. `Herald <noreply@example.com>`.
    pub from: String,
    /// Per-command timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most pooled connections to the relay.
    pub max_connections: u32,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 2525,
            security: SmtpSecurity::None,
            username: String::new(),
            password: SecretString::from(""),
            from: "Herald <noreply@herald.local>".into(),
            timeout: Duration::from_secs(10),
            max_connections: 8,
        }
    }
}

impl Validate for SmtpSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.host.is_empty() {
            problems.push("smtp.host must not be empty".into());
        }
        if self.from.parse::<Mailbox>().is_err() {
            problems
                .push("smtp.from must be a mailbox such as `Herald <noreply@example.com>`".into());
        }
        if self.max_connections == 0 {
            problems.push("smtp.max_connections must be at least 1".into());
        }
    }
}

/// Sends email deliveries through one SMTP relay.
pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpProvider {
    /// Builds the pooled transport; connections open on first use.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        let builder = match settings.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)?,
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(settings.timeout))
            .pool_config(
                lettre::transport::smtp::PoolConfig::new().max_size(settings.max_connections),
            );
        if !settings.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: settings.from.parse()?,
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
        let content: TemplateContent = serde_json::from_value(context.template_content.clone())
            .map_err(|error| {
                DeliveryError::Permanent(format!("stored template is unreadable: {error}"))
            })?;
        let part = content
            .email
            .ok_or_else(|| DeliveryError::Permanent("the template has no email part".into()))?;
        let rendered =
            herald_templates::render_email(&part, &context.parameters).map_err(|error| {
                DeliveryError::Permanent(format!("template render failed: {error}"))
            })?;
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

    fn name(&self) -> &str {
        "smtp"
    }

    async fn deliver(&self, context: &DeliveryContext) -> Result<Receipt, DeliveryError> {
        let message = self.message(context)?;
        match self.transport.send(message).await {
            Ok(response) => Ok(Receipt {
                provider: "smtp".into(),
                detail: format!(
                    "{} {}",
                    response.code(),
                    response.first_line().unwrap_or_default()
                ),
            }),
            // Reply texts often echo the recipient's address, so only the code is kept.
            Err(error) => match (error.status(), error.is_permanent()) {
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
