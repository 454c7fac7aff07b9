-- Changes announced with NOTIFY, so that services wake instead of polling. PostgreSQL
-- delivers a notification when its transaction commits, and folds repeats within one
-- transaction into one. Channels carry the schema, so deployments and tests sharing a
-- database hear only their own. Triggers, so that no writer can forget to announce.

-- Every change to a template row (a new template, an activation, a category change) names
-- the template's key on `herald_templates:<schema>`: every API replica drops its cached copy.
CREATE FUNCTION herald_templates_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('herald_templates:' || TG_TABLE_SCHEMA, OLD.key);
    ELSE
        PERFORM pg_notify('herald_templates:' || TG_TABLE_SCHEMA, NEW.key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER templates_changed
    AFTER INSERT OR UPDATE OR DELETE ON templates
    FOR EACH ROW EXECUTE FUNCTION herald_templates_changed();

-- Every statement adding outbox rows (a submit batch, a replay, a deferral) wakes the relays
-- on `herald_outbox:<schema>`.
CREATE FUNCTION herald_outbox_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_outbox:' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_added
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION herald_outbox_added();
