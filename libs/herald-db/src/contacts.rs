//! Disabled contacts: addresses a provider called no longer valid (an unregistered device
//! token, an invalid or unsubscribed number, a hard bounce). Workers check them before sending
//! and send nothing to them again. Only a keyed hash of each address is stored (HMAC-SHA256
//! under the lookup key: a plain hash of a phone number can be reversed by trying them all).
//! Rows from before keyed hashes (`keyed = false`) hold a plain SHA-256; they are still
//! matched by it until `rekey_legacy` replaces them.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use diesel::upsert::on_constraint;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::schema::disabled_contacts;
use crate::statement::planned_per_run;

/// The stored form of `address` on `channel`: the keyed lookup hash of the channel and the
/// address, with email addresses lowercased so a differently cased copy is disabled too.
///
/// # Errors
/// `Error::Keys` when no keyring is installed.
pub fn address_hash(channel: Channel, address: &str) -> Result<Vec<u8>> {
    let normalized = normalized(channel, address);
    Ok(herald_crypto::keyring()?
        .lookup()
        .hash(
            "contact",
            &[channel.as_str().as_bytes(), normalized.as_bytes()],
        )
        .to_vec())
}

/// What rows from before keyed hashes hold: SHA-256 of `channel:address`, normalized alike.
fn legacy_address_hash(channel: Channel, address: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(channel.as_str())
        .chain_update(b":")
        .chain_update(normalized(channel, address))
        .finalize()
        .to_vec()
}

/// `address` as it is hashed: trimmed, and lowercased for email.
fn normalized(channel: Channel, address: &str) -> String {
    let address = address.trim();
    if channel == Channel::Email {
        address.to_lowercase()
    } else {
        address.to_owned()
    }
}

/// Why and when an address was disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// The provider's reason, free of personal data.
    pub reason: String,
    /// When.
    pub disabled_at: chrono::DateTime<chrono::Utc>,
}

/// Disables `addresses` on `channel` (already disabled ones keep their first reason) and
/// returns how many were newly disabled.
pub async fn disable(
    connection: &mut AsyncPgConnection,
    channel: Channel,
    user_id: Option<&str>,
    addresses: &[String],
    reason: &str,
    delivery_id: Option<DeliveryId>,
) -> Result<usize> {
    if addresses.is_empty() {
        return Ok(0);
    }
    let rows = addresses
        .iter()
        .map(|address| {
            Ok((
                disabled_contacts::channel.eq(channel.as_str()),
                disabled_contacts::address_hash.eq(address_hash(channel, address)?),
                disabled_contacts::user_id.eq(user_id),
                disabled_contacts::reason.eq(reason),
                disabled_contacts::delivery_id.eq(delivery_id.map(|id| *id.as_uuid())),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(diesel::insert_into(disabled_contacts::table)
        .values(rows)
        .on_conflict(on_constraint("disabled_contacts_pkey"))
        .do_nothing()
        .execute(connection)
        .await?)
}

/// Which of `contacts` (channel and address) are disabled, with why, in one query.
pub async fn disabled_among(
    connection: &mut AsyncPgConnection,
    contacts: &[(Channel, &str)],
) -> Result<Vec<(Channel, String, Disabled)>> {
    if contacts.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = contacts
        .iter()
        .map(|(channel, address)| address_hash(*channel, address))
        .collect::<Result<Vec<_>>>()?;
    let legacy: Vec<Vec<u8>> = contacts
        .iter()
        .map(|(channel, address)| legacy_address_hash(*channel, address))
        .collect();
    let channels: BTreeSet<&str> = contacts
        .iter()
        .map(|(channel, _)| channel.as_str())
        .collect();
    let rows: Vec<(Vec<u8>, String, chrono::DateTime<chrono::Utc>)> = planned_per_run(
        disabled_contacts::table
            .filter(disabled_contacts::channel.eq_any(channels))
            .filter(
                disabled_contacts::address_hash
                    .eq_any(&hashes)
                    .and(disabled_contacts::keyed)
                    .or(disabled_contacts::address_hash
                        .eq_any(&legacy)
                        .and(disabled_contacts::keyed.eq(false))),
            )
            .select((
                disabled_contacts::address_hash,
                disabled_contacts::reason,
                disabled_contacts::disabled_at,
            )),
    )
    .load(connection)
    .await?;
    let disabled: BTreeMap<Vec<u8>, Disabled> = rows
        .into_iter()
        .map(|(hash, reason, disabled_at)| {
            (
                hash,
                Disabled {
                    reason,
                    disabled_at,
                },
            )
        })
        .collect();
    Ok(contacts
        .iter()
        .zip(hashes.iter().zip(&legacy))
        .filter_map(|((channel, address), (hash, legacy))| {
            disabled
                .get(hash)
                .or_else(|| disabled.get(legacy))
                .map(|why| (*channel, (*address).to_owned(), why.clone()))
        })
        .collect())
}

/// Forgets the disabled contacts recorded for `user_id` (the user was erased).
pub async fn delete_for_user(connection: &mut AsyncPgConnection, user_id: &str) -> Result<usize> {
    Ok(
        diesel::delete(disabled_contacts::table.filter(disabled_contacts::user_id.eq(user_id)))
            .execute(connection)
            .await?,
    )
}

/// Replaces rows from before keyed hashes with keyed ones, `batch` at a time, and returns how
/// many it replaced and how many it could not. A plain hash is replaced when one of its user's
/// known addresses (the disabling delivery's address, the user's stored email, phone and
/// device tokens) produces it; the others stay in force under their plain hash.
///
/// # Errors
/// When a query fails or a stored address does not open.
pub async fn rekey_legacy(connection: &mut AsyncPgConnection, batch: i64) -> Result<(u64, u64)> {
    type LegacyRow = (
        String,
        Vec<u8>,
        Option<String>,
        Option<uuid::Uuid>,
        String,
        chrono::DateTime<chrono::Utc>,
    );
    let (mut rekeyed, mut left) = (0, 0);
    let mut after: Option<(String, Vec<u8>)> = None;
    loop {
        let mut query = disabled_contacts::table
            .filter(disabled_contacts::keyed.eq(false))
            .order((disabled_contacts::channel, disabled_contacts::address_hash))
            .select((
                disabled_contacts::channel,
                disabled_contacts::address_hash,
                disabled_contacts::user_id,
                disabled_contacts::delivery_id,
                disabled_contacts::reason,
                disabled_contacts::disabled_at,
            ))
            .limit(batch)
            .into_boxed();
        if let Some((channel, hash)) = &after {
            query = query.filter(
                disabled_contacts::channel
                    .gt(channel.clone())
                    .or(disabled_contacts::channel
                        .eq(channel.clone())
                        .and(disabled_contacts::address_hash.gt(hash.clone()))),
            );
        }
        let rows: Vec<LegacyRow> = query.load(connection).await?;
        let Some(last) = rows.last() else { break };
        after = Some((last.0.clone(), last.1.clone()));
        for (channel_name, hash, user_id, delivery_id, reason, disabled_at) in rows {
            let channel: Channel = channel_name.parse()?;
            let candidates = known_addresses(connection, user_id.as_deref(), delivery_id).await?;
            let Some(address) = candidates
                .iter()
                .find(|address| legacy_address_hash(channel, address) == hash)
            else {
                left += 1;
                continue;
            };
            diesel::insert_into(disabled_contacts::table)
                .values((
                    disabled_contacts::channel.eq(&channel_name),
                    disabled_contacts::address_hash.eq(address_hash(channel, address)?),
                    disabled_contacts::user_id.eq(&user_id),
                    disabled_contacts::delivery_id.eq(delivery_id),
                    disabled_contacts::reason.eq(&reason),
                    disabled_contacts::disabled_at.eq(disabled_at),
                    disabled_contacts::keyed.eq(true),
                ))
                .on_conflict_do_nothing()
                .execute(connection)
                .await?;
            diesel::delete(
                disabled_contacts::table
                    .filter(disabled_contacts::channel.eq(&channel_name))
                    .filter(disabled_contacts::address_hash.eq(&hash)),
            )
            .execute(connection)
            .await?;
            rekeyed += 1;
        }
    }
    Ok((rekeyed, left))
}

/// How many disabled contacts still hold a plain hash (`rekey_legacy` replaces them).
pub async fn plain_hashes(connection: &mut AsyncPgConnection) -> Result<i64> {
    Ok(disabled_contacts::table
        .filter(disabled_contacts::keyed.eq(false))
        .count()
        .get_result(connection)
        .await?)
}

/// Every address Herald holds for a disabled contact's user and delivery.
async fn known_addresses(
    connection: &mut AsyncPgConnection,
    user_id: Option<&str>,
    delivery_id: Option<uuid::Uuid>,
) -> Result<Vec<String>> {
    use crate::personal::PersonalText;
    use crate::schema::deliveries;
    let mut addresses = Vec::new();
    if let Some(delivery_id) = delivery_id {
        let address: Option<Option<PersonalText>> = deliveries::table
            .find(delivery_id)
            .select(deliveries::address)
            .first(connection)
            .await
            .optional()?;
        addresses.extend(address.flatten().map(PersonalText::into_inner));
    }
    if let Some(user_id) = user_id
        && let Some(record) = crate::preferences::get(connection, user_id).await?
    {
        addresses.extend(record.email.map(PersonalText::into_inner));
        addresses.extend(record.phone.map(PersonalText::into_inner));
        addresses.extend(record.device_tokens.into_iter().map(|device| device.token));
    }
    Ok(addresses)
}
