#![doc = include_str!("../README.md")]

mod pool;
mod reply;

use std::time::Duration;

use herald_config::Validate;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use lettre;
pub use pool::{Error as PoolError, SmtpPool, VERIFY_IDLE_AFTER};
pub use reply::{ReplyClass, check_fuzz_input, classify, classify_reply};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP: only to a relay on the same host (`localhost`, `127.0.0.0/8`, `::1`), as in
    /// development and tests or with a local relay beside the worker.
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
    /// Most connections to the relay at once. `None`: the email worker opens as many as it
    /// makes concurrent deliveries (`worker.concurrency`); alerts use one.
    pub max_connections: Option<u32>,
    /// Connections idle this long are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
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
            max_connections: None,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Validate for SmtpSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.host.is_empty() {
            problems.push("smtp.host must not be empty".into());
        } else if self.security == SmtpSecurity::None && !is_loopback(&self.host) {
            problems.push(format!(
                "smtp.security = \"none\" would send mail and credentials in clear to {}; plain SMTP is allowed only to a relay on this host (localhost, 127.0.0.1, ::1): use \"starttls\" or \"tls\"",
                self.host
            ));
        }
        if self.from.parse::<Mailbox>().is_err() {
            problems
                .push("smtp.from must be a mailbox such as `Herald <noreply@example.com>`".into());
        }
        if self.max_connections == Some(0) {
            problems.push("smtp.max_connections must be at least 1".into());
        }
        if self.idle_timeout.is_zero() {
            problems.push("smtp.idle_timeout must be positive".into());
        }
    }
}

/// `localhost` or a loopback address: a relay that mail to it never leaves this host for.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// lettre's pooled async transport `settings` describe (at most `max_connections` idle
/// connections, one by default), for occasional mail such as alerts; connections open on
/// first use. High-volume senders use `SmtpPool`.
pub fn transport(
    settings: &SmtpSettings,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
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
            lettre::transport::smtp::PoolConfig::new()
                .max_size(settings.max_connections.unwrap_or(1))
                .idle_timeout(settings.idle_timeout),
        );
    if !settings.username.is_empty() {
        builder = builder.credentials(Credentials::new(
            settings.username.clone(),
            settings.password.expose_secret().to_owned(),
        ));
    }
    Ok(builder.build())
}

impl SmtpSettings {
    /// The `From` mailbox (validated by `Validate`).
    pub fn from_mailbox(&self) -> Result<Mailbox, lettre::address::AddressError> {
        self.from.parse()
    }
}

#[cfg(test)]
mod tests {
    use herald_config::Validate as _;

    use super::{SmtpSecurity, SmtpSettings};

    fn problems(host: &str, security: SmtpSecurity) -> Vec<String> {
        let settings = SmtpSettings {
            host: host.into(),
            security,
            ..SmtpSettings::default()
        };
        let mut problems = Vec::new();
        settings.validate(&mut problems);
        problems
    }

    #[test]
    fn plain_smtp_is_allowed_only_to_a_relay_on_this_host() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.0.0.53",
            "::1",
            "[::1]",
        ] {
            assert!(problems(host, SmtpSecurity::None).is_empty(), "{host}");
        }
        for host in ["smtp.example.com", "10.0.0.7", "::2"] {
            let found = problems(host, SmtpSecurity::None);
            assert_eq!(found.len(), 1, "{host}: {found:?}");
            assert!(found[0].contains("starttls"), "{}", found[0]);
        }
        for security in [SmtpSecurity::Starttls, SmtpSecurity::Tls] {
            assert!(problems("smtp.example.com", security).is_empty());
        }
    }
}
