//! Id newtypes. Ids are UUIDv7 so they sort by creation time in indexes and logs.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::ValueError;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text)
                    .map(Self)
                    .map_err(|_| ValueError::new(concat!("must be a ", $what, " id (a UUID)")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(formatter)
            }
        }
    };
}

id_type!(
    /// Identifies one submitted notification.
    NotificationId,
    "notification"
);
id_type!(
    /// Identifies one delivery: one recipient on one channel.
    DeliveryId,
    "delivery"
);
id_type!(
    /// Identifies a template across its versions.
    TemplateId,
    "template"
);
