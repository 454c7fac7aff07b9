ALTER TABLE deliveries DROP COLUMN scheduled_for;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (
    'pending', 'queued', 'sending', 'delivered', 'retry_wait', 'failed', 'suppressed', 'unknown'
));
DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN available_at;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
DROP TABLE user_preferences;
