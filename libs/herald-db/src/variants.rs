//! A/B test figures: per template version and variant, how many deliveries were sent,
//! delivered, opened and clicked, in one aggregate query.

use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::DeliveryState;

use crate::Result;

/// The figures of one variant of one version. Counts are deliveries.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct VariantCounts {
    /// The template version.
    #[diesel(sql_type = Integer)]
    pub version: i32,
    /// The variant's name.
    #[diesel(sql_type = Text)]
    pub variant: String,
    /// Attempted at least once by a worker (`attempts > 0`) and now `sending`, `delivered`,
    /// `retry_wait`, `failed` or `unknown`: a provider call was made or was about to be.
    /// Suppressed and deferred deliveries are not sent.
    #[diesel(sql_type = BigInt)]
    pub sent: i64,
    /// In state `delivered`.
    #[diesel(sql_type = BigInt)]
    pub delivered: i64,
    /// Delivered, with at least one `opened` event.
    #[diesel(sql_type = BigInt)]
    pub opened: i64,
    /// Delivered, with at least one `clicked` event.
    #[diesel(sql_type = BigInt)]
    pub clicked: i64,
}

/// The states a sent delivery can be in (with `attempts > 0`).
const SENT_STATES: [DeliveryState; 5] = [
    DeliveryState::Sending,
    DeliveryState::Delivered,
    DeliveryState::RetryWait,
    DeliveryState::Failed,
    DeliveryState::Unknown,
];

/// The figures of every variant with deliveries of the template `key` (only `version` when
/// given), ordered by version (newest first), then variant name. Deliveries without a variant
/// are left out; variants without deliveries are absent (the caller knows the variants).
pub async fn counts(
    connection: &mut AsyncPgConnection,
    key: &str,
    version: Option<i32>,
) -> Result<Vec<VariantCounts>> {
    let sent_states: Vec<&str> = SENT_STATES.iter().map(|state| state.as_str()).collect();
    // One pass over the template's deliveries; the EXISTS probes use the
    // (delivery_id, id) index of delivery_events.
    Ok(diesel::sql_query(
        "SELECT n.template_version AS version, d.variant AS variant, \
             count(*) FILTER (WHERE d.attempts > 0 AND d.state = ANY($3)) AS sent, \
             count(*) FILTER (WHERE d.state = $4) AS delivered, \
             count(*) FILTER (WHERE d.state = $4 AND EXISTS ( \
                 SELECT 1 FROM delivery_events e WHERE e.delivery_id = d.id AND e.kind = 'opened' \
             )) AS opened, \
             count(*) FILTER (WHERE d.state = $4 AND EXISTS ( \
                 SELECT 1 FROM delivery_events e WHERE e.delivery_id = d.id AND e.kind = 'clicked' \
             )) AS clicked \
         FROM templates t \
         JOIN notifications n ON n.template_id = t.id \
         JOIN deliveries d ON d.notification_id = n.id \
         WHERE t.key = $1 \
           AND ($2::int4 IS NULL OR n.template_version = $2) \
           AND d.variant IS NOT NULL \
         GROUP BY n.template_version, d.variant \
         ORDER BY n.template_version DESC, d.variant",
    )
    .bind::<Text, _>(key)
    .bind::<Nullable<Integer>, _>(version)
    .bind::<diesel::sql_types::Array<Text>, _>(sent_states)
    .bind::<Text, _>(DeliveryState::Delivered.as_str())
    .load::<VariantCounts>(connection)
    .await?)
}
