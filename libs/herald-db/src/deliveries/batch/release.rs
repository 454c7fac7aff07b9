//! Claims given back before any provider call was made, many at once.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::{Array, Int4, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{lock, retry_conflict};
use crate::deliveries::Claim;
use crate::statement::planned_per_run;
use crate::{Error, Result};

/// Gives claims back before any provider call was made (the worker could not prepare the
/// attempts): each delivery still `sending` at its claimed attempt becomes `queued` again with
/// its attempt counter restored. Returns how many were released (the others were lost).
pub async fn release_many(connection: &mut AsyncPgConnection, claims: &[Claim]) -> Result<usize> {
    if claims.is_empty() {
        return Ok(0);
    }
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort_unstable_by_key(|claim| *claim.delivery_id.as_uuid());
    let statement = ReleaseRows {
        ids: sorted
            .iter()
            .map(|claim| *claim.delivery_id.as_uuid())
            .collect(),
        attempts: sorted.iter().map(|claim| claim.attempt).collect(),
        now: Utc::now(),
    };
    let mut retries = 0;
    loop {
        let result = connection
            .transaction::<_, Error, _>(async |connection| {
                lock(connection, &statement.ids).await?;
                Ok(planned_per_run(statement.clone())
                    .execute(connection)
                    .await?)
            })
            .await;
        match result {
            Err(error) if retry_conflict(&error, &mut retries) => {}
            other => return other,
        }
    }
}

/// `UPDATE deliveries … FROM unnest(ids, attempts)`, fenced on the claimed attempt.
#[derive(Clone)]
struct ReleaseRows {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    now: DateTime<Utc>,
}

impl QueryFragment<Pg> for ReleaseRows {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE deliveries AS d SET state = 'queued', attempts = d.attempts - 1, \
             lease_until = NULL, updated_at = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(" FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql("::uuid[], ");
        out.push_bind_param::<Array<Int4>, _>(&self.attempts)?;
        out.push_sql(
            "::int4[]) AS c(id, attempt) \
             WHERE d.id = c.id AND d.state = 'sending' AND d.attempts = c.attempt",
        );
        Ok(())
    }
}
