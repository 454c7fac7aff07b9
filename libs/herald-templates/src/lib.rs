#![doc = include_str!("../README.md")]

mod parameters;

use std::collections::BTreeSet;
use std::io;

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

/// The largest rendered part, in bytes. Bigger output is `Error::TooLarge`.
pub const MAX_OUTPUT_BYTES: usize = 512 * 1024;

/// The longest template source of one part, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// A template's parts per channel, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateContent {
    /// The email part, if the template can be sent by email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailPart>,
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
    #[error("{part} needs a parameter that was not supplied: {message}")]
    MissingParameter {
        /// Which part.
        part: &'static str,
        /// The renderer's message, naming the variable.
        message: String,
    },
    /// Any other rendering failure.
    #[error("{part} failed to render: {message}")]
    Render {
        /// Which part.
        part: &'static str,
        /// The renderer's message.
        message: String,
    },
    /// The rendered output exceeded `MAX_OUTPUT_BYTES`.
    #[error("{part} renders to more than {MAX_OUTPUT_BYTES} bytes")]
    TooLarge {
        /// Which part.
        part: &'static str,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Compiles every part of `content` and returns the parameters they use, sorted.
pub fn validate(content: &TemplateContent) -> Result<Vec<String>> {
    let mut parameters = BTreeSet::new();
    let Some(email) = &content.email else {
        return Err(Error::Invalid {
            part: "content",
            message: "must have at least one channel part (email)".into(),
        });
    };
    if email.subject.trim().is_empty() {
        return Err(Error::Invalid {
            part: "email.subject",
            message: "must not be empty".into(),
        });
    }
    if email.html.trim().is_empty() && email.text.trim().is_empty() {
        return Err(Error::Invalid {
            part: "email",
            message: "needs an html or a text body".into(),
        });
    }
    for (part, source) in [
        ("email.subject", &email.subject),
        ("email.html", &email.html),
        ("email.text", &email.text),
    ] {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(Error::Invalid {
                part,
                message: format!("must be at most {MAX_SOURCE_BYTES} bytes"),
            });
        }
        let template = handlebars::Template::compile(source).map_err(|error| Error::Syntax {
            part,
            message: error.to_string(),
        })?;
        parameters::collect(&template, &mut parameters);
    }
    Ok(parameters.into_iter().collect())
}

/// Renders an email part with `parameters` (a JSON object).
pub fn render_email(part: &EmailPart, parameters: &serde_json::Value) -> Result<RenderedEmail> {
    let escaped = registry(true);
    let plain = registry(false);
    Ok(RenderedEmail {
        subject: render(&plain, "email.subject", &part.subject, parameters)?
            .replace(['\r', '\n'], " "),
        html: render(&escaped, "email.html", &part.html, parameters)?,
        text: render(&plain, "email.text", &part.text, parameters)?,
    })
}

fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if !escape_html {
        registry.register_escape_fn(handlebars::no_escape);
    }
    registry
}

fn render(
    registry: &Handlebars<'_>,
    part: &'static str,
    source: &str,
    parameters: &serde_json::Value,
) -> Result<String> {
    if source.is_empty() {
        return Ok(String::new());
    }
    let mut output = BoundedOutput::default();
    match registry.render_template_to_write(source, parameters, &mut output) {
        Ok(()) => String::from_utf8(output.buffer).map_err(|error| Error::Render {
            part,
            message: error.to_string(),
        }),
        Err(_) if output.overflowed => Err(Error::TooLarge { part }),
        Err(error) => {
            let message = error.to_string();
            if matches!(
                error.reason(),
                handlebars::RenderErrorReason::MissingVariable(_)
            ) {
                Err(Error::MissingParameter { part, message })
            } else {
                Err(Error::Render { part, message })
            }
        }
    }
}

/// A writer that refuses to grow past `MAX_OUTPUT_BYTES`.
#[derive(Default)]
struct BoundedOutput {
    buffer: Vec<u8>,
    overflowed: bool,
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
