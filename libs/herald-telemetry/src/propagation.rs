//! W3C trace context across process boundaries: gRPC metadata, the outbox row and AMQP
//! headers all carry it as a small string map (`traceparent`, `tracestate`).

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `context` as `traceparent`/`tracestate` entries (empty when it holds no valid span).
pub fn context_to_map(context: &Context) -> HashMap<String, String> {
    let mut map = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut map);
    });
    map
}

/// The current tracing span's trace context, ready to travel with a message.
pub fn current_context_map() -> HashMap<String, String> {
    context_to_map(&tracing::Span::current().context())
}

/// The remote context `map` carries (an empty context when it carries none).
pub fn context_from_map(map: &HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(map))
}

/// Makes `span` a child of the remote span in `map`; a map without a valid `traceparent`
/// leaves `span` a root. Call it right after creating `span`.
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    let context = context_from_map(map);
    if context.span().span_context().is_valid() {
        // Fails only when the span was already started, which callers rule out.
        let _set = span.set_parent(context);
    }
}

/// Links `span` to the remote span in `map` (e.g. a retry's earlier attempt), if any.
pub fn link_to(span: &tracing::Span, map: &HashMap<String, String>) {
    let context = context_from_map(map);
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}
