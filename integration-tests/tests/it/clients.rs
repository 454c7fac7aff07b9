//! The example clients in `examples/` (Python with grpcio, Node.js with `@grpc/grpc-js`), run as
//! a user runs them against the platform: each submits over mTLS, replays with the same
//! idempotency key and reads the status. A change to `proto/` that breaks a client fails here.
//! Their packages come from `./scripts/clients-setup`, which `./scripts/test` runs first.

use std::path::{Path, PathBuf};

use herald_proto::submit::NotificationStatus;
use herald_test_support::TestCerts;

use crate::harness::{ORDERS_IDENTITY, TestApp};

const SETUP: &str = "./scripts/clients-setup";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program script` with the app's address and the orders certificate in the environment
/// the clients read, and returns its standard output.
///
/// # Panics
/// When it cannot start or exits unsuccessfully, with its output.
async fn run_client(app: &TestApp, program: &Path, script: &str) -> String {
    let certs = TestCerts::get();
    let output = tokio::process::Command::new(program)
        .arg(repository().join(script))
        .env("HERALD_SERVER", app.address.to_string())
        .env("HERALD_SERVER_NAME", "localhost")
        .env("HERALD_CA", certs.path("ca.pem"))
        .env("HERALD_CERT", certs.path("orders.pem"))
        .env("HERALD_KEY", certs.path("orders.key"))
        .env("HERALD_TEMPLATE", "welcome")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|error| {
            panic!("cannot start {} (run {SETUP}): {error}", program.display())
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} exited with {} (are its packages installed? {SETUP}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// The `key=value` pairs of the output line starting with `label`.
fn fields<'a>(output: &'a str, label: &str) -> Vec<(&'a str, &'a str)> {
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"));
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .collect()
}

fn field<'a>(output: &'a str, label: &str, name: &str) -> &'a str {
    fields(output, label)
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
        .unwrap_or_else(|| panic!("no {name}= on the `{label}` line of:\n{output}"))
}

/// What every client must have done: one notification, the replay answered with its id and
/// `duplicate = true`, its status read back; the platform then delivers it, once.
async fn check(app: &TestApp, output: &str) {
    let id = field(output, "submitted:", "id");
    assert_eq!(
        field(output, "submitted:", "duplicate"),
        "false",
        "{output}"
    );
    assert_eq!(field(output, "replayed:", "id"), id, "{output}");
    assert_eq!(field(output, "replayed:", "duplicate"), "true", "{output}");
    assert_eq!(field(output, "status:", "id"), id, "{output}");
    let status = field(output, "status:", "status");
    assert!(
        NotificationStatus::from_str_name(status)
            .is_some_and(|status| status != NotificationStatus::Unspecified),
        "not a notification status: {status}"
    );

    let notification = app.wait_for_status(id, NotificationStatus::Delivered).await;
    assert_eq!(notification.submitted_by, ORDERS_IDENTITY);
    assert_eq!(notification.deliveries.len(), 1);
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "one email for one notification"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_submits_replays_and_reads_the_status_over_mtls() {
    // Written by the setup script once the pinned packages are installed.
    assert!(
        repository().join(".venv/.herald-clients-python").exists(),
        "examples/python's packages are not installed in .venv: run {SETUP}"
    );
    let python = repository().join(".venv/bin/python");
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let output = run_client(&app, &python, "examples/python/herald_example.py").await;
    check(&app, &output).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_client_submits_replays_and_reads_the_status_over_mtls() {
    assert!(
        repository()
            .join("examples/node/node_modules/.herald-clients-node")
            .exists(),
        "examples/node's packages are not installed: run {SETUP}"
    );
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let output = run_client(&app, Path::new("node"), "examples/node/herald-example.js").await;
    check(&app, &output).await;
}
