-- Every attempt's provider and error class, for the attempt history.
ALTER TABLE delivery_events ADD COLUMN provider text, ADD COLUMN error_class text;

-- Attempts made before the current attempt cycle; a replay starts a new cycle with a fresh
-- retry budget while `attempts` keeps counting (it fences claims).
ALTER TABLE deliveries ADD COLUMN attempts_base integer NOT NULL DEFAULT 0;

-- Deliveries that failed for good (permanent error, retries exhausted, unknown outcome).
-- Written in the same transaction as the delivery's final state, before the queue message is
-- dead-lettered: RabbitMQ's classic dead-lettering is at-most-once, this record is not.
CREATE TABLE failures (
    id uuid PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel text NOT NULL,
    attempts integer NOT NULL,
    error text NOT NULL,
    error_class text NOT NULL CHECK (error_class IN ('permanent', 'exhausted', 'unknown')),
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by text
);
CREATE UNIQUE INDEX failures_one_open_per_delivery ON failures (delivery_id) WHERE status = 'open';
CREATE INDEX failures_status_created ON failures (status, created_at DESC, id);

-- Who did what, for operator actions (replays, discards).
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT now()
);
