//! Parts compiled once and rendered many times. Parsing the handlebars sources is most of the
//! cost of a render, and a version's sources never change (versions are immutable), so a
//! worker compiles each (locale, variant, channel) part of a version once, in a
//! `CompiledVersion`, and renders every recipient's parameters with it. Every render goes
//! through `CompiledPart`, the one-off ones (`render_email`, `VersionContent::render`, the
//! API's preview) too, so the cached path and the preview cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use handlebars::{Context, Handlebars};
use herald_domain::Channel;

use crate::version::part_content;
use crate::{
    BoundedOutput, Error, Locale, Rendered, RenderedChat, RenderedEmail, RenderedInApp,
    RenderedPush, RenderedSms, Result, TemplateContent, VersionContent, VersionError,
};

/// One channel's part of a template, compiled: render it for each recipient with `render`.
pub struct CompiledPart {
    shape: Shape,
    /// Renders values as they are (every part but the email html).
    plain: Handlebars<'static>,
    /// HTML-escapes values (the email html part).
    escaped: Handlebars<'static>,
}

/// Which channel's part, and the push data keys (each value is a template of its own).
#[derive(Debug, Clone)]
enum Shape {
    Email,
    Sms,
    Push { data_keys: Vec<String> },
    InApp,
    Chat,
}

impl std::fmt::Debug for CompiledPart {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompiledPart")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl CompiledPart {
    /// Compiles `channel`'s part of `content`; `None` when it has none.
    pub fn compile(content: &TemplateContent, channel: Channel) -> Result<Option<Self>> {
        let mut compiled = Self {
            shape: Shape::Sms,
            plain: registry(false),
            escaped: registry(true),
        };
        match channel {
            Channel::Email => {
                let Some(part) = &content.email else {
                    return Ok(None);
                };
                compiled.shape = Shape::Email;
                compiled.add(Escape::No, "email.subject", "email.subject", &part.subject)?;
                compiled.add(Escape::Html, "email.html", "email.html", &part.html)?;
                compiled.add(Escape::No, "email.text", "email.text", &part.text)?;
            }
            Channel::Sms => {
                let Some(part) = &content.sms else {
                    return Ok(None);
                };
                compiled.add(Escape::No, "sms.text", "sms.text", &part.text)?;
            }
            Channel::Push => {
                let Some(part) = &content.push else {
                    return Ok(None);
                };
                compiled.add(Escape::No, "push.title", "push.title", &part.title)?;
                compiled.add(Escape::No, "push.body", "push.body", &part.body)?;
                for (key, value) in &part.data {
                    compiled.add(Escape::No, "push.data", &data_name(key), value)?;
                }
                compiled.shape = Shape::Push {
                    data_keys: part.data.keys().cloned().collect(),
                };
            }
            Channel::InApp => {
                let Some(part) = &content.in_app else {
                    return Ok(None);
                };
                compiled.shape = Shape::InApp;
                compiled.add(Escape::No, "in_app.title", "in_app.title", &part.title)?;
                compiled.add(Escape::No, "in_app.body", "in_app.body", &part.body)?;
                compiled.add(
                    Escape::No,
                    "in_app.action_url",
                    "in_app.action_url",
                    &part.action_url,
                )?;
            }
            Channel::Chat => {
                let Some(part) = &content.chat else {
                    return Ok(None);
                };
                compiled.shape = Shape::Chat;
                compiled.add(Escape::No, "chat.text", "chat.text", &part.text)?;
            }
        }
        Ok(Some(compiled))
    }

    /// The channel whose part this is.
    pub fn channel(&self) -> Channel {
        match self.shape {
            Shape::Email => Channel::Email,
            Shape::Sms => Channel::Sms,
            Shape::Push { .. } => Channel::Push,
            Shape::InApp => Channel::InApp,
            Shape::Chat => Channel::Chat,
        }
    }

    /// Renders the part strictly with `parameters` (a JSON object): a missing parameter is
    /// `Error::MissingParameter`, output is bounded by `MAX_OUTPUT_BYTES`.
    pub fn render(&self, parameters: &serde_json::Value) -> Result<Rendered> {
        let context = Context::from(parameters.clone());
        let plain =
            |part: &'static str, name: &str| self.render_one(Escape::No, part, name, &context);
        Ok(match &self.shape {
            Shape::Email => Rendered::Email(RenderedEmail {
                subject: plain("email.subject", "email.subject")?.replace(['\r', '\n'], " "),
                html: crate::crlf(&self.render_one(
                    Escape::Html,
                    "email.html",
                    "email.html",
                    &context,
                )?),
                text: crate::crlf(&plain("email.text", "email.text")?),
            }),
            Shape::Sms => Rendered::Sms(RenderedSms {
                text: plain("sms.text", "sms.text")?,
            }),
            Shape::Push { data_keys } => {
                let mut data = BTreeMap::new();
                for key in data_keys {
                    data.insert(key.clone(), plain("push.data", &data_name(key))?);
                }
                Rendered::Push(RenderedPush {
                    title: plain("push.title", "push.title")?,
                    body: plain("push.body", "push.body")?,
                    data,
                })
            }
            Shape::InApp => Rendered::InApp(RenderedInApp {
                title: plain("in_app.title", "in_app.title")?,
                body: plain("in_app.body", "in_app.body")?,
                action_url: plain("in_app.action_url", "in_app.action_url")?,
            }),
            Shape::Chat => Rendered::Chat(RenderedChat {
                text: plain("chat.text", "chat.text")?,
            }),
        })
    }

    /// Compiles `source` as template `name` of `part`. Empty sources render empty and are not
    /// registered.
    fn add(&mut self, escape: Escape, part: &'static str, name: &str, source: &str) -> Result<()> {
        if source.is_empty() {
            return Ok(());
        }
        // Compiled without a name, as `render_template` does, so error messages are the same
        // whether a part was cached or rendered once; checked against the restricted
        // handlebars here too, so a stored version that breaks it is never rendered.
        let template = crate::restrict::compile(part, source)?;
        self.registry_mut(escape).register_template(name, template);
        Ok(())
    }

    fn registry_mut(&mut self, escape: Escape) -> &mut Handlebars<'static> {
        match escape {
            Escape::No => &mut self.plain,
            Escape::Html => &mut self.escaped,
        }
    }

    fn render_one(
        &self,
        escape: Escape,
        part: &'static str,
        name: &str,
        context: &Context,
    ) -> Result<String> {
        let registry = match escape {
            Escape::No => &self.plain,
            Escape::Html => &self.escaped,
        };
        if !registry.has_template(name) {
            return Ok(String::new());
        }
        let mut output = BoundedOutput::default();
        crate::restrict::start_budget();
        match registry.render_with_context_to_write(name, context, &mut output) {
            Ok(()) => String::from_utf8(output.buffer).map_err(|error| Error::Render {
                part,
                message: error.to_string(),
            }),
            Err(_) if output.overflowed => Err(Error::TooLarge { part }),
            Err(_) if crate::restrict::budget_exhausted() => Err(Error::TooMuchWork { part }),
            Err(error) => match error.reason() {
                handlebars::RenderErrorReason::MissingVariable(path) => {
                    Err(Error::MissingParameter {
                        part,
                        parameter: path.clone().unwrap_or_else(|| "(unnamed)".into()),
                    })
                }
                _ => Err(Error::Render {
                    part,
                    message: error.to_string(),
                }),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Escape {
    No,
    Html,
}

/// The registered name of the push data value under `key`.
fn data_name(key: &str) -> String {
    format!("push.data.{key}")
}

/// A strict handlebars registry with only the allowed helpers (`restrict::registry`);
/// `escape_html` picks HTML escaping or none.
fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut registry = crate::restrict::registry();
    if !escape_html {
        registry.register_escape_fn(handlebars::no_escape);
    }
    registry
}

/// A template version whose parts are compiled on first use and kept, one per resolved
/// locale, variant and channel, so rendering many recipients compiles nothing. Renders exactly
/// like `VersionContent::render_variant`. Safe to share between threads.
#[derive(Debug)]
pub struct CompiledVersion {
    content: VersionContent,
    parts: RwLock<HashMap<PartKey, Arc<CompiledPart>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    locale: Locale,
    variant: Option<String>,
    channel: Channel,
}

impl CompiledVersion {
    /// Nothing is compiled until a part is rendered.
    pub fn new(content: VersionContent) -> Self {
        Self {
            content,
            parts: RwLock::new(HashMap::new()),
        }
    }

    /// The version's content.
    pub fn content(&self) -> &VersionContent {
        &self.content
    }

    /// `VersionContent::render_variant`, compiling the part only the first time it is asked
    /// for: the variant's part for `channel` when it has one, else the base part, in the
    /// first locale of `requested`'s fallback chain that has content.
    pub fn render_variant(
        &self,
        requested: Option<&Locale>,
        channel: Channel,
        variant: Option<&str>,
        parameters: &serde_json::Value,
    ) -> Result<(Locale, Rendered), VersionError> {
        let (locale, _) = self.content.resolve(requested).ok_or_else(|| {
            VersionError::DefaultLocale(format!(
                "`{}` has no content in locales",
                self.content.default_locale
            ))
        })?;
        let key = PartKey {
            locale: locale.clone(),
            variant: variant.map(str::to_owned),
            channel,
        };
        let cached = self
            .parts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let part = match cached {
            Some(part) => part,
            None => {
                let (_, part) = compile_part(&self.content, requested, channel, variant)?;
                let part = Arc::new(part);
                self.parts
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, Arc::clone(&part));
                part
            }
        };
        let rendered = part
            .render(parameters)
            .map_err(|error| VersionError::Part {
                locale: locale.clone(),
                error,
            })?;
        Ok((locale.clone(), rendered))
    }
}

/// Compiles `channel`'s part of `content` for a recipient asking for `requested` in
/// `variant`; returns the locale it resolved to.
pub(crate) fn compile_part(
    content: &VersionContent,
    requested: Option<&Locale>,
    channel: Channel,
    variant: Option<&str>,
) -> Result<(Locale, CompiledPart), VersionError> {
    let (locale, effective) = part_content(content, requested, variant)?;
    let part = CompiledPart::compile(&effective, channel)
        .map_err(|error| VersionError::Part {
            locale: locale.clone(),
            error,
        })?
        .ok_or(VersionError::NoPart { channel })?;
    Ok((locale, part))
}
