DROP TABLE outbox;
DROP TABLE delivery_events;
DROP TABLE deliveries;
DROP TABLE notifications;
DROP TABLE template_versions;
DROP TABLE templates;
