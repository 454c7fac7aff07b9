//! Every service answers the kubelet's plain-HTTP probes on its metrics port: `/healthz` while
//! it runs, `/readyz` while the dependencies it needs are reachable.

use std::net::SocketAddr;
use std::time::Duration;

use herald_test_support::eventually;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestApp, test_telemetry};

/// The status and body of `GET http://{address}{path}`.
async fn probe(address: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Waits until `/readyz` of every service answers `status` with a body naming PostgreSQL,
/// checking that `/healthz` answers 200 all along.
async fn await_readiness(services: &[(&str, SocketAddr)], status: u16) {
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
        assert!(body.contains("postgresql"), "{name}: {body}");
        assert_eq!(probe(*address, "/healthz").await.0, 200, "{name} /healthz");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_is_live_and_is_ready_only_while_postgresql_answers() {
    let app = TestApp::spawn().await;
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
    let _stop_worker = stop_worker.drop_guard();
    let services = [
        ("herald-api-server", app.api_metrics),
        ("herald-relay", app.relay_metrics),
        ("herald-tracker", app.tracker_metrics),
        ("herald-sentinel", sentinel),
        ("herald-channel-worker", worker_metrics),
    ];
    await_readiness(&services, 200).await;

    app.database_proxy.cut();
    await_readiness(&services, 503).await;

    app.database_proxy.restore();
    await_readiness(&services, 200).await;
}
