//! Which keys the stored personal data is sealed under, and resealing it under the active key
//! (key rotation, and sealing values written before encryption).

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::Result;

/// Every personal column, as `(table, column)`.
pub const COLUMNS: [(&str, &str); 10] = [
    ("notifications", "parameters"),
    ("notifications", "metadata"),
    ("deliveries", "address"),
    ("delivery_events", "detail"),
    ("user_preferences", "email"),
    ("user_preferences", "phone"),
    ("user_preferences", "device_tokens"),
    ("inbox_items", "title"),
    ("inbox_items", "body"),
    ("inbox_items", "action_url"),
];

/// How the values of one column are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// `table.column`.
    pub column: String,
    /// What the values are sealed under.
    pub sealed_under: SealedUnder,
    /// How many values.
    pub values: i64,
}

/// What a stored value is sealed under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SealedUnder {
    /// The key with this id.
    Key(String),
    /// Nothing: written before encryption. `reseal` seals it.
    Clear,
    /// Nothing, and there is nothing to hide: an empty value.
    Empty,
    /// Not a value Herald wrote (a bad manual edit): it reads as an error.
    Corrupt,
}

/// The stored form of a column's value, as a number: 0 sealed, 1 in clear, 2 empty, 3 corrupt.
/// Guarded so that no value, however malformed, makes the query fail.
fn state_sql(column: &str) -> String {
    format!(
        "CASE WHEN length({column}) = 0 THEN 3 \
              WHEN {column} = '\\x00'::bytea THEN 2 \
              WHEN get_byte({column}, 0) = 0 THEN 1 \
              WHEN get_byte({column}, 0) = 1 AND length({column}) >= 2 \
                   AND length({column}) >= 2 + get_byte({column}, 1) THEN 0 \
              ELSE 3 END"
    )
}

/// Counts the values of every personal column by the key they are sealed under.
///
/// # Errors
/// When a query fails.
pub async fn usage(connection: &mut AsyncPgConnection) -> Result<Vec<KeyUsage>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        state: i32,
        #[diesel(sql_type = Nullable<Text>)]
        key: Option<String>,
        #[diesel(sql_type = BigInt)]
        value_count: i64,
    }
    let mut usage = Vec::new();
    for (table, column) in COLUMNS {
        // Identifiers come from `COLUMNS`, never from input.
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT state, \
                    CASE WHEN state = 0 THEN encode(substring(value FROM 3 FOR get_byte(value, 1)), \
                         'escape') END AS key, \
                    count(*) AS value_count \
             FROM (SELECT {} AS state, {column} AS value FROM {table} \
                   WHERE {column} IS NOT NULL) AS stored \
             GROUP BY 1, 2 ORDER BY 1, 2",
            state_sql(column)
        ))
        .load(connection)
        .await?;
        usage.extend(rows.into_iter().map(|row| KeyUsage {
            column: format!("{table}.{column}"),
            sealed_under: match (row.state, row.key) {
                (0, Some(key)) => SealedUnder::Key(key),
                (1, _) => SealedUnder::Clear,
                (2, _) => SealedUnder::Empty,
                _ => SealedUnder::Corrupt,
            },
            values: row.value_count,
        }));
    }
    Ok(usage)
}

/// What `reseal` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Values now sealed under the active key that were not.
    pub values: u64,
    /// Values still under another key or in clear (rows changed under every pass, or written
    /// meanwhile by a service that does not seal under the active key yet): run it again.
    pub left: u64,
}

/// How many passes `reseal` makes at most over rows that changed while it worked.
const PASSES: usize = 3;

/// Reseals, under the process keyring's active key, every personal value that is sealed
/// under another key or stored in clear. It walks each table by ranges of `blocks` pages (one
/// statement each), so its cost grows with the table, not with its square; a row changed
/// meanwhile is left as the change wrote it and taken on the next pass. Every key the values
/// are sealed under must still be configured.
///
/// # Errors
/// When a query fails, a key is missing, or a value does not open (the error names where).
pub async fn reseal(connection: &mut AsyncPgConnection, blocks: i64) -> Result<Resealed> {
    let keyring = herald_crypto::keyring()?;
    let prefix = herald_crypto::Cipher::prefix_of(keyring.cipher().active());
    let mut resealed = Resealed { values: 0, left: 0 };
    for _ in 0..PASSES {
        let mut this_pass = 0;
        for (table, column) in COLUMNS {
            this_pass += reseal_column(
                connection,
                keyring.cipher(),
                (table, column),
                &prefix,
                blocks.max(1),
            )
            .await?;
        }
        resealed.values += this_pass;
        resealed.left = not_under(connection, &prefix).await?;
        if resealed.left == 0 || this_pass == 0 {
            break;
        }
    }
    Ok(resealed)
}

/// The filter of values `reseal` takes: present, not empty, not under the key of `prefix`.
fn outside_sql(column: &str) -> String {
    format!(
        "{column} IS NOT NULL AND {column} <> '\\x00'::bytea \
         AND substring({column} FROM 1 FOR length($1)) <> $1"
    )
}

/// Reseals one column's values with `cipher`, `blocks` pages per statement.
async fn reseal_column(
    connection: &mut AsyncPgConnection,
    cipher: &herald_crypto::Cipher,
    (table, column): (&str, &str),
    prefix: &[u8],
    blocks: i64,
) -> Result<u64> {
    #[derive(QueryableByName)]
    struct Pages {
        #[diesel(sql_type = BigInt)]
        pages: i64,
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        row_id: String,
        #[diesel(sql_type = Bytea)]
        value: Vec<u8>,
    }
    let pages = diesel::sql_query(format!(
        "SELECT pg_relation_size('{table}') / current_setting('block_size')::bigint AS pages"
    ))
    .get_result::<Pages>(connection)
    .await?
    .pages;
    let mut resealed = 0;
    let mut start = 0;
    while start <= pages {
        let end = start + blocks;
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT ctid::text AS row_id, {column} AS value FROM {table} \
             WHERE ctid >= $2::tid AND ctid < $3::tid AND {}",
            outside_sql(column)
        ))
        .bind::<Bytea, _>(prefix)
        .bind::<Text, _>(format!("({start},0)"))
        .bind::<Text, _>(format!("({end},0)"))
        .load(connection)
        .await?;
        start = end;
        if rows.is_empty() {
            continue;
        }
        let sealed = rows
            .iter()
            .map(|row| cipher.seal(&cipher.open(&row.value)?))
            .collect::<herald_crypto::Result<Vec<_>>>()
            .map_err(|error| {
                crate::Error::Invalid(format!(
                    "{table}.{column}: a value in pages {}..{end} does not reseal: {error}",
                    end - blocks
                ))
            })?;
        let updated = diesel::sql_query(format!(
            "UPDATE {table} SET {column} = resealed.value \
             FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS resealed(row_id, old, value) \
             WHERE {table}.ctid = resealed.row_id::tid AND {table}.{column} = resealed.old"
        ))
        .bind::<Array<Text>, _>(
            rows.iter()
                .map(|row| row.row_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bytea>, _>(
            rows.iter()
                .map(|row| row.value.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bytea>, _>(&sealed)
        .execute(connection)
        .await?;
        resealed += u64::try_from(updated).unwrap_or_default();
    }
    Ok(resealed)
}

/// How many personal values are not under the key of `prefix` (nor empty).
async fn not_under(connection: &mut AsyncPgConnection, prefix: &[u8]) -> Result<u64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        value_count: i64,
    }
    let mut left = 0;
    for (table, column) in COLUMNS {
        let count = diesel::sql_query(format!(
            "SELECT count(*) AS value_count FROM {table} WHERE {}",
            outside_sql(column)
        ))
        .bind::<Bytea, _>(prefix)
        .get_result::<Count>(connection)
        .await?;
        left += u64::try_from(count.value_count).unwrap_or_default();
    }
    Ok(left)
}
