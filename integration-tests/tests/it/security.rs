//! Only mutual-TLS callers with a Herald certificate and a configured role get in.

use std::time::Duration;

use futures::StreamExt;
use herald_proto::submit::NotificationStatus;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::{As, ORDERS_IDENTITY, TestApp, welcome_request};

/// Tries one submit over `endpoint`; `Err` describes how it was refused.
async fn try_submit(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("connect: {error}"))?;
    herald_proto::submit::submit_service_client::SubmitServiceClient::new(channel)
        .submit(welcome_request("ada@example.com"))
        .await
        .map(|_| ())
        .map_err(|status| format!("rpc: {status}"))
}

async fn assert_refused_and_nothing_written(app: &TestApp, endpoint: Endpoint) {
    app.create_welcome_template().await;
    let refused = try_submit(endpoint).await;
    assert!(refused.is_err(), "the call must be refused");
    assert_eq!(app.count_rows("notifications").await, 0);
}

fn https(app: &TestApp) -> Endpoint {
    Endpoint::from_shared(format!("https://{}", app.address)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_a_certificate_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let ca = std::fs::read(herald_test_support::TestCerts::get().path("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca));
    assert_refused_and_nothing_written(&app, https(&app).tls_config(tls).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_an_untrusted_ca_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let endpoint = https(&app).tls_config(app.tls(As::Intruder)).unwrap();
    assert_refused_and_nothing_written(&app, endpoint).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_http2_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let endpoint = Endpoint::from_shared(format!("http://{}", app.address)).unwrap();
    assert_refused_and_nothing_written(&app, endpoint).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_identity_without_a_role_gets_permission_denied() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let status = app
        .submit_client(As::Stranger)
        .await
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("spiffe://herald.local/service/stranger"),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("notifications").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_submitting_identity_is_recorded_on_the_notification() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let response = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap();
    let notification = app
        .wait_for_status(&response.notification_id, NotificationStatus::Delivered)
        .await;
    assert_eq!(notification.submitted_by, ORDERS_IDENTITY);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_over_mutual_tls() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel(As::Orders).await);
    for service in [
        "",
        "herald.submit.v1.SubmitService",
        "herald.template.v1.TemplateService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_reports_not_serving_to_its_watchers_once_the_drain_begins() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel(As::Orders).await);
    let services = [
        "",
        "herald.submit.v1.SubmitService",
        "herald.template.v1.TemplateService",
        "herald.admin.v1.AdminService",
        "herald.preference.v1.PreferenceService",
        "herald.inbox.v1.InboxService",
        "herald.tracking.v1.TrackingService",
    ];
    let mut watches = Vec::new();
    for service in services {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push((service, watch));
    }

    app.begin_shutdown();

    for (service, mut watch) in watches {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("{service:?} sent nothing after the drain began"))
            .unwrap()
            .unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_herald_services() {
    let app = TestApp::spawn().await;
    let mut reflection = ServerReflectionClient::new(app.channel(As::Orders).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "herald.submit.v1.SubmitService",
        "herald.template.v1.TemplateService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// A reflection request listing the services.
fn list_services() -> ServerReflectionRequest {
    ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer_configured_principals_only() {
    let app = TestApp::spawn().await;
    // The stranger's certificate is signed by the Herald CA, but no principal names it.
    let mut health = HealthClient::new(app.channel(As::Stranger).await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut reflection = ServerReflectionClient::new(app.channel(As::Stranger).await);
    let status = reflection
        .server_reflection_info(futures::stream::iter([list_services()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_can_be_switched_off() {
    let app = TestApp::spawn().await;
    let mut settings = app.api_replica_settings();
    settings.server.reflection = false;
    let replica = app.spawn_api_replica_with(settings).await;
    let mut reflection = ServerReflectionClient::new(app.channel_at(replica, As::Orders).await);
    let status = reflection
        .server_reflection_info(futures::stream::iter([list_services()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Health still answers.
    let mut health = HealthClient::new(app.channel_at(replica, As::Orders).await);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
}
