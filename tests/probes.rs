//! The black-box probe suite: the gateway's binary (`serve --config`) on loopback, in front
//! of a raw-socket upstream that records every byte it receives, probed with raw bytes a
//! hostile or broken client would send. Each probe says what nginx or Envoy do; the
//! gateway must do at least as well: a clear answer in REDCap's shape (or hyper's bare
//! status, where hyper answers before the gateway runs: see `refused_by_hyper`), never a
//! hang, and never a second request smuggled to REDCap.
//!
//! Bounded in time: every read has a deadline, and timeouts are configured short.
//! `PROBE_GATEWAY_BIN=target/dist/redcap-gateway cargo test --test probes` probes the
//! build that ships.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redcap_gateway::dev::DevIssuer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the recording upstream answers each complete request with.
const UPSTREAM_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n[{\"record_id\":\"1\"}]";

/// The project token in the vault: every request REDCap sees must carry it.
const VAULT_TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";

/// A raw-socket REDCap: records every byte per connection and answers each complete
/// request (by Content-Length or chunked framing) with `UPSTREAM_ANSWER`.
#[derive(Clone, Default)]
struct Recorder {
    conns: Arc<Mutex<Vec<Received>>>,
}

/// The bytes one upstream connection received.
type Received = Arc<Mutex<Vec<u8>>>;

impl Recorder {
    async fn start() -> (SocketAddr, Recorder) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Recorder::default();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Vec::new()));
                r.conns.lock().unwrap().push(seen.clone());
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = request_len(&pending) {
                            pending.drain(..len);
                            if s.write_all(UPSTREAM_ANSWER).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, rec)
    }

    /// Every request REDCap received, as (head, body).
    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for conn in self.conns.lock().unwrap().iter() {
            let mut bytes = conn.lock().unwrap().clone();
            while let Some(len) = request_len(&bytes) {
                let head_end = find(&bytes, b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
                out.push((head, bytes[head_end..len].to_vec()));
                bytes.drain(..len);
            }
            assert!(
                bytes.is_empty(),
                "REDCap received bytes that are not a whole request: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        out
    }

    /// REDCap saw exactly `n` requests, each the gateway's own: `POST /api/` with the
    /// vault's token, and nothing a probe tried to smuggle.
    fn saw_only_gateway_requests(&self, n: usize, probe: &str) {
        let reqs = self.requests();
        for (head, body) in &reqs {
            let body = String::from_utf8_lossy(body);
            assert!(
                head.starts_with("POST /api/ HTTP/1.1\r\n"),
                "{probe}: {head}"
            );
            assert!(
                body.contains(&format!("token={VAULT_TOKEN}")),
                "{probe}: {body}"
            );
            for text in [head.as_str(), &body] {
                assert!(!text.contains("SMUGGLED"), "{probe}: smuggled: {text}");
            }
        }
        assert_eq!(reqs.len(), n, "{probe}: {reqs:?}");
    }

    /// Forgets what was received (the gateway's pooled connections stay open).
    fn clear(&self) {
        for conn in self.conns.lock().unwrap().iter() {
            conn.lock().unwrap().clear();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the first complete request in `bytes` (Content-Length or chunked).
fn request_len(bytes: &[u8]) -> Option<usize> {
    let head_end = find(bytes, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding: chunked") {
        return find(&bytes[head_end..], b"0\r\n\r\n").map(|i| head_end + i + 5);
    }
    let cl = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (bytes.len() >= head_end + cl).then_some(head_end + cl)
}

/// The gateway's binary, serving a config written here.
struct Gateway {
    child: std::process::Child,
    config: std::path::PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    jwt: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// `server` and `limits` are extra lines for those sections.
    async fn start(upstream: SocketAddr, server: &str, limits: &str) -> Gateway {
        Self::start_with(upstream, server, limits, "request_timeout = \"3s\"").await
    }

    /// As `start`, with `upstream` lines for the `[upstream]` section.
    async fn start_with(
        upstream: SocketAddr,
        server: &str,
        limits: &str,
        upstream_lines: &str,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let issuer = DevIssuer::new_rsa("https://sso.probe.invalid", "probe-key").unwrap();
        std::fs::write(
            d.join("jwks.json"),
            serde_json::to_string(issuer.jwks()).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("token"), VAULT_TOKEN).unwrap();
        let (port, admin) = (common::free_port(), common::free_port());
        let config = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "5s"
{server}

[limits]
linger_time = "1s"
{limits}

[upstream]
url = "http://{upstream}"
{upstream_lines}

[[auth.issuers]]
issuer = "https://sso.probe.invalid"
jwks_file = "{dir}/jwks.json"
audiences = ["redcap-gateway"]
algorithms = ["RS256"]
groups_claim = "groups"

[audit]
sink = "file"
path = "{dir}/audit.log"

[projects.demo]
token = "file:{dir}/token"
token_owner = "svc_owner"

[[projects.demo.grants]]
groups = ["staff"]
allow = ["read", "record:import"]
export = "full"
"#,
            dir = d.display()
        );
        let path = d.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let child = Self::spawn(&path);
        assert!(common::wait_for_port(port).await, "the gateway listens");
        Gateway {
            child,
            config: path,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            jwt: issuer.token("probe-user", &["staff"]),
            _dir: dir,
        }
    }

    /// The binary under test: this build's, or `PROBE_GATEWAY_BIN` (e.g. the dist build,
    /// to probe what ships).
    fn spawn(config: &std::path::Path) -> std::process::Child {
        let bin = std::env::var("PROBE_GATEWAY_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_redcap-gateway").to_string());
        std::process::Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process to end.
    fn signal(&mut self, name: &str) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// Starts the binary again on the same config (and audit log).
    async fn restart(&mut self) {
        self.child = Self::spawn(&self.config);
        assert!(
            common::wait_for_port(self.addr.port()).await,
            "the gateway listens again"
        );
    }

    fn dir(&self) -> &std::path::Path {
        self.config.parent().unwrap()
    }

    /// A well-formed export request's head and body, with `extra` header lines.
    fn request(&self, extra: &str) -> String {
        let body = "content=record&format=json";
        format!(
            "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            self.jwt,
            body.len()
        )
    }

    /// One well-formed export on a new connection that closes after it.
    async fn ask_once(&self, quiet: Duration) -> Answer {
        exchange(
            self.addr,
            self.request("Connection: close\r\n").as_bytes(),
            quiet,
        )
        .await
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a raw exchange gave: the answer's bytes, and whether the gateway closed the
/// connection (end of file) within the deadline.
struct Answer {
    text: String,
    closed: bool,
}

impl Answer {
    /// The status codes of every response in the answer, in order (the bodies here never
    /// hold a status line).
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Sends `bytes` on a new connection, then reads until the gateway closes or nothing
/// comes for `quiet`.
async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_answer(&mut s, quiet).await
}

async fn read_answer(s: &mut TcpStream, quiet: Duration) -> Answer {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Answer {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// One whole response on a kept-alive connection (its head, then as many body bytes as
/// its Content-Length says), however the bytes are split.
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> String {
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").map(str::to_string))
                .and_then(|n| n.parse::<usize>().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// REDCap's error shape for a JSON caller: `{"error": "..."}`.
fn redcap_error(a: &Answer) -> bool {
    a.text
        .split("\r\n\r\n")
        .nth(1)
        .is_some_and(|body| body.contains("{\"error\":"))
}

/// Request smuggling: a body framed two ways, two lengths, a bad chunk, an obs-folded
/// header; each carries a second request marked SMUGGLED. nginx answers 400 to each
/// (and closes); Envoy too. REDCap must never see the marked request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_smuggled_to_redcap() {
    let (up, rec) = Recorder::start().await;
    let gw = Gateway::start(up, "", "").await;
    let auth = format!("Authorization: Bearer {}\r\n", gw.jwt);
    let smuggled = "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 28\r\n\r\ncontent=record&SMUGGLED=true";
    let head = |framing: &str| {
        format!(
            "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n"
        )
    };
    // How each must end: refused (400, or 501 for an unknown coding), or, with both
    // Transfer-Encoding and Content-Length, read by its Transfer-Encoding, answered, and
    // the connection closed (hyper does this, as RFC 9112 6.1 allows; nginx since 1.21.1
    // and Envoy refuse): either way nothing after it on the connection is read as a request,
    // and REDCap gets the gateway's own request, framed by the gateway.
    const REFUSED: &[u16] = &[400, 501];
    const READ_BY_TE: &[u16] = &[200];
    let probes: Vec<(&str, String, &[u16])> = vec![
        // CL.TE: a front end that trusts Content-Length forwards the rest as a second request.
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "{}1a\r\ncontent=record&format=json\r\n0\r\n\r\n{smuggled}",
                head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")
            ),
            READ_BY_TE,
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "{}1a\r\ncontent=record&format=json\r\n0\r\n\r\n{smuggled}",
                head("Transfer-Encoding: chunked\r\nContent-Length: 200\r\n")
            ),
            READ_BY_TE,
        ),
        (
            "two Content-Lengths",
            format!(
                "{}content=record&format=json{smuggled}",
                head("Content-Length: 26\r\nContent-Length: 150\r\n")
            ),
            REFUSED,
        ),
        (
            "a Content-Length list",
            format!(
                "{}content=record&format=json{smuggled}",
                head("Content-Length: 26, 150\r\n")
            ),
            REFUSED,
        ),
        (
            "a signed Content-Length",
            format!(
                "{}content=record&format=json",
                head("Content-Length: +26\r\n")
            ),
            REFUSED,
        ),
        (
            "a bad chunk size",
            format!(
                "{}zz\r\ncontent=record\r\n0\r\n\r\n{smuggled}",
                head("Transfer-Encoding: chunked\r\n")
            ),
            REFUSED,
        ),
        (
            "a chunk size with a plus sign",
            format!(
                "{}+1a\r\ncontent=record&format=json\r\n0\r\n\r\n{smuggled}",
                head("Transfer-Encoding: chunked\r\n")
            ),
            REFUSED,
        ),
        (
            "Transfer-Encoding other than chunked",
            format!(
                "{}content=record&format=json{smuggled}",
                head("Transfer-Encoding: gzip\r\n")
            ),
            REFUSED,
        ),
        (
            "chunked, then identity",
            format!(
                "{}1a\r\ncontent=record&format=json\r\n0\r\n\r\n{smuggled}",
                head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")
            ),
            REFUSED,
        ),
        (
            "an obs-folded Transfer-Encoding",
            format!(
                "{}1a\r\ncontent=record&format=json\r\n0\r\n\r\n{smuggled}",
                head("Transfer-Encoding:\r\n chunked\r\nContent-Length: 26\r\n")
            ),
            REFUSED,
        ),
        (
            "a space before the colon",
            format!(
                "{}content=record&format=json{smuggled}",
                head("Content-Length : 26\r\nTransfer-Encoding: chunked\r\n")
            ),
            REFUSED,
        ),
    ];
    for (name, bytes, ends) in &probes {
        rec.clear();
        let a = exchange(gw.addr, bytes.as_bytes(), Duration::from_secs(3)).await;
        let statuses = a.statuses();
        assert!(
            statuses.len() == 1 && ends.contains(&statuses[0]) && a.closed,
            "{name}: one answer of {ends:?}, then the connection closes: {:?}",
            a.text
        );
        let forwarded = usize::from(statuses[0] == 200);
        rec.saw_only_gateway_requests(forwarded, name);
    }
}

/// Requests that are odd but unambiguous are served as one request each, and REDCap
/// sees the gateway's own well-formed request: bare LF line ends (nginx accepts them),
/// an absolute-form target (REDCap sees its own host, not the one named), two requests
/// pipelined in one write (both answered, in order), a chunked body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_unambiguous_requests_are_forwarded_as_one_clean_request() {
    let (up, rec) = Recorder::start().await;
    let gw = Gateway::start(up, "", "").await;
    let auth = format!("Authorization: Bearer {}", gw.jwt);
    let body = "content=record&format=json";
    let bare_lf = format!(
        "POST /p/demo/api/ HTTP/1.1\nHost: gw\n{auth}\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}\n\n{body}",
        body.len()
    );
    let absolute = gw.request("").replacen(
        "POST /p/demo/api/",
        "POST http://evil.example/p/demo/api/",
        1,
    );
    let chunked = format!(
        "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\n{auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let pipelined = format!("{}{}", gw.request(""), gw.request(""));
    for (name, bytes, n) in [
        ("bare LF", bare_lf, 1),
        ("absolute-form target", absolute, 1),
        ("chunked body", chunked, 1),
        ("two pipelined", pipelined, 2),
    ] {
        rec.clear();
        let a = exchange(gw.addr, bytes.as_bytes(), Duration::from_millis(700)).await;
        assert_eq!(a.statuses(), vec![200; n], "{name}: {:?}", a.text);
        rec.saw_only_gateway_requests(n, name);
        for (head, _) in rec.requests() {
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("\r\nhost: {up}\r\n")),
                "{name}: REDCap is asked for its own host: {head}"
            );
        }
    }
}

/// Slow and silent clients (slowloris): a head sent a byte at a time, a connection that
/// sends nothing, half of HTTP/2's preface, and a kept-alive connection left idle are all
/// closed once `server.header_read_timeout` passes (nginx: `client_header_timeout` and
/// `keepalive_timeout`, 60 s and 75 s by default; Envoy: `idle_timeout`, 1 h), while a
/// normal request on another connection is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_and_others_served_meanwhile() {
    let (up, _rec) = Recorder::start().await;
    // 2 s: long enough that a normal request served within the bounds below is told apart
    // from one that waited for the slow ones to be cut off, on a loaded CI machine too.
    let gw = Gateway::start(up, "header_read_timeout = \"2s\"", "").await;
    let start = Instant::now();
    let silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut preface = TcpStream::connect(gw.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(gw.request("").as_bytes()).await.unwrap();
    let first = read_answer(&mut idle, Duration::from_millis(300)).await;
    assert_eq!(first.statuses(), vec![200], "{}", first.text);
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let request = gw.request("");
    let drip = tokio::spawn(async move {
        // A byte every 200 ms: the whole head would take minutes.
        for b in request.as_bytes() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        read_answer(&mut slow, Duration::from_millis(100)).await
    });

    // Meanwhile a normal request is served at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let a = gw.ask_once(Duration::from_secs(2)).await;
    assert_eq!(a.statuses(), vec![200], "{}", a.text);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    for (name, mut s) in [
        ("silent", silent),
        ("half a preface", preface),
        ("idle keep-alive", idle),
    ] {
        let a = read_answer(&mut s, Duration::from_secs(6)).await;
        assert!(a.closed, "{name}: closed");
        let after = start.elapsed();
        assert!(
            after < Duration::from_secs(6),
            "{name}: closed after {after:?}"
        );
        assert!(
            a.text.is_empty() || a.statuses() == vec![408],
            "{name}: nothing, or hyper's 408: {:?}",
            a.text
        );
    }
    let slow = tokio::time::timeout(Duration::from_secs(8), drip)
        .await
        .expect("the slow head is cut off")
        .unwrap();
    assert!(slow.closed);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

/// Path tricks: only `/p/{project}/api/` (or without its last slash) names a project, as
/// written: no decoding, no dot segments, no case folding, no `;params`. Everything else
/// is a REDCap-shaped 404, and REDCap sees nothing (nginx would normalise `//` and dot
/// segments before matching a location; the gateway matches fewer paths, never more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_exact_api_path_reaches_redcap() {
    let (up, rec) = Recorder::start().await;
    let gw = Gateway::start(up, "", "").await;
    for (path, status) in [
        ("/p/demo/api/", 200),
        ("/p/demo/api", 200),
        ("//p/demo/api/", 404),
        ("/p//demo/api/", 404),
        ("/p/demo//api/", 404),
        ("/p/demo/./api/", 404),
        ("/p/other/../demo/api/", 404),
        ("/p/demo/api/..", 404),
        ("/P/DEMO/API/", 404),
        ("/p/DEMO/api/", 404),
        ("/p/demo%2fapi/", 404),
        ("/p/de%6do/api/", 404),
        ("/p/demo/api/;x=1", 404),
        ("/p/demo;x=1/api/", 404),
        ("/p/demo/api%2f", 404),
        ("/p/demo/api/%2e%2e/", 404),
        ("/p/demo/api/x", 404),
    ] {
        rec.clear();
        let req = gw
            .request("Connection: close\r\n")
            .replacen("/p/demo/api/", path, 1);
        let a = exchange(gw.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(a.statuses(), vec![status], "{path}: {}", a.text);
        if status == 404 {
            assert!(redcap_error(&a), "{path}: {}", a.text);
        }
        rec.saw_only_gateway_requests(usize::from(status == 200), path);
    }
}

/// Header tricks. Two Authorization headers are refused (never one picked, as a proxy
/// in front might pick the other); the scheme is case-insensitive (RFC 9110 11.1); a
/// non-UTF-8 credential is a 401 that says so; a head over `limits.max_header_bytes` is
/// a REDCap-shaped 431, and one over hyper's buffer hyper's bare 431; more than 100
/// header lines, hyper's 431; `Expect: 100-continue` is answered (no wait for a body
/// that is not coming, and a `100 Continue` before a body that is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tricks_get_clear_answers() {
    let (up, rec) = Recorder::start().await;
    let gw = Gateway::start(up, "", "max_header_bytes = \"16KiB\"").await;
    let close = "Connection: close\r\n";
    let bearer = format!("Authorization: Bearer {}\r\n", gw.jwt);
    let without_auth = |extra: &str| {
        gw.request(&format!("{close}{extra}"))
            .replacen(&bearer, "", 1)
    };
    let many: String = (0..120).map(|i| format!("X-Many-{i}: x\r\n")).collect();
    let probes: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "two Authorization headers",
            gw.request(&format!("{close}Authorization: Bearer {}\r\n", gw.jwt))
                .into_bytes(),
            401,
            "more than one Authorization header",
        ),
        (
            "a lowercase scheme",
            without_auth(&format!("Authorization: bearer {}\r\n", gw.jwt)).into_bytes(),
            200,
            "record_id",
        ),
        (
            "a non-UTF-8 credential",
            without_auth("Authorization: Bearer NOT-UTF-8\r\n")
                .replace("NOT-UTF-8", "\u{1}")
                .into_bytes()
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
            401,
            "{\"error\":",
        ),
        (
            "a head over max_header_bytes",
            gw.request(&format!("{close}X-Big: {}\r\n", "a".repeat(20 << 10)))
                .into_bytes(),
            431,
            "{\"error\":",
        ),
        (
            "a head over hyper's buffer",
            gw.request(&format!("{close}X-Big: {}\r\n", "a".repeat(200 << 10)))
                .into_bytes(),
            431,
            "",
        ),
        (
            "many header lines",
            gw.request(&format!("{close}{many}")).into_bytes(),
            431,
            "",
        ),
        (
            "Expect: 100-continue and no body",
            gw.request(close)
                .replace(
                    "Content-Length: 26\r\n",
                    "Content-Length: 0\r\nExpect: 100-continue\r\n",
                )
                .replace("content=record&format=json", "")
                .into_bytes(),
            400,
            "<error>the parameter &quot;content&quot; is missing</error>",
        ),
    ];
    // The last field: what the body says ("" for hyper's own bare answers).
    for (name, bytes, status, says) in probes {
        rec.clear();
        let a = exchange(gw.addr, &bytes, Duration::from_secs(2)).await;
        assert_eq!(a.statuses(), vec![status], "{name}: {}", a.text);
        assert!(a.closed, "{name}");
        assert!(a.text.contains(says), "{name}: {}", a.text);
        rec.saw_only_gateway_requests(usize::from(status == 200), name);
    }

    // Expect: 100-continue with a body: `100 Continue`, then the body, then the answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = gw.request(&format!("{close}Expect: 100-continue\r\n"));
    let (head, body) = req.split_at(req.find("\r\n\r\n").unwrap() + 4);
    s.write_all(head.as_bytes()).await.unwrap();
    let interim = read_answer(&mut s, Duration::from_millis(500)).await;
    assert!(
        interim.text.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{}",
        interim.text
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let a = read_answer(&mut s, Duration::from_secs(2)).await;
    assert_eq!(a.statuses(), vec![200], "{}", a.text);
}

/// Thousands of idle keep-alive connections (each after one request) cost a bounded
/// amount of memory each, `server.max_connections` caps how many (the next is answered
/// 503 in REDCap's shape and closed), and neither new requests once one closes nor the
/// admin port wait on them. (nginx: `worker_connections`, about 1 KB a connection once
/// idle; here hyper keeps its 8 KiB read and write buffers: ~30 KB a connection in the
/// dist build, ~43 KB in a debug one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_are_capped_and_new_requests_are_served() {
    const IDLE: usize = 2000;
    let (up, _rec) = Recorder::start().await;
    let gw = Gateway::start(
        up,
        &format!("header_read_timeout = \"120s\"\nmax_connections = {IDLE}"),
        "max_concurrent_requests = 64",
    )
    .await;
    let warm = gw.ask_once(Duration::from_secs(2)).await;
    assert_eq!(warm.statuses(), vec![200]);
    let before = gw.rss_kb();
    let mut idle = Vec::with_capacity(IDLE);
    let request = gw.request("");
    for _ in 0..IDLE {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = gw.rss_kb().saturating_sub(before);
    let per = grown as f64 / IDLE as f64;
    eprintln!("{IDLE} idle keep-alive connections: RSS +{grown} kB ({per:.1} kB each)");
    assert!(per < 64.0, "{per:.1} kB per idle connection");

    // One over the cap: refused at once, in REDCap's shape.
    let over = gw.ask_once(Duration::from_secs(2)).await;
    assert_eq!(over.statuses(), vec![503], "{}", over.text);
    assert!(over.closed);
    assert!(
        over.text
            .contains("{\"error\":\"too many connections are open (2000)"),
        "{}",
        over.text
    );
    assert!(
        over.text
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 5\r\n"),
        "{}",
        over.text
    );
    let ready = exchange(
        gw.admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(ready.statuses(), vec![200], "{}", ready.text);

    // Once some close, new requests are served at once; the idle ones still work.
    idle.truncate(IDLE - 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let a = gw.ask_once(Duration::from_secs(2)).await;
    assert_eq!(a.statuses(), vec![200], "{}", a.text);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for s in idle.iter_mut().step_by(400) {
        s.write_all(request.as_bytes()).await.unwrap();
        let a = read_answer(s, Duration::from_millis(500)).await;
        assert_eq!(a.statuses(), vec![200], "{}", a.text);
    }
    let metrics = exchange(
        gw.admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        metrics
            .text
            .contains("redcap_gateway_connections_refused_total 1"),
        "{}",
        metrics.text
    );
}

/// One client of the mixed load: exports and imports, each with its own request id, until
/// the gateway stops answering. Returns the ids of the requests answered whole, and of
/// the imports among them.
async fn mixed_load(gw_addr: SocketAddr, jwt: String, client: usize) -> (Vec<String>, Vec<String>) {
    let (mut answered, mut imports) = (Vec::new(), Vec::new());
    for i in 0.. {
        let id = format!("probe-{client}-{i}");
        let import = i % 3 == 0;
        let body = if import {
            format!(
                "content=record&action=import&format=json&data=%5B%7B%22record_id%22%3A%22{client}-{i}%22%7D%5D"
            )
        } else {
            "content=record&format=json".to_string()
        };
        let req = format!(
            "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {jwt}\r\nX-Request-Id: {id}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let Ok(mut s) = TcpStream::connect(gw_addr).await else {
            break;
        };
        if s.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        let a = read_answer(&mut s, Duration::from_secs(5)).await;
        // Whole: the head and as many body bytes as it announced.
        let whole = a.text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse::<usize>().ok())
                == Some(body.len())
        });
        if !whole {
            break;
        }
        answered.push(id.clone());
        if import {
            imports.push(id);
        }
    }
    (answered, imports)
}

/// The audit records of a log (all files), as JSON.
fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    redcap_gateway::audit::chain_files(&dir.join("audit.log"))
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// The request ids of a log's records of one phase (`final`, `intent`).
fn request_ids(dir: &std::path::Path, phase: &str) -> std::collections::HashSet<String> {
    audit_records(dir)
        .iter()
        .filter(|r| r["phase"] == phase)
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect()
}

fn verify_audit(dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
        .arg("verify-audit")
        .arg(dir.join("audit.log"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// SIGTERM and SIGKILL under a mixed load of exports and imports. After either, every
/// request answered whole has its final record (written before the answer's last bytes
/// go out), and every import REDCap saw had its intent record written first. After
/// SIGKILL and a restart the chain verifies (a line the kill cut short is reported and
/// the chain continues).
/// (nginx and Envoy keep no audit chain; their access logs are buffered and lose the
/// last lines on SIGKILL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stops_and_crashes_under_load_keep_the_audit_whole() {
    let (up, rec) = Recorder::start().await;
    let mut gw = Gateway::start(up, "", "").await;
    let load = |gw: &Gateway| {
        (0..6)
            .map(|c| tokio::spawn(mixed_load(gw.addr, gw.jwt.clone(), c)))
            .collect::<Vec<_>>()
    };

    // SIGTERM: drained, nothing answered is missing from the log.
    let clients = load(&gw);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(gw.signal("TERM").success(), "a clean exit");
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap().0);
    }
    assert!(answered.len() > 50, "{} answered", answered.len());
    let finals = request_ids(gw.dir(), "final");
    let missing: Vec<&String> = answered.iter().filter(|id| !finals.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "answered without a final record: {missing:?}"
    );
    let (ok, text) = verify_audit(gw.dir());
    assert!(ok, "{text}");

    // SIGKILL, several times (a kill cuts a line short now and then), and a restart.
    for _ in 0..3 {
        gw.restart().await;
        rec.clear();
        let clients = load(&gw);
        tokio::time::sleep(Duration::from_millis(700)).await;
        gw.signal("KILL");
        let mut answered = Vec::new();
        for c in clients {
            answered.extend(c.await.unwrap().0);
        }
        let finals = request_ids(gw.dir(), "final");
        // The record of an answer is written before its last bytes are released.
        let missing: Vec<&String> = answered.iter().filter(|id| !finals.contains(*id)).collect();
        eprintln!(
            "SIGKILL: {} answered, {} without a final record",
            answered.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "answered without a final record: {missing:?}"
        );
        // Every import REDCap received had its intent on disk first (the intent is
        // written before the call is forwarded, so a kill cannot reorder them).
        let intents = request_ids(gw.dir(), "intent");
        for (head, body) in rec.requests() {
            if !String::from_utf8_lossy(&body).contains("action=import") {
                continue;
            }
            let id = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("x-request-id: ")
                        .map(str::to_string)
                })
                .expect("the request id goes to REDCap");
            assert!(
                intents.contains(&id),
                "REDCap saw import {id} with no intent record"
            );
        }
        gw.restart().await;
        let (ok, text) = verify_audit(gw.dir());
        assert!(ok, "after a kill and a restart: {text}");
        gw.signal("TERM");
    }
    let (ok, text) = verify_audit(gw.dir());
    assert!(ok, "{text}");
    eprintln!("{text}");
}

/// How a faulty REDCap answers (after reading the request).
#[derive(Clone, Copy, Debug)]
enum Fault {
    ClosesMidHead,
    GarbageStatusLine,
    SlowFirstByte,
    PlainTextBan,
    CutMidBodyWithLength,
    CutMidBodyChunked,
    SlowDrip,
    StallsMidBody,
}

async fn w(s: &mut TcpStream, b: &[u8]) -> bool {
    s.write_all(b).await.is_ok()
}

async fn faulty_upstream(fault: Fault) -> SocketAddr {
    common::raw_upstream(move |mut s| async move {
        let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));
        match fault {
            Fault::ClosesMidHead => {
                w(&mut s, b"HTTP/1.1 200 OK\r\nContent-Ty").await;
            }
            Fault::GarbageStatusLine => {
                w(&mut s, b"HTTP/1.1 two hundred\r\n\r\n").await;
            }
            Fault::SlowFirstByte => {
                sleep(3000).await;
                w(&mut s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").await;
            }
            Fault::PlainTextBan => {
                w(&mut s, b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/html\r\ncontent-length: 38\r\n\r\nYour IP address has been banned (429).").await;
            }
            Fault::CutMidBodyWithLength => {
                w(&mut s, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n[{\"record_id\":\"1\"},").await;
            }
            Fault::CutMidBodyChunked => {
                w(&mut s, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n13\r\n[{\"record_id\":\"1\"},\r\n").await;
            }
            Fault::SlowDrip => {
                w(&mut s, b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: 20\r\n\r\n").await;
                for _ in 0..20 {
                    sleep(100).await;
                    if !w(&mut s, b"x").await {
                        return;
                    }
                }
            }
            Fault::StallsMidBody => {
                w(&mut s, b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: 20\r\n\r\nrecord_id\n").await;
                sleep(10_000).await;
            }
        }
    })
    .await
}

/// A faulty or unreachable REDCap: refused, cut mid-head, a garbage status line, a first
/// byte later than `request_timeout` are REDCap-shaped 502/502/502/504; REDCap's plain-text
/// 429 (its per-IP ban) is passed on as a REDCap-shaped 429 with Retry-After; an answer
/// cut mid-body, or stalled longer than `body_idle_timeout`, aborts the caller's transfer
/// (fewer bytes than announced, or no last chunk: never a clean, silently short 200); a
/// slow drip streams through as it comes. (nginx: 502 and 504 as HTML pages, a cut body
/// aborted the same way, `proxy_read_timeout` 60 s for a stall.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_get_clear_answers_and_never_a_clean_short_200() {
    let upstream_lines = "request_timeout = \"1s\"\nbody_idle_timeout = \"1s\"";
    let closed_port = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let gw = Gateway::start_with(closed_port, "", "", upstream_lines).await;
    let a = gw.ask_once(Duration::from_secs(3)).await;
    assert_eq!(a.statuses(), vec![502], "refused: {}", a.text);
    assert!(redcap_error(&a), "{}", a.text);
    drop(gw);

    for (fault, status) in [
        (Fault::ClosesMidHead, 502),
        (Fault::GarbageStatusLine, 502),
        (Fault::SlowFirstByte, 504),
        (Fault::PlainTextBan, 429),
    ] {
        let gw = Gateway::start_with(faulty_upstream(fault).await, "", "", upstream_lines).await;
        let a = gw.ask_once(Duration::from_secs(3)).await;
        assert_eq!(a.statuses(), vec![status], "{fault:?}: {}", a.text);
        assert!(redcap_error(&a), "{fault:?}: {}", a.text);
        if status == 429 {
            assert!(
                a.text
                    .to_ascii_lowercase()
                    .contains("\r\nretry-after: 60\r\n"),
                "{}",
                a.text
            );
            assert!(
                !a.text.contains("banned"),
                "REDCap's page is not passed on: {}",
                a.text
            );
        }
    }

    for fault in [
        Fault::CutMidBodyWithLength,
        Fault::CutMidBodyChunked,
        Fault::StallsMidBody,
    ] {
        let gw = Gateway::start_with(faulty_upstream(fault).await, "", "", upstream_lines).await;
        let t = Instant::now();
        let a = exchange(gw.addr, gw.request("").as_bytes(), Duration::from_secs(4)).await;
        assert_eq!(a.statuses(), vec![200], "{fault:?}: {}", a.text);
        assert!(a.closed, "{fault:?}: the transfer ends");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{fault:?}: {:?}",
            t.elapsed()
        );
        let (head, body) = a.text.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        match head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            Some(n) => assert!(
                body.len() < n.parse::<usize>().unwrap(),
                "{fault:?}: short of its length"
            ),
            None => {
                assert!(
                    head.contains("transfer-encoding: chunked"),
                    "{fault:?}: {head}"
                );
                assert!(
                    !body.ends_with("0\r\n\r\n"),
                    "{fault:?}: no last chunk: {body:?}"
                );
            }
        }
    }

    // A slow drip streams: the first bytes reach the caller long before the last.
    let gw = Gateway::start_with(
        faulty_upstream(Fault::SlowDrip).await,
        "",
        "",
        upstream_lines,
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(gw.request("Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the head and first bytes come")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    let rest = read_answer(&mut s, Duration::from_secs(3)).await;
    let whole = format!("{}{}", String::from_utf8_lossy(&buf[..n]), rest.text);
    assert_eq!(
        whole.split_once("\r\n\r\n").unwrap().1,
        "x".repeat(20),
        "{whole}"
    );
    assert!(
        t.elapsed() > Duration::from_millis(1500),
        "it took the drip's time"
    );
}

/// HTTP/2 cleartext with prior knowledge is served by the same stack (authenticated,
/// forwarded as the gateway's own HTTP/1.1 request); an HTTP/1.1 `Upgrade: h2c` is not
/// taken up (answered over HTTP/1.1, as nginx does) and REDCap never sees the upgrade
/// headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_served_by_the_same_stack_and_upgrades_are_not_taken_up() {
    use http_body_util::{BodyExt, Full};
    let (up, rec) = Recorder::start().await;
    let gw = Gateway::start(up, "", "").await;

    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    for (auth, status) in [
        (format!("Bearer {}", gw.jwt), 200),
        ("Bearer x.y.z".to_string(), 401),
    ] {
        let req = http::Request::post(format!("http://{}/p/demo/api/", gw.addr))
            .header("authorization", auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(bytes::Bytes::from_static(
                b"content=record&format=json",
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    rec.saw_only_gateway_requests(1, "h2c prior knowledge");

    rec.clear();
    let upgrade = gw.request(
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    let a = exchange(gw.addr, upgrade.as_bytes(), Duration::from_millis(700)).await;
    assert_eq!(a.statuses(), vec![200], "{}", a.text);
    rec.saw_only_gateway_requests(1, "Upgrade: h2c");
    let (head, _) = &rec.requests()[0];
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "{head}"
    );
}

/// 20,000 requests with random JWTs: well-formed but with unknown key ids, forged
/// signatures on the real key id, or validly signed for random users. Memory stays
/// bounded, the IdP's JWKS is fetched a bounded number of times (one refresh per
/// cooldown for unknown key ids, single-flight), and a valid user is served throughout.
/// (nginx and Envoy's jwt_authn fetch a JWKS on a timer; Envoy refetches on an unknown
/// kid only with `async_fetch`, also rate-limited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_random_jwts_cost_bounded_memory_and_jwks_fetches() {
    use base64::Engine;
    const N: usize = 20_000;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (up, _rec) = Recorder::start().await;
    let issuer = DevIssuer::new_rsa("https://sso.probe.invalid", "probe-key").unwrap();
    // The IdP's JWKS endpoint, counting fetches.
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jwks = serde_json::to_string(issuer.jwks()).unwrap();
    let idp = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fetches = fetches.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (fetches, jwks) = (fetches.clone(), jwks.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{jwks}",
                            jwks.len()
                        );
                        if s.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    };
    let mut gw = Gateway::start(up, "", "").await;
    // The same gateway, its issuer's keys fetched from the IdP instead of a file.
    let config = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace(
            &format!("jwks_file = \"{}/jwks.json\"", gw.dir().display()),
            &format!("jwks_url = \"http://{idp}/jwks.json\"\njwks_refresh_cooldown = \"2s\""),
        )
        .replace("[limits]", "[limits]\nmax_concurrent_requests = 4096")
        .replace(
            "[projects.demo]",
            "[rate_limit]\nper_user = { limit = 1000000, per = \"1s\" }\nper_project = { limit = 1000000, per = \"1s\" }\nupstream = { limit = 1000000, per = \"1s\" }\n\n[projects.demo]",
        );
    std::fs::write(&gw.config, config).unwrap();
    gw.signal("TERM");
    gw.restart().await;
    let valid = issuer.token("probe-user", &["staff"]);
    // The new IdP's key (the harness's own issuer signed `gw.jwt` with another).
    let first = gw.request("Connection: close\r\n").replace(&gw.jwt, &valid);
    let ok = exchange(gw.addr, first.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(ok.statuses(), vec![200], "{}", ok.text);
    let fetched_at_start = fetches.load(std::sync::atomic::Ordering::Relaxed);
    let before = gw.rss_kb();
    let started = Instant::now();

    // The valid token's header and claims (the real key id), with a forged signature.
    let (signed_part, _) = valid.rsplit_once('.').unwrap();
    let tokens: Vec<String> = (0..N)
        .map(|i| match i % 3 {
            0 => {
                let header = b64.encode(format!(r#"{{"alg":"RS256","typ":"JWT","kid":"k{i}"}}"#));
                let claims = b64.encode(format!(
                    r#"{{"iss":"https://sso.probe.invalid","aud":"redcap-gateway","sub":"u{i}","exp":4000000000}}"#
                ));
                format!("{header}.{claims}.{}", b64.encode([i as u8; 256]))
            }
            1 => format!("{signed_part}.{}", b64.encode((i as u32).to_be_bytes().repeat(64))),
            _ => issuer.token(&format!("random-{i}"), &["staff"]),
        })
        .collect();
    let tokens = Arc::new(tokens);
    let (addr, body) = (gw.addr, "content=record&format=json");
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let tokens = tokens.clone();
            let valid = valid.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                let mut buf = vec![0u8; 65536];
                for (i, t) in tokens.iter().enumerate().skip(w).step_by(8) {
                    // Every 500th request is the valid user's, which must keep working.
                    let t = if i % 500 == w { &valid } else { t };
                    let req = format!(
                        "POST /p/demo/api/ HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(req.as_bytes()).await.unwrap();
                    let text = read_response(&mut s, &mut buf).await;
                    let status: u16 = text[9..12].parse().unwrap();
                    if std::ptr::eq(t, &valid) {
                        assert_eq!(status, 200, "the valid user: {text}");
                    }
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        for (k, v) in w.await.unwrap() {
            *statuses.entry(k).or_default() += v;
        }
    }
    let grown = gw.rss_kb().saturating_sub(before);
    let fetched = fetches.load(std::sync::atomic::Ordering::Relaxed) - fetched_at_start;
    eprintln!("{N} random JWTs: {statuses:?}, RSS +{grown} kB, {fetched} JWKS fetches");
    assert_eq!(statuses.values().sum::<usize>(), N);
    assert!(
        statuses.get(&401).copied().unwrap_or(0) >= N / 2,
        "{statuses:?}"
    );
    // Unknown key ids do make the gateway look for new keys, once per cooldown (2 s).
    let cooldowns = started.elapsed().as_secs() as usize / 2;
    assert!(
        (1..=cooldowns + 2).contains(&fetched),
        "{fetched} JWKS fetches in {cooldowns} cooldowns"
    );
    assert!(grown < 64 << 10, "RSS +{grown} kB");
}
