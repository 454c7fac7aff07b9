//! Locale tags (a practical subset of BCP 47) and the fallback chain.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest tag accepted, in bytes.
pub const MAX_LOCALE_BYTES: usize = 35;

/// A locale tag such as `en`, `ko`, `ko-KR`, `zh-Hant-TW` or `es-419`, in canonical case
/// (language lowercase, script titlecase, region uppercase, variants lowercase).
///
/// Accepted: a 2–3 letter language, then optionally a 4-letter script, then optionally a
/// 2-letter or 3-digit region, then 5–8 character variants (or 4 starting with a digit).
/// Extensions and private use (`-u-`, `-x-`) are refused: nothing here would use them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locale(String);

/// Why a locale tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a BCP 47 language tag such as `en`, `ko` or `ko-KR` (got `{0}`)")]
pub struct LocaleError(String);

impl Locale {
    /// Parses and canonicalises a tag; `ko_kr` is refused, `ko-kr` becomes `ko-KR`.
    pub fn parse(tag: &str) -> Result<Self, LocaleError> {
        let refuse = || LocaleError(tag.chars().take(MAX_LOCALE_BYTES + 1).collect());
        if tag.is_empty() || tag.len() > MAX_LOCALE_BYTES {
            return Err(refuse());
        }
        let mut subtags = tag.split('-');
        let language = subtags.next().ok_or_else(refuse)?;
        if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Err(refuse());
        }
        let mut canonical = language.to_ascii_lowercase();
        // 0: script may follow; 1: region may follow; 2: only variants.
        let mut stage = 0;
        for subtag in subtags {
            let alpha = subtag.bytes().all(|b| b.is_ascii_alphabetic());
            let digits = subtag.bytes().all(|b| b.is_ascii_digit());
            let alphanumeric = subtag.bytes().all(|b| b.is_ascii_alphanumeric());
            canonical.push('-');
            if stage == 0 && subtag.len() == 4 && alpha {
                let mut chars = subtag.chars();
                if let Some(first) = chars.next() {
                    canonical.push(first.to_ascii_uppercase());
                }
                canonical.extend(chars.map(|c| c.to_ascii_lowercase()));
                stage = 1;
            } else if stage <= 1 && ((subtag.len() == 2 && alpha) || (subtag.len() == 3 && digits))
            {
                canonical.push_str(&subtag.to_ascii_uppercase());
                stage = 2;
            } else if alphanumeric
                && ((5..=8).contains(&subtag.len())
                    || (subtag.len() == 4 && subtag.as_bytes()[0].is_ascii_digit()))
            {
                canonical.push_str(&subtag.to_ascii_lowercase());
                stage = 2;
            } else {
                return Err(refuse());
            }
        }
        Ok(Self(canonical))
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The next more general tag: `zh-Hant-TW` → `zh-Hant` → `zh`; `None` for a bare language.
    pub fn parent(&self) -> Option<Self> {
        self.0
            .rsplit_once('-')
            .map(|(parent, _)| Self(parent.to_owned()))
    }

    /// The locales to try for a recipient who asked for `requested`, most specific first:
    /// `ko-KR` → `ko` → `default`. Without a request only `default` is tried. No duplicates.
    pub fn fallback_chain(requested: Option<&Self>, default: &Self) -> Vec<Self> {
        let mut chain: Vec<Self> = Vec::new();
        let mut next = requested.cloned();
        while let Some(locale) = next {
            next = locale.parent();
            chain.push(locale);
        }
        if !chain.contains(default) {
            chain.push(default.clone());
        }
        chain
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for Locale {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Locale {
    type Error = LocaleError;

    fn try_from(tag: String) -> Result<Self, Self::Error> {
        Self::parse(&tag)
    }
}

impl From<Locale> for String {
    fn from(locale: Locale) -> Self {
        locale.0
    }
}
