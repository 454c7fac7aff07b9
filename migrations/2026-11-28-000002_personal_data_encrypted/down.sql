-- Only values stored in clear can go back to text; sealed ones need their keys, which SQL
-- does not have. Refuse rather than lose data.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM notifications WHERE get_byte(parameters, 0) <> 0 OR get_byte(metadata, 0) <> 0)
        OR EXISTS (SELECT 1 FROM deliveries WHERE get_byte(address, 0) <> 0)
        OR EXISTS (SELECT 1 FROM delivery_events WHERE get_byte(detail, 0) <> 0)
        OR EXISTS (SELECT 1 FROM user_preferences
                   WHERE get_byte(email, 0) <> 0 OR get_byte(phone, 0) <> 0
                      OR get_byte(device_tokens, 0) <> 0)
        OR EXISTS (SELECT 1 FROM inbox_items
                   WHERE get_byte(title, 0) <> 0 OR get_byte(body, 0) <> 0
                      OR get_byte(action_url, 0) <> 0)
    THEN
        RAISE EXCEPTION 'encrypted personal data present: it cannot be turned back into text here';
    END IF;
END $$;

ALTER TABLE notifications
    ALTER COLUMN parameters TYPE jsonb USING convert_from(substring(parameters FROM 2), 'UTF8')::jsonb,
    ALTER COLUMN metadata DROP DEFAULT,
    ALTER COLUMN metadata TYPE jsonb USING convert_from(substring(metadata FROM 2), 'UTF8')::jsonb,
    ALTER COLUMN metadata SET DEFAULT '{}';

ALTER TABLE deliveries
    ALTER COLUMN address TYPE text USING convert_from(substring(address FROM 2), 'UTF8');

ALTER TABLE delivery_events
    ALTER COLUMN detail DROP DEFAULT,
    ALTER COLUMN detail TYPE text USING convert_from(substring(detail FROM 2), 'UTF8'),
    ALTER COLUMN detail SET DEFAULT '';

ALTER TABLE user_preferences
    ALTER COLUMN email TYPE text USING convert_from(substring(email FROM 2), 'UTF8'),
    ALTER COLUMN phone TYPE text USING convert_from(substring(phone FROM 2), 'UTF8'),
    ALTER COLUMN device_tokens DROP DEFAULT,
    ALTER COLUMN device_tokens TYPE jsonb USING convert_from(substring(device_tokens FROM 2), 'UTF8')::jsonb,
    ALTER COLUMN device_tokens SET DEFAULT '[]';

ALTER TABLE inbox_items
    ALTER COLUMN title TYPE text USING convert_from(substring(title FROM 2), 'UTF8'),
    ALTER COLUMN body TYPE text USING convert_from(substring(body FROM 2), 'UTF8'),
    ALTER COLUMN action_url DROP DEFAULT,
    ALTER COLUMN action_url TYPE text USING convert_from(substring(action_url FROM 2), 'UTF8'),
    ALTER COLUMN action_url SET DEFAULT '';
