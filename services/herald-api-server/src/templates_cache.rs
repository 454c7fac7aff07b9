//! The templates submits use, cached by key (the active version) and by (key, version).
//!
//! A version's content never changes once saved, but which version is active, and the
//! template's category, do. Every change to a `templates` row is announced by a trigger on
//! `herald_templates:<schema>` (see the migration `templates_notify`); each API replica
//! listens and drops the template's entries. While the listening connection is down the
//! cache is bypassed, and it starts empty after every reconnect, so a missed notification
//! can never leave a stale entry behind. A generation counter keeps a lookup that raced an
//! invalidation from storing what it read before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use herald_db::templates::TemplateRecord;
use tokio_util::sync::CancellationToken;

/// The `NOTIFY` channel prefix of the `templates_changed` trigger.
const CHANNEL_PREFIX: &str = "herald_templates:";
/// Most entries kept; beyond it the cache starts over (templates are few, versions many).
const MAX_ENTRIES: usize = 10_000;

/// The cache shared by the handlers of one API server.
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateCache {
    inner: Arc<Inner>,
}

/// `(key, None)` is the active version of a template; `(key, Some(n))` its version n.
type Entry = (String, Option<i32>);

#[derive(Debug, Default)]
struct Inner {
    entries: RwLock<HashMap<Entry, Arc<TemplateRecord>>>,
    /// Bumped by every invalidation.
    generation: AtomicU64,
    /// True while the listener is connected: only then may entries be used and stored.
    synchronised: AtomicBool,
    /// Becomes true when the listener first connects.
    listening: tokio::sync::watch::Sender<bool>,
}

impl TemplateCache {
    /// The template `key` at `version` (the active one when `None`), from the cache or from
    /// PostgreSQL; `None` when it does not exist.
    pub(crate) async fn find(
        &self,
        pool: &herald_db::Pool,
        key: &str,
        version: Option<i32>,
    ) -> crate::error::Result<Option<Arc<TemplateRecord>>> {
        let entry = (key.to_owned(), version);
        let synchronised = self.inner.synchronised.load(Ordering::Acquire);
        if synchronised
            && let Some(cached) = self
                .inner
                .entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&entry)
        {
            return Ok(Some(cached.clone()));
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let mut connection = herald_db::connection(pool).await?;
        let Some(record) = herald_db::templates::find(&mut connection, key, version).await? else {
            return Ok(None);
        };
        let cached = Arc::new(record);
        if synchronised {
            let mut entries = self
                .inner
                .entries
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // Stored only if nothing was invalidated since the read began.
            if self.inner.generation.load(Ordering::Acquire) == generation {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(entry, cached.clone());
            }
        }
        Ok(Some(cached))
    }

    /// Drops every entry of the template `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        self.change().retain(|(cached_key, _), _| cached_key != key);
    }

    /// The entries, locked for a change that reads already in flight must not undo: their
    /// generation moves on, so they do not store what they read.
    fn change(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Entry, Arc<TemplateRecord>>> {
        let entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        entries
    }

    /// Waits up to `timeout` for the listener to connect, so that a server starting while
    /// PostgreSQL is up serves from the cache from its first call.
    pub(crate) async fn wait_listening(&self, timeout: Duration) {
        let mut listening = self.inner.listening.subscribe();
        let _waited =
            tokio::time::timeout(timeout, listening.wait_for(|listening| *listening)).await;
    }

    /// Drops everything and says whether entries may be used from now on.
    fn reset(&self, synchronised: bool) {
        let mut entries = self.change();
        entries.clear();
        self.inner
            .synchronised
            .store(synchronised, Ordering::Release);
        if synchronised {
            self.inner.listening.send_replace(true);
        }
    }

    /// Listens for template changes until `shutdown`, reconnecting when the connection is
    /// lost; the cache is bypassed while it is.
    pub(crate) async fn listen(self, connector: herald_db::Connector, shutdown: CancellationToken) {
        use herald_db::listen::Heard;
        herald_db::listen::follow(&connector, CHANNEL_PREFIX, shutdown, |heard| match heard {
            Heard::Listening => {
                self.reset(true);
                tracing::debug!("Listening for template changes.");
            }
            Heard::Notified(key) => self.invalidate(&key),
            Heard::Deaf(error) => {
                self.reset(false);
                tracing::warn!(error = %error, "Cannot listen for template changes; templates are read from PostgreSQL until it can.");
            }
        })
        .await;
    }
}
