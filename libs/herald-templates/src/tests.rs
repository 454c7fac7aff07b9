//! Unit tests for validation and rendering.

use serde_json::json;

use super::*;

fn email(subject: &str, html: &str, text: &str) -> EmailPart {
    EmailPart {
        subject: subject.into(),
        html: html.into(),
        text: text.into(),
    }
}

fn content(part: EmailPart) -> TemplateContent {
    TemplateContent {
        email: Some(part),
        ..TemplateContent::default()
    }
}

fn check_parameters(part: EmailPart, expected: &[&str]) {
    assert_eq!(validate(&content(part)).unwrap(), expected);
}

#[test]
fn parameters_are_inferred_from_every_part() {
    check_parameters(
        email(
            "Hi {{username}}",
            "<p>{{item_name}} ships {{{raw_html}}}</p>",
            "{{order.id}}",
        ),
        &["item_name", "order", "raw_html", "username"],
    );
}

#[test]
fn parameters_inside_each_are_relative_to_the_item() {
    check_parameters(
        email(
            "Order",
            "{{#each items}}{{name}}{{/each}}{{#if vip}}{{perk}}{{/if}}",
            "",
        ),
        &["items", "perk", "vip"],
    );
}

#[test]
fn syntax_errors_name_the_part() {
    let error = validate(&content(email("ok", "{{#if}}", ""))).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Syntax {
                part: "email.html",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_template_needs_a_subject_and_a_body() {
    assert!(matches!(
        validate(&content(email(" ", "x", ""))),
        Err(Error::Invalid {
            part: "email.subject",
            ..
        })
    ));
    assert!(matches!(
        validate(&content(email("s", "", ""))),
        Err(Error::Invalid { part: "email", .. })
    ));
    assert!(matches!(
        validate(&TemplateContent::default()),
        Err(Error::Invalid {
            part: "content",
            ..
        })
    ));
}

#[test]
fn html_is_escaped_only_in_the_html_part() {
    let rendered = render_email(
        &email("Hi {{name}}", "<p>{{name}}</p>", "Hi {{name}}"),
        &json!({"name": "<b>Ada & co</b>"}),
    )
    .unwrap();
    assert_eq!(rendered.subject, "Hi <b>Ada & co</b>");
    assert_eq!(rendered.html, "<p>&lt;b&gt;Ada &amp; co&lt;/b&gt;</p>");
    assert_eq!(rendered.text, "Hi <b>Ada & co</b>");
}

#[test]
fn a_missing_parameter_is_an_error_not_an_empty_string() {
    let error = render_email(&email("Hi {{username}}", "x", ""), &json!({})).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MissingParameter {
                part: "email.subject",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("username"), "{error}");
}

#[test]
fn parameter_values_are_data_not_templates() {
    let rendered = render_email(
        &email("{{name}}", "{{name}}", "{{name}}"),
        &json!({"name": "{{secret}} {{#each x}}"}),
    )
    .unwrap();
    assert_eq!(rendered.text, "{{secret}} {{#each x}}");
}

#[test]
fn subjects_cannot_inject_headers() {
    let rendered = render_email(
        &email("Hi {{name}}", "x", ""),
        &json!({"name": "a\r\nBcc: x@y.z"}),
    )
    .unwrap();
    assert_eq!(rendered.subject, "Hi a  Bcc: x@y.z");
}

#[test]
fn output_is_bounded() {
    let big = "x".repeat(MAX_OUTPUT_BYTES / 4 + 1);
    let error =
        render_email(&email("s", "{{v}}{{v}}{{v}}{{v}}", ""), &json!({"v": big})).unwrap_err();
    assert_eq!(error, Error::TooLarge { part: "email.html" });
}

fn locale(tag: &str) -> Locale {
    Locale::parse(tag).unwrap()
}

fn check_locale(input: &str, expected: Option<&str>) {
    assert_eq!(
        Locale::parse(input).ok().as_ref().map(Locale::as_str),
        expected,
        "{input}"
    );
}

#[test]
fn locale_tags_are_parsed_and_canonicalised() {
    check_locale("ko", Some("ko"));
    check_locale("ko-KR", Some("ko-KR"));
    check_locale("ko-kr", Some("ko-KR"));
    check_locale("EN", Some("en"));
    check_locale("fr", Some("fr"));
    check_locale("zh-hant-tw", Some("zh-Hant-TW"));
    check_locale("es-419", Some("es-419"));
    check_locale("de-CH-1996", Some("de-CH-1996"));
    check_locale("sl-rozaj", Some("sl-rozaj"));
    for bad in [
        "",
        "k",
        "korean",
        "ko_KR",
        "ko-",
        "-ko",
        "ko--KR",
        "ko-KR-KR",
        "ko-x-private",
        "12",
        "ko-KR\n",
        "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r",
    ] {
        check_locale(bad, None);
    }
    assert!(
        Locale::parse("ko_KR")
            .unwrap_err()
            .to_string()
            .starts_with("must be a BCP 47 language tag")
    );
}

fn check_chain(requested: Option<&str>, default: &str, expected: &[&str]) {
    let chain = Locale::fallback_chain(requested.map(locale).as_ref(), &locale(default));
    assert_eq!(
        chain.iter().map(Locale::as_str).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn the_fallback_chain_goes_from_specific_to_general_to_the_default() {
    check_chain(Some("ko-KR"), "en", &["ko-KR", "ko", "en"]);
    check_chain(
        Some("zh-Hant-TW"),
        "en",
        &["zh-Hant-TW", "zh-Hant", "zh", "en"],
    );
    check_chain(Some("fr"), "en", &["fr", "en"]);
    check_chain(Some("en-GB"), "en", &["en-GB", "en"]);
    check_chain(Some("en"), "en", &["en"]);
    check_chain(None, "ko", &["ko"]);
}

fn localized() -> VersionContent {
    VersionContent {
        default_locale: locale("en"),
        locales: [
            ("en", "Hello {{username}}"),
            ("ko", "안녕하세요 {{username}}님"),
            ("ko-KR", "{{username}}님, 안녕하세요"),
        ]
        .into_iter()
        .map(|(tag, subject)| (locale(tag), content(email(subject, "", subject))))
        .collect(),
    }
}

fn check_resolve(requested: Option<&str>, expected: &str) {
    let version = localized();
    let (resolved, _) = version.resolve(requested.map(locale).as_ref()).unwrap();
    assert_eq!(resolved.as_str(), expected, "{requested:?}");
}

#[test]
fn recipients_get_the_most_specific_locale_with_content() {
    check_resolve(Some("ko-KR"), "ko-KR");
    check_resolve(Some("ko-KP"), "ko");
    check_resolve(Some("ko"), "ko");
    check_resolve(Some("fr"), "en");
    check_resolve(Some("fr-CA"), "en");
    check_resolve(None, "en");
}

#[test]
fn rendering_picks_the_locale_and_the_channel_part() {
    let version = localized();
    let (used, rendered) = version
        .render(
            Some(&locale("ko-KP")),
            Channel::Email,
            &json!({"username": "지민"}),
        )
        .unwrap();
    assert_eq!(used.as_str(), "ko");
    let Rendered::Email(email) = rendered else {
        panic!("an email")
    };
    assert_eq!(email.subject, "안녕하세요 지민님");
    assert_eq!(
        version
            .render(None, Channel::Sms, &json!({"username": "x"}))
            .unwrap_err(),
        VersionError::NoPart {
            channel: Channel::Sms
        }
    );
}

#[test]
fn a_version_is_validated_against_its_sample_parameters_in_every_locale() {
    let mut version = localized();
    assert_eq!(
        version.validate(Some(&json!({"username": "Ada"}))).unwrap(),
        ["username"]
    );
    version.locales.insert(
        locale("fr"),
        content(email("Bonjour {{username}}", "", "{{missing}}")),
    );
    let error = version
        .validate(Some(&json!({"username": "Ada"})))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "locales[fr].email.text needs the parameter `missing`, which was not supplied"
    );
    // Without samples only compilation is checked.
    assert_eq!(version.validate(None).unwrap(), ["missing", "username"]);
}

#[test]
fn a_version_needs_its_default_locale_and_the_same_channels_everywhere() {
    let mut version = localized();
    version.default_locale = locale("de");
    assert!(matches!(
        version.validate(None),
        Err(VersionError::DefaultLocale(_))
    ));
    let mut version = localized();
    version.locales.insert(
        locale("fr"),
        TemplateContent {
            sms: Some(SmsPart { text: "x".into() }),
            ..TemplateContent::default()
        },
    );
    let error = version.validate(None).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("locales: `fr` has parts for sms"),
        "{error}"
    );
}

#[test]
fn every_channel_part_renders_without_html_escaping() {
    let part = TemplateContent {
        sms: Some(SmsPart {
            text: "Code {{code}}".into(),
        }),
        push: Some(PushPart {
            title: "Hi {{name}}".into(),
            body: String::new(),
            data: [("order".to_owned(), "{{code}}".to_owned())].into(),
        }),
        in_app: Some(InAppPart {
            title: String::new(),
            body: "{{name}}".into(),
            action_url: "https://x.test/o/{{code}}".into(),
        }),
        ..TemplateContent::default()
    };
    assert_eq!(validate(&part).unwrap(), ["code", "name"]);
    let parameters = json!({"code": "<42>", "name": "A&B"});
    assert_eq!(
        render_sms(part.sms.as_ref().unwrap(), &parameters)
            .unwrap()
            .text,
        "Code <42>"
    );
    let push = render_push(part.push.as_ref().unwrap(), &parameters).unwrap();
    assert_eq!(
        (push.title.as_str(), push.data["order"].as_str()),
        ("Hi A&B", "<42>")
    );
    let in_app = render_in_app(part.in_app.as_ref().unwrap(), &parameters).unwrap();
    assert_eq!(in_app.action_url, "https://x.test/o/<42>");
    assert!(matches!(
        render_all(&part, &json!({"code": 1})),
        Err(Error::MissingParameter {
            part: "push.title",
            ..
        })
    ));
}

#[test]
fn legacy_content_reads_as_the_default_locale() {
    let stored = json!({"email": {"subject": "s", "html": "", "text": "t"}});
    let version = VersionContent::from_stored(stored).unwrap();
    assert_eq!(version.default_locale.as_str(), DEFAULT_LOCALE);
    assert_eq!(version.channels(), [Channel::Email].into());
    let roundtrip = serde_json::to_value(&version).unwrap();
    assert_eq!(VersionContent::from_stored(roundtrip).unwrap(), version);
    assert!(
        VersionContent::from_stored(json!({"locales": {"bad_tag": {}}, "default_locale": "en"}))
            .is_err()
    );
}

#[test]
fn email_bodies_get_crlf_line_endings_as_sent() {
    let rendered = render_email(
        &email("s", "<p>{{a}}</p>\n", "one\ntwo\r\nthree\r{{a}}"),
        &json!({"a": "x\ny"}),
    )
    .unwrap();
    assert_eq!(rendered.text, "one\r\ntwo\r\nthree\r\nx\r\ny");
    assert_eq!(rendered.html, "<p>x\r\ny</p>\r\n");
}

#[test]
fn a_compiled_version_renders_what_a_one_off_render_does_for_every_recipient() {
    let mut version = localized();
    version
        .locales
        .get_mut(&locale("en"))
        .unwrap()
        .email
        .as_mut()
        .unwrap()
        .html = "<p>{{username}} &amp; {{#if vip}}VIP{{/if}}</p>".into();
    let compiled = CompiledVersion::new(version.clone());
    let recipients = [
        (Some("ko-KR"), json!({"username": "지민"})),
        (Some("ko-KP"), json!({"username": "민수"})),
        (None, json!({"username": "<Ada>", "vip": true})),
        (Some("fr"), json!({"username": "Zoé"})),
        (Some("ko-KR"), json!({"username": "지우"})),
    ];
    for (requested, parameters) in &recipients {
        let requested = requested.map(locale);
        assert_eq!(
            compiled.render_variant(requested.as_ref(), Channel::Email, None, parameters),
            version.render_variant(requested.as_ref(), Channel::Email, None, parameters),
            "{requested:?} {parameters}"
        );
    }
    assert_eq!(
        compiled
            .render_variant(None, Channel::Email, None, &json!({}))
            .unwrap_err(),
        version
            .render_variant(None, Channel::Email, None, &json!({}))
            .unwrap_err(),
        "a missing parameter is the same error"
    );
    assert_eq!(
        compiled
            .render_variant(None, Channel::Sms, None, &json!({"username": "x"}))
            .unwrap_err(),
        VersionError::NoPart {
            channel: Channel::Sms
        }
    );
}

#[test]
fn control_characters_in_sources_are_refused_but_text_keeps_its_line_breaks() {
    let mut part = email("Hi\t{{name}}", "<p>\r\nHi</p>", "Hi\n");
    assert!(crate::validate(&content(part.clone())).is_ok());
    part.text = "Hi\u{0}".into();
    assert_eq!(
        crate::validate(&content(part)).map_err(|error| error.to_string()),
        Err("email.text must not contain control characters other than tab, line feed and carriage return (found U+0000 at character 2)".into())
    );
    let in_app = TemplateContent {
        in_app: Some(InAppPart {
            title: "Hi".into(),
            body: String::new(),
            action_url: "java\tscript:alert(1)".into(),
        }),
        ..TemplateContent::default()
    };
    assert_eq!(
        crate::validate(&in_app).map_err(|error| error.to_string()),
        Err(
            "in_app.action_url must not contain control characters (found U+0009 at character 4)"
                .into()
        )
    );
}
