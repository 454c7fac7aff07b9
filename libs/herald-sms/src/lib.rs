#![doc = include_str!("../README.md")]

mod gateway;
mod provider;
pub mod segments;
mod settings;
mod twilio;

use std::sync::Arc;

use herald_domain::Channel;
use herald_templates::RenderedSms;
use herald_worker::{Attempted, ChannelProvider, DeliveryContext, DeliveryError, Failover};

pub use gateway::HttpGatewayProvider;
pub use provider::{OutgoingSms, SmsProvider};
pub use segments::{Encoding, Segments};
pub use settings::{
    HttpGatewaySettings, SmsProviderSettings, SmsSettings, TWILIO_BASE_URL, TwilioSettings,
};
pub use twilio::TwilioProvider;

/// Why the SMS channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No provider is configured.
    #[error("sms.providers must list at least one provider to run the sms channel")]
    NoProviders,
    /// A provider's settings cannot be used (run `Validate` first for the full list).
    #[error("sms provider `{name}`: {reason}")]
    InvalidProvider {
        /// The provider's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("sms provider `{name}`: could not build the http client")]
    Client {
        /// The provider's name.
        name: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SMS channel: renders the SMS part, checks the number and the length, and sends through
/// the configured providers with failover.
#[derive(Debug)]
pub struct SmsChannel {
    failover: Failover<SmsProvider>,
    first_provider: String,
    max_segments: usize,
}

impl SmsChannel {
    /// Builds every provider with its own HTTP client; nothing connects until the first send.
    pub fn new(settings: &SmsSettings) -> Result<Self> {
        let members = settings
            .providers
            .iter()
            .map(|provider| {
                SmsProvider::new(provider)
                    .map(|built| (provider.name().to_owned(), Arc::new(built)))
            })
            .collect::<Result<Vec<_>>>()?;
        let first_provider = members
            .first()
            .map(|(name, _)| name.clone())
            .ok_or(Error::NoProviders)?;
        Ok(Self {
            failover: Failover::new(settings.breaker, members),
            first_provider,
            max_segments: usize::try_from(settings.max_segments).unwrap_or(usize::MAX),
        })
    }

    /// The providers and their circuit states, for health reporting.
    pub fn failover(&self) -> &Failover<SmsProvider> {
        &self.failover
    }

    /// Everything that can fail before a provider is chosen: the number, the rendering and
    /// the length. Returns the number and the text.
    fn prepare(&self, context: &DeliveryContext) -> Result<(String, String), DeliveryError> {
        let number = context
            .address
            .as_deref()
            .ok_or_else(|| DeliveryError::Permanent("the delivery has no phone number".into()))?;
        if herald_domain::PhoneNumber::parse(number).is_err() {
            return Err(DeliveryError::AddressInvalid {
                addresses: vec![number.to_owned()],
                detail: "the phone number is not in E.164 form".into(),
            });
        }
        let RenderedSms { text } = herald_worker::render(context)?;
        if text.is_empty() {
            return Err(DeliveryError::Permanent("the sms text is empty".into()));
        }
        let segments = segments::analyze(&text);
        if segments.segments > self.max_segments {
            return Err(DeliveryError::Permanent(format!(
                "sms text needs {} segments ({}), more than max_segments {}",
                segments.segments, segments.encoding, self.max_segments
            )));
        }
        tracing::debug!(
            delivery.id = %context.delivery_id,
            sms.encoding = %segments.encoding,
            sms.segments = segments.segments,
            "Sending an SMS."
        );
        Ok((number.to_owned(), text))
    }
}

impl ChannelProvider for SmsChannel {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn circuit_states(&self) -> Vec<(String, herald_worker::CircuitState)> {
        self.failover
            .states()
            .into_iter()
            .map(|(name, state)| (name.to_owned(), state))
            .collect()
    }

    async fn deliver(&self, context: &DeliveryContext) -> Attempted {
        // Checks that need no provider run first, so a bad delivery neither takes a provider's
        // half-open trial slot nor counts for or against its breaker.
        let (number, text) = match self.prepare(context) {
            Ok(prepared) => prepared,
            Err(error) => {
                return Attempted {
                    provider: self.first_provider.clone(),
                    result: Err(error),
                };
            }
        };
        let reference = context.delivery_id.to_string();
        // An unknown outcome never fails over: a pinned delivery goes to its provider.
        let selected = self.failover.select_for(context);
        let result = selected
            .provider()
            .send(&OutgoingSms {
                to: &number,
                text: &text,
                reference: &reference,
            })
            .await;
        selected.record(&result);
        Attempted {
            provider: selected.name().to_owned(),
            result,
        }
    }
}
