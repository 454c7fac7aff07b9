-- Developer alerts: which failures and late deliveries were already considered, the state of
-- each alert fingerprint (for de-duplication), and every alert sent (for the hourly cap).
ALTER TABLE failures ADD COLUMN alerted_at timestamptz;
CREATE INDEX failures_unalerted ON failures (created_at) WHERE alerted_at IS NULL;

ALTER TABLE deliveries ADD COLUMN sla_alerted_at timestamptz;
CREATE INDEX deliveries_unfinished ON deliveries (created_at)
    WHERE state IN ('pending', 'queued', 'sending', 'retry_wait') AND sla_alerted_at IS NULL;

CREATE TABLE alert_state (
    fingerprint text PRIMARY KEY,
    last_sent_at timestamptz,
    -- Occurrences folded into no alert since the last one sent.
    suppressed integer NOT NULL DEFAULT 0
);

CREATE TABLE alerts_sent (
    id bigserial PRIMARY KEY,
    fingerprint text NOT NULL,
    kind text NOT NULL,
    summary text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_sent_sent_at ON alerts_sent (sent_at);
