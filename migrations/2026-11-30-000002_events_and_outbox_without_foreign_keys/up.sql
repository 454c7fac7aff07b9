-- delivery_events and outbox check no foreign key to deliveries any more.
--
-- A foreign-key check runs a lookup of the referenced row, and key-share-locks it, for every
-- inserted row: about six times per delivery (its ~5 events and its outbox row), a sixth of
-- PostgreSQL's time under load (docs/capacity.md). It checked nothing the code does not
-- already ensure: every event and outbox row is written in a transaction that has just
-- inserted, locked, updated or read its delivery (submit, the relay, a worker's claim and
-- finish, an engagement, a replay), and no delivery is ever deleted (retention and erasure
-- clear personal data in place). The partitioning design drops the same key.
ALTER TABLE delivery_events DROP CONSTRAINT IF EXISTS delivery_events_delivery_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_delivery_id_fkey;
