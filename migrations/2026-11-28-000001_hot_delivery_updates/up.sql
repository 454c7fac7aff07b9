-- Fewer index writes per delivery.
--
-- A delivery's row is rewritten when it is published, claimed and finished. PostgreSQL can
-- rewrite a row in place, without new index entries (a HOT update), only when no indexed
-- column changes and the row's page has room for the new version. A column in a partial
-- index's predicate counts as indexed, and `state` was in two predicates, so each of those
-- transitions wrote a new entry into every index of `deliveries`.
--
-- `open` is true while the delivery may still be sent (pending, queued, sending, retry_wait):
-- it changes when the delivery finishes (or a scheduled one becomes due), so only that
-- transition pays for index entries. The two partial indexes now test `open`, and a page is
-- filled to 75% on insert, leaving room for the next versions of its rows.
ALTER TABLE deliveries SET (fillfactor = 75);
-- Adding a stored column rewrites the table, at the new fill factor.
ALTER TABLE deliveries ADD COLUMN open boolean NOT NULL
    GENERATED ALWAYS AS (state IN ('pending', 'queued', 'sending', 'retry_wait')) STORED;

-- Overdue deliveries not yet alerted (developer alerts), oldest first.
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (created_at)
    WHERE open AND sla_alerted_at IS NULL;

-- Queue figures read the deliveries waiting or retrying among the open ones.
DROP INDEX deliveries_waiting;
CREATE INDEX deliveries_open ON deliveries (channel) WHERE open;

-- Events are only ever read per delivery, in order: the primary key serves that, and the
-- separate (delivery_id, id) index, one more entry per event, goes.
DROP INDEX delivery_events_delivery_id;
ALTER TABLE delivery_events DROP CONSTRAINT delivery_events_pkey,
    ADD CONSTRAINT delivery_events_pkey PRIMARY KEY (delivery_id, id);
