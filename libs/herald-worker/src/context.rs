//! `DeliveryContext`: one claimed delivery, typed and ready for a channel to render and send.
//! The worker builds it from the rows PostgreSQL returned for the claim
//! (`herald_db::deliveries::ClaimedDelivery`), the template version it compiled once and cached,
//! and the recipient's preferences; channels see only this type, never the database.

use std::sync::Arc;

use herald_db::deliveries::ClaimedDelivery;
use herald_db::personal::PersonalText;
use herald_domain::{Channel, DeliveryId, DeviceToken, NotificationId, Priority};
use herald_templates::{CompiledVersion, Locale};

/// Everything a channel needs to render and send one delivery. `Debug` leaves out the address,
/// the parameters and the device tokens (personal data).
#[derive(Clone)]
pub struct DeliveryContext {
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Channel.
    pub channel: Channel,
    /// The address on this channel (personal data: never log it).
    pub address: Option<String>,
    /// The product's user id, if given.
    pub user_id: Option<String>,
    /// Priority.
    pub priority: Priority,
    /// Category.
    pub category: String,
    /// The template's key (the notification type, e.g. `order-shipped`).
    pub template_key: String,
    /// The template version the notification was accepted with, parsed and compiled (shared
    /// by every delivery of the version).
    pub template: Arc<CompiledVersion>,
    /// The recipient's locale: given at submit, else the user's preference. A stored tag that
    /// no longer parses counts as none (the template's default locale).
    pub locale: Option<Locale>,
    /// The A/B test variant assigned at submit, whose parts are rendered (`None`: the base
    /// content).
    pub variant: Option<String>,
    /// Template parameters (personal data: never log them).
    pub parameters: serde_json::Value,
    /// The claimed attempt's number (1 for the first).
    pub attempt: u32,
    /// The attempt's number within the current cycle; failover picks the provider by it.
    pub cycle_attempt: u32,
    /// Push: the user's enabled device tokens, resolved from preferences before sending.
    pub device_tokens: Vec<DeviceToken>,
    /// The user opted out of tracking (email: no open pixel, no rewritten links); resolved
    /// from preferences before sending.
    pub tracking_opt_out: bool,
    /// This attempt takes over one whose lease expired, and the channel resends unknown
    /// outcomes: `Failover::select_for` sends it where that attempt went.
    pub takeover: bool,
    /// The provider an earlier attempt's unknown outcome pinned the delivery to: every
    /// attempt goes there (`Failover::select_for`).
    pub pinned_provider: Option<String>,
}

impl DeliveryContext {
    /// The context of a claimed delivery rendered with `template`, before preferences are
    /// applied (no device tokens, tracking allowed).
    pub fn claimed(delivery: ClaimedDelivery, template: Arc<CompiledVersion>) -> Self {
        let locale = delivery
            .locale
            .as_deref()
            .and_then(|tag| Locale::parse(tag).ok());
        Self {
            delivery_id: delivery.delivery_id,
            notification_id: delivery.notification_id,
            channel: delivery.channel,
            address: delivery.address.map(PersonalText::into_inner),
            user_id: delivery.user_id,
            priority: delivery.priority,
            category: delivery.category,
            template_key: delivery.template_key,
            template,
            locale,
            variant: delivery.variant,
            parameters: delivery.parameters.into_inner(),
            attempt: delivery.attempt,
            cycle_attempt: delivery.cycle_attempt,
            device_tokens: Vec::new(),
            tracking_opt_out: false,
            takeover: delivery.takeover,
            pinned_provider: delivery.pinned_provider,
        }
    }
}

impl std::fmt::Debug for DeliveryContext {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeliveryContext")
            .field("delivery_id", &self.delivery_id)
            .field("notification_id", &self.notification_id)
            .field("channel", &self.channel)
            .field("priority", &self.priority)
            .field("category", &self.category)
            .field("template_key", &self.template_key)
            .field("locale", &self.locale)
            .field("variant", &self.variant)
            .field("attempt", &self.attempt)
            .field("cycle_attempt", &self.cycle_attempt)
            .field("tracking_opt_out", &self.tracking_opt_out)
            .field("takeover", &self.takeover)
            .field("pinned_provider", &self.pinned_provider)
            .finish_non_exhaustive()
    }
}
