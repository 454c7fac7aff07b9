//! The push channel: renders the push part once and sends it to every enabled device of the
//! user, iOS through APNs and Android and web through FCM.

use std::collections::BTreeSet;
use std::sync::Arc;

use herald_domain::{Channel, DeviceToken, Platform};
use herald_templates::RenderedPush;
use herald_worker::{
    Attempted, ChannelProvider, DeliveryContext, DeliveryError, Failover, Receipt,
};

use crate::apns::ApnsClient;
use crate::fcm::FcmClient;
use crate::message::PushMessage;
use crate::settings::PushSettings;
use crate::{Error, Result};

/// The most per-device provider details (`apns-id …`) quoted in a receipt.
const MAX_QUOTED_DETAILS: usize = 3;

/// The push channel's provider: one `Failover` (and so one circuit breaker) per platform
/// provider.
#[derive(Debug)]
pub struct PushChannel {
    apns: Option<Failover<ApnsClient>>,
    fcm: Option<Failover<FcmClient>>,
}

impl PushChannel {
    /// Builds the configured providers: reads the key files, makes no request.
    ///
    /// # Errors
    /// When no provider is configured, or a key file cannot be read or parsed (the error names
    /// the setting).
    pub fn from_settings(settings: &PushSettings) -> Result<Self> {
        let apns = settings
            .apns
            .as_ref()
            .map(|apns| -> Result<_> {
                let client = Arc::new(ApnsClient::from_settings(apns)?);
                Ok(Failover::new(
                    settings.breaker,
                    vec![("apns".to_owned(), client)],
                ))
            })
            .transpose()?;
        let fcm = settings
            .fcm
            .as_ref()
            .map(|fcm| -> Result<_> {
                let client = Arc::new(FcmClient::from_settings(fcm)?);
                Ok(Failover::new(
                    settings.breaker,
                    vec![("fcm".to_owned(), client)],
                ))
            })
            .transpose()?;
        if apns.is_none() && fcm.is_none() {
            return Err(Error::NoProvider);
        }
        Ok(Self { apns, fcm })
    }

    /// `apns`, `fcm` or `apns+fcm`: the configured providers, for attempts that fail before a
    /// provider is called.
    fn configured_providers(&self) -> String {
        provider_label(
            self.apns.as_ref().map(|_| "apns"),
            self.fcm.as_ref().map(|_| "fcm"),
        )
    }

    /// Sends to one device through its platform's provider.
    async fn send_to(
        &self,
        message: &PushMessage,
        device: &DeviceToken,
        context: &DeliveryContext,
    ) -> DeviceResult {
        let result = match device.platform {
            Platform::Ios => match &self.apns {
                Some(failover) => {
                    let selected = failover.select_for(context);
                    let result = selected.provider().send(message, device).await;
                    selected.record(&result);
                    return DeviceResult {
                        provider: Some("apns"),
                        result,
                    };
                }
                None => not_configured(device.platform),
            },
            Platform::Android | Platform::Web => match &self.fcm {
                Some(failover) => {
                    let selected = failover.select_for(context);
                    let result = selected.provider().send(message, device).await;
                    selected.record(&result);
                    return DeviceResult {
                        provider: Some("fcm"),
                        result,
                    };
                }
                None => not_configured(device.platform),
            },
        };
        DeviceResult {
            provider: None,
            result,
        }
    }

    async fn attempt(&self, context: &DeliveryContext) -> (Option<String>, DeliveryOutcome) {
        let rendered: RenderedPush = match herald_worker::render(context) {
            Ok(push) => push,
            Err(error) => return (None, Err(error)),
        };
        if context.device_tokens.is_empty() {
            return (
                None,
                Err(DeliveryError::Permanent(
                    "the user has no enabled device tokens".into(),
                )),
            );
        }
        let message = match PushMessage::new(context.delivery_id, rendered, context.priority) {
            Ok(message) => message,
            Err(error) => return (None, Err(error)),
        };
        let results = futures::future::join_all(
            context
                .device_tokens
                .iter()
                .map(|device| self.send_to(&message, device, context)),
        )
        .await;
        let used: BTreeSet<&str> = results
            .iter()
            .filter_map(|device| device.provider)
            .collect();
        let provider = (!used.is_empty()).then(|| {
            provider_label(
                used.contains("apns").then_some("apns"),
                used.contains("fcm").then_some("fcm"),
            )
        });
        (provider, aggregate(results))
    }
}

pub(crate) type DeliveryOutcome = std::result::Result<Receipt, DeliveryError>;

/// One device's result and the provider that produced it (`None`: none was called).
pub(crate) struct DeviceResult {
    pub(crate) provider: Option<&'static str>,
    pub(crate) result: DeliveryOutcome,
}

fn not_configured(platform: Platform) -> DeliveryOutcome {
    let provider = match platform {
        Platform::Ios => "apns",
        Platform::Android | Platform::Web => "fcm",
    };
    Err(DeliveryError::Permanent(format!(
        "{platform} device skipped: push.{provider} is not configured"
    )))
}

fn provider_label(apns: Option<&str>, fcm: Option<&str>) -> String {
    [apns, fcm]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("+")
}

/// Folds the per-device results into the delivery's outcome.
///
/// At least one accepted device makes the delivery delivered (the tokens the providers called
/// invalid ride along to be disabled). With none accepted: all invalid → `AddressInvalid`;
/// any unknown outcome → `Unknown` (a device may have it, so the channel's policy decides
/// whether to push again); any retryable → `Retryable` (nothing was sent, so a retry sends
/// nothing twice); else `Permanent`.
pub(crate) fn aggregate(results: Vec<DeviceResult>) -> DeliveryOutcome {
    let total = results.len();
    let mut accepted = Vec::new();
    let mut invalid = Vec::new();
    let mut reasons = BTreeSet::new();
    let (mut retryable, mut unknown, mut permanent) = (false, false, false);
    for DeviceResult { result, .. } in results {
        match result {
            Ok(receipt) => {
                accepted.push(receipt.detail);
                invalid.extend(receipt.invalid_addresses);
            }
            Err(DeliveryError::AddressInvalid { addresses, detail }) => {
                invalid.extend(addresses);
                reasons.insert(detail);
            }
            Err(DeliveryError::Retryable(detail)) => {
                retryable = true;
                reasons.insert(detail);
            }
            Err(DeliveryError::Unknown(detail)) => {
                unknown = true;
                reasons.insert(detail);
            }
            Err(DeliveryError::Permanent(detail)) => {
                permanent = true;
                reasons.insert(detail);
            }
        }
    }
    let reasons = reasons.into_iter().collect::<Vec<_>>().join("; ");
    if !accepted.is_empty() {
        let mut detail = format!(
            "{} of {total} device{} accepted",
            accepted.len(),
            if total == 1 { "" } else { "s" }
        );
        let quoted: Vec<&str> = accepted
            .iter()
            .map(String::as_str)
            .filter(|text| !text.is_empty())
            .take(MAX_QUOTED_DETAILS)
            .collect();
        if !quoted.is_empty() {
            detail.push_str(&format!(" ({})", quoted.join(", ")));
        }
        if !reasons.is_empty() {
            detail.push_str(&format!("; others: {reasons}"));
        }
        return Ok(Receipt {
            detail,
            invalid_addresses: invalid,
        });
    }
    let detail = format!("no device accepted: {reasons}");
    if !retryable && !unknown && !permanent {
        Err(DeliveryError::AddressInvalid {
            addresses: invalid,
            detail,
        })
    } else if unknown {
        Err(DeliveryError::Unknown(detail))
    } else if retryable {
        Err(DeliveryError::Retryable(detail))
    } else {
        Err(DeliveryError::Permanent(detail))
    }
}

impl ChannelProvider for PushChannel {
    fn channel(&self) -> Channel {
        Channel::Push
    }

    fn circuit_states(&self) -> Vec<(String, herald_worker::CircuitState)> {
        let apns = self.apns.iter().flat_map(Failover::states);
        let fcm = self.fcm.iter().flat_map(Failover::states);
        apns.chain(fcm)
            .map(|(name, state)| (name.to_owned(), state))
            .collect()
    }

    async fn deliver(&self, context: &DeliveryContext) -> Attempted {
        let (provider, result) = self.attempt(context).await;
        Attempted {
            provider: provider.unwrap_or_else(|| self.configured_providers()),
            result,
        }
    }
}
