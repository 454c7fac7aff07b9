-- Queue figures (AdminService.GetQueueStats, the sentinel's gauges) read the deliveries waiting
-- in a queue and the attempts started recently, per channel and priority.
CREATE INDEX deliveries_waiting ON deliveries (channel, state)
    WHERE state IN ('queued', 'retry_wait');
CREATE INDEX delivery_events_attempts_started ON delivery_events (occurred_at)
    WHERE kind = 'sending';
