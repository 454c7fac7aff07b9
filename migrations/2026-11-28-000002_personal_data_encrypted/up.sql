-- Personal data is encrypted at rest (herald-crypto): these columns become bytea holding
-- sealed values. Values already stored are kept readable, marked as stored in clear (a first
-- byte of 0); `herald-api-server keys rotate` then seals them under the active key.
ALTER TABLE notifications
    ALTER COLUMN parameters TYPE bytea USING '\x00'::bytea || convert_to(parameters::text, 'UTF8'),
    ALTER COLUMN metadata DROP DEFAULT,
    ALTER COLUMN metadata TYPE bytea USING '\x00'::bytea || convert_to(metadata::text, 'UTF8'),
    ALTER COLUMN metadata SET DEFAULT '\x007b7d'::bytea;

ALTER TABLE deliveries
    ALTER COLUMN address TYPE bytea USING '\x00'::bytea || convert_to(address, 'UTF8');

ALTER TABLE delivery_events
    ALTER COLUMN detail DROP DEFAULT,
    ALTER COLUMN detail TYPE bytea USING '\x00'::bytea || convert_to(detail, 'UTF8'),
    ALTER COLUMN detail SET DEFAULT '\x00'::bytea;

ALTER TABLE user_preferences
    ALTER COLUMN email TYPE bytea USING '\x00'::bytea || convert_to(email, 'UTF8'),
    ALTER COLUMN phone TYPE bytea USING '\x00'::bytea || convert_to(phone, 'UTF8'),
    ALTER COLUMN device_tokens DROP DEFAULT,
    ALTER COLUMN device_tokens TYPE bytea
        USING '\x00'::bytea || convert_to(device_tokens::text, 'UTF8'),
    ALTER COLUMN device_tokens SET DEFAULT '\x005b5d'::bytea;

ALTER TABLE inbox_items
    ALTER COLUMN title TYPE bytea USING '\x00'::bytea || convert_to(title, 'UTF8'),
    ALTER COLUMN body TYPE bytea USING '\x00'::bytea || convert_to(body, 'UTF8'),
    ALTER COLUMN action_url DROP DEFAULT,
    ALTER COLUMN action_url TYPE bytea USING '\x00'::bytea || convert_to(action_url, 'UTF8'),
    ALTER COLUMN action_url SET DEFAULT '\x00'::bytea;
