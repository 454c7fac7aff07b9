//! The in-app channel's provider: stores the rendered message as an inbox item, then signals
//! the user's open streams.

use herald_db::inbox::{self, NewInboxItem};
use herald_domain::Channel;
use herald_templates::RenderedInApp;
use herald_worker::{Attempted, ChannelProvider, DeliveryContext, DeliveryError, Receipt};

use crate::publisher::InboxPublisher;
use crate::signal::Signal;

/// The provider name recorded on in-app attempts.
pub const PROVIDER: &str = "inbox";

/// `ChannelProvider` for `Channel::InApp`: the "provider" is Herald's own inbox table.
///
/// Storing is idempotent per delivery (`ON CONFLICT (delivery_id) DO NOTHING`), so a
/// redelivered message or a retried attempt never creates a second item. After storing, an
/// `item_added` signal is published to the user's Redis channel; if that fails (Redis away)
/// the item is still stored and the delivery still counts as delivered: the user's streams get
/// a `resync` when the API replicas reconnect, and clients see the item when they list.
#[derive(Clone)]
pub struct InboxChannel {
    pool: herald_db::Pool,
    publisher: InboxPublisher,
    /// The schemes a rendered `action_url` may use (`[inbox] action_url_schemes`).
    action_url_schemes: Vec<String>,
}

impl std::fmt::Debug for InboxChannel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InboxChannel")
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

impl InboxChannel {
    /// A provider storing items through `pool` and signalling through `publisher`.
    /// Action URLs may use `https` only until `with_action_url_schemes` says otherwise.
    pub fn new(pool: herald_db::Pool, publisher: InboxPublisher) -> Self {
        Self {
            pool,
            publisher,
            action_url_schemes: crate::InboxSettings::default().action_url_schemes,
        }
    }

    /// The provider with `schemes` as the action URL allow-list.
    #[must_use]
    pub fn with_action_url_schemes(mut self, schemes: Vec<String>) -> Self {
        self.action_url_schemes = schemes;
        self
    }

    async fn store(&self, context: &DeliveryContext) -> Result<Receipt, DeliveryError> {
        let Some(user_id) = context.user_id.as_deref() else {
            return Err(DeliveryError::Permanent(
                "an in-app delivery needs the recipient's user_id".into(),
            ));
        };
        let rendered: RenderedInApp = herald_worker::render(context)?;
        // A parameter may supply the whole URL, so the rendered one is what is checked; a
        // refused one fails the delivery permanently (nothing is stored).
        herald_templates::check_action_url(&rendered.action_url, &self.action_url_schemes)
            .map_err(|error| DeliveryError::Permanent(error.to_string()))?;
        let stored = async {
            let mut connection = herald_db::connection(&self.pool).await?;
            inbox::insert(
                &mut connection,
                &NewInboxItem {
                    user_id,
                    delivery_id: context.delivery_id,
                    notification_id: context.notification_id,
                    category: &context.category,
                    title: &rendered.title,
                    body: &rendered.body,
                    action_url: &rendered.action_url,
                },
            )
            .await
        }
        .await
        .map_err(|error| DeliveryError::Retryable(format!("storing the inbox item: {error}")))?;
        let Some(item) = stored else {
            return Ok(Receipt {
                detail: "already in the inbox".into(),
                invalid_addresses: Vec::new(),
            });
        };
        if let Err(error) = self
            .publisher
            .publish(user_id, &Signal::ItemAdded { item_id: item.id })
            .await
        {
            tracing::warn!(
                delivery.id = %context.delivery_id,
                inbox_item.id = %item.id,
                error = %error,
                "Stored an inbox item but could not signal its streams; clients see it when they list again."
            );
        }
        Ok(Receipt {
            detail: "stored in the inbox".into(),
            invalid_addresses: Vec::new(),
        })
    }
}

impl ChannelProvider for InboxChannel {
    fn channel(&self) -> Channel {
        Channel::InApp
    }

    async fn deliver(&self, context: &DeliveryContext) -> Attempted {
        Attempted {
            provider: PROVIDER.into(),
            result: self.store(context).await,
        }
    }
}
