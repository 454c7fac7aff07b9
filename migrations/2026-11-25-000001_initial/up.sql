-- Templates: one row per template, one immutable row per version.
CREATE TABLE templates (
    id uuid PRIMARY KEY,
    key text NOT NULL,
    category text NOT NULL,
    description text NOT NULL DEFAULT '',
    active_version integer NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_key_unique UNIQUE (key)
);

CREATE TABLE template_versions (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version integer NOT NULL,
    -- Per-channel parts, e.g. {"email": {"subject": "...", "html": "...", "text": "..."}}.
    content jsonb NOT NULL,
    parameters text[] NOT NULL DEFAULT '{}',
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- One submitted notification. The caller's OK means this row, its deliveries and their
-- outbox rows were committed together.
CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    submitted_by text NOT NULL,
    idempotency_key text,
    request_hash bytea NOT NULL,
    template_id uuid NOT NULL REFERENCES templates (id),
    template_version integer NOT NULL,
    category text NOT NULL,
    priority smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    parameters jsonb NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Idempotency keys are scoped to the calling identity; NULL keys never collide.
    CONSTRAINT notifications_idempotency_key_unique UNIQUE (submitted_by, idempotency_key),
    FOREIGN KEY (template_id, template_version) REFERENCES template_versions (template_id, version)
);

-- One recipient on one channel.
CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    recipient_index integer NOT NULL,
    user_id text,
    address text,
    state text NOT NULL CHECK (state IN (
        'pending', 'queued', 'sending', 'delivered', 'retry_wait', 'failed', 'suppressed', 'unknown'
    )),
    -- Incremented by every claim; a worker's writes are fenced by the value it claimed.
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    queued_at timestamptz,
    delivered_at timestamptz,
    CONSTRAINT deliveries_notification_recipient_channel_unique
        UNIQUE (notification_id, recipient_index, channel)
);

-- What happened to a delivery, in order.
CREATE TABLE delivery_events (
    id bigserial PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    kind text NOT NULL,
    attempt integer NOT NULL,
    detail text NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_events_delivery_id ON delivery_events (delivery_id, id);

-- Transactional outbox: rows to publish to RabbitMQ. Published only after a positive
-- publisher confirm without a return.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    notification_id uuid NOT NULL,
    channel text NOT NULL,
    priority smallint NOT NULL,
    trace_context jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    last_error text
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
