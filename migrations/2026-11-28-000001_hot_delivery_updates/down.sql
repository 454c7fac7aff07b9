ALTER TABLE delivery_events DROP CONSTRAINT delivery_events_pkey,
    ADD CONSTRAINT delivery_events_pkey PRIMARY KEY (id);
CREATE INDEX delivery_events_delivery_id ON delivery_events (delivery_id, id);

DROP INDEX deliveries_open;
CREATE INDEX deliveries_waiting ON deliveries (channel, state)
    WHERE state IN ('queued', 'retry_wait');
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (created_at)
    WHERE state IN ('pending', 'queued', 'sending', 'retry_wait') AND sla_alerted_at IS NULL;

ALTER TABLE deliveries DROP COLUMN open;
ALTER TABLE deliveries RESET (fillfactor);
