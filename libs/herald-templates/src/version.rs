//! A template version: content per locale, validated as a whole and rendered for one
//! recipient through the locale fallback chain. The API's preview and the channel workers
//! both render through `VersionContent::render`, so a preview is what a worker sends.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use herald_domain::{Channel, Subject};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Locale, RenderedChat, RenderedEmail, RenderedInApp, RenderedPush, RenderedSms,
    TemplateContent,
};

/// The default locale of content stored before versions had locales (`{"email": …}`).
pub const DEFAULT_LOCALE: &str = "en";

/// The most locales one version may have.
pub const MAX_LOCALES: usize = 100;

/// One version's content: parts per channel for each locale, and the locale that ends every
/// fallback chain. Stored as JSON `{"default_locale": "en", "locales": {"en": {"email": …}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionContent {
    /// The locale used when none of the recipient's locales has content.
    pub default_locale: Locale,
    /// Content per locale; always contains `default_locale`.
    pub locales: BTreeMap<Locale, TemplateContent>,
}

/// What rendering one channel's part produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// An email.
    Email(RenderedEmail),
    /// An SMS.
    Sms(RenderedSms),
    /// A push notification.
    Push(RenderedPush),
    /// An in-app message.
    InApp(RenderedInApp),
    /// A chat message.
    Chat(RenderedChat),
}

/// One channel's rendered part, so callers can ask for it by type
/// (`render_part::<RenderedSms>`) instead of matching `Rendered`.
pub trait RenderedPart: Sized {
    /// The channel whose part this is.
    const CHANNEL: Channel;

    /// The part, when `rendered` is this channel's.
    fn from_rendered(rendered: Rendered) -> Option<Self>;
}

macro_rules! rendered_part {
    ($part:ty, $channel:ident) => {
        impl RenderedPart for $part {
            const CHANNEL: Channel = Channel::$channel;

            fn from_rendered(rendered: Rendered) -> Option<Self> {
                match rendered {
                    Rendered::$channel(part) => Some(part),
                    _ => None,
                }
            }
        }
    };
}

rendered_part!(RenderedEmail, Email);
rendered_part!(RenderedSms, Sms);
rendered_part!(RenderedPush, Push);
rendered_part!(RenderedInApp, InApp);
rendered_part!(RenderedChat, Chat);

/// Why a version is invalid or could not be rendered. Messages start with the request field
/// they concern (`locales[ko].email.subject …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The default locale is missing from `locales`.
    #[error("default_locale: {0}")]
    DefaultLocale(String),
    /// The set of locales is wrong as a whole (empty, too many, channels differ).
    #[error("locales: {0}")]
    Locales(String),
    /// One part of one locale does not compile or render.
    #[error("locales[{locale}].{error}")]
    Part {
        /// The locale whose part failed.
        locale: Locale,
        /// What failed, naming the part (and the parameter when one is missing).
        error: Error,
    },
    /// The version has no part for the requested channel.
    #[error("channel: the template has no {channel} part")]
    NoPart {
        /// The channel asked for.
        channel: Channel,
    },
    /// The version has no variant of the requested name.
    #[error("variant: the template has no variant `{variant}`{}", known_variants(.known))]
    NoVariant {
        /// The name asked for.
        variant: String,
        /// The variants the version has.
        known: Vec<String>,
    },
}

fn known_variants(known: &[String]) -> String {
    if known.is_empty() {
        "; it has no variants".into()
    } else {
        format!("; it has {}", known.join(", "))
    }
}

impl VersionContent {
    /// Content in the default locale only.
    pub fn single(default_locale: Locale, content: TemplateContent) -> Self {
        Self {
            locales: BTreeMap::from([(default_locale.clone(), content)]),
            default_locale,
        }
    }

    /// Reads stored content in either shape: the per-locale shape, or the single-locale shape
    /// written before locales existed (`{"email": …}`), which is read as `DEFAULT_LOCALE`.
    /// Reading both keeps old rows valid without rewriting them, so the migration that
    /// introduced locales works with the code deployed before it (expand/contract).
    pub fn from_stored(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if value.get("locales").is_some() {
            serde_json::from_value(value)
        } else {
            let content: TemplateContent = serde_json::from_value(value)?;
            let default = Locale::parse(DEFAULT_LOCALE)
                .map_err(|error| serde::de::Error::custom(error.to_string()))?;
            Ok(Self::single(default, content))
        }
    }

    /// The default locale's content.
    pub fn default_content(&self) -> Option<&TemplateContent> {
        self.locales.get(&self.default_locale)
    }

    /// The channels this version can be sent on (every locale has the same parts).
    pub fn channels(&self) -> BTreeSet<Channel> {
        self.default_content()
            .map(TemplateContent::channels)
            .unwrap_or_default()
    }

    /// Checks the whole version: the default locale has content, every locale has the same
    /// channel parts, every part compiles, and — when `samples` is given — every part of every
    /// locale renders strictly with them. Returns the parameters used by any part, sorted.
    pub fn validate(
        &self,
        samples: Option<&serde_json::Value>,
    ) -> Result<Vec<String>, VersionError> {
        if self.locales.is_empty() {
            return Err(VersionError::Locales(
                "must contain at least one locale".into(),
            ));
        }
        if self.locales.len() > MAX_LOCALES {
            return Err(VersionError::Locales(format!(
                "must contain at most {MAX_LOCALES} locales"
            )));
        }
        let default_content = self.default_content().ok_or_else(|| {
            VersionError::DefaultLocale(format!(
                "`{}` has no content in locales",
                self.default_locale
            ))
        })?;
        let default_channels = default_content.channels();
        let default_variants = default_content.variant_weights();
        let mut parameters = BTreeSet::new();
        for (locale, content) in &self.locales {
            let part_error = |error| VersionError::Part {
                locale: locale.clone(),
                error,
            };
            parameters.extend(crate::validate(content).map_err(part_error)?);
            let variants = content.variant_weights();
            if variants != default_variants {
                return Err(VersionError::Locales(format!(
                    "`{locale}` has variants {} but the default locale `{}` has {}; every locale needs the same variants with the same weights, in the same order",
                    weights(&variants),
                    self.default_locale,
                    weights(&default_variants)
                )));
            }
            let channels = content.channels();
            if channels != default_channels {
                return Err(VersionError::Locales(format!(
                    "`{locale}` has parts for {} but the default locale `{}` has parts for {}; every locale needs the same channels",
                    names(&channels),
                    self.default_locale,
                    names(&default_channels)
                )));
            }
            if let Some(samples) = samples {
                crate::render_all(content, samples).map_err(part_error)?;
            }
        }
        Ok(parameters.into_iter().collect())
    }

    /// The locale whose content a recipient asking for `requested` gets: the first of
    /// `Locale::fallback_chain` that has content (`ko-KR` → `ko` → the default locale).
    pub fn resolve(&self, requested: Option<&Locale>) -> Option<(&Locale, &TemplateContent)> {
        Locale::fallback_chain(requested, &self.default_locale)
            .into_iter()
            .find_map(|locale| self.locales.get_key_value(&locale))
    }

    /// Renders `channel`'s part for a recipient asking for `requested`, strictly, with
    /// `parameters` (a JSON object). Returns the locale used and the rendered part.
    pub fn render(
        &self,
        requested: Option<&Locale>,
        channel: Channel,
        parameters: &serde_json::Value,
    ) -> Result<(Locale, Rendered), VersionError> {
        self.render_variant(requested, channel, None, parameters)
    }

    /// The names of the version's A/B test variants, in order (the first is the control).
    pub fn variant_names(&self) -> Vec<&str> {
        self.default_content()
            .map(|content| {
                content
                    .variants
                    .iter()
                    .map(|variant| variant.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The variant `subject` gets in the experiment `experiment` (Herald uses the template
    /// key), or `None` when the version has no variants. Deterministic: see
    /// `herald_domain::assign_variant`. Every locale has the same variants and weights, so
    /// the default locale's decide.
    pub fn assign_variant(&self, experiment: &str, subject: Subject<'_>) -> Option<&str> {
        let variants = &self.default_content()?.variants;
        let weights: Vec<u32> = variants.iter().map(|variant| variant.weight).collect();
        let index = herald_domain::assign_variant(experiment, subject, &weights)?;
        variants.get(index).map(|variant| variant.name.as_str())
    }

    /// `render` for the recipients of `variant` (`None`: the base content): the variant's part
    /// for `channel` when it has one, else the base part. Compiles the part for this one
    /// render; `CompiledVersion` keeps compiled parts for many.
    pub fn render_variant(
        &self,
        requested: Option<&Locale>,
        channel: Channel,
        variant: Option<&str>,
        parameters: &serde_json::Value,
    ) -> Result<(Locale, Rendered), VersionError> {
        let (locale, part) = crate::compiled::compile_part(self, requested, channel, variant)?;
        let rendered = part
            .render(parameters)
            .map_err(|error| VersionError::Part {
                locale: locale.clone(),
                error,
            })?;
        Ok((locale, rendered))
    }
}

/// The content a recipient asking for `requested` in `variant` gets, and its locale: the
/// locale's base content with the variant's parts in place of the base ones.
pub(crate) fn part_content<'a>(
    content: &'a VersionContent,
    requested: Option<&Locale>,
    variant: Option<&str>,
) -> Result<(Locale, Cow<'a, TemplateContent>), VersionError> {
    let (locale, base) = content.resolve(requested).ok_or_else(|| {
        VersionError::DefaultLocale(format!(
            "`{}` has no content in locales",
            content.default_locale
        ))
    })?;
    let effective = match variant {
        None => Cow::Borrowed(base),
        Some(name) => {
            let variant = base.variant(name).ok_or_else(|| VersionError::NoVariant {
                variant: name.to_owned(),
                known: content
                    .variant_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            })?;
            Cow::Owned(base.with_variant(variant))
        }
    };
    Ok((locale.clone(), effective))
}

fn weights(variants: &[(&str, u32)]) -> String {
    if variants.is_empty() {
        return "none".into();
    }
    variants
        .iter()
        .map(|(name, weight)| format!("{name} ({weight})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(channels: &BTreeSet<Channel>) -> String {
    if channels.is_empty() {
        return "no channel".into();
    }
    channels
        .iter()
        .map(|channel| channel.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
