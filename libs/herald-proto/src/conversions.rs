//! Conversions between wire types and domain types. Fallible conversions return the domain
//! `ValueError`; callers prefix the field name. Template contents are in `template`.

use chrono::{DateTime, Utc};
use herald_domain::{Channel, DeliveryState, Platform, Priority, ValueError};
use prost_types::value::Kind;

use crate::common;
use crate::preference;
use crate::submit;

mod template;

impl TryFrom<common::Channel> for Channel {
    type Error = ValueError;

    fn try_from(channel: common::Channel) -> Result<Self, Self::Error> {
        match channel {
            common::Channel::Email => Ok(Self::Email),
            common::Channel::Sms => Ok(Self::Sms),
            common::Channel::Push => Ok(Self::Push),
            common::Channel::InApp => Ok(Self::InApp),
            common::Channel::Chat => Ok(Self::Chat),
            common::Channel::Unspecified => Err(ValueError("must name a channel".into())),
        }
    }
}

impl From<Channel> for common::Channel {
    fn from(channel: Channel) -> Self {
        match channel {
            Channel::Email => Self::Email,
            Channel::Sms => Self::Sms,
            Channel::Push => Self::Push,
            Channel::InApp => Self::InApp,
            Channel::Chat => Self::Chat,
        }
    }
}

impl TryFrom<preference::Platform> for Platform {
    type Error = ValueError;

    fn try_from(platform: preference::Platform) -> Result<Self, Self::Error> {
        match platform {
            preference::Platform::Android => Ok(Self::Android),
            preference::Platform::Ios => Ok(Self::Ios),
            preference::Platform::Web => Ok(Self::Web),
            preference::Platform::Unspecified => Err(ValueError("must name a platform".into())),
        }
    }
}

impl From<Platform> for preference::Platform {
    fn from(platform: Platform) -> Self {
        match platform {
            Platform::Android => Self::Android,
            Platform::Ios => Self::Ios,
            Platform::Web => Self::Web,
        }
    }
}

/// Parses a channel from its wire number.
pub fn channel_from_i32(number: i32) -> Result<Channel, ValueError> {
    common::Channel::try_from(number)
        .map_err(|_| ValueError(format!("unknown channel number {number}")))?
        .try_into()
}

/// Parses a priority from its wire number; unspecified means normal.
pub fn priority_from_i32(number: i32) -> Result<Priority, ValueError> {
    match common::Priority::try_from(number)
        .map_err(|_| ValueError(format!("unknown priority number {number}")))?
    {
        common::Priority::Unspecified | common::Priority::Normal => Ok(Priority::Normal),
        common::Priority::Low => Ok(Priority::Low),
        common::Priority::High => Ok(Priority::High),
        common::Priority::Critical => Ok(Priority::Critical),
    }
}

impl From<Priority> for common::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => Self::Low,
            Priority::Normal => Self::Normal,
            Priority::High => Self::High,
            Priority::Critical => Self::Critical,
        }
    }
}

impl From<DeliveryState> for submit::DeliveryState {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => Self::Pending,
            DeliveryState::Scheduled => Self::Scheduled,
            DeliveryState::Queued => Self::Queued,
            DeliveryState::Sending => Self::Sending,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::RetryWait => Self::RetryWait,
            DeliveryState::Failed => Self::Failed,
            DeliveryState::Suppressed => Self::Suppressed,
            DeliveryState::Unknown => Self::Unknown,
        }
    }
}

/// A protobuf timestamp for a UTC instant.
pub fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A UTC instant from a protobuf timestamp, if it is in range.
pub fn instant(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// A JSON object from a protobuf `Struct` (template parameters).
pub fn struct_to_json(value: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, value_to_json(value)))
        .collect()
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(flag),
        Some(Kind::NumberValue(number)) => {
            // Integral numbers stay integers so templates print `3`, not `3.0`.
            if number.fract() == 0.0 && number.abs() < 9.0e15 {
                serde_json::Value::from(number as i64)
            } else {
                serde_json::Number::from_f64(number)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(text)) => serde_json::Value::String(text),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(object)) => serde_json::Value::Object(struct_to_json(object)),
    }
}

/// A protobuf `Struct` from a JSON object.
pub fn json_to_struct(object: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(*flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}
