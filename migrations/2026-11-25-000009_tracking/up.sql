-- Tracking (issue 6, seed §9): engagement events (opened, clicked, read, dismissed) are
-- stored in delivery_events like every other event. An engagement event carries a dedupe
-- key, and the unique index makes recording it idempotent: a second pixel load, a second
-- click on the same link or a retried TrackingService.RecordEvent inserts nothing
-- (INSERT … ON CONFLICT DO NOTHING), however close together they arrive.
ALTER TABLE delivery_events ADD COLUMN dedupe_key text;
CREATE UNIQUE INDEX delivery_events_dedupe ON delivery_events (delivery_id, kind, dedupe_key)
    WHERE dedupe_key IS NOT NULL;

-- The inbox's archive is the `dismissed` tracking event.
UPDATE delivery_events SET kind = 'dismissed' WHERE kind = 'archived';

-- A user who opted out of tracking gets no open pixel and no rewritten links.
ALTER TABLE user_preferences ADD COLUMN tracking_opt_out boolean NOT NULL DEFAULT false;
