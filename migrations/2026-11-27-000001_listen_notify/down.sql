DROP TRIGGER outbox_added ON outbox;
DROP FUNCTION herald_outbox_added();
DROP TRIGGER templates_changed ON templates;
DROP FUNCTION herald_templates_changed();
