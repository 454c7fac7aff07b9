//! What goes over Redis: one small JSON signal per inbox change, on one channel per user.
//! Signals carry item ids only, never titles or bodies; each replica reads what its streams
//! need from PostgreSQL.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One change of a user's inbox, as published to the user's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Signal {
    /// The in-app channel stored a new item.
    ItemAdded {
        /// The new item.
        item_id: Uuid,
    },
    /// These items were marked read.
    ItemsRead {
        /// The items that changed.
        item_ids: Vec<Uuid>,
    },
    /// Every unread item was marked read.
    AllRead,
    /// These items were archived.
    ItemsArchived {
        /// The items that changed.
        item_ids: Vec<Uuid>,
    },
    /// The inbox changed in a way the other signals do not describe (the user was erased and
    /// their items deleted): streams tell their clients to list again. A replica too old to
    /// know it ignores it, like any signal it does not understand.
    Resync,
}

impl Signal {
    /// The JSON published to Redis.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("a signal always serialises")
    }

    /// Parses a published payload; `None` for anything this version does not understand.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}
