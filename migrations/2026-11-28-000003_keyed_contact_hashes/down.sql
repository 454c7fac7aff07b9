-- Keyed contact hashes mean nothing to the release before: forget them, keep the plain ones.
DELETE FROM disabled_contacts WHERE keyed;
ALTER TABLE disabled_contacts DROP COLUMN keyed;
