-- The in-app inbox: one item per in-app delivery, stored by the in-app channel worker.
-- `delivery_id` is unique, so a redelivered queue message can never create a second item
-- (the worker inserts with ON CONFLICT (delivery_id) DO NOTHING).
CREATE TABLE inbox_items (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    delivery_id uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    notification_id uuid NOT NULL,
    category text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    action_url text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at timestamptz,
    archived_at timestamptz,
    CONSTRAINT inbox_items_delivery_unique UNIQUE (delivery_id)
);

-- ListInbox pages newest first by the keyset (created_at, id).
CREATE INDEX inbox_items_user_recent ON inbox_items (user_id, created_at DESC, id DESC);

-- Unread items (not read, not archived): the unread count and the unread filter.
CREATE INDEX inbox_items_user_unread ON inbox_items (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL AND archived_at IS NULL;
