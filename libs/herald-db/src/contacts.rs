//! Disabled contacts: addresses a provider called no longer valid (an unregistered device
//! token, an invalid or unsubscribed number, a hard bounce). Workers check them before sending
//! and send nothing to them again. Only a SHA-256 of each address is stored.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use diesel::upsert::on_constraint;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::schema::disabled_contacts;
use crate::statement::planned_per_run;

/// The stored form of `address` on `channel`: SHA-256 of `channel:address`, with email
/// addresses lowercased so a differently cased copy is disabled too.
pub fn address_hash(channel: Channel, address: &str) -> Vec<u8> {
    let address = address.trim();
    let normalized = if channel == Channel::Email {
        address.to_lowercase()
    } else {
        address.to_owned()
    };
    Sha256::new()
        .chain_update(channel.as_str())
        .chain_update(b":")
        .chain_update(normalized)
        .finalize()
        .to_vec()
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
    let rows: Vec<_> = addresses
        .iter()
        .map(|address| {
            (
                disabled_contacts::channel.eq(channel.as_str()),
                disabled_contacts::address_hash.eq(address_hash(channel, address)),
                disabled_contacts::user_id.eq(user_id),
                disabled_contacts::reason.eq(reason),
                disabled_contacts::delivery_id.eq(delivery_id.map(|id| *id.as_uuid())),
            )
        })
        .collect();
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
    let hashes: Vec<Vec<u8>> = contacts
        .iter()
        .map(|(channel, address)| address_hash(*channel, address))
        .collect();
    let channels: BTreeSet<&str> = contacts
        .iter()
        .map(|(channel, _)| channel.as_str())
        .collect();
    let rows: Vec<(Vec<u8>, String, chrono::DateTime<chrono::Utc>)> = planned_per_run(
        disabled_contacts::table
            .filter(disabled_contacts::channel.eq_any(channels))
            .filter(disabled_contacts::address_hash.eq_any(&hashes))
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
        .zip(&hashes)
        .filter_map(|((channel, address), hash)| {
            disabled
                .get(hash)
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
