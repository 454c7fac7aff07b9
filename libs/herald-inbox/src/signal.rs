//! What goes over Redis: one small JSON signal per inbox change, on one channel per user.
//! Signals carry item ids only, never titles or bodies; each replica reads what its streams
//! need from PostgreSQL.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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

/// `<prefix>:inbox:<sha256(user_id)>`: the Redis channel of `user_id`'s changes, under the
/// configured key prefix (so parallel tests and deployments sharing a Redis stay apart). Hashed
/// like the rate-limit keys, so channel names have a bounded length and carry no caller-chosen
/// text.
pub fn channel_name(prefix: &str, user_id: &str) -> String {
    format!(
        "{prefix}:inbox:{}",
        hex::encode(Sha256::digest(user_id.as_bytes()))
    )
}
