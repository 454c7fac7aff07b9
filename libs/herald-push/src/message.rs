//! A rendered push notification as both providers take it, and the limits checked before
//! anything is sent.

use std::collections::BTreeMap;
use std::fmt;

use herald_domain::{DeliveryId, Priority};
use herald_templates::RenderedPush;
use herald_worker::DeliveryError;

/// The largest payload either provider accepts, in bytes: the APNs JSON payload and the FCM
/// `message` object. Larger payloads are refused before any request is made.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// The data key whose value becomes `apns-collapse-id` (APNs) and `collapse_key` (FCM
/// Android). It is a control key, so it is not sent to the app as data.
pub const COLLAPSE_ID_KEY: &str = "collapse_id";

/// The longest `apns-collapse-id` APNs accepts, in bytes.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// One notification, ready to send to any number of devices. Title, body and data are the
/// recipient's: `Debug` shows only their sizes.
#[derive(Clone)]
pub struct PushMessage {
    /// The delivery, used as the provider's idempotency id (`apns-id`).
    pub delivery_id: DeliveryId,
    /// Notification title.
    pub title: String,
    /// Notification body.
    pub body: String,
    /// Custom data for the app (without the collapse key).
    pub data: BTreeMap<String, String>,
    /// Herald priority; High and Critical are sent as the providers' high priority.
    pub priority: Priority,
    /// Replaces an earlier notification with the same id on the device, when set.
    pub collapse_id: Option<String>,
}

impl PushMessage {
    /// The message for a rendered push part. The `collapse_id` data key, if present, moves to
    /// `collapse_id`.
    ///
    /// # Errors
    /// `Permanent` when the collapse id is longer than APNs accepts.
    pub fn new(
        delivery_id: DeliveryId,
        rendered: RenderedPush,
        priority: Priority,
    ) -> Result<Self, DeliveryError> {
        let RenderedPush {
            title,
            body,
            mut data,
        } = rendered;
        let collapse_id = data.remove(COLLAPSE_ID_KEY);
        if let Some(collapse_id) = &collapse_id
            && collapse_id.len() > MAX_COLLAPSE_ID_BYTES
        {
            return Err(DeliveryError::Permanent(format!(
                "push data `{COLLAPSE_ID_KEY}` is {} bytes, more than the \
                 {MAX_COLLAPSE_ID_BYTES} APNs accepts",
                collapse_id.len()
            )));
        }
        Ok(Self {
            delivery_id,
            title,
            body,
            data,
            priority,
            collapse_id,
        })
    }

    /// True for the providers' high priority (immediate delivery, may wake the device).
    pub fn is_high_priority(&self) -> bool {
        matches!(self.priority, Priority::High | Priority::Critical)
    }
}

impl fmt::Debug for PushMessage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PushMessage")
            .field("delivery_id", &self.delivery_id)
            .field("title_bytes", &self.title.len())
            .field("body_bytes", &self.body.len())
            .field("data_keys", &self.data.len())
            .field("priority", &self.priority)
            .field("collapse_id", &self.collapse_id.is_some())
            .finish()
    }
}

/// Refuses a serialized payload larger than `MAX_PAYLOAD_BYTES`.
pub(crate) fn check_size(payload: &[u8]) -> Result<(), DeliveryError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        Err(DeliveryError::Permanent(format!(
            "push payload is {} bytes, more than the {MAX_PAYLOAD_BYTES} the provider accepts",
            payload.len()
        )))
    } else {
        Ok(())
    }
}

/// A push request that got no answer from `service` (`apns`, `fcm`): retryable when no
/// connection was made, else an unknown outcome (the notification may have been pushed; a
/// resend carries the same `apns-id`, or FCM message, for the same delivery).
pub(crate) fn request_failure(service: &str, error: reqwest::Error) -> DeliveryError {
    let request_left = !(error.is_connect() || error.is_builder());
    DeliveryError::unanswered(
        request_left,
        format!(
            "{service} request failed: {}",
            describe_transport_error(error)
        ),
    )
}

/// A transport error without the request URL (an APNs URL carries the device token) and with
/// its causes, which name the failure (`connection refused`, `operation timed out`).
pub(crate) fn describe_transport_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
