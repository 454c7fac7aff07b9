//! One OpenTelemetry server span and one duration measurement per gRPC call, following the
//! RPC semantic conventions; the caller's W3C `traceparent` becomes the span's parent.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use tracing::Instrument as _;

/// Wraps every service of the API server.
#[derive(Clone)]
pub(crate) struct RpcLayer {
    duration: Histogram<f64>,
}

impl RpcLayer {
    /// Records `rpc.server.call.duration` (seconds; by service, method and status code) into
    /// `metrics`.
    pub(crate) fn new(metrics: &herald_telemetry::Metrics) -> Self {
        Self {
            duration: metrics
                .meter()
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("Duration of gRPC calls handled, by method and status code")
                .with_boundaries(herald_telemetry::LATENCY_BUCKETS.to_vec())
                .build(),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// A service wrapped by [`RpcLayer`].
#[derive(Clone)]
pub(crate) struct RpcService<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Labels come from the methods the server knows, never from the raw path: any client
        // with a certificate could otherwise create a new metric series per made-up path.
        let (service, method) =
            crate::auth::known_method(request.uri().path()).unwrap_or(("unknown", "unknown"));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            caller = tracing::field::Empty,
        );
        let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|name| {
                let value = request.headers().get(name)?.to_str().ok()?;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect();
        herald_telemetry::set_parent_from_map(&span, &carrier);
        let duration = self.duration.clone();
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let result = call.instrument(span.clone()).await;
            // An error is a trailers-only response carrying `grpc-status` in its headers; a
            // call that succeeds sends `grpc-status: 0` in the trailers after its messages.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => i64::from(tonic::Code::Unknown as i32),
            };
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
            duration.record(
                started.elapsed().as_secs_f64(),
                &[
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code),
                ],
            );
            result
        })
    }
}
