use super::*;

fn https() -> Vec<String> {
    vec!["https".to_owned()]
}

fn check(url: &str, expected: Option<&str>) {
    let result = check_action_url(url, &https()).map_err(|error| error.to_string());
    match expected {
        None => assert_eq!(result, Ok(()), "{url}"),
        Some(expected) => {
            let message = result.expect_err(url);
            assert!(
                message.contains(expected),
                "{url}: `{message}` lacks `{expected}`"
            );
        }
    }
}

#[test]
fn allowed_schemes_and_no_action_pass() {
    check("", None);
    check("https://shop.example/orders/42", None);
    check("HTTPS://shop.example/", None);
}

#[test]
fn other_schemes_relative_links_and_hidden_characters_are_refused() {
    check(
        "javascript:alert(1)",
        Some(
            "in_app.action_url must use one of the schemes https (in_app.action_url_schemes), not `javascript`",
        ),
    );
    check("data:text/html,<script>", Some("not `data`"));
    check("http://shop.example/", Some("not `http`"));
    check("/orders/42", Some("must be an absolute URL"));
    check(
        "java\tscript:alert(1)",
        Some("must not contain control characters"),
    );
    check(" javascript:alert(1)", Some("whitespace"));
}

#[test]
fn a_configured_app_scheme_is_allowed() {
    let schemes = vec!["https".to_owned(), "myapp".to_owned()];
    assert_eq!(check_action_url("myapp://orders/42", &schemes), Ok(()));
}

#[test]
fn a_version_is_checked_by_its_literal_scheme_and_by_what_its_samples_render() {
    let content = |action_url: &str| {
        VersionContent::single(
            crate::Locale::parse("en").unwrap(),
            TemplateContent {
                in_app: Some(crate::InAppPart {
                    title: "Hi".into(),
                    body: String::new(),
                    action_url: action_url.into(),
                }),
                ..TemplateContent::default()
            },
        )
    };
    let samples = serde_json::json!({"url": "javascript:alert(1)", "id": "42"});
    assert!(
        content("https://shop.example/{{id}}")
            .check_action_urls(Some(&samples), &https())
            .is_ok()
    );
    let literal = content("javascript:{{id}}").check_action_urls(None, &https());
    assert!(
        literal
            .map_err(|error| error.to_string())
            .unwrap_err()
            .starts_with("locales[en].in_app.action_url must use one of the schemes https")
    );
    assert!(content("{{url}}").check_action_urls(None, &https()).is_ok());
    assert!(
        content("{{url}}")
            .check_action_urls(Some(&samples), &https())
            .is_err()
    );
}
