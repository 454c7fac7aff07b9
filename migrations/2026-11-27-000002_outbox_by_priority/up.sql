-- The relay publishes the most urgent due rows first, so that a critical notification does
-- not wait behind a campaign's unpublished backlog.
CREATE INDEX outbox_unpublished_by_priority ON outbox (priority DESC, id)
    WHERE published_at IS NULL;
