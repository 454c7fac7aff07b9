-- Template versions with content per locale, and the recipient's locale on each delivery.
--
-- `template_versions.content` keeps its column: new versions store
-- {"default_locale": "en", "locales": {"en": {"email": …}, "ko": {…}}}; rows written before
-- are left as they are ({"email": …}) and read as the single locale `en`
-- (`herald_templates::VersionContent::from_stored`). Not rewriting them keeps this migration
-- compatible with the code deployed before it (expand/contract).

-- The parameters a version was validated with (NULL for versions created without samples).
ALTER TABLE template_versions ADD COLUMN sample_parameters jsonb;

-- The locale given for the recipient at submit (a BCP 47 tag), NULL for the template default.
ALTER TABLE deliveries ADD COLUMN locale text;
