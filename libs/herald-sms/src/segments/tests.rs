//! Segment counting at every boundary.

use super::{Encoding, Segments, analyze};

/// Every character of the GSM 03.38 default alphabet except the escape code.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                          ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table: each costs two septets.
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

fn check(text: &str, encoding: Encoding, units: usize, segments: usize) {
    assert_eq!(
        analyze(text),
        Segments {
            encoding,
            units,
            segments
        },
        "text of {} chars",
        text.chars().count()
    );
}

fn repeat(text: &str, times: usize) -> String {
    text.repeat(times)
}

#[test]
fn empty_text_is_one_gsm7_segment() {
    check("", Encoding::Gsm7, 0, 1);
}

#[test]
fn the_whole_basic_alphabet_is_gsm7_at_one_septet_each() {
    assert_eq!(GSM7_BASIC.chars().count(), 127);
    check(GSM7_BASIC, Encoding::Gsm7, 127, 1);
}

#[test]
fn extension_characters_cost_two_septets_each() {
    for character in GSM7_EXTENSION.chars() {
        check(&character.to_string(), Encoding::Gsm7, 2, 1);
    }
    check(GSM7_EXTENSION, Encoding::Gsm7, 20, 1);
}

#[test]
fn gsm7_single_message_ends_at_160_septets() {
    let cases = [
        (repeat("a", 159), 159, 1),
        (repeat("a", 160), 160, 1),
        (repeat("a", 161), 161, 2),
        (repeat("a", 153 * 2), 306, 2),
        (repeat("a", 153 * 2 + 1), 307, 3),
        (repeat("a", 153 * 3), 459, 3),
    ];
    for (text, units, segments) in cases {
        check(&text, Encoding::Gsm7, units, segments);
    }
}

#[test]
fn extension_characters_at_the_single_message_boundary() {
    // 158 + 2 = 160 septets still fit one message; one more septet does not.
    check(&format!("{}€", repeat("a", 158)), Encoding::Gsm7, 160, 1);
    check(&format!("{}€", repeat("a", 159)), Encoding::Gsm7, 161, 2);
    check(&repeat("{", 80), Encoding::Gsm7, 160, 1);
    check(&format!("{}a", repeat("{", 80)), Encoding::Gsm7, 161, 2);
}

#[test]
fn an_escape_sequence_is_never_split_across_parts() {
    // 151 + 2 + 152 = 305 septets and the `€` fits before the first cut: two parts.
    check(
        &format!("{}€{}", repeat("a", 151), repeat("a", 152)),
        Encoding::Gsm7,
        305,
        2,
    );
    // 306 septets would fill two parts exactly, but the `€` at septets 153-154 moves whole
    // into the second part, which pushes the last septet into a third.
    check(
        &format!("{}€{}", repeat("a", 152), repeat("a", 152)),
        Encoding::Gsm7,
        306,
        3,
    );
}

#[test]
fn form_feed_is_an_extension_character() {
    check("a\u{000C}b", Encoding::Gsm7, 4, 1);
}

#[test]
fn characters_outside_gsm7_switch_the_whole_text_to_ucs2() {
    check("ç", Encoding::Ucs2, 1, 1);
    check("`", Encoding::Ucs2, 1, 1);
    check(&format!("{}ç", repeat("a", 69)), Encoding::Ucs2, 70, 1);
    check(&format!("{}ç", repeat("a", 70)), Encoding::Ucs2, 71, 2);
}

#[test]
fn korean_text_is_ucs2() {
    check("배송이 시작되었습니다", Encoding::Ucs2, 11, 1);
    check("Order 42: 배송 시작", Encoding::Ucs2, 15, 1);
}

#[test]
fn ucs2_single_message_ends_at_70_units() {
    let cases = [
        (repeat("한", 70), 70, 1),
        (repeat("한", 71), 71, 2),
        (repeat("한", 67 * 2), 134, 2),
        (repeat("한", 67 * 2 + 1), 135, 3),
    ];
    for (text, units, segments) in cases {
        check(&text, Encoding::Ucs2, units, segments);
    }
}

#[test]
fn emoji_take_two_utf16_units() {
    check("😀", Encoding::Ucs2, 2, 1);
    check(&repeat("😀", 35), Encoding::Ucs2, 70, 1);
    check(&format!("{}😀", repeat("a", 69)), Encoding::Ucs2, 71, 2);
}

#[test]
fn a_surrogate_pair_is_never_split_across_parts() {
    check(
        &format!("{}😀{}", repeat("한", 65), repeat("한", 66)),
        Encoding::Ucs2,
        133,
        2,
    );
    // 134 units would fill two parts exactly, but the emoji at units 67-68 moves whole into
    // the second part.
    check(
        &format!("{}😀{}", repeat("한", 66), repeat("한", 66)),
        Encoding::Ucs2,
        134,
        3,
    );
}

#[test]
fn encoding_names_are_the_usual_ones() {
    assert_eq!(Encoding::Gsm7.to_string(), "GSM-7");
    assert_eq!(Encoding::Ucs2.to_string(), "UCS-2");
}
