-- A delivery whose outcome at a provider could not be known is resent (under the channel's
-- `resend` policy) only to that provider, the one that may already have it and that
-- deduplicates by the delivery id. The column holds that provider's name from the first such
-- outcome on; NULL leaves the provider to the failover rotation. Nullable and not indexed, so
-- the code deployed before it keeps working and a delivery's updates stay in place (HOT).
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS pinned_provider text;
