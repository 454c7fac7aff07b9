ALTER TABLE deliveries DROP COLUMN IF EXISTS retry_not_before;
