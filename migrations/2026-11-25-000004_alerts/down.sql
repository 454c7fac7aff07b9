DROP TABLE alerts_sent;
DROP TABLE alert_state;
DROP INDEX deliveries_unfinished;
ALTER TABLE deliveries DROP COLUMN sla_alerted_at;
DROP INDEX failures_unalerted;
ALTER TABLE failures DROP COLUMN alerted_at;
