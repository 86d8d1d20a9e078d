use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use ncps_core::{Cache, RequestLabels};
use tracing::{Instrument, field, info, info_span};

/// The route a path belongs to, as a bounded label (never the raw path, whose hashes would make
/// one time series per store path).
fn route_of(path: &str) -> &'static str {
    const PREFIXES: &[(&str, &str)] = &[
        ("/nar/", "nar"),
        ("/upload/", "upload"),
        ("/log/", "log"),
        ("/realisations/", "realisation"),
        ("/build-trace-v2/", "realisation"),
        ("/pin/", "pin"),
    ];
    if let Some((_, route)) = PREFIXES.iter().find(|(p, _)| path.starts_with(p)) {
        return route;
    }
    match path {
        "/nix-cache-info" => "nix-cache-info",
        "/pubkey" => "pubkey",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/pins" => "pin",
        p if p.ends_with(".narinfo") => "narinfo",
        _ => "other",
    }
}

/// The method as a metric label: the standard methods by name, any other as `other`, so a
/// client inventing methods cannot create time series without bound.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: &[Method] = &[
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// One span per request (`http.request`, exported as a server span by `--otel-enabled`; it
/// ends with the response headers), one log line per request (method, path, route, status,
/// bytes, duration, and whether the cache had it), and the request counters.
pub async fn log_request(State(cache): State<Cache>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The URI shares its bytes: keeping it costs no copy of the path.
    let uri = request.uri().clone();
    let path = uri.path();
    let route = route_of(path);
    let span = info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = %method,
        http.route = route,
        url.path = path,
        http.response.status_code = field::Empty,
        http.response.body.size = field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    span.record("http.response.status_code", status);
    if let Some(n) = bytes {
        span.record("http.response.body.size", n);
    }
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let _in_span = span.enter();
    let labels = RequestLabels {
        route,
        method: method_label(&method),
        status,
    };
    let metrics = cache.metrics();
    metrics.http_requests.get_or_create(&labels).inc();
    if let Some(n) = bytes {
        metrics.http_response_bytes.get_or_create(&labels).inc_by(n);
    }
    info!(
        %method,
        path,
        route,
        status,
        bytes,
        // Microsecond precision: enough to read, and no float noise in the log line.
        duration_ms = (started.elapsed().as_micros() as f64 / 1000.0),
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::{method_label, route_of};
    use axum::http::Method;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for invented in ["FOOBAR", "X1", "PROPFIND"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }

    #[test]
    fn routes_are_bounded_labels() {
        assert_eq!(
            route_of("/0000000000000000000000000000000a.narinfo"),
            "narinfo"
        );
        assert_eq!(route_of("/nar/x.nar.xz"), "nar");
        assert_eq!(route_of("/upload/nar/x.nar"), "upload");
        assert_eq!(route_of("/pins"), "pin");
        assert_eq!(route_of("/../../etc/passwd"), "other");
    }
}
