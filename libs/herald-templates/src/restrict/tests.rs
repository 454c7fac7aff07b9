use serde_json::json;

use crate::{Error, SmsPart, render_sms};

fn sms(text: &str) -> SmsPart {
    SmsPart { text: text.into() }
}

/// Compiling `source` is refused with a message containing `expected`, or accepted (`None`).
fn check(source: &str, expected: Option<&str>) {
    match (super::compile("sms.text", source), expected) {
        (Ok(_), None) => {}
        (Err(Error::Refused { part, message }), Some(expected)) => {
            assert_eq!(part, "sms.text");
            assert!(
                message.contains(expected),
                "`{source}`: `{message}` does not mention `{expected}`"
            );
        }
        (other, expected) => panic!("`{source}`: expected {expected:?}, got {other:?}"),
    }
}

#[test]
fn the_documented_helpers_are_accepted() {
    check(
        "{{#if (and ok (not (eq status \"x\")))}}{{lookup names 0}}{{else if (gt n 1)}}{{len items}}{{/if}}",
        None,
    );
    check(
        "{{#each items as |item i|}}{{item}}{{@index}}{{else}}none{{/each}}{{#with a}}{{b}}{{/with}}{{#unless c}}d{{/unless}}",
        None,
    );
    check("{{ne a b}}{{gte a b}}{{lt a b}}{{lte a b}}{{or a b}}", None);
}

#[test]
fn the_log_helper_is_refused_in_every_form() {
    check("{{log email}}", Some("must not use the helper `log`"));
    check("{{#if (log email)}}x{{/if}}", Some("the helper `log`"));
    check(
        "{{#if a}}{{else}}{{log email level=\"error\"}}{{/if}}",
        Some("`log`"),
    );
    check("{{#log email}}x{{/log}}", Some("the block helper `log`"));
}

#[test]
fn partials_decorators_and_inline_partials_are_refused() {
    check("{{> sms.text}}", Some("must not use partials"));
    check("{{#> layout}}x{{/layout}}", Some("must not use partials"));
    check(
        "{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}",
        Some("must not use decorators or inline partials"),
    );
    check("{{*inline}}", Some("must not use decorators"));
}

#[test]
fn unknown_and_raw_helpers_are_refused_and_the_allowed_ones_listed() {
    check(
        "{{shout name}}",
        Some("must not use the helper `shout`; the allowed ones are if, unless, each"),
    );
    check(
        "{{{{raw}}}}{{x}}{{{{/raw}}}}",
        Some("the block helper `raw`"),
    );
    check(
        "{{#lookup a 1}}x{{/lookup}}",
        Some("the block helper `lookup`"),
    );
    check("{{herald-render-step 0}}", Some("`herald-render-step`"));
    check("{{herald-render-step}}", Some("`herald-render-step`"));
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| "{{#if a}}".repeat(depth) + &"{{/if}}".repeat(depth);
    check(&nested(super::MAX_NESTING), None);
    check(
        &nested(super::MAX_NESTING + 1),
        Some("must not nest blocks and subexpressions more than 16 deep"),
    );
    let subexpressions = |depth: usize| {
        format!(
            "{{{{not {}a{}}}}}",
            "(not ".repeat(depth),
            ")".repeat(depth)
        )
    };
    check(&subexpressions(super::MAX_NESTING), None);
    check(
        &subexpressions(super::MAX_NESTING + 1),
        Some("more than 16 deep"),
    );
}

#[test]
fn each_over_many_items_is_stopped_by_the_step_budget_even_without_output() {
    let items: Vec<u32> = (0..1000).collect();
    let parameters = json!({ "items": items });
    let nested =
        sms("{{#each items}}{{#each @root.items}}{{#each @root.items}}{{/each}}{{/each}}{{/each}}");
    assert_eq!(
        render_sms(&nested, &parameters),
        Err(Error::TooMuchWork { part: "sms.text" })
    );
    let wide = sms("{{#each items}}{{#each @root.items}}{{@index}}{{/each}}{{/each}}");
    assert!(matches!(
        render_sms(&wide, &parameters),
        Err(Error::TooMuchWork { .. } | Error::TooLarge { .. })
    ));
}

#[test]
fn each_within_the_budget_renders_as_handlebars_does() {
    let parameters = json!({ "items": ["a", "b", "c"], "empty": [] });
    let part = sms(
        "{{#each items}}{{@index}}={{this}}{{#unless @last}},{{/unless}}{{/each}}|{{#each empty}}x{{else}}none{{/each}}",
    );
    assert_eq!(
        render_sms(&part, &parameters).map(|rendered| rendered.text),
        Ok("0=a,1=b,2=c|none".to_owned())
    );
}

#[test]
fn the_budget_starts_again_for_every_render() {
    let items: Vec<u32> = (0..300).collect();
    let parameters = json!({ "items": items });
    let part = sms("{{#each items}}{{#each @root.items}}{{/each}}{{/each}}");
    for _ in 0..5 {
        assert!(render_sms(&part, &parameters).is_ok());
    }
}
