//! In-app action URLs: where tapping a message leads, so only schemes an operator allowed
//! (`https` by default; an app's own deep-link scheme when configured), never `javascript:` or
//! `data:`. Checked when a version is saved (the source's literal scheme, and the URL rendered
//! with the sample parameters) and when a worker renders an item (the URL as rendered, since a
//! parameter may supply all of it).

use herald_domain::{Controls, check_controls};

use crate::{Error, Rendered, TemplateContent, VersionContent, VersionError};

const PART: &str = "in_app.action_url";

/// Checks a rendered action URL: empty (no action), or an absolute URL without control
/// characters or surrounding whitespace whose scheme is one of `schemes` (lowercase).
pub fn check_action_url(url: &str, schemes: &[String]) -> Result<(), Error> {
    if url.is_empty() {
        return Ok(());
    }
    check_controls(url, Controls::Refused).map_err(|error| refused(error.to_string()))?;
    if url.trim() != url {
        return Err(refused("must not start or end with whitespace".into()));
    }
    let parsed = url::Url::parse(url)
        .map_err(|error| refused(format!("must be an absolute URL ({error})")))?;
    check_scheme(parsed.scheme(), schemes)
}

fn check_scheme(scheme: &str, schemes: &[String]) -> Result<(), Error> {
    if schemes
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(scheme))
    {
        return Ok(());
    }
    Err(refused(format!(
        "must use one of the schemes {} (in_app.action_url_schemes), not `{}`",
        schemes.join(", "),
        scheme.escape_default()
    )))
}

/// The scheme a source states before its first `{{`, if it states one (`https://…/{{id}}`).
fn literal_scheme(source: &str) -> Option<&str> {
    let literal = source.split("{{").next().unwrap_or_default();
    let (scheme, _) = literal.split_once(':')?;
    let mut characters = scheme.chars();
    let first = characters.next()?;
    (first.is_ascii_alphabetic()
        && characters
            .all(|character| character.is_ascii_alphanumeric() || "+-.".contains(character)))
    .then_some(scheme)
}

fn refused(message: String) -> Error {
    Error::Refused {
        part: PART,
        message,
    }
}

impl VersionContent {
    /// Checks every in-app `action_url` of every locale and variant against `schemes`: the
    /// scheme a source states, and, given `samples`, the URL it renders to.
    pub fn check_action_urls(
        &self,
        samples: Option<&serde_json::Value>,
        schemes: &[String],
    ) -> Result<(), VersionError> {
        for (locale, content) in &self.locales {
            let contents = std::iter::once(content.clone()).chain(
                content
                    .variants
                    .iter()
                    .map(|variant| content.with_variant(variant)),
            );
            for effective in contents {
                check_content(&effective, samples, schemes).map_err(|error| {
                    VersionError::Part {
                        locale: locale.clone(),
                        error,
                    }
                })?;
            }
        }
        Ok(())
    }
}

fn check_content(
    content: &TemplateContent,
    samples: Option<&serde_json::Value>,
    schemes: &[String],
) -> Result<(), Error> {
    let Some(in_app) = &content.in_app else {
        return Ok(());
    };
    if let Some(scheme) = literal_scheme(&in_app.action_url) {
        check_scheme(scheme, schemes)?;
    }
    if let Some(samples) = samples
        && let Some(compiled) =
            crate::CompiledPart::compile(content, herald_domain::Channel::InApp)?
        && let Rendered::InApp(rendered) = compiled.render(samples)?
    {
        check_action_url(&rendered.action_url, schemes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
