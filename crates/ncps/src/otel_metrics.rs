//! OTel metrics derived from our spans: when an `http.request` span (opened by the request
//! logging middleware) or an upstream span closes, its recorded fields become measurements.
//! The request path itself only opens `tracing` spans; this layer exists only with
//! `--otel-enabled`. (The Prometheus counters at `/metrics` are kept separately, in ncps-core.)

use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Span names this layer measures.
const HTTP_REQUEST: &str = "http.request";
const UPSTREAM_NARINFO: &str = "upstream.narinfo";
const UPSTREAM_NAR: &str = "upstream.nar";

/// The instruments.
pub struct RequestMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    response_bytes: Counter<u64>,
    nar_served_bytes: Counter<u64>,
    upstream_requests: Counter<u64>,
}

impl RequestMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            requests: meter
                .u64_counter("ncps.http.requests")
                .with_description("HTTP requests by route, method and status")
                .with_unit("{request}")
                .build(),
            duration: meter
                .f64_histogram("ncps.http.request.duration")
                .with_description(
                    "Time from request to response headers (a streamed body is not included)",
                )
                .with_unit("s")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .build(),
            response_bytes: meter
                .u64_counter("ncps.http.response.bytes")
                .with_description("Response bytes announced by Content-Length, by route")
                .with_unit("By")
                .build(),
            nar_served_bytes: meter
                .u64_counter("ncps.nar.served_bytes")
                .with_description(
                    "NAR bytes served (Content-Length of successful NAR GETs; bodies of unknown \
                     length, converted on the fly, are not counted)",
                )
                .with_unit("By")
                .build(),
            upstream_requests: meter
                .u64_counter("ncps.upstream.requests")
                .with_description("Requests to upstream caches by upstream, kind and outcome")
                .with_unit("{request}")
                .build(),
        }
    }
}

/// What a measured span recorded.
#[derive(Default)]
struct Fields {
    started: Option<Instant>,
    method: Option<String>,
    route: Option<String>,
    status: Option<u64>,
    body_size: Option<u64>,
    upstream: Option<String>,
    outcome: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "http.response.status_code" => self.status = Some(value),
            "http.response.body.size" => self.body_size = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }
}

impl Fields {
    fn text(&mut self, field: &Field, value: String) {
        match field.name() {
            "http.request.method" => self.method = Some(value),
            "http.route" => self.route = Some(value),
            "upstream" => self.upstream = Some(value),
            "outcome" => self.outcome = Some(value),
            _ => {}
        }
    }
}

fn measured(metadata: &Metadata<'_>) -> bool {
    matches!(
        metadata.name(),
        HTTP_REQUEST | UPSTREAM_NARINFO | UPSTREAM_NAR
    )
}

impl<S> Layer<S> for RequestMetrics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !measured(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields {
            started: Some(Instant::now()),
            ..Fields::default()
        };
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(fields) = span.extensions_mut().remove::<Fields>() else {
            return;
        };
        match span.name() {
            HTTP_REQUEST => self.request(fields),
            name => self.upstream(name, fields),
        }
    }
}

impl RequestMetrics {
    fn request(&self, f: Fields) {
        let route = f.route.unwrap_or_default();
        let method = f.method.unwrap_or_default();
        let status = f.status.unwrap_or_default();
        let attributes = [
            KeyValue::new("http.route", route.clone()),
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new(
                "http.response.status_code",
                i64::try_from(status).unwrap_or_default(),
            ),
        ];
        self.requests.add(1, &attributes);
        if let Some(started) = f.started {
            self.duration
                .record(started.elapsed().as_secs_f64(), &attributes);
        }
        if let Some(bytes) = f.body_size {
            self.response_bytes.add(bytes, &attributes);
            if route == "nar" && method == "GET" && (200..300).contains(&status) {
                self.nar_served_bytes.add(bytes, &[]);
            }
        }
    }

    fn upstream(&self, name: &str, f: Fields) {
        let kind = if name == UPSTREAM_NAR {
            "nar"
        } else {
            "narinfo"
        };
        self.upstream_requests.add(
            1,
            &[
                KeyValue::new("upstream", f.upstream.unwrap_or_default()),
                KeyValue::new("kind", kind),
                KeyValue::new("outcome", f.outcome.unwrap_or_else(|| "unknown".into())),
            ],
        );
    }
}
