//! A real browser: headless Chromium (Debian's `chromium`), driven over the Chrome DevTools
//! Protocol. It opens one page, evaluates JavaScript in it and takes screenshots. Every flag
//! that would make Chromium reach the network on its own is off: the only address it talks to
//! is the one it is given.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long Chromium may take to start and open its page.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium with one page open; killed when dropped.
pub struct Browser {
    child: Child,
    page: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url`, `width`×`height` CSS pixels.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(ncps_test_services::tool("chromium"))
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--disable-domain-reliability",
                "--metrics-recording-only",
                "--no-pings",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let port = devtools_port(&mut child);
        let page = page_socket(port, url);
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(request.to_string()))
            .expect("send to chromium");
        loop {
            let message = self.page.read().expect("read from chromium");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] != json!(id) {
                continue; // an event
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true, for at most `limit`; an expression that
    /// throws (the page is still loading: no `document.body` yet) counts as not yet.
    pub fn wait_for(&mut self, expression: &str, limit: Duration) {
        let started = Instant::now();
        let guarded = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        );
        while self.eval(&guarded) != json!(true) {
            assert!(
                started.elapsed() < limit,
                "the page never satisfied {expression} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the whole page at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let data = shot["data"].as_str().expect("screenshot data");
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 screenshot");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("artifact dir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads Chromium's stderr until it says where DevTools listen; the rest of stderr is
/// drained in the background so Chromium never blocks on it.
fn devtools_port(child: &mut Child) -> u16 {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                let port = rest.split('/').next().unwrap_or("").parse::<u16>().ok();
                if let (Some(port), Some(tx)) = (port, tx.take()) {
                    let _ = tx.send(Ok(port));
                }
            } else if tx.is_some() {
                seen.push(line);
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(port)) => port,
        Ok(Err(stderr)) => panic!("chromium exited before DevTools listened:\n{stderr}"),
        Err(_) => panic!("chromium did not open DevTools within {START_TIMEOUT:?}"),
    }
}

/// Connects to the page Chromium opened on `url`.
fn page_socket(port: u16, url: &str) -> WebSocket<TcpStream> {
    let started = Instant::now();
    let target = loop {
        let list = http_get(port, "/json/list");
        let pages: Vec<Value> = serde_json::from_str(&list).unwrap_or_default();
        if let Some(page) = pages
            .into_iter()
            .find(|p| p["type"] == "page" && p["webSocketDebuggerUrl"].is_string())
        {
            break page;
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "chromium never listed a page for {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ws_url = target["webSocketDebuggerUrl"].as_str().expect("ws url");
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
    let (socket, _) = tungstenite::client(ws_url, stream).expect("DevTools handshake");
    socket
}

/// A GET to DevTools' own HTTP endpoint (HTTP/1.1; it keeps the connection open, so the body
/// is read by its Content-Length). Empty when it does not answer yet.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&body).into_owned()
}
