//! OpenTelemetry export (`--otel-enabled --otel-grpc-url`): a collector stand-in on 127.0.0.1
//! (the OTLP TraceService and MetricsService over gRPC, recording every export) receives the
//! spans of a narinfo and a NAR request, with their upstream fetches, and the request metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use tokio::sync::oneshot;

use crate::harness::{Compression, Fixture, FixtureOptions, eventually_within, http, ncps};

/// Every export a collector stand-in received.
#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector stand-in on a free port of 127.0.0.1; stops when dropped.
struct Collector {
    addr: SocketAddr,
    received: Received,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let received = Received::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::spawn(async move {
            server.await.expect("collector stand-in");
        });
        Collector {
            addr,
            received,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        let traces = self.received.traces.lock().unwrap();
        let mut spans = Vec::new();
        for request in traces.iter() {
            for resource in &request.resource_spans {
                let resource_attrs = resource
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        spans.push(Span {
                            name: span.name.clone(),
                            trace_id: span.trace_id.clone(),
                            attributes: attributes(&span.attributes),
                            resource: resource_attrs.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The latest value of each data point of the counter `name`, by its attributes.
    fn counter(&self, name: &str) -> Vec<(HashMap<String, String>, i64)> {
        let exports = self.received.metrics.lock().unwrap();
        let mut latest = Vec::new();
        for request in exports.iter() {
            for resource in &request.resource_metrics {
                for scope in &resource.scope_metrics {
                    for m in scope.metrics.iter().filter(|m| m.name == name) {
                        let Some(metric::Data::Sum(sum)) = &m.data else {
                            continue;
                        };
                        // Cumulative sums: a later export supersedes an earlier one.
                        latest = sum
                            .data_points
                            .iter()
                            .map(|p| {
                                let value = match p.value {
                                    Some(number_data_point::Value::AsInt(v)) => v,
                                    Some(number_data_point::Value::AsDouble(v)) => v as i64,
                                    None => 0,
                                };
                                (attributes(&p.attributes), value)
                            })
                            .collect();
                    }
                }
            }
        }
        latest
    }

    fn metric_resources(&self) -> Vec<HashMap<String, String>> {
        let exports = self.received.metrics.lock().unwrap();
        exports
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .filter_map(|r| r.resource.as_ref().map(|r| attributes(&r.attributes)))
            .collect()
    }
}

#[derive(Debug)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The first span named `name` whose attributes include every pair of `with`.
fn find<'a>(spans: &'a [Span], name: &str, with: &[(&str, &str)]) -> Result<&'a Span, String> {
    spans
        .iter()
        .find(|s| s.name == name && with.iter().all(|(k, v)| s.attr(k) == *v))
        .ok_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
            format!("no span {name} with {with:?} among {names:?}")
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_request_and_upstream_spans_and_metrics() {
    let collector = Collector::start().await;
    let collector_url = collector.url();
    let mut fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--otel-enabled",
        "--otel-grpc-url",
        &collector_url,
    ]))
    .await;
    let top = fx.closure.top.clone();
    let narinfo = fx.ncps_narinfo(&top).await;
    let nar = http::get(&fx.nar_url(&narinfo))
        .await
        .expect_ok_with_length("GET the NAR");
    let nar_bytes = nar.body.len() as i64;
    let upstream = fx.upstream.url();

    // Spans are batched and sent every 5 s (OTEL_BSP_SCHEDULE_DELAY's default): no exit needed.
    eventually_within("spans at the collector", Duration::from_secs(30), || {
        let spans = collector.spans();
        let upstream = upstream.clone();
        async move {
            let narinfo_request = find(
                &spans,
                "GET narinfo",
                &[
                    ("http.route", "narinfo"),
                    ("http.request.method", "GET"),
                    ("http.response.status_code", "200"),
                ],
            )?;
            let nar_request = find(
                &spans,
                "GET nar",
                &[("http.route", "nar"), ("http.response.status_code", "200")],
            )?;
            let lookup = find(&spans, "upstream.narinfo", &[("outcome", "hit")])?;
            let fetch = find(&spans, "upstream.nar", &[("outcome", "ok")])?;
            find(&spans, "cache.narinfo", &[])?;
            find(&spans, "nar.download", &[])?;
            for span in [narinfo_request, nar_request, lookup, fetch] {
                if span.resource.get("service.name").map(String::as_str) != Some("ncps") {
                    return Err(format!("{} has resource {:?}", span.name, span.resource));
                }
            }
            for span in [lookup, fetch] {
                if !span.attr("upstream").starts_with(&upstream) {
                    return Err(format!("{span:?} does not name upstream {upstream}"));
                }
            }
            // Upstream work belongs to the trace of the request that caused it.
            if lookup.trace_id != narinfo_request.trace_id {
                return Err("the narinfo lookup is not in its request's trace".into());
            }
            if fetch.trace_id != nar_request.trace_id {
                return Err("the NAR download is not in its request's trace".into());
            }
            Ok(())
        }
    })
    .await;

    // Metrics go every 60 s by default: SIGTERM must flush them (and any last spans).
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status}");
    eventually_within("metrics at the collector", Duration::from_secs(10), || {
        let requests = collector.counter("ncps.http.requests");
        let served = collector.counter("ncps.nar.served_bytes");
        let upstreams = collector.counter("ncps.upstream.requests");
        let resources = collector.metric_resources();
        async move {
            let count = |route: &str| {
                requests
                    .iter()
                    .filter(|(a, _)| {
                        a.get("http.route").map(String::as_str) == Some(route)
                            && a.get("http.response.status_code").map(String::as_str) == Some("200")
                    })
                    .map(|(_, v)| *v)
                    .sum::<i64>()
            };
            if count("narinfo") < 1 || count("nar") != 1 {
                return Err(format!("ncps.http.requests: {requests:?}"));
            }
            if served.iter().map(|(_, v)| *v).sum::<i64>() != nar_bytes {
                return Err(format!(
                    "ncps.nar.served_bytes: {served:?}, want {nar_bytes}"
                ));
            }
            let hit = upstreams.iter().any(|(a, v)| {
                *v >= 1
                    && a.get("kind").map(String::as_str) == Some("narinfo")
                    && a.get("outcome").map(String::as_str) == Some("hit")
            });
            if !hit {
                return Err(format!("ncps.upstream.requests: {upstreams:?}"));
            }
            if !resources
                .iter()
                .all(|r| r.get("service.name").map(String::as_str) == Some("ncps"))
            {
                return Err(format!("metric resources: {resources:?}"));
            }
            Ok(())
        }
    })
    .await;
}

/// A collector that is not there costs nothing visible: requests are served, and SIGTERM
/// still ends the process promptly (the flush is bounded).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_collector_neither_fails_requests_nor_delays_exit() {
    let nobody = format!("http://{}", ncps::free_port());
    let mut fx = Fixture::with(FixtureOptions::new(Compression::Zstd).ncps_args(&[
        "--otel-enabled",
        "--otel-grpc-url",
        &nobody,
    ]))
    .await;
    let top = fx.closure.top.clone();
    let narinfo = fx.ncps_narinfo(&top).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_ok_with_length("GET the NAR");
    let started = std::time::Instant::now();
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        started.elapsed()
    );
}
