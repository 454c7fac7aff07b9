-- A/B test variants (issue 6, seed §9): the variant of the template version each delivery was
-- assigned at submit, deterministically from the template key and the recipient. NULL when
-- the version has no variants (and for every delivery stored before variants existed).
ALTER TABLE deliveries ADD COLUMN variant text;

-- GetVariantStats aggregates one template's notifications (per version).
CREATE INDEX notifications_template_version ON notifications (template_id, template_version);
