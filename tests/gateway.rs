//! End-to-end tests of the request path against the fake REDCap: what the upstream
//! receives, and what clients get back for every kind of bad input.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn token_injected_headers_stripped_body_otherwise_identical() {
    let gw = TestGateway::start().await;
    let body = "token=00000000000000000000000000000000&content=record&format=json&records%5B0%5D=1&fields[]=name&mobile_app=1&mobileApp=1&uuid=u&project_init=1&returnFormat=json";
    let req = Request::post(gw.url("/p/demo/api/?type=module&content=user"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Bearer {}", gw.jwt))
        .header("cookie", "PHPSESSID=abc")
        .header("client-ip", "10.9.9.9")
        .header("x-forwarded-for", "10.8.8.8")
        .header("forwarded", "for=10.7.7.7")
        .header("x-real-ip", "10.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("true-client-ip", "10.5.5.5")
        .header("cf-connecting-ip", "10.4.4.4")
        .header("proxy-authorization", "Basic eDp5")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    let up = gw.env.fake.last_request().unwrap();
    assert_eq!(up.method, "POST");
    assert_eq!(up.uri, "/api/", "no query string is ever forwarded");
    let expected = format!(
        "content=record&format=json&records%5B0%5D=1&fields[]=name&returnFormat=json&token={}",
        gw.token()
    );
    assert_eq!(String::from_utf8_lossy(&up.body), expected);
    assert_eq!(up.headers["content-length"], expected.len().to_string());
    for h in [
        "authorization",
        "cookie",
        "client-ip",
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-proto",
        "true-client-ip",
        "cf-connecting-ip",
        "proxy-authorization",
        "x-hop",
    ] {
        assert!(!up.headers.contains_key(h), "{h} must not reach REDCap");
    }
    assert_eq!(
        format!("http://{}", up.headers["host"].to_str().unwrap()),
        gw.env.fake.url(),
        "Host names REDCap, not the gateway"
    );
    assert_eq!(up.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up.headers["x-custom"], "kept");
    assert!(up.headers.contains_key("x-request-id"));
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn unauthenticated_calls_never_reach_redcap() {
    let gw = TestGateway::start().await;
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing"),
        (Some("Basic dXNlcjpwYXNz".into()), "basic"),
        (Some("Bearer not.a.jwt".into()), "garbage"),
        (
            Some(format!("Bearer {}", gw.jwt.replace('.', ".x"))),
            "tampered",
        ),
        (
            Some(format!(
                "Bearer {}",
                gw.env.issuer.token_with(serde_json::json!({"exp": 1000}))
            )),
            "expired",
        ),
        (
            Some(format!(
                "Bearer {}",
                gw.env
                    .issuer
                    .token_with(serde_json::json!({"aud": "other"}))
            )),
            "audience",
        ),
        (
            Some(format!(
                "Bearer {}",
                gw.env
                    .issuer
                    .token_with(serde_json::json!({"preferred_username": null}))
            )),
            "no user",
        ),
        (Some(format!("Bearer {}", "a".repeat(20_000))), "huge token"),
    ];
    for (auth, what) in cases {
        let mut b = Request::post(gw.api());
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let r = send(form(
            b,
            "content=record&returnFormat=json&token=0123456789ABCDEF0123456789ABCDEF",
        ))
        .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
        assert!(r.json()["error"].is_string(), "{what}");
    }
    // Past the header limit: 431 in REDCap's shape (in the caller's format when it is in
    // the query, JSON before the body is read); far past it hyper itself answers 431,
    // with an empty body (never a reset).
    let b =
        Request::post(gw.api()).header("authorization", format!("Bearer {}", "a".repeat(70_000)));
    let r = send(form(b, "content=record")).await;
    assert_eq!(r.status, 431);
    assert!(
        r.json()["error"].as_str().unwrap().contains("65536 bytes"),
        "{}",
        r.text()
    );
    let b = Request::post(gw.api()).header("x-big", "a".repeat(140_000));
    assert_eq!(send(form(b, "content=record")).await.status, 431);
    assert!(
        gw.env.fake.requests().is_empty(),
        "nothing may be forwarded"
    );
}

#[tokio::test]
async fn errors_use_the_callers_return_format() {
    let gw = TestGateway::start().await;
    // Unauthenticated: the small body is read only to pick the shape.
    let r = send(form(Request::post(gw.api()), "content=record&format=csv")).await;
    assert_eq!(r.status, 401);
    assert!(r.text().starts_with("ERROR: "), "{}", r.text());
    let r = send(form(Request::post(gw.api()), "content=record")).await;
    assert!(
        r.text().contains("<error>"),
        "xml is REDCap's default: {}",
        r.text()
    );
    // Denied by policy, in each format.
    for (rf, check) in [
        ("json", "{\"error\""),
        ("csv", "ERROR: "),
        ("xml", "<hash>"),
    ] {
        let r = gw
            .post(&format!(
                "content=dag&action=switch&dag=site_a&returnFormat={rf}"
            ))
            .await;
        assert_eq!(r.status, 403);
        assert!(r.text().contains(check), "{rf}: {}", r.text());
        assert!(
            r.text().contains("dag:switch"),
            "the message names the rule: {}",
            r.text()
        );
    }
    assert!(gw.env.fake.requests().is_empty());
}

#[tokio::test]
async fn ambiguous_bodies_are_rejected_not_guessed() {
    let gw = TestGateway::start().await;
    let many = (0..1000)
        .map(|i| format!("f{i}=x"))
        .collect::<Vec<_>>()
        .join("&");
    let deep = format!("content=record&a{}=1", "[x]".repeat(65));
    let bodies = [
        "content=record&content=user".to_string(),
        "content=user&action=delete&action=export&users[]=a".to_string(),
        "content[]=record".to_string(),
        "content=record&format=json&format=csv".to_string(),
        "content=record&returnFormat[]=json".to_string(),
        "content=user&data=%5B%5D&data=%5B%5D".to_string(),
        "content=record&con.tent=x&%20content=user".to_string(),
        "content=user&action=delete&users=alice,bob".to_string(),
        format!("content=user&action=delete&users[]=bob&{many}"),
        deep,
        "content=Record".to_string(),
        "format=json".to_string(),
    ];
    for b in bodies {
        let r = gw.post(&b).await;
        assert_eq!(r.status, 400, "{}: {}", &b[..b.len().min(80)], r.text());
        let t = r.text();
        assert!(
            t.starts_with("<?xml") || t.starts_with("{\"error\"") || t.starts_with("ERROR: "),
            "{t}"
        );
    }
    // A refused call still answers in the format its body asked for (XML by default).
    for (b, shape) in [
        ("content=Record&returnFormat=json", "{\"error\""),
        ("content=Record&returnFormat=xml", "<?xml"),
        ("content=Record&format=json", "{\"error\""),
        ("content=Record", "<?xml"),
    ] {
        let t = gw.post(b).await.text();
        assert!(t.starts_with(shape), "{b}: {t}");
    }
    assert!(gw.env.fake.requests().is_empty());
}

#[tokio::test]
async fn routing_and_methods() {
    let gw = TestGateway::start().await;
    let auth = format!("Bearer {}", gw.jwt);
    let get = send(
        Request::get(gw.api())
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(get.status, 405);
    assert_eq!(get.headers["allow"], "POST");
    for path in [
        "/",
        "/api/x",
        "/p/demo/",
        "/p/demo/api/extra",
        "/redcap/api/",
    ] {
        let r = send(form(
            Request::post(gw.url(path)).header("authorization", &auth),
            "content=record",
        ))
        .await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.json()["error"].is_string());
    }
    let r = send(form(
        Request::post(gw.url("/p/nope/api/")).header("authorization", &auth),
        "content=record",
    ))
    .await;
    assert_eq!(r.status, 404);
    // POST /api/ with the project in a header.
    let r = send(form(
        Request::post(gw.url("/api/"))
            .header("authorization", &auth)
            .header("x-redcap-project", "demo"),
        "content=version",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!gw
        .env
        .fake
        .last_request()
        .unwrap()
        .headers
        .contains_key("x-redcap-project"));
}

/// A body that stops arriving gets a REDCap-shaped 408 once `body_timeout` passes (the
/// parser reads a body that is already there without a timer, so this path needs its
/// own test); one that arrives in pieces in time is read whole.
/// Writes `pieces` to a new connection, `pause` before each, and reads the whole answer.
async fn raw_exchange(addr: std::net::SocketAddr, pieces: &[&str], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for p in pieces {
        tokio::time::sleep(pause).await;
        s.write_all(p.as_bytes()).await.unwrap();
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("the gateway answers")
        .unwrap();
    answer
}

#[tokio::test]
async fn stalled_bodies_time_out_and_slow_ones_are_read_whole() {
    let gw = TestGateway::start_with(with_limits("body_timeout = \"300ms\"")).await;
    let body = "token=x&content=record&format=json&returnFormat=json";
    let head = |len: usize| {
        format!(
            "POST /p/demo/api/ HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {len}\r\n\
             connection: close\r\n\r\n",
            gw.jwt
        )
    };

    // Half the body, then silence.
    let started = std::time::Instant::now();
    let head = head(body.len());
    let answer = raw_exchange(gw.addr, &[&head, &body[..10]], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"error\""),
        "REDCap's error shape: {answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(gw.env.fake.requests().is_empty());

    // The same body in three pieces, each well within the timeout.
    let pieces = [&head, &body[..10], &body[10..30], &body[30..]];
    let answer = raw_exchange(gw.addr, &pieces, Duration::from_millis(50)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(gw.env.fake.requests().len(), 1);
}

#[tokio::test]
async fn size_and_content_type_limits() {
    let gw = TestGateway::start_with(with_limits("max_urlencoded_body = \"1KiB\"")).await;
    let r = gw
        .post(&format!(
            "content=record&returnFormat=json&data={}",
            "x".repeat(2000)
        ))
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let r = send(
        Request::post(gw.api())
            .header("authorization", format!("Bearer {}", gw.jwt))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 415);
    assert!(gw.env.fake.requests().is_empty());
}

#[tokio::test]
async fn user_operations_are_decided_like_redcap() {
    let gw = TestGateway::start_with(|t| t.replace("\"user:*\", ", "\"user:export\", ")).await;
    // With data and action=export REDCap imports: the gateway must see an import.
    let r = gw.post("content=user&action=export&format=json&returnFormat=json&data=%5B%7B%22username%22%3A%22eve%22%7D%5D").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("user:import"));
    let r = gw.post("content=user&format=json").await;
    assert_eq!(r.status, 200);
    let r = gw
        .post("content=user&action=delete&users[0]=alice&returnFormat=json")
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("user:delete"));
}

/// Data that cannot be read is bad input (400, the parser's reason) in every content, as
/// a malformed record import is; a rule denying well-formed data is a 403.
#[tokio::test]
async fn malformed_data_is_400_and_a_denial_403() {
    let gw = TestGateway::start().await;
    for content in ["user", "userDagMapping", "userRoleMapping", "record"] {
        for (format, data) in [
            ("json", "%5B%7B%22username%22%3A%20"),
            ("xml", "%3Crecords%3E%3Citem%3E"),
        ] {
            let body = format!(
                "content={content}&action=import&format={format}&returnFormat=json&data={data}"
            );
            let r = gw.post(&body).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            assert!(r.json()["error"].as_str().is_some(), "{}", r.text());
        }
    }
    let r = gw
        .post("content=user&action=import&format=json&returnFormat=json&data=%5B%7B%22username%22%3A%22eve%22%2C%22design%22%3A%221%22%7D%5D")
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A client that sends its whole request before reading reads the early answer (413,
/// 431, 401) instead of a reset: the gateway lingers, reading and discarding, before it
/// closes (as nginx's lingering close). Counted in redcap_gateway_lingering_closes_total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_clients_that_send_everything_first() {
    let gw = TestGateway::start_with(with_limits("max_urlencoded_body = \"1MiB\"")).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/early_answers.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "127.0.0.1",
            &gw.addr.port().to_string(),
            "/p/demo/api/",
            &gw.jwt,
            &(8 << 20).to_string(),
        ])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("early answers: all read"));
    let metrics = gw.env.gateway.metrics.render();
    let lingered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redcap_gateway_lingering_closes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(lingered >= 10, "{lingered} lingering closes");
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    // Bind and drop a port so nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start_with(set_first("url", format!("http://{dead}"))).await;
    let r = gw.post("content=record&returnFormat=csv").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().starts_with("ERROR: "));
}

/// REDCap dying in the middle of an export: the client's transfer is aborted, never a
/// clean 200 that is silently short (Content-Length or chunked alike).
#[tokio::test]
async fn an_upstream_cut_mid_body_aborts_the_clients_transfer() {
    use http_body_util::BodyExt;
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: 100000\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n1000\r\n",
    ] {
        let addr = raw_upstream(move |mut s| async move {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&[b'x'; 4096]).await;
            let _ = s.flush().await;
            // Gone, mid-body.
        })
        .await;
        let gw = TestGateway::start_with(set_first("url", format!("http://{addr}"))).await;
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = form(
            Request::post(gw.api()).header("authorization", format!("Bearer {}", gw.jwt)),
            "content=record&format=csv",
        );
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("no hang")
            .expect("a head");
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("no hang");
        assert!(body.is_err(), "a cut export must not end cleanly: {head:?}");
    }
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    // An upstream that reads the request and never answers (the connection stays open).
    let addr = raw_upstream(|s| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    })
    .await;
    let gw = TestGateway::start_with(set_first(
        "url",
        format!("http://{addr}\"\nrequest_timeout = \"300ms"),
    ))
    .await;
    let r = gw.post("content=record&returnFormat=json").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("in time"));
}

/// A record export as a request for a stack built by the test (no server in between).
fn stack_export(jwt: &str) -> http::Request<redcap_gateway::body::Body> {
    Request::post("/p/demo/api/")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Bearer {jwt}"))
        .body(redcap_gateway::body::full(
            "content=record&returnFormat=json",
        ))
        .unwrap()
}

#[tokio::test]
async fn the_in_flight_cap_holds_across_serving_threads() {
    // An upstream that holds every call for a second. Each serving thread builds its own
    // stack; two such stacks share a cap of two requests in flight, so of six concurrent
    // calls (three through each) exactly two are forwarded and four get 503 at once.
    use tower::ServiceExt;
    let addr = slow_ok_upstream(Duration::from_millis(1000)).await;
    let gw = TestGateway::start_with(|t| {
        set_first("url", format!("http://{addr}"))(t).replacen(
            "[upstream]",
            "[limits]\nmax_concurrent_requests = 2\n\n[upstream]",
            1,
        )
    })
    .await;
    let g = gw.env.gateway.clone();
    let stacks: Vec<_> = (0..2)
        .map(|_| redcap_gateway::stack::build(&g, g.upstream.pool()))
        .collect();
    let calls: Vec<_> = (0..6)
        .map(|i| tokio::spawn(stacks[i % 2].clone().oneshot(stack_export(&gw.jwt))))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
}

/// A response streams after its head: the call keeps its place under the in-flight cap
/// and the per-user concurrency cap until the body has been sent, so a second call is
/// refused while the first still streams, and admitted once it has ended.
#[tokio::test]
async fn caps_hold_until_the_response_body_ends() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    // Head and half the body at once; the rest after 600 ms.
    let addr = raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
            .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = s.write_all(b"cd").await;
    })
    .await;
    for (cap, refused) in [
        ("[limits]\nmax_concurrent_requests = 1\n\n", 503),
        ("[rate_limit]\nper_user_concurrency = 1\n\n", 429),
    ] {
        let gw = TestGateway::start_with(|t| {
            set_first("url", format!("http://{addr}"))(t).replacen(
                "[upstream]",
                &format!("{cap}[upstream]"),
                1,
            )
        })
        .await;
        let g = gw.env.gateway.clone();
        let stack = redcap_gateway::stack::build(&g, g.upstream.pool());
        let call = || stack.clone().oneshot(stack_export(&gw.jwt));
        let first = call().await.unwrap();
        assert_eq!(first.status(), 200);
        let second = call().await.unwrap();
        assert_eq!(
            second.status().as_u16(),
            refused,
            "{cap}: refused while the first streams"
        );
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abcd");
        let third = call().await.unwrap();
        assert_eq!(
            third.status(),
            200,
            "{cap}: admitted once the first body ended"
        );
    }
}

/// (name, filename, value) of one multipart part.
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "----testboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, value) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: text/plain\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn multipart_file_import_streams_through_with_token_replaced() {
    let gw = TestGateway::start().await;
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (ct, body) = multipart(&[
        ("token", None, b"00000000000000000000000000000000"),
        ("content", None, b"file"),
        ("action", None, b"import"),
        ("record", None, b"1"),
        ("field", None, b"consent_file"),
        ("mobile_app", None, b"1"),
        ("returnFormat", None, b"json"),
        ("file", Some("consent.pdf"), &content),
    ]);
    let req = Request::post(gw.api())
        .header("content-type", ct)
        .header("authorization", format!("Bearer {}", gw.jwt))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = gw.env.fake.last_request().unwrap();
    assert_eq!(up.param("token").as_deref(), Some(gw.token()));
    assert_eq!(up.param("mobile_app"), None);
    assert_eq!(up.param("record").as_deref(), Some("1"));
    assert_eq!(up.files.len(), 1);
    assert_eq!(up.files[0].1, "consent.pdf");
    assert_eq!(up.files[0].2.as_ref(), content.as_slice());
    // And back out.
    let r = gw
        .post("content=file&action=export&record=1&field=consent_file&returnFormat=json")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), content.as_slice());
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .contains("consent.pdf"));
}

#[tokio::test]
async fn multipart_ambiguities_are_rejected() {
    let gw = TestGateway::start().await;
    let cases: Vec<Vec<Part>> = vec![
        // A field after the file part would be read by PHP but is unseen when we decide.
        vec![
            ("content", None, b"file"),
            ("action", None, b"import"),
            ("file", Some("a.txt"), b"x"),
            ("action", None, b"delete"),
        ],
        // Files under other names.
        vec![
            ("content", None, b"file"),
            ("action", None, b"import"),
            ("data", Some("a.txt"), b"x"),
        ],
        // Duplicates, as in urlencoded bodies.
        vec![
            ("content", None, b"file"),
            ("content", None, b"user"),
            ("file", Some("a.txt"), b"x"),
        ],
    ];
    for parts in cases {
        let (ct, body) = multipart(&parts);
        let req = Request::post(gw.api())
            .header("content-type", ct)
            .header("authorization", format!("Bearer {}", gw.jwt))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let r = send(req).await;
        assert_eq!(r.status, 400, "{parts:?}: {}", r.text());
    }
    let recorded = gw.env.fake.requests();
    assert!(
        recorded
            .iter()
            .all(|r| r.files.is_empty() || r.param("action").as_deref() != Some("delete")),
        "a trailing field must never reach REDCap"
    );
}

#[tokio::test]
async fn large_responses_stream() {
    // An upstream that answers 64 MiB in chunks.
    let addr = raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let total = 64usize << 20;
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: {total}\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = TestGateway::start_with(set_first("url", format!("http://{addr}"))).await;
    let r = gw.post("content=record&format=csv").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 64 << 20);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    // An upstream that answers after 500 ms.
    let addr = slow_ok_upstream(Duration::from_millis(500)).await;
    let mut gw = TestGateway::start_with(set_first("url", format!("http://{addr}"))).await;
    let url = gw.api();
    let jwt = gw.jwt.clone();
    let inflight = tokio::spawn(async move {
        send(form(
            Request::post(url).header("authorization", format!("Bearer {jwt}")),
            "content=record",
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.shutdown();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    gw.stopped().await;
    // New connections are refused once it has stopped.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn project_token_file_rotation_is_followed() {
    let gw = TestGateway::start().await;
    let new = redcap_gateway::secret::random_redcap_token();
    gw.env.fake.add_project(
        new.expose(),
        redcap_gateway::fake_redcap::FakeProject::demo(1, "redcap_owner"),
    );
    std::fs::write(gw.env.dir.path().join("demo.token"), new.expose()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.post("content=version").await;
        assert_eq!(r.status, 200);
        if gw
            .env
            .fake
            .last_request()
            .unwrap()
            .param("token")
            .as_deref()
            == Some(new.expose())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated token not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn user_rules_deny_with_every_reason_and_nothing_is_forwarded() {
    let gw = TestGateway::start().await;
    let data = "%5B%7B%22username%22%3A%22eve%22%2C%22design%22%3A%221%22%7D%2C%7B%22username%22%3A%22redcap_owner%22%7D%5D";
    for rf in ["json", "csv", "xml"] {
        let r = gw
            .post(&format!(
                "content=user&format=json&returnFormat={rf}&data={data}"
            ))
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
        let t = r.text();
        assert!(t.contains("user_import"), "{t}");
        assert!(
            t.contains("row 1 (eve): design=1 is above the ceiling 0"),
            "{t}"
        );
        assert!(
            t.contains("row 2 (redcap_owner): user redcap_owner is protected"),
            "{t}"
        );
    }
    let r = gw
        .post("content=user&action=delete&users[]=redcap_owner&returnFormat=json")
        .await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("protected"));
    let r = gw.post("content=userDagMapping&format=csv&returnFormat=json&data=username%2Credcap_data_access_group%0Aeve%2Csite_z%0A").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("site_z"));
    assert!(
        gw.env.fake.requests().is_empty(),
        "no denied change reached REDCap"
    );
    // And an allowed one goes through, with its effect recorded for audit.
    let ok = "%5B%7B%22username%22%3A%22eve%22%2C%22design%22%3A%220%22%2C%22data_access_group%22%3A%22site_a%22%7D%5D";
    let r = gw
        .post(&format!(
            "content=user&format=json&returnFormat=json&data={ok}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.env.fake.requests().len(), 1);
}

/// Least-connections across the serving threads: keep-alive connections opened one after
/// another end up spread evenly over the threads, whichever socket the kernel put them
/// on, and a connection handed to another thread is served there like any other.
#[tokio::test]
async fn keep_alive_connections_are_spread_over_the_serving_threads() {
    use http_body_util::BodyExt;
    let gw =
        TestGateway::start_with(|t| t.replacen("[server]\n", "[server]\nworkers = 2\n", 1)).await;
    let open = |w: &str| {
        gw.env
            .gateway
            .metrics
            .open_connections
            .with_label_values(&[w])
            .get()
    };
    let mut held = Vec::new();
    // Balanced after every connection: by the kernel's hash alone, 10 connections stay
    // balanced at every step one time in 32.
    for n in 1..=10 {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..2 {
            let req = form(
                Request::post(gw.api())
                    .header("host", "gateway.test")
                    .header("authorization", format!("Bearer {}", gw.jwt)),
                "content=version",
            );
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.into_body().collect().await.unwrap();
        }
        held.push(send);
        let (a, b) = (open("0"), open("1"));
        assert_eq!(a + b, n, "every open connection counted");
        assert!(a.abs_diff(b) <= 1, "after {n} connections: {a} and {b}");
    }
    drop(held);
    for _ in 0..100 {
        if open("0") + open("1") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "closed connections are no longer counted: {} {}",
        open("0"),
        open("1")
    );
}
