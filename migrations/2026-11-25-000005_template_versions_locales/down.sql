ALTER TABLE deliveries DROP COLUMN locale;
ALTER TABLE template_versions DROP COLUMN sample_parameters;
