//! Template contents between the wire (`herald.template.v1`) and `herald-templates`, and the
//! variant statistics as messages.

use herald_db::variants::VariantCounts;
use herald_domain::two_proportion_z_test;
use herald_proto::template as pb;
use herald_templates::{
    ChatPart, EmailPart, InAppPart, PushPart, Rendered, SmsPart, TemplateContent, Variant,
};

pub(super) fn content_from_proto(content: pb::TemplateContent) -> TemplateContent {
    TemplateContent {
        email: content.email.map(email_part),
        sms: content.sms.map(|sms| SmsPart { text: sms.text }),
        push: content.push.map(push_part),
        in_app: content.in_app.map(in_app_part),
        chat: content.chat.map(|chat| ChatPart { text: chat.text }),
        variants: content
            .variants
            .into_iter()
            .map(|variant| Variant {
                name: variant.name,
                weight: variant.weight,
                email: variant.email.map(email_part),
                sms: variant.sms.map(|sms| SmsPart { text: sms.text }),
                push: variant.push.map(push_part),
                in_app: variant.in_app.map(in_app_part),
                chat: variant.chat.map(|chat| ChatPart { text: chat.text }),
            })
            .collect(),
    }
}

pub(super) fn email_part(email: pb::EmailPart) -> EmailPart {
    EmailPart {
        subject: email.subject,
        html: email.html,
        text: email.text,
    }
}

pub(super) fn push_part(push: pb::PushPart) -> PushPart {
    PushPart {
        title: push.title,
        body: push.body,
        data: push.data.into_iter().collect(),
    }
}

pub(super) fn in_app_part(in_app: pb::InAppPart) -> InAppPart {
    InAppPart {
        title: in_app.title,
        body: in_app.body,
        action_url: in_app.action_url,
    }
}

pub(super) fn content_message(content: TemplateContent) -> pb::TemplateContent {
    pb::TemplateContent {
        email: content.email.map(email_message),
        sms: content.sms.map(|sms| pb::SmsPart { text: sms.text }),
        push: content.push.map(push_message),
        in_app: content.in_app.map(in_app_message),
        chat: content.chat.map(|chat| pb::ChatPart { text: chat.text }),
        variants: content
            .variants
            .into_iter()
            .map(|variant| pb::Variant {
                name: variant.name,
                weight: variant.weight,
                email: variant.email.map(email_message),
                sms: variant.sms.map(|sms| pb::SmsPart { text: sms.text }),
                push: variant.push.map(push_message),
                in_app: variant.in_app.map(in_app_message),
                chat: variant.chat.map(|chat| pb::ChatPart { text: chat.text }),
            })
            .collect(),
    }
}

pub(super) fn email_message(email: EmailPart) -> pb::EmailPart {
    pb::EmailPart {
        subject: email.subject,
        html: email.html,
        text: email.text,
    }
}

pub(super) fn push_message(push: PushPart) -> pb::PushPart {
    pb::PushPart {
        title: push.title,
        body: push.body,
        data: push.data.into_iter().collect(),
    }
}

pub(super) fn in_app_message(in_app: InAppPart) -> pb::InAppPart {
    pb::InAppPart {
        title: in_app.title,
        body: in_app.body,
        action_url: in_app.action_url,
    }
}

pub(super) fn rendered_message(rendered: Rendered) -> pb::TemplateContent {
    let mut content = pb::TemplateContent::default();
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

pub(super) fn variant_stats_message(
    row: VariantCounts,
    control: Option<&VariantCounts>,
) -> pb::VariantStats {
    let count = |value: i64| u64::try_from(value).unwrap_or_default();
    let rate = |part: i64, whole: i64| {
        if whole > 0 {
            // Counts are far below 2^52, where f64 stops being exact.
            #[allow(clippy::cast_precision_loss)]
            let rate = part as f64 / whole as f64;
            rate
        } else {
            0.0
        }
    };
    let versus = |successes: fn(&VariantCounts) -> i64| {
        let control = control?;
        let test = two_proportion_z_test(
            count(successes(control)),
            count(control.delivered),
            count(successes(&row)),
            count(row.delivered),
        )?;
        Some(pb::Significance {
            z: test.z,
            p_value: test.p_value,
        })
    };
    pb::VariantStats {
        version: u32::try_from(row.version).unwrap_or_default(),
        variant: row.variant.clone(),
        sent: count(row.sent),
        delivered: count(row.delivered),
        opened: count(row.opened),
        clicked: count(row.clicked),
        delivery_rate: rate(row.delivered, row.sent),
        open_rate: rate(row.opened, row.delivered),
        click_rate: rate(row.clicked, row.delivered),
        open_rate_vs_control: versus(|counts| counts.opened),
        click_rate_vs_control: versus(|counts| counts.clicked),
    }
}
