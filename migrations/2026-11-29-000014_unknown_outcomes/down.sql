ALTER TABLE deliveries DROP COLUMN IF EXISTS pinned_provider;
