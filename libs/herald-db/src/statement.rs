//! Fixed-shape SQL statements that diesel-async prepares once per connection.
//!
//! diesel-async caches a prepared statement only when diesel says it is safe to: `sql_query`
//! never is, so every execution of one costs a `Parse` round trip and planning on the server.
//! The hot statements of Herald are fixed-shape statements over arrays
//! (`INSERT … SELECT * FROM unnest(?::uuid[], …)`), whose text is the same for any batch
//! size; a `Statement` carries such a text and its binds, and walks them without marking
//! itself uncacheable, so the connection's statement cache keys it by its text.
//!
//! The exception is a statement that picks rows by id (`= ANY($1)`, or a join on it): a plan
//! made once can be wrong for good, so [`planned_per_run`] (and `Statement::planned_per_run`)
//! has it prepared and planned anew on every run.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;

/// One statement: SQL text with `?` where each bind goes (in order), and the binds.
pub(crate) struct Statement<'a> {
    sql: &'static str,
    binds: Vec<Box<dyn PushBind + Send + 'a>>,
    per_run: bool,
}

impl<'a> Statement<'a> {
    /// `sql` with one `?` per bind, added in order with `bind`. Write the SQL type of each
    /// placeholder in the text (`?::uuid[]`), so that the statement reads on its own.
    pub(crate) fn new(sql: &'static str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
            per_run: false,
        }
    }

    /// Plans the statement for its own parameters on every run (see [`planned_per_run`])
    /// instead of preparing it once per connection.
    pub(crate) fn planned_per_run(mut self) -> Self {
        self.per_run = true;
        self
    }

    /// Adds the next bind, of SQL type `ST`.
    pub(crate) fn bind<ST, T>(mut self, value: T) -> Self
    where
        ST: Send + 'a,
        T: ToSql<ST, Pg> + Send + 'a,
        Pg: HasSqlType<ST>,
    {
        self.binds.push(Box::new(Bound::<ST, T> {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if self.per_run {
            out.unsafe_to_cache_prepared();
        }
        let mut parts = self.sql.split('?');
        if let Some(first) = parts.next() {
            out.push_sql(first);
        }
        let mut binds = self.binds.iter();
        for part in parts {
            let bind = binds.next().ok_or_else(|| {
                diesel::result::Error::QueryBuilderError(
                    format!("more placeholders than binds in `{}`", self.sql).into(),
                )
            })?;
            bind.push(&mut out)?;
            out.push_sql(part);
        }
        if binds.next().is_some() {
            return Err(diesel::result::Error::QueryBuilderError(
                format!("more binds than placeholders in `{}`", self.sql).into(),
            ));
        }
        Ok(())
    }
}

// No static id: the statement cache keys it by its SQL text (and bind types).
impl QueryId for Statement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

// Rows come back by name (`QueryableByName`), as with `sql_query`.
impl Query for Statement<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

/// A bind of a known SQL type, behind a trait object so that one statement holds binds of
/// many types.
trait PushBind {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Bound<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

impl<ST, T> PushBind for Bound<ST, T>
where
    T: ToSql<ST, Pg>,
    Pg: HasSqlType<ST>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

/// `query`, planned for its own parameters on every run: diesel-async prepares it anew each
/// time (one more round trip) instead of once per connection.
///
/// For statements that pick rows by `= ANY($1)` or join on them. PostgreSQL switches a
/// statement prepared once to a generic plan after five runs and keeps it for the connection's
/// life (until the table's statistics change, which never happens where autovacuum is off).
/// One made while the tables were small (every fresh deployment, test and bench database)
/// scans whole tables: measured in the bench, a worker's claim of 18 deliveries read 1,850
/// pages and took 26 ms. Every other statement (inserts from `unnest`, lookups by key, and
/// the foreign-key checks PostgreSQL runs itself) keeps its plan: re-planning those on every
/// run cost more than a tenth of PostgreSQL's time.
pub(crate) fn planned_per_run<Q>(query: Q) -> PlannedPerRun<Q> {
    PlannedPerRun(query)
}

/// A query that [`planned_per_run`] marked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlannedPerRun<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for PlannedPerRun<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> QueryId for PlannedPerRun<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for PlannedPerRun<Q> {
    type SqlType = Q::SqlType;
}

/// One array bind of a statement over arrays: `value` of every row, in order.
pub(crate) fn column<T, U>(rows: &[T], value: impl FnMut(&T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}
