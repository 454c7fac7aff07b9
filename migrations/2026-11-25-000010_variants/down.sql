DROP INDEX notifications_template_version;
ALTER TABLE deliveries DROP COLUMN variant;
