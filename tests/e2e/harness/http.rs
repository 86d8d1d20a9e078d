//! HTTP requests to the server under test.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, HeaderMap};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that never uses a proxy (nothing may leave loopback) and asks for no transport
/// compression (tests see the bytes and lengths ncps sends; the ones about compression send
/// `Accept-Encoding` themselves). Make one per test: a reqwest client belongs to the runtime it
/// first ran on.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_zstd()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// A complete response: status, headers and the whole body.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The start of the body, fit for an assertion message (bodies may be binary NARs).
    pub fn excerpt(&self) -> String {
        const MAX: usize = 200;
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(MAX)]);
        let more = if self.body.len() > MAX { "…" } else { "" };
        format!("{text:?}{more} ({} bytes)", self.body.len())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header(CONTENT_LENGTH.as_str())
            .map(|v| v.parse().expect("numeric Content-Length"))
    }

    /// Panics (showing the body) unless the status is `want`.
    pub fn expect_status(self, want: u16, what: &str) -> Self {
        assert_eq!(
            self.status,
            want,
            "{what}: unexpected status; body: {}",
            self.excerpt()
        );
        self
    }

    /// A 200 whose Content-Length header matches the body it came with.
    pub fn expect_ok_with_length(self, what: &str) -> Self {
        let resp = self.expect_status(200, what);
        assert_eq!(
            resp.content_length(),
            Some(resp.body.len() as u64),
            "{what}: a 200 must carry a Content-Length equal to its body's length"
        );
        resp
    }
}

/// Sends a request and reads the whole body; `Err` for transport errors, including a body
/// that ends early.
pub async fn fetch(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, reqwest::Error> {
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str) -> Resp {
    fetch(&client(), Method::GET, url, &[])
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn head(url: &str) -> Resp {
    fetch(&client(), Method::HEAD, url, &[])
        .await
        .unwrap_or_else(|e| panic!("HEAD {url}: {e}"))
}

/// `GET raw_path` over a bare TCP connection, so that the path reaches the server exactly as
/// written (an HTTP library would resolve `..` and `%2e%2e` first). Returns status and body.
pub async fn raw_get(authority: &str, raw_path: &str) -> (u16, String) {
    raw_request(authority, "GET", raw_path, b"").await
}

/// What the server answers to a PUT of `raw_path` that declares a body of `declared` bytes
/// and, as curl does, waits for `100 Continue` before sending it; no body is ever sent. The
/// whole exchange as text, read until the server closes (it should not wait for the body).
pub async fn put_waiting_for_continue(authority: &str, raw_path: &str, declared: u64) -> String {
    let request = format!(
        "PUT {raw_path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {declared}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    let what = format!("PUT {raw_path} declaring {declared} bytes");
    let late = "still open after 10 s, waiting for the body";
    let response = exchange(
        authority,
        request.as_bytes(),
        Duration::from_secs(10),
        &what,
        late,
    )
    .await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends `request` as written on a new connection and reads until the server closes; panics
/// with `what` and `late` when that takes over `timeout`. A server that answers before reading
/// the whole body must still let the client send it and read the answer.
async fn exchange(
    authority: &str,
    request: &[u8],
    timeout: Duration,
    what: &str,
    late: &str,
) -> Vec<u8> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream.write_all(request).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: {late}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `method raw_path` sent as written (no client normalises it) with `body`; the status and
/// the body of the answer.
pub async fn raw_request(
    authority: &str,
    method: &str,
    raw_path: &str,
    body: &[u8],
) -> (u16, String) {
    let what = format!("{method} {raw_path}");
    let head = format!(
        "{method} {raw_path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let request = [head.as_bytes(), body].concat();
    let response = exchange(
        authority,
        &request,
        REQUEST_TIMEOUT,
        &what,
        "no complete response",
    )
    .await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not an HTTP/1.1 response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `n` concurrent GETs of `url`, every one of which provably overlaps the one upstream download:
/// the upstream holds NAR bodies until each request has its response headers (so each joined
/// the download in flight; none can have been served from storage), then lets them go.
/// Returns the complete responses, in request order.
pub async fn overlapping_gets(
    upstream: &super::upstream::Upstream,
    url: &str,
    n: usize,
) -> Vec<Resp> {
    upstream.hold_nars();
    let client = client();
    let (headers_in, mut headers_seen) = tokio::sync::mpsc::channel::<()>(n);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url, headers_in) = (client.clone(), url.to_owned(), headers_in.clone());
            tokio::spawn(async move {
                let what = format!("request {i} for {url}");
                let response = client
                    .get(&url)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let _ = headers_in.send(()).await;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response
                    .bytes()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: body: {e}"));
                Resp {
                    status,
                    headers,
                    body,
                }
            })
        })
        .collect();
    drop(headers_in);
    let all_in_flight = async {
        for _ in 0..n {
            headers_seen
                .recv()
                .await
                .expect("a request ended before its response headers");
        }
    };
    let joined = tokio::time::timeout(Duration::from_secs(30), all_in_flight).await;
    upstream.release_nars();
    joined.expect("not every request joined the download in flight within 30 s");
    let mut responses = Vec::with_capacity(n);
    for task in tasks {
        responses.push(task.await.expect("request task"));
    }
    responses
}
