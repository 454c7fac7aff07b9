//! The control characters a stored text may hold. PostgreSQL cannot store NUL in `text` or
//! `jsonb`, and other control characters in an identifier, a key or a link are a way to hide
//! or smuggle something (a header break, a terminal escape, `java\tscript:`); free text
//! (parameter values, template sources) keeps its tabs and line breaks.

use crate::ValueError;

/// Which control characters (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F) a text may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controls {
    /// None: identifiers, keys, links, metadata.
    Refused,
    /// Tab, line feed and carriage return, no other: free text.
    TabsAndLineBreaks,
}

/// `Err` naming the first control character `text` may not hold under `allowed`, and where
/// (counted in characters), so the caller can find it.
pub fn check_controls(text: &str, allowed: Controls) -> Result<(), ValueError> {
    let tolerated = |character: char| {
        allowed == Controls::TabsAndLineBreaks && matches!(character, '\t' | '\n' | '\r')
    };
    let Some((position, character)) = text
        .chars()
        .enumerate()
        .find(|(_, character)| character.is_control() && !tolerated(*character))
    else {
        return Ok(());
    };
    let rule = match allowed {
        Controls::Refused => "must not contain control characters",
        Controls::TabsAndLineBreaks => {
            "must not contain control characters other than tab, line feed and carriage return"
        }
    };
    Err(ValueError::new(format!(
        "{rule} (found U+{:04X} at character {position})",
        u32::from(character)
    )))
}
