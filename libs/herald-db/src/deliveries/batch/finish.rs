//! Outcomes of many deliveries at once: one transaction records every outcome of a batch
//! (fenced per row), its events, failures and deferrals.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment};
use diesel::sql_types::{Array, Int4, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{lock, retry_conflict};
use crate::deliveries::{Claim, Outcome};
use crate::events::{self, NewEvent};
use crate::statement::planned_per_run;
use crate::{Error, Result};

/// One attempt's outcome to record with `finish_many`.
#[derive(Debug, Clone, Copy)]
pub struct Finishing<'a> {
    /// The attempt's claim.
    pub claim: &'a Claim,
    /// How it ended.
    pub outcome: &'a Outcome,
    /// The provider that was called, if any.
    pub provider: Option<&'a str>,
    /// Addresses the provider called invalid: disabled (`contacts::disable`) in the same
    /// transaction, so no later attempt can see the outcome without them.
    pub invalid_addresses: &'a [String],
    /// Pin the delivery to `provider` for every later attempt (its outcome there could not be
    /// known, and the channel resends): stored in `deliveries.pinned_provider`, kept once set.
    pub pin: bool,
    /// When the outcome waits to retry: the delay before its retry copy comes back from the
    /// delay queue. The delivery cannot be claimed before 90% of it has passed
    /// (`deliveries.retry_not_before`, in PostgreSQL's clock), so a message that comes back
    /// early (a packed message returned whole) does not attempt it again before its time.
    pub retry_in: Option<std::time::Duration>,
}

/// Records many attempts' outcomes in one transaction: for each whose delivery is still
/// `sending` at the claimed attempt, its new state, a `sent` event (when a provider was
/// called) and the outcome's event; a final failure also gets its `failures` row (before
/// the caller dead-letters the message), a deferral its outbox row for `until`, and the
/// addresses the provider called invalid are disabled. Returns,
/// per item and in order, whether it was recorded (`false`: the claim was lost and nothing
/// was written for it).
pub async fn finish_many(
    connection: &mut AsyncPgConnection,
    items: &[Finishing<'_>],
) -> Result<Vec<bool>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by_key(|index| *items[*index].claim.delivery_id.as_uuid());
    let rows = OutcomeRows::new(&order, items);
    let mut retries = 0;
    let recorded = loop {
        let result = connection
            .transaction::<_, Error, _>(async |connection| {
                finish_locked(connection, &rows, &order, items).await
            })
            .await;
        match result {
            Err(error) if retry_conflict(&error, &mut retries) => {}
            other => break other?,
        }
    };
    Ok(items
        .iter()
        .map(|item| recorded.contains_key(item.claim.delivery_id.as_uuid()))
        .collect())
}

/// The body of `finish_many`'s transaction; returns the recorded deliveries with their
/// notification and channel.
async fn finish_locked(
    connection: &mut AsyncPgConnection,
    rows: &OutcomeRows,
    order: &[usize],
    items: &[Finishing<'_>],
) -> Result<BTreeMap<Uuid, (Uuid, String)>> {
    lock(connection, &rows.ids).await?;
    let returned: Vec<(Uuid, Uuid, String, Option<String>)> =
        planned_per_run(rows.clone()).load(connection).await?;
    let user_ids: HashMap<Uuid, Option<String>> = returned
        .iter()
        .map(|(id, _, _, user_id)| (*id, user_id.clone()))
        .collect();
    let recorded: BTreeMap<Uuid, (Uuid, String)> = returned
        .into_iter()
        .map(|(id, notification_id, channel, _)| (id, (notification_id, channel)))
        .collect();
    let mut events = Vec::new();
    let mut failures = FailureRows::default();
    let mut deferrals = Vec::new();
    for (position, index) in order.iter().enumerate() {
        let item = &items[*index];
        let id = *item.claim.delivery_id.as_uuid();
        let Some((notification_id, channel)) = recorded.get(&id) else {
            continue;
        };
        let event = NewEvent {
            delivery_id: id,
            kind: item.outcome.state().as_str(),
            attempt: item.claim.attempt,
            detail: &rows.details[position],
            provider: item.provider,
            error_class: item.outcome.error_class(),
            notification_id: Some(*notification_id),
            channel: Some(channel),
        };
        // `sent`: the attempt was handed to a provider, whatever it answered.
        if let Some(provider) = item.provider.filter(|_| item.outcome.reached_provider()) {
            events.push(NewEvent {
                kind: "sent",
                detail: "",
                provider: Some(provider),
                error_class: None,
                ..event.clone()
            });
        }
        events.push(event);
        match item.outcome {
            Outcome::Failed { class, .. } => failures.push(
                id,
                *notification_id,
                channel,
                item.claim.attempt,
                &rows.details[position],
                class.as_str(),
            ),
            Outcome::Deferred { until, .. } => deferrals.push((id, *until)),
            _ => {}
        }
    }
    events::insert(connection, &events).await?;
    insert_failures(connection, failures).await?;
    insert_deferrals(connection, deferrals).await?;
    for item in items {
        let id = item.claim.delivery_id.as_uuid();
        let Some((_, channel)) = recorded.get(id) else {
            continue;
        };
        if item.invalid_addresses.is_empty() {
            continue;
        }
        crate::contacts::disable(
            connection,
            channel.parse()?,
            user_ids.get(id).and_then(Option::as_deref),
            item.invalid_addresses,
            &format!(
                "{} reported the address invalid",
                item.provider.unwrap_or("the provider")
            ),
            Some(item.claim.delivery_id),
        )
        .await?;
    }
    Ok(recorded)
}

/// `UPDATE deliveries … FROM unnest(…) RETURNING id, notification_id, channel, user_id`: every
/// outcome of a batch in one fixed-shape statement, fenced per row on `sending` at the
/// claimed attempt. Columns are in delivery-id order.
#[derive(Clone)]
struct OutcomeRows {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    states: Vec<&'static str>,
    last_errors: Vec<Option<String>>,
    scheduled_for: Vec<Option<DateTime<Utc>>>,
    /// The provider to pin each delivery to, if any.
    pins: Vec<Option<String>>,
    /// Each retry's delay in milliseconds (NULL for any other outcome).
    retry_ms: Vec<Option<i64>>,
    /// The stored text of each outcome (PostgreSQL text cannot hold NUL, which a provider's
    /// reply could contain, so it is removed).
    details: Vec<String>,
    now: DateTime<Utc>,
}

impl OutcomeRows {
    fn new(order: &[usize], items: &[Finishing<'_>]) -> Self {
        let ordered = || order.iter().map(|index| &items[*index]);
        let details: Vec<String> = ordered()
            .map(|item| item.outcome.detail().replace('\0', ""))
            .collect();
        Self {
            ids: ordered()
                .map(|item| *item.claim.delivery_id.as_uuid())
                .collect(),
            attempts: ordered().map(|item| item.claim.attempt).collect(),
            states: ordered()
                .map(|item| item.outcome.state().as_str())
                .collect(),
            last_errors: ordered()
                .zip(&details)
                .map(|(item, detail)| {
                    (!matches!(item.outcome, Outcome::Delivered { .. })).then(|| detail.clone())
                })
                .collect(),
            scheduled_for: ordered()
                .map(|item| match item.outcome {
                    Outcome::Deferred { until, .. } => Some(*until),
                    _ => None,
                })
                .collect(),
            pins: ordered()
                .map(|item| item.provider.filter(|_| item.pin).map(ToOwned::to_owned))
                .collect(),
            retry_ms: ordered()
                .map(|item| {
                    item.retry_in
                        .filter(|_| item.outcome.state() == herald_domain::DeliveryState::RetryWait)
                        .map(|delay| i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
                })
                .collect(),
            details,
            now: Utc::now(),
        }
    }
}

impl QueryFragment<Pg> for OutcomeRows {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE deliveries AS d SET state = o.state, last_error = o.last_error, \
             lease_until = NULL, scheduled_for = COALESCE(o.scheduled_for, d.scheduled_for), \
             pinned_provider = COALESCE(d.pinned_provider, o.pin), \
             retry_not_before = now() + o.retry_ms * interval '0.9 milliseconds', updated_at = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(", delivered_at = CASE WHEN o.state = 'delivered' THEN ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(" END FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql("::uuid[], ");
        out.push_bind_param::<Array<Int4>, _>(&self.attempts)?;
        out.push_sql("::int4[], ");
        out.push_bind_param::<Array<Text>, _>(&self.states)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.last_errors)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Timestamptz>>, _>(&self.scheduled_for)?;
        out.push_sql("::timestamptz[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.pins)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Int8>>, _>(&self.retry_ms)?;
        out.push_sql(
            "::int8[]) AS o(id, attempt, state, last_error, scheduled_for, pin, retry_ms) \
             WHERE d.id = o.id AND d.state = 'sending' AND d.attempts = o.attempt \
             RETURNING d.id, d.notification_id, d.channel, d.user_id",
        );
        Ok(())
    }
}

impl Query for OutcomeRows {
    type SqlType = (SqlUuid, SqlUuid, Text, Nullable<Text>);
}

/// The `failures` rows of a batch, column by column.
#[derive(Default)]
struct FailureRows {
    delivery_ids: Vec<Uuid>,
    notification_ids: Vec<Uuid>,
    channels: Vec<String>,
    attempts: Vec<i32>,
    errors: Vec<String>,
    classes: Vec<&'static str>,
}

impl FailureRows {
    fn push(
        &mut self,
        delivery_id: Uuid,
        notification_id: Uuid,
        channel: &str,
        attempt: i32,
        error: &str,
        class: &'static str,
    ) {
        self.delivery_ids.push(delivery_id);
        self.notification_ids.push(notification_id);
        self.channels.push(channel.to_owned());
        self.attempts.push(attempt);
        self.errors.push(error.to_owned());
        self.classes.push(class);
    }
}

/// The `failures` rows of the batch's final failures (rare, so not worth a cached statement).
async fn insert_failures(connection: &mut AsyncPgConnection, rows: FailureRows) -> Result<()> {
    if rows.delivery_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.delivery_ids.iter().map(|_| Uuid::now_v7()).collect();
    diesel::sql_query(
        "INSERT INTO failures (id, delivery_id, notification_id, channel, attempts, error, \
             error_class) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[], \
             $6::text[], $7::text[])",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<SqlUuid>, _>(rows.delivery_ids)
    .bind::<Array<SqlUuid>, _>(rows.notification_ids)
    .bind::<Array<Text>, _>(rows.channels)
    .bind::<Array<Int4>, _>(rows.attempts)
    .bind::<Array<Text>, _>(rows.errors)
    .bind::<Array<Text>, _>(rows.classes)
    .execute(connection)
    .await?;
    Ok(())
}

/// The outbox rows that bring deferred deliveries back when their quiet hours end, with
/// their notification's priority (rare, so not worth a cached statement).
async fn insert_deferrals(
    connection: &mut AsyncPgConnection,
    rows: Vec<(Uuid, DateTime<Utc>)>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, untils): (Vec<Uuid>, Vec<DateTime<Utc>>) = rows.into_iter().unzip();
    diesel::sql_query(
        "INSERT INTO outbox (delivery_id, notification_id, channel, priority, available_at) \
         SELECT d.id, d.notification_id, d.channel, n.priority, r.available_at \
         FROM unnest($1::uuid[], $2::timestamptz[]) AS r(id, available_at) \
         JOIN deliveries AS d ON d.id = r.id \
         JOIN notifications AS n ON n.id = d.notification_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Timestamptz>, _>(untils)
    .execute(connection)
    .await?;
    Ok(())
}
