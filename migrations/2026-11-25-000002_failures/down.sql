DROP TABLE audit_log;
DROP TABLE failures;
ALTER TABLE deliveries DROP COLUMN attempts_base;
ALTER TABLE delivery_events DROP COLUMN provider, DROP COLUMN error_class;
