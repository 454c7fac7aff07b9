-- The chat channel (Slack-compatible and signed webhooks).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_channel_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_channel_check
    CHECK (channel IN ('email', 'sms', 'push', 'in_app', 'chat'));

-- Addresses a provider called no longer valid (unregistered device token, invalid or
-- unsubscribed number, hard bounce). Workers send nothing to them again. The address itself
-- is not stored, only its SHA-256, so this table holds no contact data; rows naming a user
-- are deleted with the user's preferences.
CREATE TABLE disabled_contacts (
    channel text NOT NULL,
    address_hash bytea NOT NULL,
    user_id text,
    reason text NOT NULL,
    delivery_id uuid,
    disabled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address_hash)
);
CREATE INDEX disabled_contacts_user_id ON disabled_contacts (user_id) WHERE user_id IS NOT NULL;
