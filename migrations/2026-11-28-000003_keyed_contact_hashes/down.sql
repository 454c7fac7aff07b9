-- Keyed hashes cannot be turned back into plain ones: forget them too.
DELETE FROM disabled_contacts;
