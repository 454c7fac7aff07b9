-- Retention and erasure of personal data.
--
-- `personal_cleared_at` records when a delivery's (or a notification's) personal data was
-- cleared: by the relay's retention job once the delivery had been final for
-- `retention.personal_data_after`, or by a user's erase. A cleared row is never cleared again,
-- never replayed, and records later engagements without their detail. Both columns are
-- nullable without a default, so adding them rewrites nothing.
--
-- Everything here is `IF NOT EXISTS`: on a large database, run these statements by hand first,
-- each index with `CREATE INDEX CONCURRENTLY`, which does not block submits while it builds;
-- the migration then finds everything in place.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS personal_cleared_at timestamptz;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS personal_cleared_at timestamptz;

-- The retention job's work: final deliveries not yet cleared, oldest first. The predicate
-- tests `open` (which already changes when a delivery finishes, so that transition was not a
-- HOT update anyway) and the marker, never `state`: publishing and claiming still rewrite a
-- delivery in place. Scheduled deliveries are not open either; the job skips them by state.
CREATE INDEX IF NOT EXISTS deliveries_personal_uncleared ON deliveries (created_at)
    WHERE NOT open AND personal_cleared_at IS NULL;

-- A user's deliveries, for their erase (an erase must not scan every delivery). `user_id`
-- changes only when the user is erased, so this index costs one entry per delivery to a user
-- and no transition.
CREATE INDEX IF NOT EXISTS deliveries_user_id ON deliveries (user_id) WHERE user_id IS NOT NULL;

-- A user's audit entries (`user:<id>`), which their erase rewrites to a keyed hash.
CREATE INDEX IF NOT EXISTS audit_log_target ON audit_log (target);
