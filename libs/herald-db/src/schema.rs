//! Diesel table definitions mirroring `migrations/` (checked by the schema test).
#![allow(missing_docs)]

diesel::table! {
    alert_state (fingerprint) {
        fingerprint -> Text,
        last_sent_at -> Nullable<Timestamptz>,
        suppressed -> Int4,
    }
}

diesel::table! {
    alerts_sent (id) {
        id -> Int8,
        fingerprint -> Text,
        kind -> Text,
        summary -> Text,
        sent_at -> Timestamptz,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Int8,
        actor -> Text,
        action -> Text,
        target -> Text,
        detail -> Jsonb,
        occurred_at -> Timestamptz,
    }
}

diesel::table! {
    delivery_events (delivery_id, id) {
        id -> Int8,
        delivery_id -> Uuid,
        kind -> Text,
        attempt -> Int4,
        detail -> Bytea,
        occurred_at -> Timestamptz,
        provider -> Nullable<Text>,
        error_class -> Nullable<Text>,
        dedupe_key -> Nullable<Text>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Uuid,
        notification_id -> Uuid,
        channel -> Text,
        recipient_index -> Int4,
        user_id -> Nullable<Text>,
        address -> Nullable<Bytea>,
        state -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        queued_at -> Nullable<Timestamptz>,
        delivered_at -> Nullable<Timestamptz>,
        attempts_base -> Int4,
        sla_alerted_at -> Nullable<Timestamptz>,
        locale -> Nullable<Text>,
        scheduled_for -> Nullable<Timestamptz>,
        variant -> Nullable<Text>,
        open -> Bool,
        personal_cleared_at -> Nullable<Timestamptz>,
        pinned_provider -> Nullable<Text>,
        retry_not_before -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    failures (id) {
        id -> Uuid,
        delivery_id -> Uuid,
        notification_id -> Uuid,
        channel -> Text,
        attempts -> Int4,
        error -> Text,
        error_class -> Text,
        status -> Text,
        created_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
        resolved_by -> Nullable<Text>,
        alerted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    idempotency_keys (submitted_by, key) {
        submitted_by -> Text,
        key -> Text,
        request_hash -> Bytea,
        notification_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Uuid,
        submitted_by -> Text,
        idempotency_key -> Nullable<Text>,
        request_hash -> Bytea,
        template_id -> Uuid,
        template_version -> Int4,
        category -> Text,
        priority -> Int2,
        parameters -> Bytea,
        metadata -> Bytea,
        created_at -> Timestamptz,
        personal_cleared_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        delivery_id -> Uuid,
        notification_id -> Uuid,
        channel -> Text,
        priority -> Int2,
        trace_context -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        publish_attempts -> Int4,
        last_error -> Nullable<Text>,
        available_at -> Timestamptz,
    }
}

diesel::table! {
    template_versions (template_id, version) {
        template_id -> Uuid,
        version -> Int4,
        content -> Jsonb,
        parameters -> Array<Text>,
        created_by -> Text,
        created_at -> Timestamptz,
        sample_parameters -> Nullable<Jsonb>,
    }
}

diesel::table! {
    user_preferences (user_id) {
        user_id -> Text,
        email -> Nullable<Bytea>,
        phone -> Nullable<Bytea>,
        device_tokens -> Bytea,
        locale -> Nullable<Text>,
        time_zone -> Nullable<Text>,
        channels -> Jsonb,
        categories -> Jsonb,
        quiet_hours -> Nullable<Jsonb>,
        global_opt_out -> Bool,
        updated_at -> Timestamptz,
        updated_by -> Text,
        tracking_opt_out -> Bool,
    }
}

diesel::table! {
    templates (id) {
        id -> Uuid,
        key -> Text,
        category -> Text,
        description -> Text,
        active_version -> Int4,
        created_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(deliveries -> notifications (notification_id));
diesel::joinable!(delivery_events -> deliveries (delivery_id));
diesel::joinable!(failures -> deliveries (delivery_id));
diesel::joinable!(failures -> notifications (notification_id));
diesel::joinable!(inbox_items -> deliveries (delivery_id));
diesel::joinable!(notifications -> templates (template_id));
diesel::joinable!(outbox -> deliveries (delivery_id));
diesel::joinable!(template_versions -> templates (template_id));

diesel::allow_tables_to_appear_in_same_query!(
    alert_state,
    alerts_sent,
    audit_log,
    delivery_events,
    deliveries,
    disabled_contacts,
    failures,
    idempotency_keys,
    inbox_items,
    notifications,
    outbox,
    template_versions,
    templates,
    user_preferences,
);

diesel::table! {
    inbox_items (id) {
        id -> Uuid,
        user_id -> Text,
        delivery_id -> Uuid,
        notification_id -> Uuid,
        category -> Text,
        title -> Bytea,
        body -> Bytea,
        action_url -> Bytea,
        created_at -> Timestamptz,
        read_at -> Nullable<Timestamptz>,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    disabled_contacts (channel, address_hash) {
        channel -> Text,
        address_hash -> Bytea,
        user_id -> Nullable<Text>,
        reason -> Text,
        delivery_id -> Nullable<Uuid>,
        disabled_at -> Timestamptz,
        keyed -> Bool,
    }
}
