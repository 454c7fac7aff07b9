use serde_json::json;

use super::*;

fn check(parameters: Value, expected: Option<&str>) {
    let Value::Object(parameters) = parameters else {
        panic!("parameters are an object");
    };
    let result = check_parameters("parameters", &parameters).map_err(|error| error.to_string());
    assert_eq!(result.err().as_deref(), expected);
}

#[test]
fn parameters_within_the_caps_pass() {
    check(json!({"name": "Ada", "items": [1, 2, {"sku": "x"}]}), None);
}

#[test]
fn a_long_array_is_named_by_its_path() {
    let items: Vec<u32> = (0..=1000).collect();
    check(
        json!({"order": {"items": items}}),
        Some("parameters.order.items: must have at most 1000 items (has 1001)"),
    );
}

#[test]
fn a_long_string_deep_nesting_and_a_big_payload_are_refused() {
    check(
        json!({"note": "x".repeat(MAX_PARAMETER_STRING_BYTES + 1)}),
        Some("parameters.note: must be at most 32768 bytes"),
    );
    let mut deep = json!(1);
    for _ in 0..MAX_PARAMETER_DEPTH {
        deep = json!([deep]);
    }
    check(
        json!({"deep": deep}),
        Some(
            "parameters.deep[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nests objects and arrays more than 16 deep",
        ),
    );
    let chunk = "x".repeat(MAX_PARAMETER_STRING_BYTES);
    check(
        json!({"a": chunk, "b": chunk, "c": chunk}),
        Some("parameters: must encode to at most 65536 bytes of JSON"),
    );
}
