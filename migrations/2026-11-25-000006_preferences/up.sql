-- One row per user of the product. Contact data is personal data: it lives here only, and
-- DeletePreferences removes it.
CREATE TABLE user_preferences (
    user_id text PRIMARY KEY,
    email text,
    phone text,
    device_tokens jsonb NOT NULL DEFAULT '[]',
    locale text,
    time_zone text,
    -- Channel name -> enabled; absent channels are on.
    channels jsonb NOT NULL DEFAULT '{}',
    -- Category -> {channel name -> enabled}.
    categories jsonb NOT NULL DEFAULT '{}',
    -- {"start": "HH:MM", "end": "HH:MM", "days": ["mon", ...]} or NULL.
    quiet_hours jsonb,
    global_opt_out boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);

-- Scheduled delivery: the relay publishes an outbox row only once it is due (send_at, or the
-- end of the recipient's quiet hours).
ALTER TABLE outbox ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (available_at, id) WHERE published_at IS NULL;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (
    'pending', 'scheduled', 'queued', 'sending', 'delivered', 'retry_wait', 'failed', 'suppressed', 'unknown'
));
ALTER TABLE deliveries ADD COLUMN scheduled_for timestamptz;
