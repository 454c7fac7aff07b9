DROP INDEX delivery_events_attempts_started;
DROP INDEX deliveries_waiting;
