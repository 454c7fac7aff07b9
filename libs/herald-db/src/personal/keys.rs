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
            "SELECT CASE WHEN {column} = '\\x00'::bytea THEN 2 \
                         WHEN get_byte({column}, 0) = 0 THEN 1 ELSE 0 END AS state, \
                    CASE WHEN get_byte({column}, 0) = 1 THEN convert_from(\
                         substring({column} FROM 3 FOR get_byte({column}, 1)), 'UTF8') END AS key, \
                    count(*) AS value_count \
             FROM {table} WHERE {column} IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
        ))
        .load(connection)
        .await?;
        usage.extend(rows.into_iter().map(|row| KeyUsage {
            column: format!("{table}.{column}"),
            sealed_under: match (row.state, row.key) {
                (0, Some(key)) => SealedUnder::Key(key),
                (2, _) => SealedUnder::Empty,
                _ => SealedUnder::Clear,
            },
            values: row.value_count,
        }));
    }
    Ok(usage)
}

/// Reseals, under the process keyring's active key, every personal value that is sealed
/// under another key or stored in clear, `batch` rows per statement, and returns how many
/// values it resealed. A row changed meanwhile is left as the change wrote it. Every key the
/// values are sealed under must still be configured.
///
/// # Errors
/// When a query fails, a key is missing, or a value does not open.
pub async fn reseal(connection: &mut AsyncPgConnection, batch: i64) -> Result<u64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        row_id: String,
        #[diesel(sql_type = Bytea)]
        value: Vec<u8>,
    }
    let keyring = herald_crypto::keyring()?;
    let cipher = keyring.cipher();
    let prefix = herald_crypto::Cipher::prefix_of(cipher.active());
    let prefix_len = i32::try_from(prefix.len()).unwrap_or(i32::MAX);
    let mut resealed = 0;
    for (table, column) in COLUMNS {
        let mut after = "(0,0)".to_owned();
        loop {
            let rows: Vec<Row> = diesel::sql_query(format!(
                "SELECT ctid::text AS row_id, {column} AS value FROM {table} \
                 WHERE ctid > $1::tid AND {column} IS NOT NULL AND {column} <> '\\x00'::bytea \
                   AND substring({column} FROM 1 FOR $2) <> $3 \
                 ORDER BY ctid LIMIT $4"
            ))
            .bind::<Text, _>(&after)
            .bind::<Integer, _>(prefix_len)
            .bind::<Bytea, _>(&prefix)
            .bind::<BigInt, _>(batch)
            .load(connection)
            .await?;
            let Some(last) = rows.last() else { break };
            after.clone_from(&last.row_id);
            let sealed = rows
                .iter()
                .map(|row| cipher.seal(&cipher.open(&row.value)?))
                .collect::<herald_crypto::Result<Vec<_>>>()?;
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
    }
    Ok(resealed)
}
