-- Lookups use keyed hashes (HMAC-SHA256 under the lookup key) from now on.
--
-- Disabled contacts stored so far hold a plain SHA-256 of the address, which trying every phone
-- number would reverse. They stay in force (`keyed = false`, still matched by their plain
-- hash) until `herald-api-server keys rotate` replaces each with its keyed hash, computed from
-- the address of the delivery that disabled it; new rows are keyed.
ALTER TABLE disabled_contacts ADD COLUMN keyed boolean NOT NULL DEFAULT false;
ALTER TABLE disabled_contacts ALTER COLUMN keyed SET DEFAULT true;
-- What is left to rekey, found without reading the keyed rows: every retention run asks.
CREATE INDEX disabled_contacts_plain ON disabled_contacts (channel, address_hash) WHERE NOT keyed;

-- A notification's request fingerprint is read only through idempotency_keys (which expire);
-- the plain SHA-256 copies kept on notifications are dropped.
UPDATE notifications SET request_hash = '\x'::bytea WHERE request_hash <> '\x'::bytea;
