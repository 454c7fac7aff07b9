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
-- Reads and dismissals recorded before this migration become the one recorded engagement of
-- their delivery, so a later RecordEvent for them is a repeat, not a second row.
UPDATE delivery_events SET dedupe_key = 'once'
WHERE id IN (
    SELECT DISTINCT ON (delivery_id, kind) id FROM delivery_events
    WHERE kind IN ('read', 'dismissed')
    ORDER BY delivery_id, kind, id
);

-- A user who opted out of tracking gets no open pixel and no rewritten links.
ALTER TABLE user_preferences ADD COLUMN tracking_opt_out boolean NOT NULL DEFAULT false;
