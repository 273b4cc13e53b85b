//! The connections to REDCap (`upstream.rs`): reuse, idle timeout, the idle cap, requests
//! never sent twice, a half-read body's connection not reused, and HTTPS with the
//! configured CA file through the whole gateway (TLS terminated in front of the fake
//! REDCap, with a certificate made for the test).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use redcap_gateway::body::Body;
use redcap_gateway::http_client::{ClientHandle, ClientOptions};
use redcap_gateway::upstream::{Target, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn options(idle: Duration, max_idle: usize) -> ClientOptions<'static> {
    ClientOptions {
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        pool_idle_timeout: idle,
        pool_max_idle_per_host: max_idle,
    }
}

fn pool(addr: std::net::SocketAddr, opts: &ClientOptions<'_>) -> Upstream {
    let tls = ClientHandle::new(opts).unwrap();
    let url: http::Uri = format!("http://{addr}/api/").parse().unwrap();
    Target::new(&url, tls.tls(), opts).unwrap().pool()
}

fn call(body: &'static str) -> http::Request<Body> {
    http::Request::post("/api/")
        .header("host", "redcap.test")
        .body(Body::new(Full::new(Bytes::from_static(body.as_bytes()))))
        .unwrap()
}

/// Counts connections and requests; answers each request with `hello` and keeps the
/// connection open until the client closes it. `seen` gets every request's bytes.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let reqs = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), reqs.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            r.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"hello"),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, conns, reqs)
}

async fn read(resp: http::Response<redcap_gateway::upstream::PooledBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn connections_are_reused_and_closed_after_the_idle_timeout() {
    let (addr, conns, reqs) = counting_upstream().await;
    let up = pool(addr, &options(Duration::from_millis(300), 8));
    for _ in 0..5 {
        let resp = up.send(call("content=version")).await.unwrap();
        assert_eq!(read(resp).await, "hello");
    }
    assert_eq!(reqs.load(Ordering::SeqCst), 5);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one connection for five calls"
    );
    assert_eq!(up.idle(), 1);
    // Past the idle timeout the reaper closes it; the next call connects again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(up.idle(), 0, "closed after the idle timeout");
    let resp = up.send(call("content=version")).await.unwrap();
    assert_eq!(read(resp).await, "hello");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn at_most_max_idle_connections_are_kept() {
    let (addr, conns, _) = counting_upstream().await;
    let up = pool(addr, &options(Duration::from_secs(60), 2));
    // Five at once: five connections; two stay.
    let heads: Vec<_> = unread_heads(&up, 5).await;
    assert_eq!(conns.load(Ordering::SeqCst), 5);
    for h in heads {
        assert_eq!(read(h).await, "hello");
    }
    assert_eq!(up.idle(), 2);
}

async fn unread_heads(
    up: &Upstream,
    n: usize,
) -> Vec<http::Response<redcap_gateway::upstream::PooledBody>> {
    let mut heads = Vec::new();
    // Every head before any body is read: each call needs its own connection.
    for _ in 0..n {
        heads.push(up.send(call("content=version")).await.unwrap());
    }
    heads
}

#[tokio::test]
async fn a_connection_whose_body_was_not_read_to_the_end_is_not_reused() {
    let (addr, conns, _) = counting_upstream().await;
    let up = pool(addr, &options(Duration::from_secs(60), 8));
    let resp = up.send(call("content=version")).await.unwrap();
    drop(resp);
    assert_eq!(up.idle(), 0);
    let resp = up.send(call("content=version")).await.unwrap();
    assert_eq!(read(resp).await, "hello");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(up.idle(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    // Like REDCap's Apache after its keep-alive timeout: one answer, then close.
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let addr = raw_upstream(move |mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let up = pool(addr, &options(Duration::from_secs(60), 8));
    for _ in 0..3 {
        let resp = up.send(call("content=version")).await.unwrap();
        assert_eq!(read(resp).await, "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_that_was_sent_is_never_sent_again() {
    // Reads the request, then closes without an answer: the call fails, and REDCap saw
    // it once (an import must not be repeated behind the caller's back).
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await {
                    if n > 0 {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let up = pool(addr, &options(Duration::from_secs(60), 8));
    let err = up.send(call("content=user&data=x")).await.unwrap_err();
    assert!(
        matches!(err, redcap_gateway::upstream::SendError::Http(_)),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connecting_fails_with_a_clear_error() {
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = pool(unused, &options(Duration::from_secs(60), 8));
    let err = up.send(call("content=version")).await.unwrap_err();
    assert!(
        matches!(err, redcap_gateway::upstream::SendError::Connect(_)),
        "{err}"
    );
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM into `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, rustls::ServerConfig) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("redcap-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    (path, server)
}

/// TLS in front of the backend that `backend` names once it is set: decrypts and copies
/// both ways. Counts handshakes and records the ALPN protocol the client asked for.
async fn tls_front(
    backend: Arc<std::sync::OnceLock<String>>,
    server: rustls::ServerConfig,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let alpn = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, a) = (handshakes.clone(), alpn.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let (h, a, backend) = (h.clone(), a.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let proto = tls.get_ref().1.alpn_protocol();
                a.lock().unwrap().push(
                    proto
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default(),
                );
                let Some(to) = backend.get() else { return };
                let Ok(mut back) = tokio::net::TcpStream::connect(to.as_str()).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
            });
        }
    });
    (addr, handshakes, alpn)
}

/// A config edit: the upstream becomes `front` (https://localhost), and the fake REDCap
/// the config named becomes the TLS front's backend.
fn behind_tls(
    front: std::net::SocketAddr,
    backend: Arc<std::sync::OnceLock<String>>,
    ca: Option<&std::path::Path>,
) -> impl FnOnce(String) -> String + '_ {
    move |t: String| {
        let start = t.find("url = \"http://").unwrap() + "url = \"http://".len();
        let end = start + t[start..].find('"').unwrap();
        let _ = backend.set(t[start..end].trim_end_matches('/').to_string());
        let t = set_first("url", format!("https://localhost:{}", front.port()))(t);
        match ca {
            Some(ca) => t.replacen(
                "[upstream]\n",
                &format!("[upstream]\nca_file = \"{}\"\n", ca.display()),
                1,
            ),
            None => t,
        }
    }
}

#[tokio::test]
async fn https_upstream_with_the_configured_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server) = certificate(dir.path());
    let backend = Arc::new(std::sync::OnceLock::new());
    let (front, handshakes, alpn) = tls_front(backend.clone(), server.clone()).await;
    let gw = TestGateway::start_with(behind_tls(front, backend, Some(&ca))).await;
    // The gateway's own start-up calls (project metadata) use a connection of their own.
    let at_start = handshakes.load(Ordering::SeqCst);
    for _ in 0..3 {
        let r = gw.post("content=record&format=json").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.json().as_array().is_some_and(|a| !a.is_empty()),
            "{}",
            r.text()
        );
    }
    let n = handshakes.load(Ordering::SeqCst) - at_start;
    assert!(
        (1..=2).contains(&n),
        "{n} TLS connections: reused (at most one per serving thread)"
    );
    assert!(alpn
        .lock()
        .unwrap()
        .iter()
        .skip(at_start)
        .all(|p| p == "http/1.1"));

    // Without the CA file the certificate is not trusted: 502 in REDCap's shape.
    let backend = Arc::new(std::sync::OnceLock::new());
    let (front, handshakes, _) = tls_front(backend.clone(), server).await;
    let untrusted = TestGateway::start_with(behind_tls(front, backend, None)).await;
    let at_start = handshakes.load(Ordering::SeqCst);
    let r = untrusted.post("content=record&format=json").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"].is_string(), "{}", r.text());
    assert_eq!(
        handshakes.load(Ordering::SeqCst) - at_start,
        0,
        "no TLS session was made"
    );
}

#[tokio::test]
async fn the_request_line_is_origin_form_with_the_base_path_and_host() {
    // REDCap under a path prefix: the request line names `/redcap/api/`, never the
    // absolute URL, and `Host` names REDCap (not the gateway the client called).
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).await.unwrap_or(0);
            s2.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
        }
    });
    let gw = TestGateway::start_with(set_first("url", format!("http://{addr}/redcap"))).await;
    let r = gw.post("content=version").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let head = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(head.starts_with("POST /redcap/api/ HTTP/1.1\r\n"), "{head}");
    let host = format!("host: {addr}\r\n");
    assert!(head.to_ascii_lowercase().contains(&host), "{head}");
}
