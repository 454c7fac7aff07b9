ALTER TABLE user_preferences DROP COLUMN tracking_opt_out;
UPDATE delivery_events SET kind = 'archived' WHERE kind = 'dismissed';
DROP INDEX delivery_events_dedupe;
ALTER TABLE delivery_events DROP COLUMN dedupe_key;
