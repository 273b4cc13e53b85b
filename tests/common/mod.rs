//! Shared helpers: a gateway in front of the fake REDCap on 127.0.0.1:0, and a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redcap_gateway::dev::DevEnv;
use redcap_gateway::reload::Live;
use redcap_gateway::server;
use tokio::sync::oneshot;

pub mod portal;

pub struct TestGateway {
    pub env: DevEnv,
    /// Follows reloads of the dev config file (`env.config_path()`).
    pub live: Arc<Live>,
    pub addr: SocketAddr,
    pub jwt: String,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_with(|t| t).await
    }

    /// Starts with the dev config, edited by `edit` (e.g. to add limits or grants).
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> TestGateway {
        Self::start_at(|_, t| edit(t)).await
    }

    /// Starts with the dev config, edited by `edit`, which is told the address the
    /// gateway will serve on (a portal's public URL names it).
    pub async fn start_at(edit: impl FnOnce(SocketAddr, String) -> String) -> TestGateway {
        let listeners = Self::listeners();
        let addr = listeners[0].local_addr().unwrap();
        let env = DevEnv::start("127.0.0.1:0", |t| edit(addr, t))
            .await
            .expect("dev env starts");
        Self::serve(env, listeners)
    }

    /// Dev mode's gateway: the portal on, with the local sign-in service.
    pub async fn start_portal() -> TestGateway {
        let listeners = Self::listeners();
        let addr = listeners[0].local_addr().unwrap();
        let env = DevEnv::start_with_portal(&addr.to_string())
            .await
            .expect("dev env starts");
        Self::serve(env, listeners)
    }

    /// Starts on sockets bound before (their address is in a config the caller wrote,
    /// or in another service's config that had to start first).
    pub async fn start_on(
        listeners: Vec<std::net::TcpListener>,
        edit: impl FnOnce(String) -> String,
    ) -> TestGateway {
        let env = DevEnv::start("127.0.0.1:0", edit)
            .await
            .expect("dev env starts");
        Self::serve(env, listeners)
    }

    /// As `serve` binds: a socket per serving thread.
    pub fn listeners() -> Vec<std::net::TcpListener> {
        let workers = server::workers(&Default::default());
        server::bind_serving("127.0.0.1:0".parse().unwrap(), workers).unwrap()
    }

    fn serve(env: DevEnv, listeners: Vec<std::net::TcpListener>) -> TestGateway {
        let addr = listeners[0].local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let live = Live::new(env.gateway.clone(), Some(env.config_path()));
        let done = tokio::spawn(server::run_live(listeners, live.clone(), async move {
            let _ = rx.await;
        }));
        let jwt = env
            .issuer
            .token("dev-user", &[redcap_gateway::dev::DEV_GROUP]);
        TestGateway {
            env,
            live,
            addr,
            jwt,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves the admin endpoints (/healthz, /readyz, /metrics) on 127.0.0.1:0.
    pub async fn serve_admin(&self) -> SocketAddr {
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = admin.local_addr().unwrap();
        tokio::spawn(redcap_gateway::admin::run(
            admin,
            self.live.clone(),
            std::future::pending(),
        ));
        addr
    }

    pub fn api(&self) -> String {
        self.url("/p/demo/api/")
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most 5 s) for the server to stop after `shutdown`.
    pub async fn stopped(&mut self) {
        let done = self.done.take().expect("not awaited before");
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }

    pub fn token(&self) -> &str {
        self.env.project_token.expose()
    }

    /// POST a urlencoded body with the dev JWT.
    pub async fn post(&self, body: &str) -> Reply {
        send(
            Request::post(self.api())
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", format!("Bearer {}", self.jwt))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.text()))
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp: Response<hyper::body::Incoming> =
        tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("no hang")
            .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub fn form(req: http::request::Builder, body: &str) -> Request<Full<Bytes>> {
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// True when an external tool is required (CI), so a missing one fails instead of skipping.
pub fn required() -> bool {
    std::env::var("CI").is_ok() || std::env::var("REDCAP_GATEWAY_REQUIRE_TOOLS").is_ok()
}

/// Skips (or, in CI, fails) when a command is missing.
pub fn have(cmd: &str, probe: &[&str]) -> bool {
    let ok = std::process::Command::new(cmd)
        .args(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(!required(), "{cmd} is required in CI but is not installed");
        eprintln!("SKIPPED: {cmd} is not installed (set CI=1 to make this a failure)");
    }
    ok
}

/// A config edit that replaces the value of the first `key = "..."` (e.g. the upstream
/// `url`, the audit `path`) with `value`, which may carry more TOML lines after a `"`.
pub fn set_first(key: &str, value: String) -> impl FnOnce(String) -> String {
    let needle = format!("{key} = \"");
    move |t: String| {
        let start = t.find(&needle).expect("key in config") + needle.len();
        let end = start + t[start..].find('"').expect("closing quote");
        format!("{}{value}{}", &t[..start], &t[end..])
    }
}

/// A config edit that adds TOML `section` (starting with a newline) before the demo
/// project.
pub fn before_projects(section: String) -> impl FnOnce(String) -> String {
    move |t: String| {
        t.replacen(
            "\n[projects.demo]",
            &format!("{section}\n[projects.demo]"),
            1,
        )
    }
}

/// A `[personal_tokens]` section: its file in `dir`, the HMAC `key`, then `extra` lines.
pub fn personal_tokens(dir: &std::path::Path, key: &str, extra: &str) -> String {
    format!(
        "\n[personal_tokens]\nfile = \"{}\"\nkey = \"{key}\"\n{extra}",
        dir.join("tokens.json").display()
    )
}

/// A config edit that adds a `[limits]` table with `lines` (before `[upstream]`).
pub fn with_limits(lines: &str) -> impl FnOnce(String) -> String + '_ {
    move |t: String| t.replacen("[upstream]", &format!("[limits]\n{lines}\n\n[upstream]"), 1)
}

/// A port free on 127.0.0.1 just now, for a server a test starts (another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:port (a server started by a test).
pub async fn wait_for_port(port: u16) -> bool {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A bare upstream on 127.0.0.1:0 for tests of the gateway's transport: for each
/// connection it reads the request, then `answer` writes whatever reply the test needs.
pub async fn raw_upstream<F, Fut>(answer: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                answer(s).await;
            });
        }
    });
    addr
}

/// An upstream that answers every call `200 ok` after `delay` (in-flight and drain tests).
pub async fn slow_ok_upstream(delay: std::time::Duration) -> std::net::SocketAddr {
    raw_upstream(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        tokio::time::sleep(delay).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await
}

/// POST a urlencoded body with a caller's JWT.
pub async fn post_as(gw: &TestGateway, jwt: &str, body: &str) -> Reply {
    send(
        Request::post(gw.api())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("Bearer {jwt}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

/// application/x-www-form-urlencoded, for a parameter value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
