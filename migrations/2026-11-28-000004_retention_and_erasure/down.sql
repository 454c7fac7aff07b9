DROP INDEX audit_log_target;
DROP INDEX deliveries_user_id;
DROP INDEX deliveries_personal_uncleared;
ALTER TABLE notifications DROP COLUMN personal_cleared_at;
ALTER TABLE deliveries DROP COLUMN personal_cleared_at;
