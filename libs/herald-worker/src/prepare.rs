//! Everything between a batch's claim and its provider calls, per batch rather than per
//! delivery: the recipients' preferences (one query for every user of the batch), the
//! disabled contacts (one query for every address and device token), and the rate limits (one
//! pipelined Redis round trip). Each delivery comes out ready to send, held back with an
//! outcome to record, or to be released.

use std::collections::{BTreeSet, HashMap, HashSet};

use herald_db::deliveries::Outcome;
use herald_db::preferences::PreferenceRecord;
use herald_domain::Channel;
use herald_templates::Locale;

use crate::core::Core;
use crate::{Admission, ChannelProvider, DeliveryContext};

/// What preparing found for one claimed delivery.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Call the provider with this context.
    Send(Box<DeliveryContext>),
    /// Do not send (preferences, a disabled address, a rate limit): record this outcome.
    Hold(Outcome),
    /// Its stored preferences could not be read: give the claim back and requeue the message.
    Release(herald_db::Error),
}

/// Prepares `contexts` (claimed, in batch order; an outcome where the context could not be
/// built), re-reading the recipients' preferences just before sending (an opt-out or new quiet
/// hours while queued wins), resolving user-id recipients' addresses, device tokens and
/// locales, leaving out disabled addresses and applying rate limits. Fails as a whole only
/// when PostgreSQL does.
pub(crate) async fn prepare<P: ChannelProvider>(
    core: &Core<P>,
    connection: &mut herald_db::Connection,
    contexts: Vec<Result<DeliveryContext, Outcome>>,
) -> Result<Vec<Prepared>, herald_db::Error> {
    let user_ids: Vec<String> = contexts
        .iter()
        .filter_map(|context| context.as_ref().ok()?.user_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let preferences = herald_db::preferences::get_many(connection, &user_ids).await?;
    let mut prepared: Vec<Prepared> = contexts
        .into_iter()
        .map(|context| {
            let mut context = match context {
                Ok(context) => context,
                Err(outcome) => return Prepared::Hold(outcome),
            };
            let record = match context
                .user_id
                .as_deref()
                .and_then(|user_id| preferences.get(user_id))
            {
                None => None,
                Some(Ok(record)) => Some(record),
                Some(Err(error)) => return Prepared::Release(error.clone().into()),
            };
            match apply_preferences(core, &mut context, record) {
                None => Prepared::Send(Box::new(context)),
                Some(outcome) => {
                    tracing::info!(
                        notification.id = %context.notification_id,
                        delivery.id = %context.delivery_id,
                        channel = %context.channel,
                        outcome = ?outcome,
                        "Preferences held the delivery back."
                    );
                    Prepared::Hold(outcome)
                }
            }
        })
        .collect();
    leave_out_disabled(connection, &mut prepared).await?;
    apply_rate_limits(core, &mut prepared).await;
    Ok(prepared)
}

/// Applies the recipient's stored preferences (if it is a user with any) to `context` and
/// returns the outcome when the delivery must not be sent now.
fn apply_preferences<P>(
    core: &Core<P>,
    context: &mut DeliveryContext,
    record: Option<&PreferenceRecord>,
) -> Option<Outcome> {
    context.user_id.as_ref()?;
    if let Some(record) = record {
        let overrides = core.policy.overrides(&context.category, context.priority);
        match record.preferences.decide(
            context.channel,
            &context.category,
            overrides,
            core.clock.now(),
        ) {
            herald_domain::Verdict::Send => {}
            herald_domain::Verdict::Suppress(reason) => {
                return Some(Outcome::Suppressed { reason });
            }
            herald_domain::Verdict::DeferUntil(until) => {
                return Some(Outcome::Deferred {
                    until,
                    reason: format!("quiet_hours: held until {}", until.to_rfc3339()),
                });
            }
        }
        if context.address.is_none() {
            context.address = match context.channel {
                Channel::Email => record.email.as_ref(),
                Channel::Sms => record.phone.as_ref(),
                Channel::Push | Channel::InApp | Channel::Chat => None,
            }
            .map(|address| address.expose().to_owned());
        }
        if context.channel == Channel::Push {
            context.device_tokens.clone_from(&record.device_tokens);
        }
        if context.locale.is_none() {
            context.locale = record
                .locale
                .as_deref()
                .and_then(|tag| Locale::parse(tag).ok());
        }
        context.tracking_opt_out = record.tracking_opt_out;
    }
    let missing = match context.channel {
        Channel::Email => context.address.is_none().then_some("email address"),
        Channel::Sms => context.address.is_none().then_some("phone number"),
        Channel::Push => context.device_tokens.is_empty().then_some("device tokens"),
        Channel::InApp | Channel::Chat => None,
    };
    missing.map(|missing| Outcome::Suppressed {
        // Stored reasons never name the user: the delivery's `user_id` does, and an erase
        // forgets it.
        reason: format!("no_address: the user has no {missing}"),
    })
}

/// Drops addresses a provider called invalid before, for the whole batch in one query: a
/// disabled email address or phone number suppresses its delivery; disabled device tokens are
/// left out of a push, which is suppressed only when none is left.
async fn leave_out_disabled(
    connection: &mut herald_db::Connection,
    prepared: &mut [Prepared],
) -> Result<(), herald_db::Error> {
    let contacts: Vec<(Channel, String)> = prepared
        .iter()
        .filter_map(|prepared| match prepared {
            Prepared::Send(context) => Some(context),
            Prepared::Hold(_) | Prepared::Release(_) => None,
        })
        .flat_map(|context| contacts_of(context))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if contacts.is_empty() {
        return Ok(());
    }
    let asked: Vec<(Channel, &str)> = contacts
        .iter()
        .map(|(channel, address)| (*channel, address.as_str()))
        .collect();
    let disabled: HashMap<(Channel, String), herald_db::contacts::Disabled> =
        herald_db::contacts::disabled_among(connection, &asked)
            .await?
            .into_iter()
            .map(|(channel, address, why)| ((channel, address), why))
            .collect();
    if disabled.is_empty() {
        return Ok(());
    }
    for entry in prepared.iter_mut() {
        let Prepared::Send(context) = entry else {
            continue;
        };
        let held = match context.channel {
            Channel::Email | Channel::Sms => context
                .address
                .as_ref()
                .and_then(|address| disabled.get(&(context.channel, address.clone())))
                .map(|why| Outcome::Suppressed {
                    reason: format!(
                        "address_disabled: the {} address was disabled on {} ({})",
                        context.channel,
                        why.disabled_at.format("%Y-%m-%d"),
                        why.reason
                    ),
                }),
            Channel::Push => {
                let tokens: HashSet<&String> = disabled
                    .keys()
                    .filter(|(channel, _)| *channel == Channel::Push)
                    .map(|(_, token)| token)
                    .collect();
                context
                    .device_tokens
                    .retain(|device| !tokens.contains(&device.token));
                context
                    .device_tokens
                    .is_empty()
                    .then(|| Outcome::Suppressed {
                        reason: "address_disabled: every device token of the user was disabled"
                            .into(),
                    })
            }
            Channel::InApp | Channel::Chat => None,
        };
        if let Some(outcome) = held {
            *entry = Prepared::Hold(outcome);
        }
    }
    Ok(())
}

/// The contact points of `context` that can be disabled.
fn contacts_of(context: &DeliveryContext) -> Vec<(Channel, String)> {
    match context.channel {
        Channel::Email | Channel::Sms => context
            .address
            .iter()
            .map(|address| (context.channel, address.clone()))
            .collect(),
        Channel::Push => context
            .device_tokens
            .iter()
            .map(|device| (Channel::Push, device.token.clone()))
            .collect(),
        Channel::InApp | Channel::Chat => Vec::new(),
    }
}

/// Applies the rate limits to every delivery still to be sent, in one Redis round trip.
async fn apply_rate_limits<P>(core: &Core<P>, prepared: &mut [Prepared]) {
    let Some(limiter) = &core.limiter else {
        return;
    };
    let sending: Vec<&DeliveryContext> = prepared
        .iter()
        .filter_map(|prepared| match prepared {
            Prepared::Send(context) => Some(context.as_ref()),
            Prepared::Hold(_) | Prepared::Release(_) => None,
        })
        .collect();
    let admissions = limiter.admit_many(&sending).await;
    let mut admissions = admissions.into_iter();
    for entry in prepared.iter_mut() {
        let Prepared::Send(context) = entry else {
            continue;
        };
        if let Some(Admission::Suppress(reason)) = admissions.next() {
            tracing::info!(
                notification.id = %context.notification_id,
                delivery.id = %context.delivery_id,
                channel = %context.channel,
                reason = %reason,
                "Delivery suppressed."
            );
            *entry = Prepared::Hold(Outcome::Suppressed { reason });
        }
    }
}
