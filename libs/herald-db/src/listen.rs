//! `LISTEN` on a dedicated connection: how the relay learns that outbox rows were committed
//! and how API replicas learn that a template changed, without polling.
//!
//! Channels are per schema (`<prefix><schema>`), so deployments and tests sharing one
//! database only hear their own notifications.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::StreamExt as _;

use crate::{Connector, Error, Result};

/// A connection listening on one channel.
pub struct Listener {
    connection: AsyncPgConnection,
    channel: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Listener")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Connects with `connector` and listens on `prefix` followed by the connection's current
    /// schema.
    pub async fn connect(connector: &Connector, prefix: &str) -> Result<Self> {
        let mut connection = connector
            .connect()
            .await
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        let channel = channel(&mut connection, prefix).await?;
        // LISTEN takes an identifier, not a parameter; quoting (with `"` doubled) makes any
        // schema name a valid one.
        diesel::sql_query(format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
            .execute(&mut connection)
            .await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// The channel listened on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Waits for the next notification and returns its payload. `Error::Unavailable` when the
    /// connection is lost: notifications may have been missed, so callers resynchronise.
    pub async fn recv(&mut self) -> Result<String> {
        let mut notifications = std::pin::pin!(self.connection.notifications_stream());
        match notifications.next().await {
            Some(Ok(notification)) => Ok(notification.payload),
            Some(Err(error)) => Err(Error::Unavailable(error.to_string())),
            None => Err(Error::Unavailable("the listening connection closed".into())),
        }
    }
}

/// `prefix` followed by the current schema of `connection`.
pub async fn channel(connection: &mut AsyncPgConnection, prefix: &str) -> Result<String> {
    #[derive(diesel::QueryableByName)]
    struct Named {
        #[diesel(sql_type = diesel::sql_types::Text)]
        channel: String,
    }
    let named: Named = diesel::sql_query("SELECT $1 || current_schema() AS channel")
        .bind::<diesel::sql_types::Text, _>(prefix)
        .get_result(connection)
        .await?;
    Ok(named.channel)
}

/// What `follow` reports to its caller.
#[derive(Debug)]
pub enum Heard {
    /// Listening (again): anything committed while nobody listened was missed, so the caller
    /// resynchronises.
    Listening,
    /// A notification's payload.
    Notified(String),
    /// The connection could not be made or was lost (the error says why); `follow` tries
    /// again after `RELISTEN_AFTER`.
    Deaf(Error),
}

/// Pause between two attempts to listen.
pub const RELISTEN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Listens on `prefix` + schema through `connector` until `shutdown`, reconnecting whenever the
/// connection cannot be made or is lost, and tells `heard` what happens.
pub async fn follow(
    connector: &Connector,
    prefix: &str,
    shutdown: tokio_util::sync::CancellationToken,
    mut heard: impl FnMut(Heard),
) {
    loop {
        let listener = tokio::select! {
            () = shutdown.cancelled() => return,
            listener = Listener::connect(connector, prefix) => listener,
        };
        match listener {
            Ok(mut listener) => {
                heard(Heard::Listening);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        payload = listener.recv() => match payload {
                            Ok(payload) => heard(Heard::Notified(payload)),
                            Err(error) => {
                                heard(Heard::Deaf(error));
                                break;
                            }
                        },
                    }
                }
            }
            Err(error) => heard(Heard::Deaf(error)),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELISTEN_AFTER) => {}
        }
    }
}
