#![doc = include_str!("../README.md")]

mod bounds;
mod compiled;
mod fuzzing;
mod links;
mod locale;
mod parameters;
mod restrict;
mod variant;
mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use herald_domain::{Channel, Controls, check_controls};
use serde::{Deserialize, Serialize};

pub use bounds::{
    MAX_PARAMETER_ARRAY_ITEMS, MAX_PARAMETER_DEPTH, MAX_PARAMETER_STRING_BYTES,
    MAX_PARAMETERS_BYTES, ParameterError, check_parameters,
};
pub use compiled::{CompiledPart, CompiledVersion};
pub use fuzzing::check_fuzz_input;
pub use links::check_action_url;
pub use locale::{Locale, LocaleError, MAX_LOCALE_BYTES};
pub use restrict::{BLOCK_HELPERS, HELPERS, MAX_NESTING, MAX_RENDER_STEPS};
pub use variant::{MAX_VARIANTS, MAX_WEIGHT, Variant};
pub use version::{
    DEFAULT_LOCALE, MAX_LOCALES, Rendered, RenderedPart, VersionContent, VersionError,
};

/// The largest rendered part, in bytes. Bigger output is `Error::TooLarge`.
pub const MAX_OUTPUT_BYTES: usize = 512 * 1024;

/// The longest template source of one part, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// The most entries a push part's `data` map may have.
pub const MAX_PUSH_DATA_ENTRIES: usize = 64;

/// A template's parts per channel, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateContent {
    /// The email part, if the template can be sent by email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailPart>,
    /// The SMS part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsPart>,
    /// The mobile push part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushPart>,
    /// The in-app inbox part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app: Option<InAppPart>,
    /// The chat part (Slack-compatible and signed webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatPart>,
    /// A/B test variants (none, or at least two): each replaces some of the parts above for
    /// the recipients assigned to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

impl TemplateContent {
    /// The channels this content has a part for.
    pub fn channels(&self) -> BTreeSet<Channel> {
        [
            (Channel::Email, self.email.is_some()),
            (Channel::Sms, self.sms.is_some()),
            (Channel::Push, self.push.is_some()),
            (Channel::InApp, self.in_app.is_some()),
            (Channel::Chat, self.chat.is_some()),
        ]
        .into_iter()
        .filter_map(|(channel, present)| present.then_some(channel))
        .collect()
    }
}

/// The SMS part of a template (not escaped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsPart {
    /// Message text.
    pub text: String,
}

/// The mobile push part of a template (not escaped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPart {
    /// Notification title. May be empty when `body` is set.
    pub title: String,
    /// Notification body. May be empty when `title` is set.
    pub body: String,
    /// Custom data for the app; every value is a template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// The in-app inbox part of a template (not escaped; the app escapes for its own UI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InAppPart {
    /// Title. May be empty when `body` is set.
    pub title: String,
    /// Body. May be empty when `title` is set.
    pub body: String,
    /// Where tapping the message leads; may be empty.
    #[serde(default)]
    pub action_url: String,
}

/// The chat part of a template (not escaped): Slack `mrkdwn` text for Slack-compatible
/// webhooks, the `text` field of a signed webhook's JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPart {
    /// Message text.
    pub text: String,
}

/// The email part of a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailPart {
    /// Subject line (not escaped).
    pub subject: String,
    /// HTML body (values HTML-escaped). May be empty when `text` is set.
    pub html: String,
    /// Plain-text body (not escaped). May be empty when `html` is set.
    pub text: String,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// Subject line.
    pub subject: String,
    /// HTML body, empty when the template has none.
    pub html: String,
    /// Text body, empty when the template has none.
    pub text: String,
}

/// A rendered SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedSms {
    /// Message text.
    pub text: String,
}

/// A rendered push notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPush {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Custom data, values rendered.
    pub data: BTreeMap<String, String>,
}

/// A rendered chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// Message text.
    pub text: String,
}

/// A rendered in-app message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedInApp {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Action URL.
    pub action_url: String,
}

/// Why a template could not be compiled or rendered. Messages name the part (`email.html`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The part is not valid handlebars.
    #[error("{part} does not compile: {message}")]
    Syntax {
        /// Which part.
        part: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A required part is empty or absent.
    #[error("{part} {message}")]
    Invalid {
        /// Which part.
        part: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Rendering needed a parameter the request did not supply.
    #[error("{part} needs the parameter `{parameter}`, which was not supplied")]
    MissingParameter {
        /// Which part.
        part: &'static str,
        /// The missing variable's path as written in the template (`username`, `order.id`).
        parameter: String,
    },
    /// Any other rendering failure.
    #[error("{part} failed to render: {message}")]
    Render {
        /// Which part.
        part: &'static str,
        /// The renderer's message.
        message: String,
    },
    /// The source uses handlebars that Herald does not allow (a partial, a decorator, a
    /// helper outside `HELPERS`, nesting deeper than `MAX_NESTING`).
    #[error("{part} {message}")]
    Refused {
        /// Which part.
        part: &'static str,
        /// What is refused, and what is allowed instead.
        message: String,
    },
    /// Rendering would take more than `MAX_RENDER_STEPS` steps (`#each` over too many items).
    #[error(
        "{part} takes more than {MAX_RENDER_STEPS} steps to render (each item of an `#each` costs its body's size): render fewer items"
    )]
    TooMuchWork {
        /// Which part.
        part: &'static str,
    },
    /// The rendered output exceeded `MAX_OUTPUT_BYTES`.
    #[error("{part} renders to more than {MAX_OUTPUT_BYTES} bytes")]
    TooLarge {
        /// Which part.
        part: &'static str,
    },
    /// A variant's name or weight is wrong, or the variants as a whole are.
    #[error("{field}: {message}")]
    Field {
        /// Which field (`variants[1].name`, `variants[b].weight`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// One of a variant's override parts does not compile or render.
    #[error("variants[{variant}].{error}")]
    Variant {
        /// The variant's name.
        variant: String,
        /// What failed, naming the part.
        error: Box<Error>,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Compiles every part of `content` (variants' overrides included) and returns the parameters
/// they use, sorted.
pub fn validate(content: &TemplateContent) -> Result<Vec<String>> {
    let mut parameters = BTreeSet::new();
    if content.channels().is_empty() {
        return Err(Error::Invalid {
            part: "content",
            message: "must have at least one channel part (email, sms, push, in_app or chat)"
                .into(),
        });
    }
    let sources = checked_sources(content)?;
    for (part, source) in sources {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(invalid(
                part,
                &format!("must be at most {MAX_SOURCE_BYTES} bytes"),
            ));
        }
        // A link holds no control character at all; the other parts are text and keep
        // their tabs and line breaks.
        let controls = if part == "in_app.action_url" {
            Controls::Refused
        } else {
            Controls::TabsAndLineBreaks
        };
        check_controls(source, controls).map_err(|error| invalid(part, &error.to_string()))?;
        let template = restrict::compile(part, source)?;
        parameters::collect(&template, &mut parameters);
    }
    variant::validate_variants(content, &mut parameters)?;
    Ok(parameters.into_iter().collect())
}

/// Checks what each channel part needs besides valid syntax (a subject, a body, bounded push
/// data) and returns every source to compile, named by its part.
fn checked_sources(content: &TemplateContent) -> Result<Vec<(&'static str, &str)>> {
    let mut sources: Vec<(&'static str, &str)> = Vec::new();
    if let Some(email) = &content.email {
        if email.subject.trim().is_empty() {
            return Err(invalid("email.subject", "must not be empty"));
        }
        if email.html.trim().is_empty() && email.text.trim().is_empty() {
            return Err(invalid("email", "needs an html or a text body"));
        }
        sources.extend([
            ("email.subject", email.subject.as_str()),
            ("email.html", email.html.as_str()),
            ("email.text", email.text.as_str()),
        ]);
    }
    if let Some(sms) = &content.sms {
        if sms.text.trim().is_empty() {
            return Err(invalid("sms.text", "must not be empty"));
        }
        sources.push(("sms.text", sms.text.as_str()));
    }
    if let Some(push) = &content.push {
        if push.title.trim().is_empty() && push.body.trim().is_empty() {
            return Err(invalid("push", "needs a title or a body"));
        }
        if push.data.len() > MAX_PUSH_DATA_ENTRIES {
            return Err(invalid(
                "push.data",
                &format!("must have at most {MAX_PUSH_DATA_ENTRIES} entries"),
            ));
        }
        if push.data.keys().any(|key| key.trim().is_empty()) {
            return Err(invalid("push.data", "keys must not be blank"));
        }
        for key in push.data.keys() {
            check_controls(key, Controls::Refused)
                .map_err(|error| invalid("push.data", &format!("keys {error}")))?;
        }
        sources.extend([
            ("push.title", push.title.as_str()),
            ("push.body", push.body.as_str()),
        ]);
        sources.extend(
            push.data
                .values()
                .map(|value| ("push.data", value.as_str())),
        );
    }
    if let Some(in_app) = &content.in_app {
        if in_app.title.trim().is_empty() && in_app.body.trim().is_empty() {
            return Err(invalid("in_app", "needs a title or a body"));
        }
        sources.extend([
            ("in_app.title", in_app.title.as_str()),
            ("in_app.body", in_app.body.as_str()),
            ("in_app.action_url", in_app.action_url.as_str()),
        ]);
    }
    if let Some(chat) = &content.chat {
        if chat.text.trim().is_empty() {
            return Err(invalid("chat.text", "must not be empty"));
        }
        sources.push(("chat.text", chat.text.as_str()));
    }
    Ok(sources)
}

fn invalid(part: &'static str, message: &str) -> Error {
    Error::Invalid {
        part,
        message: message.to_owned(),
    }
}

/// Renders every part `content` has (variants' overrides included) with `parameters`, which is how a version is checked
/// against its sample parameters before it is saved or activated.
pub fn render_all(content: &TemplateContent, parameters: &serde_json::Value) -> Result<()> {
    if let Some(part) = &content.email {
        render_email(part, parameters)?;
    }
    if let Some(part) = &content.sms {
        render_sms(part, parameters)?;
    }
    if let Some(part) = &content.push {
        render_push(part, parameters)?;
    }
    if let Some(part) = &content.in_app {
        render_in_app(part, parameters)?;
    }
    if let Some(part) = &content.chat {
        render_chat(part, parameters)?;
    }
    variant::render_variants(content, parameters)
}

/// Renders an SMS part with `parameters` (a JSON object).
pub fn render_sms(part: &SmsPart, parameters: &serde_json::Value) -> Result<RenderedSms> {
    let content = TemplateContent {
        sms: Some(part.clone()),
        ..TemplateContent::default()
    };
    match render_once(&content, Channel::Sms, parameters)? {
        Rendered::Sms(rendered) => Ok(rendered),
        _ => Err(wrong_part("sms")),
    }
}

/// Renders a chat part with `parameters` (a JSON object).
pub fn render_chat(part: &ChatPart, parameters: &serde_json::Value) -> Result<RenderedChat> {
    let content = TemplateContent {
        chat: Some(part.clone()),
        ..TemplateContent::default()
    };
    match render_once(&content, Channel::Chat, parameters)? {
        Rendered::Chat(rendered) => Ok(rendered),
        _ => Err(wrong_part("chat")),
    }
}

/// Renders a push part with `parameters` (a JSON object).
pub fn render_push(part: &PushPart, parameters: &serde_json::Value) -> Result<RenderedPush> {
    let content = TemplateContent {
        push: Some(part.clone()),
        ..TemplateContent::default()
    };
    match render_once(&content, Channel::Push, parameters)? {
        Rendered::Push(rendered) => Ok(rendered),
        _ => Err(wrong_part("push")),
    }
}

/// Renders an in-app part with `parameters` (a JSON object).
pub fn render_in_app(part: &InAppPart, parameters: &serde_json::Value) -> Result<RenderedInApp> {
    let content = TemplateContent {
        in_app: Some(part.clone()),
        ..TemplateContent::default()
    };
    match render_once(&content, Channel::InApp, parameters)? {
        Rendered::InApp(rendered) => Ok(rendered),
        _ => Err(wrong_part("in_app")),
    }
}

/// Renders an email part with `parameters` (a JSON object).
pub fn render_email(part: &EmailPart, parameters: &serde_json::Value) -> Result<RenderedEmail> {
    let content = TemplateContent {
        email: Some(part.clone()),
        ..TemplateContent::default()
    };
    match render_once(&content, Channel::Email, parameters)? {
        Rendered::Email(rendered) => Ok(rendered),
        _ => Err(wrong_part("email")),
    }
}

/// Compiles `channel`'s part of `content` and renders it once.
fn render_once(
    content: &TemplateContent,
    channel: Channel,
    parameters: &serde_json::Value,
) -> Result<Rendered> {
    CompiledPart::compile(content, channel)?
        .ok_or_else(|| wrong_part(channel.as_str()))?
        .render(parameters)
}

/// A part that should have been there was not (unreachable: the callers build the content).
fn wrong_part(part: &'static str) -> Error {
    Error::Invalid {
        part,
        message: "is missing".into(),
    }
}

/// Email bodies travel with CRLF line endings (RFC 5322 §2.3, RFC 2045 §6.7), and the mail
/// library converts bare `\n` and `\r` on the way out. Converting here instead means
/// `RenderPreview` shows the bodies exactly as the recipient's server receives them.
fn crlf(text: &str) -> String {
    let mut output = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                output.push_str("\r\n");
            }
            '\n' => output.push_str("\r\n"),
            other => output.push(other),
        }
    }
    output
}

/// A writer that refuses to grow past `MAX_OUTPUT_BYTES`.
#[derive(Default)]
struct BoundedOutput {
    pub(crate) buffer: Vec<u8>,
    pub(crate) overflowed: bool,
}

impl io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + bytes.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered output too large"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
