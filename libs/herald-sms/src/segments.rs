//! How many SMS segments a text needs, and in which encoding.
//!
//! A text made only of characters from the GSM 03.38 default alphabet (3GPP TS 23.038 §6.2.1)
//! and its extension table travels as GSM-7: 160 septets fit one SMS, and a concatenated
//! message carries 153 per part (the user-data header takes the rest). Anything else — Korean,
//! emoji, `ç` — forces UCS-2 for the whole message: 70 UTF-16 code units in one SMS, 67 per
//! part. Splitting never cuts an escape sequence (`ESC` + extension character) or a surrogate
//! pair in two, which is why a part can carry one unit less than its capacity.

use std::fmt;

/// Septets per single GSM-7 message.
const GSM7_SINGLE: usize = 160;
/// Septets per part of a concatenated GSM-7 message.
const GSM7_PART: usize = 153;
/// UTF-16 code units per single UCS-2 message.
const UCS2_SINGLE: usize = 70;
/// UTF-16 code units per part of a concatenated UCS-2 message.
const UCS2_PART: usize = 67;

/// The character encoding an SMS travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 7-bit default alphabet (with its extension table).
    Gsm7,
    /// UCS-2 (UTF-16 on the wire for characters outside the BMP).
    Ucs2,
}

impl Encoding {
    /// The usual name: `GSM-7` or `UCS-2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gsm7 => "GSM-7",
            Self::Ucs2 => "UCS-2",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The result of [`analyze`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// The encoding the whole text needs.
    pub encoding: Encoding,
    /// Septets (GSM-7, extension characters counting 2) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// SMS segments the text is sent as (an empty text is one segment).
    pub segments: usize,
}

/// Counts the encoding, units and segments of `text`.
pub fn analyze(text: &str) -> Segments {
    if text
        .chars()
        .all(|character| gsm7_septets(character).is_some())
    {
        let costs = text
            .chars()
            .map(|character| gsm7_septets(character).unwrap_or(1));
        count(Encoding::Gsm7, costs, GSM7_SINGLE, GSM7_PART)
    } else {
        count(
            Encoding::Ucs2,
            text.chars().map(char::len_utf16),
            UCS2_SINGLE,
            UCS2_PART,
        )
    }
}

/// Totals the per-character `costs` and packs them into parts of `part` units when they do
/// not fit in one message of `single` units; a character never straddles two parts.
fn count(
    encoding: Encoding,
    costs: impl Iterator<Item = usize> + Clone,
    single: usize,
    part: usize,
) -> Segments {
    let units = costs.clone().sum();
    if units <= single {
        return Segments {
            encoding,
            units,
            segments: 1,
        };
    }
    let mut segments = 1;
    let mut used = 0;
    for cost in costs {
        if used + cost > part {
            segments += 1;
            used = 0;
        }
        used += cost;
    }
    Segments {
        encoding,
        units,
        segments,
    }
}

/// Septets `character` takes in GSM-7: 1 in the default alphabet, 2 in the extension table
/// (escape + character), `None` when GSM-7 cannot carry it.
fn gsm7_septets(character: char) -> Option<usize> {
    if is_gsm7_basic(character) {
        Some(1)
    } else if is_gsm7_extension(character) {
        Some(2)
    } else {
        None
    }
}

/// The GSM 03.38 default alphabet (3GPP TS 23.038 §6.2.1), without the escape code.
fn is_gsm7_basic(character: char) -> bool {
    matches!(
        character,
        'A'..='Z' | 'a'..='z' | '0'..='9'
        | '@' | '£' | '$' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | '\n' | 'Ø' | 'ø' | '\r'
        | 'Å' | 'å' | 'Δ' | '_' | 'Φ' | 'Γ' | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ'
        | 'æ' | 'ß' | 'É' | ' ' | '!' | '"' | '#' | '¤' | '%' | '&' | '\'' | '(' | ')' | '*'
        | '+' | ',' | '-' | '.' | '/' | ':' | ';' | '<' | '=' | '>' | '?' | '¡' | 'Ä' | 'Ö'
        | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à'
    )
}

/// The GSM 03.38 extension table (3GPP TS 23.038 §6.2.1.1), reached through the escape code.
fn is_gsm7_extension(character: char) -> bool {
    matches!(
        character,
        '\u{000C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€'
    )
}

#[cfg(test)]
mod tests;
