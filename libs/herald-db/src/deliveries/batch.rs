//! Claims, releases and outcomes of many deliveries at once, for channel workers that handle
//! their messages in micro-batches.
//!
//! Each step is one transaction with a fixed number of statements whatever the batch size:
//! the rows are first locked in id order (`SELECT … ORDER BY id FOR NO KEY UPDATE`), so
//! concurrent batches (two workers, a claim and a finish, the relay) wait for each other
//! instead of deadlocking, and then changed by one fixed-shape statement over arrays (`= ANY($1)`,
//! `unnest(…)`). Those that pick rows by their ids are planned for the ids at hand on every
//! run (`statement::planned_per_run`); the event inserts are prepared once per connection. The
//! fencing is the single-delivery one, per row: a claim only from
//! a claimable state (attempt + 1, a lease), an outcome only while the delivery is still
//! `sending` at the claimed attempt, and a lost claim writes nothing.
//!
//! The locks are `FOR NO KEY UPDATE`, the lock an `UPDATE` of non-key columns takes anyway:
//! unlike `FOR UPDATE`, it does not block the foreign-key checks (`FOR KEY SHARE`) of rows
//! inserted meanwhile for the same delivery, such as the relay's `queued` event while a worker
//! holds the claim.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment};
use diesel::sql_types::{
    Array, Bytea, Int2, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{DeliveryId, DeliveryState, Priority, TemplateId, ValueError};
use herald_templates::VersionContent;
use uuid::Uuid;

use super::{Claim, ClaimedDelivery};
use crate::events::{self, NewEvent};
use crate::personal::{PersonalJson, PersonalText, Readable};
use crate::schema::deliveries;
use crate::statement::planned_per_run;
use crate::{Error, Result};

mod finish;
mod release;

pub use finish::{Finishing, finish_many};
pub use release::release_many;

/// How often a batch transaction is retried when PostgreSQL aborted it to break a deadlock or
/// a serialization conflict (neither is the batch's fault; a retry succeeds).
const CONFLICT_RETRIES: usize = 3;

/// The template version a claimed delivery renders (versions are immutable, so workers cache
/// them by this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateVersionRef {
    /// The template.
    pub template_id: TemplateId,
    /// Its version.
    pub version: i32,
}

/// A delivery claimed by `claim_many`, with everything its attempt needs from its rows.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The claim every later write is fenced on.
    pub claim: Claim,
    /// The template version to render.
    pub template: TemplateVersionRef,
    /// The delivery as stored; the caller renders it with `template`, from its cache of
    /// versions (or `template_contents`).
    pub delivery: ClaimedDelivery,
}

/// What `claim_many` found for one requested delivery.
#[derive(Debug, Clone)]
pub enum BatchClaim {
    /// The caller holds the delivery for this attempt and may call the provider.
    Claimed(Box<Claimed>),
    /// Claimed, but its stored values no longer parse (a bug or a bad manual edit): the
    /// caller records a permanent failure rather than sending.
    Unreadable {
        /// The claim to record the failure on.
        claim: Claim,
        /// What did not parse.
        problem: String,
    },
    /// The delivery reached a final state (or does not exist): nothing to do, ever.
    Done,
    /// Waiting to retry, and not due for `retry_after` (`deliveries.retry_not_before`). Its
    /// retry copy in the delay queue normally brings it back; this message may be the only
    /// one left, though (the copy was refused, or its connection cut before the confirm), so
    /// look again then.
    NotDue {
        /// Time left until it is due.
        retry_after: Duration,
    },
    /// Another worker (or an earlier copy in the same batch) holds an unexpired lease; look
    /// again after `retry_after`.
    Busy {
        /// Time left on the lease.
        retry_after: Duration,
    },
}

/// Claims every delivery of `delivery_ids` that is claimable, in one transaction: moves each
/// to `sending`, bumps its attempt counter, sets a lease until now + `lease`, records a
/// `sending` event, and returns what the attempt needs. Claimable are `pending` and `queued`,
/// `retry_wait` once its `retry_not_before` has passed (in PostgreSQL's clock), a `scheduled`
/// delivery due by `clock_now`, and a `sending` delivery whose lease expired (a takeover: its
/// previous attempt's outcome is unknown).
///
/// Returns one answer per requested id, in order. An id asked for twice is claimed once; its
/// later copies are `Busy` for the lease just taken.
pub async fn claim_many(
    connection: &mut AsyncPgConnection,
    delivery_ids: &[DeliveryId],
    lease: Duration,
    clock_now: DateTime<Utc>,
) -> Result<Vec<BatchClaim>> {
    if delivery_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<Uuid> = delivery_ids.iter().map(|id| *id.as_uuid()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut retries = 0;
    let mut found = loop {
        let result = connection
            .transaction::<_, Error, _>(async |connection| {
                claim_locked(connection, &ids, lease, clock_now).await
            })
            .await;
        match result {
            Err(error) if retry_conflict(&error, &mut retries) => {}
            other => break other?,
        }
    };
    // What a later copy of an id gets: a claimed delivery is leased by this very batch.
    let mut copies: HashMap<Uuid, BatchClaim> = HashMap::new();
    Ok(delivery_ids
        .iter()
        .map(|id| match found.remove(id.as_uuid()) {
            Some(answer) => {
                let copy = match &answer {
                    BatchClaim::Claimed(_) | BatchClaim::Unreadable { .. } => {
                        BatchClaim::Busy { retry_after: lease }
                    }
                    other => other.clone(),
                };
                copies.insert(*id.as_uuid(), copy);
                answer
            }
            None => copies
                .get(id.as_uuid())
                .cloned()
                .unwrap_or(BatchClaim::Done),
        })
        .collect())
}

/// The body of `claim_many`'s transaction over sorted, distinct `ids`.
async fn claim_locked(
    connection: &mut AsyncPgConnection,
    ids: &[Uuid],
    lease: Duration,
    clock_now: DateTime<Utc>,
) -> Result<HashMap<Uuid, BatchClaim>> {
    let now = Utc::now();
    let lease_until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let locked = lock_for_claim(connection, ids).await?;
    let mut answers: HashMap<Uuid, BatchClaim> =
        ids.iter().map(|id| (*id, BatchClaim::Done)).collect();
    let mut claimable = Vec::new();
    let mut takeovers = Vec::new();
    for (id, state, held_until, scheduled_for, retry_due_in) in locked {
        match claimability(
            &state,
            held_until,
            scheduled_for,
            retry_due_in,
            now,
            clock_now,
        ) {
            Claimability::Claim => claimable.push(id),
            Claimability::Takeover => {
                claimable.push(id);
                takeovers.push(id);
            }
            Claimability::Busy(retry_after) => {
                answers.insert(id, BatchClaim::Busy { retry_after });
            }
            Claimability::NotDue(retry_after) => {
                answers.insert(id, BatchClaim::NotDue { retry_after });
            }
            Claimability::Done => {}
        }
    }
    if claimable.is_empty() {
        return Ok(answers);
    }
    let rows: Vec<ClaimedRow> = planned_per_run(ClaimRows {
        ids: claimable,
        lease_until,
        now,
    })
    .load(connection)
    .await?;
    let takeover_detail = "the previous attempt's lease expired; its outcome is unknown";
    let events: Vec<NewEvent<'_>> = rows
        .iter()
        .map(|row| NewEvent {
            delivery_id: row.0,
            kind: "sending",
            attempt: row.1,
            detail: if takeovers.contains(&row.0) {
                takeover_detail
            } else {
                ""
            },
            notification_id: Some(row.3),
            channel: Some(&row.4),
            ..NewEvent::default()
        })
        .collect();
    events::insert(connection, &events).await?;
    for row in rows {
        let id = row.0;
        answers.insert(id, claimed(row, takeovers.contains(&id)));
    }
    Ok(answers)
}

/// Locks the rows of `ids` (sorted) in id order and reads what their claim depends on.
async fn lock_for_claim(
    connection: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<Vec<LockedRow>> {
    Ok(planned_per_run(
        deliveries::table
            .filter(deliveries::id.eq_any(ids))
            .order(deliveries::id.asc())
            .select((
                deliveries::id,
                deliveries::state,
                deliveries::lease_until,
                deliveries::scheduled_for,
                diesel::dsl::sql::<Nullable<diesel::sql_types::Double>>(
                    "EXTRACT(EPOCH FROM deliveries.retry_not_before - now())::float8",
                ),
            ))
            .for_no_key_update(),
    )
    .load(connection)
    .await?)
}

/// A row as `claim_locked` locks it: id, state, lease, scheduled time, seconds until a retry
/// is due (negative once it is).
type LockedRow = (
    Uuid,
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<f64>,
);

/// What a locked row allows.
enum Claimability {
    Claim,
    Takeover,
    Busy(Duration),
    NotDue(Duration),
    Done,
}

/// What a locked row in `state` allows: leases by the worker's clock (`now`), schedules by the
/// injected one (`clock_now`), a retry by the seconds until it is due in PostgreSQL's clock.
fn claimability(
    state: &str,
    held_until: Option<DateTime<Utc>>,
    scheduled_for: Option<DateTime<Utc>>,
    retry_due_in: Option<f64>,
    now: DateTime<Utc>,
    clock_now: DateTime<Utc>,
) -> Claimability {
    let Ok(state) = state.parse::<DeliveryState>() else {
        return Claimability::Done;
    };
    match state {
        DeliveryState::Sending => match held_until
            .and_then(|until| (until - now).to_std().ok())
            .filter(|left| !left.is_zero())
        {
            Some(left) => Claimability::Busy(left),
            None => Claimability::Takeover,
        },
        DeliveryState::Scheduled
            if scheduled_for.is_none_or(|scheduled_for| scheduled_for <= clock_now) =>
        {
            Claimability::Claim
        }
        DeliveryState::RetryWait => retry_due_in
            .filter(|seconds| *seconds > 0.0)
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .map_or(Claimability::Claim, Claimability::NotDue),
        state if state.is_claimable() => Claimability::Claim,
        _ => Claimability::Done,
    }
}

/// A row `ClaimRows` returns: id, attempts, attempts_base, notification, channel, address,
/// user id, locale, variant, priority, category, template id, template version, parameters,
/// template key, pinned provider.
type ClaimedRow = (
    Uuid,
    i32,
    i32,
    Uuid,
    String,
    Option<Readable<PersonalText>>,
    Option<String>,
    Option<String>,
    Option<String>,
    i16,
    String,
    Uuid,
    i32,
    Readable<PersonalJson>,
    String,
    Option<String>,
);

/// What a claimed row becomes; `takeover` when its previous attempt's lease expired.
fn claimed(row: ClaimedRow, takeover: bool) -> BatchClaim {
    let (
        id,
        attempt,
        attempts_base,
        notification_id,
        channel,
        address,
        user_id,
        locale,
        variant,
        priority,
        category,
        template_id,
        template_version,
        parameters,
        template_key,
        pinned_provider,
    ) = row;
    let delivery_id = DeliveryId::from(id);
    let claim = Claim {
        delivery_id,
        attempt,
        cycle_attempt: attempt - attempts_base,
    };
    let readable = (
        channel.parse(),
        Priority::from_i16(priority),
        address
            .map(|address| address.into_result("deliveries.address"))
            .transpose(),
        parameters.into_result("notifications.parameters"),
    );
    let (channel, priority, address, parameters) = match readable {
        (Ok(channel), Ok(priority), Ok(address), Ok(parameters)) => {
            (channel, priority, address, parameters)
        }
        (Err(error), ..) | (_, Err(error), ..) | (.., Err(error), _) | (.., Err(error)) => {
            return BatchClaim::Unreadable {
                claim,
                problem: format!("stored delivery is unreadable: {error}"),
            };
        }
    };
    BatchClaim::Claimed(Box::new(Claimed {
        template: TemplateVersionRef {
            template_id: TemplateId::from(template_id),
            version: template_version,
        },
        delivery: ClaimedDelivery {
            delivery_id,
            notification_id: notification_id.into(),
            channel,
            address,
            user_id,
            priority,
            category,
            template_key,
            locale,
            variant,
            parameters,
            attempt: u32::try_from(claim.attempt).unwrap_or_default(),
            cycle_attempt: u32::try_from(claim.cycle_attempt).unwrap_or_default(),
            takeover,
            pinned_provider,
        },
        claim,
    }))
}

/// `UPDATE deliveries … RETURNING` the claimed rows' context: one statement text for any
/// number of ids, planned for them on every run (`planned_per_run`). The rows are already
/// locked.
struct ClaimRows {
    ids: Vec<Uuid>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
}

impl QueryFragment<Pg> for ClaimRows {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE deliveries AS d SET state = 'sending', attempts = d.attempts + 1, \
             lease_until = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.lease_until)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(" FROM notifications AS n, templates AS t WHERE d.id = ANY(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql(
            ") AND n.id = d.notification_id AND t.id = n.template_id \
             RETURNING d.id, d.attempts, d.attempts_base, d.notification_id, d.channel, \
             d.address, d.user_id, d.locale, d.variant, n.priority, n.category, \
             n.template_id, n.template_version, n.parameters, t.key, d.pinned_provider",
        );
        Ok(())
    }
}

impl Query for ClaimRows {
    type SqlType = (
        SqlUuid,
        Int4,
        Int4,
        SqlUuid,
        Text,
        Nullable<Bytea>,
        Nullable<Text>,
        Nullable<Text>,
        Nullable<Text>,
        Int2,
        Text,
        SqlUuid,
        Int4,
        Bytea,
        Text,
        Nullable<Text>,
    );
}

/// Locks the rows of `ids` (sorted) in id order, the order every batch statement takes them.
pub(super) async fn lock(connection: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<()> {
    planned_per_run(
        deliveries::table
            .filter(deliveries::id.eq_any(ids))
            .order(deliveries::id.asc())
            .select(deliveries::id)
            .for_no_key_update(),
    )
    .load::<Uuid>(connection)
    .await?;
    Ok(())
}

/// The content of each of `versions` (missing ones are left out), parsed, in one query. A
/// stored content that no longer parses is that version's error alone.
pub async fn template_contents(
    connection: &mut AsyncPgConnection,
    versions: &[TemplateVersionRef],
) -> Result<HashMap<TemplateVersionRef, std::result::Result<VersionContent, ValueError>>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        template_id: Uuid,
        #[diesel(sql_type = Int4)]
        version: i32,
        #[diesel(sql_type = Jsonb)]
        content: serde_json::Value,
    }
    if versions.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT v.template_id, v.version, v.content FROM template_versions AS v \
         JOIN unnest($1::uuid[], $2::int4[]) AS r(template_id, version) \
         ON v.template_id = r.template_id AND v.version = r.version",
    )
    .bind::<Array<SqlUuid>, _>(
        versions
            .iter()
            .map(|version| *version.template_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Int4>, _>(
        versions
            .iter()
            .map(|version| version.version)
            .collect::<Vec<_>>(),
    )
    .load(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                TemplateVersionRef {
                    template_id: TemplateId::from(row.template_id),
                    version: row.version,
                },
                VersionContent::from_stored(row.content)
                    .map_err(|error| ValueError(format!("stored template is unreadable: {error}"))),
            )
        })
        .collect())
}

/// Whether a transaction that failed with `error` should run again: PostgreSQL aborted it to
/// break a deadlock or a serialization conflict (not the batch's fault; a retry succeeds),
/// and fewer than `CONFLICT_RETRIES` retries were made (counted in `retries`).
pub(super) fn retry_conflict(error: &Error, retries: &mut usize) -> bool {
    if *retries >= CONFLICT_RETRIES || !is_conflict(error) {
        return false;
    }
    *retries += 1;
    tracing::debug!(error = %error, retries = *retries, "Retrying a batch after a conflict.");
    true
}

/// Whether PostgreSQL aborted the transaction to resolve a conflict with another one.
fn is_conflict(error: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    match error {
        Error::Query(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => {
            true
        }
        Error::Query(DieselError::DatabaseError(_, info)) => {
            info.message().starts_with("deadlock detected")
        }
        _ => false,
    }
}
