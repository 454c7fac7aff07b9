//! Rewrites rendered email HTML for tracking, with `lol_html` (a streaming HTML rewriter that
//! tokenizes like a browser, so attributes in comments, scripts or odd quoting are handled
//! as a mail client would see them).

use std::cell::Cell;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use herald_domain::DeliveryId;
use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, end, end_tag, rewrite_str};

use crate::Signer;

/// The HTML could not be rewritten.
#[derive(Debug, thiserror::Error)]
#[error("could not rewrite the email html for tracking: {0}")]
pub struct RewriteError(String);

/// Rewrites `html` of `delivery_id`'s email: every `<a href>` whose (entity-decoded) URL is
/// `http` or `https` points at a signed click link instead, and a 1×1 open pixel goes just
/// before `</body>` (or at the end when there is no body element). Other links (`mailto:`,
/// `tel:`, fragments, relative) are left alone. Links expire `link_ttl` after `now`.
pub fn rewrite_html(
    html: &str,
    signer: &Signer,
    delivery_id: DeliveryId,
    now: DateTime<Utc>,
) -> Result<String, RewriteError> {
    let pixel = format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">",
        signer.pixel_url(delivery_id, now)
    );
    let pixel_placed = Rc::new(Cell::new(false));
    let settings = RewriteStrSettings::new()
        .append_element_content_handler(element!("a[href]", |anchor| {
            let Some(raw) = anchor.get_attribute("href") else {
                return Ok(());
            };
            let Some(url) = decode_entities(raw.trim()) else {
                return Ok(());
            };
            if is_http(&url) {
                anchor.set_attribute("href", &signer.click_url(delivery_id, &url, now))?;
            }
            Ok(())
        }))
        .append_element_content_handler(element!("body", |body| {
            let pixel = pixel.clone();
            let placed = Rc::clone(&pixel_placed);
            body.on_end_tag(end_tag!(move |end| {
                if !placed.replace(true) {
                    end.before(&pixel, ContentType::Html);
                }
                Ok(())
            }))?;
            Ok(())
        }))
        .append_document_content_handler(end!(|document_end| {
            if !pixel_placed.replace(true) {
                document_end.append(&pixel, ContentType::Html);
            }
            Ok(())
        }));
    rewrite_str(html, settings).map_err(|error| RewriteError(error.to_string()))
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Decodes the character references an attribute value may hold (what the browser would
/// follow): numeric ones and the named ones HTML escaping produces. `None` for a named
/// reference this does not know, so such a link is left untouched rather than mis-signed.
fn decode_entities(value: &str) -> Option<String> {
    let mut decoded = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('&') {
        decoded.push_str(&rest[..start]);
        rest = &rest[start..];
        let reference = rest[1..]
            .find(|character: char| !(character.is_ascii_alphanumeric() || character == '#'))
            .map(|end| end + 1)
            .filter(|end| rest[*end..].starts_with(';') && *end > 1);
        let Some(end) = reference else {
            // A bare `&` (e.g. an unescaped query string) stands for itself.
            decoded.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..end];
        let character = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "equals" => '=',
            "sol" => '/',
            "num" => '#',
            "quest" => '?',
            "colon" => ':',
            "percnt" => '%',
            "plus" => '+',
            "grave" => '`',
            numeric if numeric.starts_with('#') => {
                let number = &numeric[1..];
                let code = match number.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => number.parse().ok()?,
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        decoded.push(character);
        rest = &rest[end + 1..];
    }
    decoded.push_str(rest);
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Target, TrackingSettings};
    use secrecy::SecretString;

    fn signer() -> Signer {
        Signer::new(&TrackingSettings {
            enabled: true,
            base_url: "https://t.example.com".into(),
            secret: SecretString::from("an-hmac-secret-of-at-least-32-bytes!"),
            ..TrackingSettings::default()
        })
    }

    /// Every tracked link of `html`, verified: (token path, target).
    fn tracked(html: &str, signer: &Signer) -> Vec<(String, Target)> {
        html.match_indices("https://t.example.com/")
            .map(|(start, _)| {
                let rest = &html[start + "https://t.example.com/".len()..];
                let end = rest.find('"').unwrap();
                let (kind, token) = rest[..end].split_once('/').unwrap();
                let link = signer.verify(token, Utc::now()).unwrap();
                (kind.to_owned(), link.target)
            })
            .collect()
    }

    #[test]
    fn http_links_become_signed_redirects_to_the_exact_url_and_a_pixel_closes_the_body() {
        let signer = signer();
        let delivery_id = DeliveryId::from(uuid::Uuid::now_v7());
        let html = r##"<html><body><p>Hi <a href="https://shop.example/o/42?a=1&amp;b=&#x3D;2">order</a>,
<a href='HTTP://Example.com/x'>x</a> <a href="mailto:help@example.com">help</a>
<a href="#top">top</a> <a href="/relative">rel</a> <a name="n">anchor</a></p></body></html>"##;
        let rewritten = rewrite_html(html, &signer, delivery_id, Utc::now()).unwrap();
        assert_eq!(
            tracked(&rewritten, &signer),
            [
                (
                    "c".to_owned(),
                    Target::Click {
                        url: "https://shop.example/o/42?a=1&b==2".into()
                    }
                ),
                (
                    "c".to_owned(),
                    Target::Click {
                        url: "HTTP://Example.com/x".into()
                    }
                ),
                ("o".to_owned(), Target::Open),
            ]
        );
        assert!(rewritten.contains(r#"<a href="mailto:help@example.com">help</a>"#));
        assert!(rewritten.contains(r##"<a href="#top">top</a>"##));
        assert!(rewritten.contains(r#"<a href="/relative">rel</a>"#));
        assert!(rewritten.contains(r#"<a name="n">anchor</a>"#));
        assert!(!rewritten.contains("shop.example"), "{rewritten}");
        let pixel_at = rewritten.find("<img").unwrap();
        assert!(pixel_at < rewritten.find("</body>").unwrap());
        assert!(rewritten.ends_with("</body></html>"));
        assert!(rewritten.contains(r#"width="1" height="1""#));
    }

    #[test]
    fn html_without_a_body_gets_the_pixel_appended() {
        let signer = signer();
        let rewritten = rewrite_html(
            "<p>No body element</p>",
            &signer,
            DeliveryId::from(uuid::Uuid::now_v7()),
            Utc::now(),
        )
        .unwrap();
        assert!(rewritten.starts_with("<p>No body element</p><img src=\"https://t.example.com/o/"));
        assert_eq!(rewritten.matches("<img").count(), 1);
    }

    #[test]
    fn links_in_comments_and_text_are_not_touched() {
        let signer = signer();
        let html =
            "<body><!-- <a href=\"https://a.example\">x</a> --><p>https://b.example</p></body>";
        let rewritten = rewrite_html(
            html,
            &signer,
            DeliveryId::from(uuid::Uuid::now_v7()),
            Utc::now(),
        )
        .unwrap();
        assert!(rewritten.contains("<!-- <a href=\"https://a.example\">x</a> -->"));
        assert!(rewritten.contains("<p>https://b.example</p>"));
        assert_eq!(tracked(&rewritten, &signer).len(), 1, "only the pixel");
    }

    #[test]
    fn entity_decoding_handles_numeric_named_and_bare_ampersands() {
        assert_eq!(
            decode_entities("a&amp;b&#61;c&#x3d;d&e=f&quot;").as_deref(),
            Some("a&b=c=d&e=f\"")
        );
        assert_eq!(decode_entities("x&copy;"), None);
        assert_eq!(decode_entities("plain").as_deref(), Some("plain"));
    }
}
