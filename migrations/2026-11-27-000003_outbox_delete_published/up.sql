-- The relay now deletes an outbox row once its publish is confirmed (the delivery's
-- `queued_at` and its `queued` event record it), so that the table holds only what is still
-- to be published: before, every delivery left a published row behind forever, and marking
-- it published wrote a new row version and a primary-key entry. `published_at` stays (always
-- NULL for rows written from now on) while relays that set it may still run during a rolling
-- update; the rows they mark are what this deletes, and the relay's queries keep the
-- `published_at IS NULL` filter that their partial indexes need.
DELETE FROM outbox WHERE published_at IS NOT NULL;
