//! A stored notification and its deliveries as the wire's `Notification`, with the status
//! its deliveries add up to.

use herald_db::notifications::NotificationRecord;
use herald_domain::DeliveryState;
use herald_proto::conversions;
use herald_proto::submit as pb;

pub(super) fn notification_status(record: &NotificationRecord) -> pb::NotificationStatus {
    let states: Vec<DeliveryState> = record
        .deliveries
        .iter()
        .map(|delivery| delivery.state)
        .collect();
    if states.iter().all(|state| *state == DeliveryState::Pending) {
        return pb::NotificationStatus::Accepted;
    }
    if !states.iter().all(|state| state.is_final()) {
        return pb::NotificationStatus::InProgress;
    }
    let delivered = states
        .iter()
        .filter(|state| **state == DeliveryState::Delivered)
        .count();
    if states
        .iter()
        .all(|state| *state == DeliveryState::Suppressed)
    {
        return pb::NotificationStatus::Suppressed;
    }
    if delivered == states.len() {
        pb::NotificationStatus::Delivered
    } else if delivered == 0 {
        pb::NotificationStatus::Failed
    } else {
        pb::NotificationStatus::PartiallyDelivered
    }
}

pub(super) fn notification_message(record: NotificationRecord) -> pb::Notification {
    let status = notification_status(&record);
    pb::Notification {
        id: record.id.to_string(),
        status: status.into(),
        template_key: record.template_key,
        template_version: u32::try_from(record.template_version).unwrap_or_default(),
        category: record.category,
        priority: herald_proto::common::Priority::from(record.priority).into(),
        submitted_by: record.submitted_by,
        created_at: Some(conversions::timestamp(record.created_at)),
        metadata: record.metadata.into_iter().collect(),
        deliveries: record
            .deliveries
            .into_iter()
            .map(|delivery| pb::Delivery {
                id: delivery.id.to_string(),
                channel: herald_proto::common::Channel::from(delivery.channel).into(),
                state: pb::DeliveryState::from(delivery.state).into(),
                recipient_index: u32::try_from(delivery.recipient_index).unwrap_or_default(),
                user_id: delivery.user_id.unwrap_or_default(),
                attempts: u32::try_from(delivery.attempts).unwrap_or_default(),
                last_error: delivery.last_error.unwrap_or_default(),
                created_at: Some(conversions::timestamp(delivery.created_at)),
                updated_at: Some(conversions::timestamp(delivery.updated_at)),
                queued_at: delivery.queued_at.map(conversions::timestamp),
                delivered_at: delivery.delivered_at.map(conversions::timestamp),
                scheduled_for: delivery.scheduled_for.map(conversions::timestamp),
                variant: delivery.variant.unwrap_or_default(),
                personal_data_cleared_at: delivery.personal_cleared_at.map(conversions::timestamp),
            })
            .collect(),
    }
}
