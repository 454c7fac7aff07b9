//! Validated values. Fields are private; the only way in is `parse`, so a value of these
//! types is always valid.

use std::fmt;
use std::str::FromStr;

use crate::ValueError;

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Email over SMTP.
    Email,
    /// Text messages.
    Sms,
    /// Mobile push (FCM, APNs).
    Push,
    /// The in-app inbox.
    InApp,
    /// Chat and webhooks: Slack-compatible incoming webhooks and signed HTTP webhooks.
    Chat,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Self; 5] = [Self::Email, Self::Sms, Self::Push, Self::InApp, Self::Chat];

    /// The stored and routing name (`email`, `sms`, `push`, `in_app`, `chat`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
            Self::InApp => "in_app",
            Self::Chat => "chat",
        }
    }
}

/// A push platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// Android, through FCM.
    Android,
    /// iOS, through APNs.
    Ios,
    /// Web push, through FCM.
    Web,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Self; 3] = [Self::Android, Self::Ios, Self::Web];

    /// The stored name (`android`, `ios`, `web`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Android => "android",
            Self::Ios => "ios",
            Self::Web => "web",
        }
    }
}

impl FromStr for Platform {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|platform| platform.as_str() == text)
            .ok_or_else(|| ValueError::new(format!("unknown platform `{text}`")))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One of a user's devices: a push token and its platform. Personal data: never log the token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceToken {
    /// The provider's registration token (FCM) or device token (APNs).
    pub token: String,
    /// Which provider serves it.
    pub platform: Platform,
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DeviceToken")
            .field("token", &"<redacted>")
            .field("platform", &self.platform)
            .finish()
    }
}

impl FromStr for Channel {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|channel| channel.as_str() == text)
            .ok_or_else(|| ValueError::new(format!("unknown channel `{text}`")))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Bulk traffic: digests, marketing.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Time-sensitive traffic.
    High,
    /// Security alerts, one-time codes: overtakes everything else.
    Critical,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Self; 4] = [Self::Low, Self::Normal, Self::High, Self::Critical];

    /// The highest AMQP priority Herald uses; queues are declared with this `x-max-priority`.
    pub const MAX_AMQP: u8 = 4;

    /// The AMQP message priority (1 = low … 4 = critical).
    pub fn amqp_priority(self) -> u8 {
        match self {
            Self::Low => 1,
            Self::Normal => 2,
            Self::High => 3,
            Self::Critical => 4,
        }
    }

    /// The stored number, equal to the AMQP priority.
    pub fn as_i16(self) -> i16 {
        i16::from(self.amqp_priority())
    }

    /// The priority stored as `number`.
    pub fn from_i16(number: i16) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|priority| priority.as_i16() == number)
            .ok_or_else(|| ValueError::new(format!("unknown priority {number}")))
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A syntactically valid email address (RFC 5321/5322 as checked by `email_address`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The longest address SMTP allows (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
    pub const MAX_LEN: usize = 254;

    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text.len() > Self::MAX_LEN {
            return Err(ValueError::new(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        // A quoted local part may hold control characters (RFC 5322 `quoted-pair`), which
        // have no place in a header or an SMTP command: refused.
        crate::check_controls(text, crate::Controls::Refused)?;
        if !email_address::EmailAddress::is_valid(text) {
            return Err(ValueError::new("must be a valid email address"));
        }
        Ok(Self(text.to_owned()))
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Addresses are personal data: Debug output never shows them.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("EmailAddress(<redacted>)")
    }
}

/// A phone number in E.164 form: `+`, then 8 to 15 digits, the first not zero (country codes
/// never start with 0, and a number has at most 15 digits).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let valid = text.strip_prefix('+').is_some_and(|digits| {
            (8..=15).contains(&digits.len())
                && digits.bytes().all(|byte| byte.is_ascii_digit())
                && !digits.starts_with('0')
        });
        if !valid {
            return Err(ValueError::new(
                "must be an E.164 number: `+`, then 8 to 15 digits, e.g. +821012345678",
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Phone numbers are personal data: Debug output never shows them.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PhoneNumber(<redacted>)")
    }
}

fn parse_slug(text: &str, max_len: usize) -> Result<(), ValueError> {
    let mut chars = text.chars();
    let starts_well = chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit());
    let rest_ok = text.chars().all(|character| {
        character.is_ascii_lowercase() || character.is_ascii_digit() || "-_.".contains(character)
    });
    if text.is_empty() || text.len() > max_len || !starts_well || !rest_ok {
        return Err(ValueError::new(format!(
            "must be 1 to {max_len} characters of a-z, 0-9, `-`, `_` or `.`, starting with a letter or digit"
        )));
    }
    Ok(())
}

macro_rules! slug_type {
    ($(#[$meta:meta])* $name:ident, $max:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates `text`.
            pub fn parse(text: &str) -> Result<Self, ValueError> {
                parse_slug(text, $max)?;
                Ok(Self(text.to_owned()))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

slug_type!(
    /// A template's stable key, e.g. `order-shipped`.
    TemplateKey,
    64
);
slug_type!(
    /// A notification category, e.g. `security` or `marketing`.
    Category,
    64
);
slug_type!(
    /// The name of an A/B test variant of a template, e.g. `control` or `short-subject`.
    VariantName,
    64
);

/// A caller-chosen key that makes a submit safe to retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 255;

    /// Parses and validates `text`: 1 to 255 printable ASCII characters.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text.is_empty()
            || text.len() > Self::MAX_LEN
            || !text.chars().all(|character| character.is_ascii_graphic())
        {
            return Err(ValueError::new(format!(
                "must be 1 to {} printable ASCII characters without spaces",
                Self::MAX_LEN
            )));
        }
        Ok(Self(text.to_owned()))
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The authenticated identity of a caller: the URI (or DNS) subject alternative name of its
/// client certificate, e.g. `spiffe://herald.local/service/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

impl Identity {
    /// Wraps an identity taken from a verified certificate or from configuration.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text.is_empty() || text.len() > 512 || text.chars().any(char::is_whitespace) {
            return Err(ValueError::new(
                "must be 1 to 512 characters without whitespace",
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Submit notifications, read their status, read templates.
    Submit,
    /// Everything, including managing templates.
    Admin,
    /// Read and change users' in-app inboxes (`InboxService`).
    Inbox,
    /// Record and read tracking events (`TrackingService`).
    Track,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 4] = [Self::Submit, Self::Admin, Self::Inbox, Self::Track];

    /// The configured name (`submit`, `admin`, `inbox`, `track`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Admin => "admin",
            Self::Inbox => "inbox",
            Self::Track => "track",
        }
    }
}

impl FromStr for Role {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                ValueError::new(format!(
                    "unknown role `{text}` (expected `submit`, `admin`, `inbox` or `track`)"
                ))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl Role {
    /// The permissions a role stands for: how a configuration written with roles keeps
    /// working. `submit` does not include contact points: reading them in clear takes
    /// `contacts.read`, changing them `contacts.write`, granted on their own.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission as P;
        match self {
            Self::Submit => &[
                P::NotificationsSubmit,
                P::NotificationsRead,
                P::TemplatesRead,
                P::PreferencesRead,
                P::PreferencesWrite,
            ],
            Self::Admin => &Permission::ALL,
            Self::Inbox => &[P::InboxRead, P::InboxWrite],
            Self::Track => &[P::EventsRecord, P::EventsRead],
        }
    }
}

/// One thing an identity may do; every RPC needs one (`herald-api-server`'s method table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Submit notifications (`Submit`, `SubmitBatch`).
    NotificationsSubmit,
    /// Read the notifications one submitted (`GetNotification`).
    NotificationsRead,
    /// Read any identity's notifications, not only one's own.
    NotificationsReadAny,
    /// Read templates, their versions, previews and A/B statistics.
    TemplatesRead,
    /// Create templates, add and activate versions.
    TemplatesWrite,
    /// Read a user's preferences (contact points masked without `contacts.read`).
    PreferencesRead,
    /// Change a user's channel and category switches, quiet hours, locale and time zone.
    PreferencesWrite,
    /// See a user's email, phone and device tokens in clear.
    ContactsRead,
    /// Set or erase a user's email, phone and device tokens (and erase a user).
    ContactsWrite,
    /// Read a user's in-app inbox and subscribe to it.
    InboxRead,
    /// Mark inbox items read and archive them.
    InboxWrite,
    /// Record engagement (opens, clicks, reads) for any notification: an app backend records
    /// reads of notifications other services submitted.
    EventsRecord,
    /// Read a notification's events.
    EventsRead,
    /// List, inspect, replay and discard failures.
    FailuresAdmin,
    /// Read queue figures.
    QueuesRead,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Self; 15] = [
        Self::NotificationsSubmit,
        Self::NotificationsRead,
        Self::NotificationsReadAny,
        Self::TemplatesRead,
        Self::TemplatesWrite,
        Self::PreferencesRead,
        Self::PreferencesWrite,
        Self::ContactsRead,
        Self::ContactsWrite,
        Self::InboxRead,
        Self::InboxWrite,
        Self::EventsRecord,
        Self::EventsRead,
        Self::FailuresAdmin,
        Self::QueuesRead,
    ];

    /// The configured name, e.g. `contacts.write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotificationsSubmit => "notifications.submit",
            Self::NotificationsRead => "notifications.read",
            Self::NotificationsReadAny => "notifications.read_any",
            Self::TemplatesRead => "templates.read",
            Self::TemplatesWrite => "templates.write",
            Self::PreferencesRead => "preferences.read",
            Self::PreferencesWrite => "preferences.write",
            Self::ContactsRead => "contacts.read",
            Self::ContactsWrite => "contacts.write",
            Self::InboxRead => "inbox.read",
            Self::InboxWrite => "inbox.write",
            Self::EventsRecord => "events.record",
            Self::EventsRead => "events.read",
            Self::FailuresAdmin => "failures.admin",
            Self::QueuesRead => "queues.read",
        }
    }
}

impl FromStr for Permission {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|permission| permission.as_str() == text)
            .ok_or_else(|| {
                ValueError::new(format!(
                    "unknown permission `{text}` (expected one of {})",
                    Self::ALL.map(Self::as_str).join(", ")
                ))
            })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}
