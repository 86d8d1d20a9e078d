//! OpenTelemetry export (`--otel-enabled`): our `tracing` spans as OTLP traces, and a few
//! request metrics derived from them, both sent over OTLP/gRPC to a collector.
//!
//! Off by default: then nothing here runs and no exporter exists; the spans the crates open
//! are plain `tracing` spans, seen only by the log output.
//!
//! Only spans and events of our own crates (`ncps*` targets, INFO and above) are exported:
//! never those of dependencies (hyper, h2, tonic, sqlx), which would also make the exporter
//! trace its own requests.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::otel_metrics::RequestMetrics;

/// The collector the OTLP exporters use when neither `--otel-grpc-url` nor the standard
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables name one.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// How long each provider may take to flush on exit (the SDK's own bound is 5 s too).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `--otel-*` flags.
#[derive(Clone, Debug, Default)]
pub struct OtelConfig {
    /// `--otel-enabled`.
    pub enabled: bool,
    /// `--otel-grpc-url`.
    pub grpc_url: Option<String>,
}

/// The running trace and metric pipelines; [`Otel::shutdown`] flushes them.
pub struct Otel {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    traces_endpoint: String,
    metrics_endpoint: String,
}

impl Otel {
    /// Builds the exporters and providers when `config` enables OpenTelemetry; `None` (and
    /// nothing started) otherwise. Must run inside a Tokio runtime: the gRPC channel lives
    /// there, and so must the runtime until [`Otel::shutdown`] returns.
    pub fn start(config: &OtelConfig) -> Result<Option<Otel>> {
        if !config.enabled {
            return Ok(None);
        }
        let resource = resource();

        let traces = Endpoint::resolve(config.grpc_url.as_deref(), "TRACES")?;
        let mut span_exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(traces.url.clone());
        if traces.tls {
            span_exporter = span_exporter.with_tls_config(tls());
        }
        let span_exporter = span_exporter
            .build()
            .with_context(|| format!("OpenTelemetry trace exporter for {}", traces.url))?;
        // The batch processor's thread exports every OTEL_BSP_SCHEDULE_DELAY (default 5 s).
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(span_exporter)
            .with_resource(resource.clone())
            .build();

        let metrics = Endpoint::resolve(config.grpc_url.as_deref(), "METRICS")?;
        let mut metric_exporter = MetricExporter::builder()
            .with_tonic()
            .with_endpoint(metrics.url.clone());
        if metrics.tls {
            metric_exporter = metric_exporter.with_tls_config(tls());
        }
        let metric_exporter = metric_exporter
            .build()
            .with_context(|| format!("OpenTelemetry metric exporter for {}", metrics.url))?;
        // The periodic reader exports every OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metric_exporter)
            .with_resource(resource)
            .build();

        Ok(Some(Otel {
            tracer_provider,
            meter_provider,
            traces_endpoint: redacted(&traces.url),
            metrics_endpoint: redacted(&metrics.url),
        }))
    }

    /// Where spans go.
    pub fn traces_endpoint(&self) -> &str {
        &self.traces_endpoint
    }

    /// Where metrics go.
    pub fn metrics_endpoint(&self) -> &str {
        &self.metrics_endpoint
    }

    /// The layer that turns our spans into OTel spans and request metrics, filtered to our
    /// crates at INFO whatever the log level.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.tracer_provider.tracer(env!("CARGO_PKG_NAME"));
        let traces = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false);
        let meter = self.meter_provider.meter(env!("CARGO_PKG_NAME"));
        traces
            .and_then(RequestMetrics::new(&meter))
            .with_filter(own_crates())
    }

    /// Exports what is still buffered (spans of the last requests, the final metric values)
    /// and stops the exporters; bounded, so a collector that is gone cannot hold up the exit.
    pub fn shutdown(self) {
        if let Err(e) = self.tracer_provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OpenTelemetry: flushing spans failed");
        }
        if let Err(e) = self.meter_provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OpenTelemetry: flushing metrics failed");
        }
    }
}

/// `service.name` = ncps (unless `OTEL_SERVICE_NAME` says otherwise), `service.version`, and
/// whatever `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> Resource {
    let builder = Resource::builder();
    let builder = match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => builder,
        _ => builder.with_service_name(env!("CARGO_PKG_NAME")),
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A URL fit for logs: without user info.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

fn tls() -> ClientTlsConfig {
    // The system's roots (private CAs) and the bundled Mozilla roots.
    ClientTlsConfig::new().with_enabled_roots()
}

/// Our crates' spans and events, INFO and above; nothing from dependencies.
fn own_crates() -> Targets {
    // A target matches by prefix: `ncps` covers ncps_core, ncps_server, … as well.
    Targets::new()
        .with_target("ncps", LevelFilter::INFO)
        .with_default(LevelFilter::OFF)
}

/// A collector URL and whether it is reached over TLS.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    url: String,
    tls: bool,
}

impl Endpoint {
    /// `--otel-grpc-url`, else `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else [`DEFAULT_ENDPOINT`].
    fn resolve(flag: Option<&str>, signal: &str) -> Result<Endpoint> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = flag
            .filter(|u| !u.trim().is_empty())
            .map(str::to_owned)
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        Endpoint::parse(&url)
    }

    /// As the Go ncps reads `--otel-grpc-url`: `http://` means plain gRPC, `https://` or no
    /// scheme at all means TLS.
    fn parse(url: &str) -> Result<Endpoint> {
        let url = url.trim();
        let (url, tls) = match url.split_once("://") {
            Some(("http", _)) => (url.to_owned(), false),
            Some(("https", _)) => (url.to_owned(), true),
            Some((scheme, _)) => {
                bail!("OpenTelemetry collector URL {url:?}: scheme {scheme:?} is not http or https")
            }
            None => (format!("https://{url}"), true),
        };
        let parsed = url::Url::parse(&url)
            .with_context(|| format!("invalid OpenTelemetry collector URL {url:?}"))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            bail!("OpenTelemetry collector URL {url:?} has no host");
        }
        Ok(Endpoint { url, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_starts_nothing() {
        // No runtime here: with OTel off no exporter is built, so none is needed.
        let config = OtelConfig {
            enabled: false,
            grpc_url: Some("http://127.0.0.1:1".into()),
        };
        assert!(Otel::start(&config).unwrap().is_none());
        assert!(Otel::start(&OtelConfig::default()).unwrap().is_none());
    }

    #[test]
    fn enabled_starts_and_shuts_down_promptly_without_a_collector() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        // Nothing listens on port 1: exports fail fast; shutdown stays bounded.
        for url in ["http://127.0.0.1:1", "https://127.0.0.1:1", "127.0.0.1:1"] {
            let config = OtelConfig {
                enabled: true,
                grpc_url: Some(url.into()),
            };
            let otel = Otel::start(&config).unwrap().expect("enabled");
            let started = std::time::Instant::now();
            otel.shutdown();
            assert!(started.elapsed() < 3 * SHUTDOWN_TIMEOUT, "{url}");
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        for url in ["ftp://collector:4317", "http://", "http://[::1"] {
            let config = OtelConfig {
                enabled: true,
                grpc_url: Some(url.into()),
            };
            assert!(Otel::start(&config).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn scheme_decides_tls_as_in_go_ncps() {
        let e = |url: &str| Endpoint::parse(url).unwrap();
        assert_eq!(
            e("http://127.0.0.1:4317"),
            Endpoint {
                url: "http://127.0.0.1:4317".into(),
                tls: false
            }
        );
        assert_eq!(
            e("https://otel.example.com:4317"),
            Endpoint {
                url: "https://otel.example.com:4317".into(),
                tls: true
            }
        );
        assert_eq!(
            e("otel.example.com:4317"),
            Endpoint {
                url: "https://otel.example.com:4317".into(),
                tls: true
            }
        );
        assert_eq!(
            Endpoint::resolve(Some("http://a:1"), "TRACES").unwrap().url,
            "http://a:1"
        );
    }
}
