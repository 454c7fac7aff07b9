//! The alert rules and the Grafana dashboard in `k8s/components/monitoring` name only metrics
//! Herald exports: every metric name in their PromQL appears in a real `/metrics` scrape of the
//! running services after one notification went through, so renaming a metric fails here
//! rather than silently emptying a panel or an alert. The files are read at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald_proto::submit::NotificationStatus;
use herald_test_support::{SmsGatewayServer, eventually};

use crate::harness::{Options, TestApp, test_telemetry, welcome_request};
use crate::observability::scrape;
use crate::sms::set_sms_providers;

const RULES: &str = "k8s/components/monitoring/prometheus-rule.yaml";
const DASHBOARD: &str = "k8s/components/monitoring/dashboards/herald.json";

/// Words of PromQL that are neither functions (those are followed by `(`) nor metrics.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn read_repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("reading {full:?}: {error}"))
}

/// The index just past the character that closes what opens at `start` (`{`, `[`, `(` or a
/// quote), skipping quoted strings inside brackets.
fn skip_enclosed(chars: &[char], start: usize) -> usize {
    let open = chars[start];
    if matches!(open, '"' | '\'' | '`') {
        let mut index = start + 1;
        while index < chars.len() && chars[index] != open {
            index += if chars[index] == '\\' && open != '`' {
                2
            } else {
                1
            };
        }
        return index + 1;
    }
    let close = match open {
        '{' => '}',
        '[' => ']',
        _ => ')',
    };
    let mut depth = 0;
    let mut index = start;
    while index < chars.len() {
        match chars[index] {
            '"' | '\'' | '`' => {
                index = skip_enclosed(chars, index);
                continue;
            }
            character if character == open => depth += 1,
            character if character == close => {
                depth -= 1;
                if depth == 0 {
                    return index + 1;
                }
            }
            _ => {}
        }
        index += 1;
    }
    index
}

/// The metric names a PromQL expression selects: its identifiers minus function and aggregation
/// names (followed by `(`), keywords, label names (inside `{…}` and the label lists of `by`,
/// `on`, …), durations, numbers, strings and Grafana variables (`$name`, `${name}`).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expression.chars().collect();
    let next_visible = |from: usize| chars[from..].iter().find(|c| !c.is_whitespace()).copied();
    let mut names = BTreeSet::new();
    let mut index = 0;
    while index < chars.len() {
        let character = chars[index];
        if matches!(character, '"' | '\'' | '`' | '{' | '[') {
            index = skip_enclosed(&chars, index);
        } else if character == '$' {
            index += 1;
            if chars.get(index) == Some(&'{') {
                index = skip_enclosed(&chars, index);
            }
            while index < chars.len() && (chars[index].is_alphanumeric() || chars[index] == '_') {
                index += 1;
            }
        } else if character.is_ascii_digit() || character == '.' {
            while index < chars.len() && (chars[index].is_alphanumeric() || chars[index] == '.') {
                index += 1;
            }
        } else if character.is_ascii_alphabetic() || character == '_' || character == ':' {
            let start = index;
            while index < chars.len()
                && (chars[index].is_ascii_alphanumeric() || matches!(chars[index], '_' | ':'))
            {
                index += 1;
            }
            let word: String = chars[start..index].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = next_visible(index);
            // An aggregation may put its label list first: `sum by (job) (…)`.
            let next_word: String = chars[index..]
                .iter()
                .skip_while(|c| c.is_whitespace())
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect::<String>()
                .to_ascii_lowercase();
            let aggregation = next_word == "by" || next_word == "without";
            if LABEL_LISTS.contains(&lower.as_str()) && next == Some('(') {
                let open = index + chars[index..].iter().position(|c| *c == '(').unwrap_or(0);
                index = skip_enclosed(&chars, open);
            } else if !KEYWORDS.contains(&lower.as_str()) && next != Some('(') && !aggregation {
                names.insert(word);
            }
        } else {
            index += 1;
        }
    }
    names
}

/// The PromQL of a Grafana query: `label_values(<selector>, <label>)` selects with its first
/// argument only; anything else is PromQL as it stands.
fn grafana_promql(query: &str) -> String {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|inner| inner.strip_suffix(')'))
    {
        Some(arguments) => arguments
            .rsplit_once(',')
            .map_or(arguments, |(selector, _label)| selector)
            .to_owned(),
        None => query.to_owned(),
    }
}

/// Every rule's `expr` in a rule file or PrometheusRule: block scalars (`expr: |`, the lines
/// indented under it) or inline values.
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut expressions = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let block: Vec<&str> = lines[number + 1..]
                .iter()
                .take_while(|next| {
                    next.trim().is_empty() || next.len() - next.trim_start().len() > indent
                })
                .copied()
                .collect();
            expressions.push(block.join("\n"));
        } else {
            expressions.push(value.trim_matches(|c| c == '\'' || c == '"').to_owned());
        }
    }
    let rules = lines
        .iter()
        .filter(|line| {
            let trimmed = line.trim_start();
            trimmed.starts_with("- alert:") || trimmed.starts_with("- record:")
        })
        .count();
    assert_eq!(
        expressions.len(),
        rules,
        "one expression per rule in {RULES}"
    );
    expressions
}

/// Every query of a Grafana dashboard: panel targets (`expr`, rows' panels included) and
/// query variables.
fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(object) => {
                for (key, inner) in object {
                    match (key.as_str(), inner) {
                        ("expr", serde_json::Value::String(expression)) => {
                            found.push(expression.clone());
                        }
                        ("query", serde_json::Value::Object(query)) => {
                            if let Some(serde_json::Value::String(text)) = query.get("query") {
                                found.push(grafana_promql(text));
                            }
                        }
                        _ => walk(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// The metric families of a Prometheus text scrape, by name, with their `# TYPE`.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Whether PromQL can select `name` from `families`: a counter or gauge by its own name, a
/// histogram only through `_bucket`, `_sum` and `_count`, a summary through `_sum` and
/// `_count`, a counter also through `_total` when its family is named without it.
fn exported(families: &BTreeMap<String, String>, name: &str) -> bool {
    if let Some(kind) = families.get(name) {
        return !matches!(kind.as_str(), "histogram" | "summary");
    }
    let suffixes: [(&str, &[&str]); 4] = [
        ("_bucket", &["histogram"]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
        ("_total", &["counter"]),
    ];
    suffixes.iter().any(|(suffix, kinds)| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    })
}

/// The metric names the rules and the dashboard use, each with where it is used.
fn used_metrics() -> BTreeMap<String, BTreeSet<&'static str>> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read_repository_file(DASHBOARD)).expect("the dashboard is JSON");
    let mut used: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for (file, expressions) in [
        (RULES, rule_expressions(&read_repository_file(RULES))),
        (DASHBOARD, dashboard_expressions(&dashboard)),
    ] {
        assert!(!expressions.is_empty(), "no expression found in {file}");
        for expression in expressions {
            for name in metric_names(&expression) {
                used.entry(name).or_default().insert(file);
            }
        }
    }
    used
}

#[test]
fn metric_names_are_the_selected_series_without_functions_labels_or_keywords() {
    let check = |expression: &str, expected: &[&str]| {
        let expected: BTreeSet<String> = expected.iter().map(|name| (*name).to_owned()).collect();
        assert_eq!(metric_names(expression), expected, "{expression}");
    };
    check(
        r#"histogram_quantile(0.99, sum by (namespace, le) (rate(a_seconds_bucket{x="b{c}", le!="1"}[5m]))) > 10"#,
        &["a_seconds_bucket"],
    );
    check(
        r#"sum without (pod) (rate(x_total{m=~"herald\\.(a|b)\\.deliver"}[$__rate_interval] offset 1h)) / on(job) group_left(team) y"#,
        &["x_total", "y"],
    );
    check(
        "max(a) by (job) > 1e3 or b == bool 2 unless count_over_time(c[1m:10s]) and d_total",
        &["a", "b", "c", "d_total"],
    );
    check("up == 0 and ON (pod) z{job=\"$job\"}", &["up", "z"]);
    check("count without (pod) (a == 0) + max by(job)(b)", &["a", "b"]);
    check(&grafana_promql("label_values(k_up, namespace)"), &["k_up"]);
    let histogram = BTreeMap::from([
        ("h_seconds".to_owned(), "histogram".to_owned()),
        ("c_total".to_owned(), "counter".to_owned()),
    ]);
    for (name, found) in [
        ("h_seconds_bucket", true),
        ("h_seconds_count", true),
        ("h_seconds", false),
        ("c_total", true),
        ("c_total_bucket", false),
        ("h_seconds_total", false),
    ] {
        assert_eq!(exported(&histogram, name), found, "{name}");
    }
}

/// Scrapes `/metrics` of `address` once `ready` holds for its text.
async fn scrape_when(name: &str, address: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    eventually(
        &format!("{name} to export what it did"),
        Duration::from_secs(20),
        || async {
            let text = scrape(address).await;
            ready(&text).then_some(text)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let used = used_metrics();
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let (worker_metrics, stop_worker) = app.start_email_worker_serving_metrics();
    // Only channels with several providers have circuits: an SMS worker with a gateway.
    let gateway = SmsGatewayServer::start("monitoring-gateway-token").await;
    let mut sms_settings = app.channel_worker_settings();
    sms_settings.telemetry = test_telemetry();
    set_sms_providers(
        &mut sms_settings,
        vec![serde_json::json!({
            "kind": "http_gateway",
            "name": "gateway",
            "url": gateway.url(),
            "token": "monitoring-gateway-token",
            "from": "Herald",
            "timeout": "5s",
        })],
    );
    let sms_worker = herald_channel_worker::Application::build(
        sms_settings,
        herald_channel_worker::WorkerChannel::Sms,
    )
    .expect("building the SMS worker");
    let sms_metrics = sms_worker
        .metrics_addr()
        .expect("the SMS worker serves metrics");
    tokio::spawn(sms_worker.run_until_stopped(stop_worker.clone()));
    let sentinel_metrics = app.start_sentinel(|_| {});

    // One notification through every hop, and one refused tracking request.
    app.create_welcome_template().await;
    let id = app
        .submit(welcome_request("metrics@example.com"))
        .await
        .expect("Submit")
        .notification_id;
    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let refused = reqwest::get(format!("http://{}/o/not-a-token", app.tracker_address))
        .await
        .expect("the tracker answers");
    assert_eq!(refused.status(), reqwest::StatusCode::NOT_FOUND);

    let scrapes = [
        scrape_when("herald-api-server", app.api_metrics, |text| {
            text.contains("rpc_server_call_duration_seconds_count")
        })
        .await,
        scrape_when("herald-relay", app.relay_metrics, |text| {
            text.contains("herald_relay_lag_seconds_count")
        })
        .await,
        scrape_when("herald-channel-worker", worker_metrics, |text| {
            text.contains("herald_queue_settlements_total")
        })
        .await,
        scrape_when("herald-sms-worker", sms_metrics, |text| {
            text.contains("herald_provider_circuit_state")
        })
        .await,
        scrape_when("herald-sentinel", sentinel_metrics, |text| {
            text.contains("herald_outbox_oldest_due_seconds")
        })
        .await,
        scrape_when("herald-tracker", app.tracker_metrics, |text| {
            text.contains("herald_tracking_requests_total")
        })
        .await,
    ];
    let exported_families: BTreeMap<String, String> =
        scrapes.iter().flat_map(|text| families(text)).collect();

    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported(&exported_families, name))
        .map(|(name, files)| format!("{name} (used in {files:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the rules or the dashboard use that no service exports: {missing:#?}\n\
         exported: {:#?}",
        exported_families.keys().collect::<Vec<_>>()
    );
    // The extraction found the metrics of every alert, so the check above is not vacuous.
    for name in [
        "herald_queue_settlements_total",
        "herald_queue_oldest_wait_seconds",
        "herald_provider_circuit_state",
        "herald_outbox_oldest_due_seconds",
        "herald_relay_lag_seconds_bucket",
        "rpc_server_call_duration_seconds_count",
        "herald_dependency_up",
    ] {
        assert!(used.contains_key(name), "{name} not found in {RULES}");
    }
    stop_worker.cancel();
}
