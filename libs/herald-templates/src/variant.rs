//! A/B test variants of a template's content: a name, a weight and per-channel part overrides.
//! A variant without an override for a channel sends the base part.

use std::collections::{BTreeSet, HashMap};

use herald_domain::VariantName;
use serde::{Deserialize, Serialize};

use crate::{Error, TemplateContent};

/// The most variants one template content may define.
pub const MAX_VARIANTS: usize = 20;

/// The largest weight of one variant.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One arm of an A/B test. Its parts replace the base content's parts of the same channel;
/// channels it has no part for send the base part. The first variant is the control that
/// statistics compare the others with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Unique within the content; 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`.
    pub name: String,
    /// Relative share of recipients (1 to `MAX_WEIGHT`): a variant gets weight / total.
    pub weight: u32,
    /// The parts it replaces, as content of their own (stored beside `name` and `weight`);
    /// a variant has no variants.
    #[serde(flatten)]
    pub parts: TemplateContent,
}

impl TemplateContent {
    /// The variant named `name`, if this content defines it.
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|variant| variant.name == name)
    }

    /// The content `variant`'s recipients get: the base parts with the variant's overrides
    /// applied, without variants.
    pub fn with_variant(&self, variant: &Variant) -> TemplateContent {
        TemplateContent {
            email: variant.parts.email.clone().or_else(|| self.email.clone()),
            sms: variant.parts.sms.clone().or_else(|| self.sms.clone()),
            push: variant.parts.push.clone().or_else(|| self.push.clone()),
            in_app: variant.parts.in_app.clone().or_else(|| self.in_app.clone()),
            chat: variant.parts.chat.clone().or_else(|| self.chat.clone()),
            variants: Vec::new(),
        }
    }

    /// The variants' names and weights in order (what assignment depends on).
    pub fn variant_weights(&self) -> Vec<(&str, u32)> {
        self.variants
            .iter()
            .map(|variant| (variant.name.as_str(), variant.weight))
            .collect()
    }
}

/// Checks `content`'s variants: at most `MAX_VARIANTS`, valid unique names, weights from 1 to
/// `MAX_WEIGHT`, overrides only for channels the base content has, and every override part
/// valid like a base part. Adds the parameters the overrides use to `parameters`.
pub(crate) fn validate_variants(
    content: &TemplateContent,
    parameters: &mut BTreeSet<String>,
) -> Result<(), Error> {
    if content.variants.len() > MAX_VARIANTS {
        return Err(field(
            "variants".into(),
            format!("must have at most {MAX_VARIANTS} variants"),
        ));
    }
    if content.variants.len() == 1 {
        return Err(field(
            "variants".into(),
            "needs at least two variants to compare (or none)".into(),
        ));
    }
    let base_channels = content.channels();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, variant) in content.variants.iter().enumerate() {
        VariantName::parse(&variant.name)
            .map_err(|error| field(format!("variants[{index}].name"), error.to_string()))?;
        if let Some(first) = seen.insert(variant.name.as_str(), index) {
            return Err(field(
                format!("variants[{index}].name"),
                format!(
                    "`{}` is also the name of variants[{first}]; names must be unique",
                    variant.name
                ),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&variant.weight) {
            return Err(field(
                format!("variants[{}].weight", variant.name),
                format!("must be 1 to {MAX_WEIGHT}"),
            ));
        }
        let overrides = &variant.parts;
        if !overrides.variants.is_empty() {
            return Err(field(
                format!("variants[{}].variants", variant.name),
                "a variant cannot have variants of its own".into(),
            ));
        }
        if let Some(extra) = overrides
            .channels()
            .difference(&base_channels)
            .next()
            .copied()
        {
            return Err(field(
                format!("variants[{}].{extra}", variant.name),
                format!(
                    "the base content has no {extra} part; a variant can only replace parts the base content has"
                ),
            ));
        }
        if !overrides.channels().is_empty() {
            parameters
                .extend(crate::validate(overrides).map_err(|error| in_variant(variant, error))?);
        }
    }
    Ok(())
}

/// Renders every override part of every variant with `parameters`.
pub(crate) fn render_variants(
    content: &TemplateContent,
    parameters: &serde_json::Value,
) -> Result<(), Error> {
    for variant in &content.variants {
        crate::render_all(&variant.parts, parameters)
            .map_err(|error| in_variant(variant, error))?;
    }
    Ok(())
}

fn field(field: String, message: String) -> Error {
    Error::Field { field, message }
}

fn in_variant(variant: &Variant, error: Error) -> Error {
    Error::Variant {
        variant: variant.name.clone(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use herald_domain::{Channel, Subject};
    use serde_json::json;

    use crate::{
        EmailPart, Locale, Rendered, SmsPart, TemplateContent, Variant, VersionContent,
        VersionError,
    };

    fn email(subject: &str) -> EmailPart {
        EmailPart {
            subject: subject.into(),
            html: String::new(),
            text: "Hi {{name}}".into(),
        }
    }

    fn variant(name: &str, weight: u32, subject: Option<&str>) -> Variant {
        Variant {
            name: name.into(),
            weight,
            parts: TemplateContent {
                email: subject.map(email),
                ..TemplateContent::default()
            },
        }
    }

    fn content(variants: Vec<Variant>) -> TemplateContent {
        TemplateContent {
            email: Some(email("Base {{name}}")),
            sms: Some(SmsPart {
                text: "SMS {{name}}".into(),
            }),
            variants,
            ..TemplateContent::default()
        }
    }

    fn version(variants: Vec<Variant>) -> VersionContent {
        VersionContent::single(Locale::parse("en").unwrap(), content(variants))
    }

    fn error(variants: Vec<Variant>) -> String {
        version(variants)
            .validate(Some(&json!({"name": "Ada", "extra": 1})))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_variant_sends_its_own_part_and_the_base_part_elsewhere() {
        let version = version(vec![
            variant("control", 50, None),
            variant("short", 50, Some("Short {{name}}")),
        ]);
        assert_eq!(
            version.validate(Some(&json!({"name": "Ada"}))).unwrap(),
            ["name"]
        );
        let subject = |variant| match version
            .render_variant(None, Channel::Email, variant, &json!({"name": "Ada"}))
            .unwrap()
            .1
        {
            Rendered::Email(email) => email.subject,
            other => panic!("{other:?}"),
        };
        assert_eq!(subject(None), "Base Ada");
        assert_eq!(subject(Some("control")), "Base Ada");
        assert_eq!(subject(Some("short")), "Short Ada");
        let sms = version
            .render_variant(None, Channel::Sms, Some("short"), &json!({"name": "Ada"}))
            .unwrap()
            .1;
        assert_eq!(
            sms,
            Rendered::Sms(crate::RenderedSms {
                text: "SMS Ada".into()
            })
        );
    }

    #[test]
    fn an_unknown_variant_is_named_with_the_known_ones() {
        let version = version(vec![variant("a", 1, None), variant("b", 1, None)]);
        let error = version
            .render_variant(None, Channel::Email, Some("c"), &json!({"name": "Ada"}))
            .unwrap_err();
        assert!(matches!(error, VersionError::NoVariant { .. }));
        assert_eq!(
            error.to_string(),
            "variant: the template has no variant `c`; it has a, b"
        );
    }

    #[test]
    fn variants_are_validated_with_precise_messages() {
        assert_eq!(
            error(vec![variant("only", 1, None)]),
            "locales[en].variants: needs at least two variants to compare (or none)"
        );
        assert_eq!(
            error(vec![variant("a", 1, None), variant("A b", 1, None)]),
            "locales[en].variants[1].name: must be 1 to 64 characters of a-z, 0-9, `-`, `_` or `.`, starting with a letter or digit"
        );
        assert_eq!(
            error(vec![variant("a", 1, None), variant("a", 1, None)]),
            "locales[en].variants[1].name: `a` is also the name of variants[0]; names must be unique"
        );
        assert_eq!(
            error(vec![variant("a", 1, None), variant("b", 0, None)]),
            "locales[en].variants[b].weight: must be 1 to 1000000"
        );
        let syntax = error(vec![
            variant("a", 1, None),
            variant("b", 1, Some("{{#if}}")),
        ]);
        assert!(
            syntax.starts_with("locales[en].variants[b].email.subject does not compile: "),
            "{syntax}"
        );
        let mut in_app = variant("b", 1, None);
        in_app.parts.in_app = Some(crate::InAppPart {
            title: "t".into(),
            body: String::new(),
            action_url: String::new(),
        });
        assert_eq!(
            error(vec![variant("a", 1, None), in_app]),
            "locales[en].variants[b].in_app: the base content has no in_app part; a variant can only replace parts the base content has"
        );
        assert_eq!(
            error(vec![
                variant("a", 1, None),
                variant("b", 1, Some("{{missing}}"))
            ]),
            "locales[en].variants[b].email.subject needs the parameter `missing`, which was not supplied"
        );
    }

    #[test]
    fn every_locale_needs_the_same_variants_and_weights() {
        let mut version = version(vec![variant("a", 70, None), variant("b", 30, None)]);
        version.locales.insert(
            Locale::parse("ko").unwrap(),
            content(vec![variant("a", 50, None), variant("b", 50, None)]),
        );
        assert_eq!(
            version.validate(None).unwrap_err().to_string(),
            "locales: `ko` has variants a (50), b (50) but the default locale `en` has a (70), b (30); every locale needs the same variants with the same weights, in the same order"
        );
    }

    #[test]
    fn variant_parameters_are_inferred_too() {
        let version = version(vec![
            variant("a", 1, None),
            variant("b", 1, Some("{{coupon}}")),
        ]);
        assert_eq!(version.validate(None).unwrap(), ["coupon", "name"]);
    }

    #[test]
    fn content_without_variants_is_stored_as_before() {
        let stored = serde_json::to_value(content(Vec::new())).unwrap();
        assert!(stored.get("variants").is_none(), "{stored}");
        let with = version(vec![variant("a", 1, None), variant("b", 2, Some("x"))]);
        let stored = serde_json::to_value(&with).unwrap();
        assert_eq!(VersionContent::from_stored(stored).unwrap(), with);
    }

    #[test]
    fn a_variant_stores_its_parts_beside_its_name_and_weight() {
        let stored = serde_json::to_value(variant("short", 2, Some("Short"))).unwrap();
        assert_eq!(
            stored,
            json!({"name": "short", "weight": 2, "email": {
                "subject": "Short", "html": "", "text": "Hi {{name}}"
            }})
        );
        let nested = serde_json::from_value::<Variant>(json!({
            "name": "b", "weight": 1,
            "variants": [{"name": "c", "weight": 1}, {"name": "d", "weight": 1}],
        }))
        .unwrap();
        let mut control = variant("a", 1, None);
        control.parts.email = None;
        assert_eq!(
            error(vec![control, nested]),
            "locales[en].variants[b].variants: a variant cannot have variants of its own"
        );
    }

    #[test]
    fn assignment_follows_the_default_locales_variants() {
        let with = version(vec![variant("a", 1, None), variant("b", 1, None)]);
        let assigned = with
            .assign_variant("welcome", Subject::User("ada"))
            .unwrap();
        assert!(["a", "b"].contains(&assigned));
        assert_eq!(
            with.assign_variant("welcome", Subject::User("ada")),
            Some(assigned)
        );
        assert_eq!(
            version(Vec::new()).assign_variant("welcome", Subject::User("ada")),
            None
        );
    }
}
