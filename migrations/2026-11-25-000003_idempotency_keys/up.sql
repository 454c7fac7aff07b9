-- Idempotency keys with a retention window. A key is bound to one request (by its hash) and
-- one notification until it expires; after that the same key may be used again. The primary
-- key is what serialises concurrent submits with one key: the second insert waits for the
-- first transaction and then sees its row.
CREATE TABLE idempotency_keys (
    submitted_by text NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (submitted_by, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

INSERT INTO idempotency_keys (submitted_by, key, request_hash, notification_id, created_at, expires_at)
SELECT submitted_by, idempotency_key, request_hash, id, created_at, created_at + interval '24 hours'
FROM notifications
WHERE idempotency_key IS NOT NULL;

-- The key stays on the notification for reference; uniqueness now lives in idempotency_keys.
ALTER TABLE notifications DROP CONSTRAINT notifications_idempotency_key_unique;
