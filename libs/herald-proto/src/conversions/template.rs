//! Template contents between the wire (`herald.template.v1`) and `herald-templates`: every
//! part both ways, a content with its A/B test variants, and a rendered part as a content
//! with that one part (`RenderPreview`). None can fail: what is wrong with a content is
//! found by `herald_templates::validate`, with the field path the caller needs.

use herald_templates::{
    ChatPart, EmailPart, InAppPart, PushPart, Rendered, SmsPart, TemplateContent, Variant,
};

use crate::template as pb;

/// `From` both ways between a wire message and the `herald-templates` type with the same
/// fields; a field named with `=> convert` goes through `convert`, the others are moved as
/// they are.
macro_rules! both_ways {
    ($wire:ty, $domain:ty, [$($field:ident $(=> $convert:ident)?),+ $(,)?]) => {
        impl From<$wire> for $domain {
            fn from(value: $wire) -> Self {
                Self { $($field: both_ways!(@field value.$field $(, $convert)?)),+ }
            }
        }

        impl From<$domain> for $wire {
            fn from(value: $domain) -> Self {
                Self { $($field: both_ways!(@field value.$field $(, $convert)?)),+ }
            }
        }
    };
    (@field $value:expr) => { $value };
    (@field $value:expr, $convert:ident) => { $convert($value) };
}

/// An optional part, converted.
fn part<A: Into<B>, B>(part: Option<A>) -> Option<B> {
    part.map(Into::into)
}

/// Every item, converted.
fn each<A: Into<B>, B>(items: Vec<A>) -> Vec<B> {
    items.into_iter().map(Into::into).collect()
}

/// A map into another kind of map (push data: a `HashMap` on the wire, a `BTreeMap` stored).
fn map<A: IntoIterator<Item = (String, String)>, B: FromIterator<(String, String)>>(map: A) -> B {
    map.into_iter().collect()
}

both_ways!(pb::EmailPart, EmailPart, [subject, html, text]);
both_ways!(pb::SmsPart, SmsPart, [text]);
both_ways!(pb::PushPart, PushPart, [title, body, data => map]);
both_ways!(pb::InAppPart, InAppPart, [title, body, action_url]);
both_ways!(pb::ChatPart, ChatPart, [text]);
both_ways!(
    pb::TemplateContent,
    TemplateContent,
    [
        email => part,
        sms => part,
        push => part,
        in_app => part,
        chat => part,
        variants => each,
    ]
);

/// A wire variant's parts are converted as a content of their own, without variants.
impl From<pb::Variant> for Variant {
    fn from(variant: pb::Variant) -> Self {
        let pb::Variant {
            name,
            weight,
            email,
            sms,
            push,
            in_app,
            chat,
        } = variant;
        let parts = pb::TemplateContent {
            email,
            sms,
            push,
            in_app,
            chat,
            variants: Vec::new(),
        };
        Self {
            name,
            weight,
            parts: parts.into(),
        }
    }
}

/// A variant's parts go out as the wire variant's part fields (a stored variant has no
/// variants of its own; validation refuses one that does).
impl From<Variant> for pb::Variant {
    fn from(variant: Variant) -> Self {
        let pb::TemplateContent {
            email,
            sms,
            push,
            in_app,
            chat,
            variants: _,
        } = variant.parts.into();
        Self {
            name: variant.name,
            weight: variant.weight,
            email,
            sms,
            push,
            in_app,
            chat,
        }
    }
}

/// A rendered part as a content holding only that part, the shape `RenderPreview` answers
/// with.
impl From<Rendered> for pb::TemplateContent {
    fn from(rendered: Rendered) -> Self {
        let mut content = Self::default();
        match rendered {
            Rendered::Email(email) => {
                content.email = Some(pb::EmailPart {
                    subject: email.subject,
                    html: email.html,
                    text: email.text,
                });
            }
            Rendered::Sms(sms) => content.sms = Some(pb::SmsPart { text: sms.text }),
            Rendered::Push(push) => {
                content.push = Some(pb::PushPart {
                    title: push.title,
                    body: push.body,
                    data: push.data.into_iter().collect(),
                });
            }
            Rendered::InApp(in_app) => {
                content.in_app = Some(pb::InAppPart {
                    title: in_app.title,
                    body: in_app.body,
                    action_url: in_app.action_url,
                });
            }
            Rendered::Chat(chat) => content.chat = Some(pb::ChatPart { text: chat.text }),
        }
        content
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_templates::{
        ChatPart, EmailPart, InAppPart, PushPart, Rendered, RenderedSms, SmsPart, TemplateContent,
        Variant,
    };

    use crate::template as pb;

    fn content() -> TemplateContent {
        TemplateContent {
            email: Some(EmailPart {
                subject: "Hi {{name}}".into(),
                html: "<p>Hi</p>".into(),
                text: "Hi".into(),
            }),
            sms: Some(SmsPart { text: "Hi".into() }),
            push: Some(PushPart {
                title: "Hi".into(),
                body: "There".into(),
                data: BTreeMap::from([("order".into(), "{{order}}".into())]),
            }),
            in_app: Some(InAppPart {
                title: "Hi".into(),
                body: "There".into(),
                action_url: "https://example.com".into(),
            }),
            chat: Some(ChatPart { text: "Hi".into() }),
            variants: vec![
                Variant {
                    name: "control".into(),
                    weight: 1,
                    parts: TemplateContent::default(),
                },
                Variant {
                    name: "short".into(),
                    weight: 3,
                    parts: TemplateContent {
                        sms: Some(SmsPart { text: "Yo".into() }),
                        ..TemplateContent::default()
                    },
                },
            ],
        }
    }

    #[test]
    fn a_content_with_every_part_and_variants_survives_the_wire() {
        let wire = pb::TemplateContent::from(content());
        assert_eq!(wire.variants[1].sms.as_ref().unwrap().text, "Yo");
        assert_eq!(wire.push.as_ref().unwrap().data["order"], "{{order}}");
        assert_eq!(TemplateContent::from(wire), content());
    }

    #[test]
    fn a_rendered_part_is_a_content_with_that_part_only() {
        let wire = pb::TemplateContent::from(Rendered::Sms(RenderedSms { text: "Hi".into() }));
        assert_eq!(
            wire,
            pb::TemplateContent {
                sms: Some(pb::SmsPart { text: "Hi".into() }),
                ..pb::TemplateContent::default()
            }
        );
    }
}
