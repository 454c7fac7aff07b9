//! A real OTLP/gRPC receiver on loopback, as an OpenTelemetry collector would run it: it
//! accepts (gzip-compressed) trace and log exports and keeps what arrived for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tonic::codec::CompressionEncoding;

use crate::lock;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `SPAN_KIND_*` as its proto number (1 internal, 2 server, 3 client, 4 producer,
    /// 5 consumer).
    pub kind: i32,
    /// Attributes, every value rendered as a string.
    pub attributes: BTreeMap<String, String>,
    /// Hex `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    /// Names and attributes of the span's events (log lines inside the span).
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// `service.name` of the resource that exported it.
    pub service_name: String,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
}

/// One exported log record, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    /// The body rendered as a string.
    pub body: String,
    /// Attributes, every value rendered as a string.
    pub attributes: BTreeMap<String, String>,
    /// Hex trace id of the span it was emitted in; empty outside a span.
    pub trace_id: String,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    logs: Mutex<Vec<ReceivedLog>>,
    /// `(service.name, metric name)` of every metric exported.
    metrics: Mutex<Vec<(String, String)>>,
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    endpoint: String,
    received: Arc<Received>,
    _server: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self._server.abort();
    }
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let received = Arc::new(Received::default());
        let traces = TraceServiceServer::new(Sink(Arc::clone(&received)))
            .accept_compressed(CompressionEncoding::Gzip);
        let logs = LogsServiceServer::new(Sink(Arc::clone(&received)))
            .accept_compressed(CompressionEncoding::Gzip);
        let metrics = MetricsServiceServer::new(Sink(Arc::clone(&received)))
            .accept_compressed(CompressionEncoding::Gzip);
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _stopped = tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(logs)
                .add_service(metrics)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            endpoint,
            received,
            _server: server,
        }
    }

    /// `http://127.0.0.1:<port>`, for `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received.spans).clone()
    }

    /// `(service.name, metric name)` of every metric exported so far.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        lock(&self.received.metrics).clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        lock(&self.received.logs).clone()
    }
}

struct Sink(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .and_then(|attributes| attributes.get("service.name").cloned())
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        links: span
                            .links
                            .iter()
                            .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                            .collect(),
                        events: span
                            .events
                            .iter()
                            .map(|event| (event.name.clone(), attributes(&event.attributes)))
                            .collect(),
                        service_name: service_name.clone(),
                        status_code: span.status.map_or(0, |status| status.code),
                    });
                }
            }
        }
        lock(&self.0.spans).extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut logs = Vec::new();
        for resource_logs in request.into_inner().resource_logs {
            for scope_logs in resource_logs.scope_logs {
                for record in scope_logs.log_records {
                    logs.push(ReceivedLog {
                        body: record.body.as_ref().map(render).unwrap_or_default(),
                        attributes: attributes(&record.attributes),
                        trace_id: hex(&record.trace_id),
                    });
                }
            }
        }
        lock(&self.0.logs).extend(logs);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = Vec::new();
        for resource_metrics in request.into_inner().resource_metrics {
            let service_name = resource_metrics
                .resource
                .map(|resource| attributes(&resource.attributes))
                .and_then(|attributes| attributes.get("service.name").cloned())
                .unwrap_or_default();
            for scope_metrics in resource_metrics.scope_metrics {
                for metric in scope_metrics.metrics {
                    names.push((service_name.clone(), metric.name));
                }
            }
        }
        lock(&self.0.metrics).extend(names);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            (
                pair.key.clone(),
                pair.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(any_value::Value::ArrayValue(array)) => array
            .values
            .iter()
            .map(render)
            .collect::<Vec<_>>()
            .join(","),
        Some(any_value::Value::KvlistValue(list)) => format!("{:?}", attributes(&list.values)),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
