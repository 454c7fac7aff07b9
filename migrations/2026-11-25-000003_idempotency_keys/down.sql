ALTER TABLE notifications
    ADD CONSTRAINT notifications_idempotency_key_unique UNIQUE (submitted_by, idempotency_key);
DROP TABLE idempotency_keys;
