-- Disabled contacts are stored as keyed hashes (HMAC-SHA256 under the lookup key) from now on.
-- The plain SHA-256 hashes stored so far could be reversed for phone numbers by trying them
-- all, and cannot be turned into keyed ones without the addresses: they are forgotten. An
-- address disabled before is tried once more, and its provider's next refusal (a hard bounce,
-- an unregistered device token) disables it again.
DELETE FROM disabled_contacts;
