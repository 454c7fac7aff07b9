//! Every service answers the kubelet's plain-HTTP probes on its metrics port: `/healthz` while
//! it runs, `/readyz` while the dependencies it needs are reachable.

use std::net::SocketAddr;
use std::time::Duration;

use herald_test_support::eventually;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::harness::{TestApp, test_telemetry};
use crate::observability::{sample, scrape};

/// The status and body of `GET http://{address}{path}`.
async fn probe(address: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Waits until `/readyz` of every service answers `status` with a body naming `dependency`,
/// checking that `/healthz` answers 200 all along.
async fn await_readiness(services: &[(&str, SocketAddr)], status: u16, dependency: &str) {
    for (name, address) in services {
        let body = eventually(
            &format!("{name} /readyz to answer {status}"),
            Duration::from_secs(20),
            || async move {
                let (answered, body) = probe(*address, "/readyz").await;
                (answered == status).then_some(body)
            },
        )
        .await;
        assert!(body.contains(dependency), "{name}: {body}");
        assert_eq!(probe(*address, "/healthz").await.0, 200, "{name} /healthz");
    }
}

/// Waits until a scrape of every service's `/metrics` shows
/// `herald_dependency_up{herald_dependency="<dependency>"}` at `value`.
async fn await_dependency_gauge(services: &[(&str, SocketAddr)], dependency: &str, value: f64) {
    for (name, address) in services {
        eventually(
            &format!("{name} to export herald_dependency_up {dependency} = {value}"),
            Duration::from_secs(20),
            || async move {
                let text = scrape(*address).await;
                let labels = [("herald_dependency", dependency)];
                (sample(&text, "herald_dependency_up", &labels) == Some(value)).then_some(())
            },
        )
        .await;
    }
}

/// A TestApp and an email worker of its own whose metrics address is known: the five
/// services and their probe addresses (the worker stops with the returned guard).
async fn services(app: &TestApp) -> ([(&'static str, SocketAddr); 5], DropGuard) {
    let sentinel = app.start_sentinel(|_| {});
    let worker = herald_channel_worker::Application::build(
        herald_channel_worker::Settings {
            telemetry: test_telemetry(),
            ..app.email_worker_settings(1)
        },
        herald_channel_worker::WorkerChannel::Email,
    )
    .unwrap();
    let worker_metrics = worker.metrics_addr().unwrap();
    let stop_worker = CancellationToken::new();
    tokio::spawn(worker.run_until_stopped(stop_worker.clone()));
    let services = [
        ("herald-api-server", app.api_metrics),
        ("herald-relay", app.relay_metrics),
        ("herald-tracker", app.tracker_metrics),
        ("herald-sentinel", sentinel),
        ("herald-channel-worker", worker_metrics),
    ];
    (services, stop_worker.drop_guard())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_is_live_and_is_ready_only_while_postgresql_answers() {
    let app = TestApp::spawn().await;
    let (services, _worker) = services(&app).await;
    await_readiness(&services, 200, "postgresql").await;

    app.database_proxy.cut();
    await_readiness(&services, 503, "postgresql").await;

    app.database_proxy.restore();
    await_readiness(&services, 200, "postgresql").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_and_the_workers_are_ready_only_while_connected_to_rabbitmq() {
    let app = TestApp::spawn().await;
    let (services, _worker) = services(&app).await;
    let [api, relay, _tracker, _sentinel, worker] = services;
    await_readiness(&[relay, worker], 200, "rabbitmq").await;

    app.amqp_proxy.cut();
    await_readiness(&[relay, worker], 503, "rabbitmq").await;
    // The API does not need the broker to accept submits.
    await_readiness(&[api], 200, "postgresql").await;

    app.amqp_proxy.restore();
    await_readiness(&[relay, worker], 200, "rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_exports_whether_it_reaches_postgresql_and_rabbitmq_as_a_gauge() {
    let app = TestApp::spawn().await;
    let (services, _worker) = services(&app).await;
    let [api, relay, _tracker, _sentinel, worker] = services;
    await_dependency_gauge(&services, "postgresql", 1.0).await;
    await_dependency_gauge(&[relay, worker], "rabbitmq", 1.0).await;

    app.database_proxy.cut();
    await_dependency_gauge(&services, "postgresql", 0.0).await;
    app.database_proxy.restore();
    await_dependency_gauge(&services, "postgresql", 1.0).await;

    app.amqp_proxy.cut();
    await_dependency_gauge(&[relay, worker], "rabbitmq", 0.0).await;
    // The API does not check the broker, so it has no series for it.
    assert_eq!(
        sample(
            &scrape(api.1).await,
            "herald_dependency_up",
            &[("herald_dependency", "rabbitmq")]
        ),
        None
    );
    app.amqp_proxy.restore();
    await_dependency_gauge(&[relay, worker], "rabbitmq", 1.0).await;
}
