DROP TABLE disabled_contacts;
DELETE FROM deliveries WHERE channel = 'chat';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_channel_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_channel_check
    CHECK (channel IN ('email', 'sms', 'push', 'in_app'));
