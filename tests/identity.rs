//! Identity: an RS256 IdP served over HTTP (JWKS and discovery), key rotation, the IdP
//! going down, single-flight refresh with a cooldown, the verified-token cache,
//! Kubernetes service accounts, personal tokens, and every attack from the issue.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redcap_gateway::dev::DevIssuer;
use serde_json::json;

/// A JWKS (and OIDC discovery) server whose keys, availability and headers tests control.
#[derive(Clone)]
struct Idp {
    url: String,
    keys: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicU64>,
    up: Arc<AtomicBool>,
    cache_control: Arc<Mutex<Option<String>>>,
    discovery_issuer: Arc<Mutex<Option<String>>>,
}

impl Idp {
    async fn start() -> Idp {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Idp {
            url: format!("http://{}", l.local_addr().unwrap()),
            keys: Arc::new(Mutex::new(JwkSet { keys: vec![] })),
            fetches: Arc::new(AtomicU64::new(0)),
            up: Arc::new(AtomicBool::new(true)),
            cache_control: Arc::new(Mutex::new(None)),
            discovery_issuer: Arc::new(Mutex::new(None)),
        };
        let s = idp.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.answer(req.uri().path())) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        idp
    }

    fn answer(&self, path: &str) -> http::Response<Full<Bytes>> {
        if !self.up.load(Ordering::SeqCst) {
            return http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        let body = match path {
            "/jwks" => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                serde_json::to_string(&*self.keys.lock().unwrap()).unwrap()
            }
            "/.well-known/openid-configuration" => {
                let iss = self
                    .discovery_issuer
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_else(|| self.url.clone());
                json!({"issuer": iss, "jwks_uri": format!("{}/jwks", self.url)}).to_string()
            }
            _ => {
                return http::Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        };
        let mut b = http::Response::builder().header("content-type", "application/json");
        if let Some(cc) = self.cache_control.lock().unwrap().clone() {
            b = b.header("cache-control", cc);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn serve(&self, issuers: &[&DevIssuer]) {
        let keys = issuers.iter().flat_map(|i| i.jwks().keys.clone()).collect();
        *self.keys.lock().unwrap() = JwkSet { keys };
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn issuer_section(iss: &str, source: &str, extra: &str) -> String {
    format!(
        "\n[[auth.issuers]]\nissuer = \"{iss}\"\n{source}\naudiences = [\"redcap-gateway\"]\nalgorithms = [\"RS256\"]\ngroups_claim = \"groups\"\n{extra}\n"
    )
}

/// Long enough that a slow (debug, loaded) test run stays inside one cooldown window.
const COOLDOWN: Duration = Duration::from_millis(1500);
const COOLDOWN_CFG: &str = "jwks_refresh_cooldown = \"1500ms\"";

/// The dev config with an extra issuer inserted before the projects.
fn with_issuer(section: String) -> impl FnOnce(String) -> String {
    before_projects(section)
}

async fn call(gw: &TestGateway, bearer: &str) -> Reply {
    send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {bearer}")),
        "content=version&returnFormat=json",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_single_flight_cooldown_and_idp_outage() {
    let idp = Idp::start().await;
    let k1 = DevIssuer::new_rsa(&idp.url, "k1").unwrap();
    idp.serve(&[&k1]);
    let gw = TestGateway::start_with(with_issuer(issuer_section(
        &idp.url,
        &format!("jwks_url = \"{}/jwks\"", idp.url),
        COOLDOWN_CFG,
    )))
    .await;
    assert_eq!(idp.fetches(), 1, "keys are loaded at start");
    assert_eq!(
        call(&gw, &k1.token("alice", &["redcap-dev"])).await.status,
        200
    );

    // Rotation: the IdP starts signing with k2. A burst of 40 requests with the new kid
    // causes exactly one fetch (once the start-up fetch's cooldown has passed).
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let k2 = DevIssuer::new_rsa(&idp.url, "k2").unwrap();
    idp.serve(&[&k1, &k2]);
    let tokens: Vec<String> = (0..40)
        .map(|i| k2.token(&format!("u{i}"), &["redcap-dev"]))
        .collect();
    let replies = futures_util::future::join_all(tokens.iter().map(|t| call(&gw, t))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        idp.fetches(),
        2,
        "single-flight: one fetch for the whole burst"
    );

    // Within the cooldown, another unknown kid does not reach the IdP.
    let k3 = DevIssuer::new_rsa(&idp.url, "k3").unwrap();
    idp.serve(&[&k2, &k3]);
    let t3 = k3.token("carol", &["redcap-dev"]);
    assert_eq!(call(&gw, &t3).await.status, 401);
    assert_eq!(idp.fetches(), 2, "cooldown holds");
    let forged = DevIssuer::new_rsa(&idp.url, "attacker").unwrap();
    for _ in 0..20 {
        assert_eq!(
            call(&gw, &forged.token("mallory", &["redcap-dev"]))
                .await
                .status,
            401
        );
    }
    assert_eq!(
        idp.fetches(),
        2,
        "unknown kids cannot make the gateway hammer the IdP"
    );
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    assert_eq!(
        call(&gw, &t3).await.status,
        200,
        "after the cooldown the new key is fetched"
    );
    assert_eq!(idp.fetches(), 3);

    // The IdP goes down: keys already known keep serving, unknown ones fail closed.
    idp.up.store(false, Ordering::SeqCst);
    assert_eq!(
        call(&gw, &k2.token("dave", &["redcap-dev"])).await.status,
        200
    );
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let k4 = DevIssuer::new_rsa(&idp.url, "k4").unwrap();
    assert_eq!(
        call(&gw, &k4.token("erin", &["redcap-dev"])).await.status,
        401
    );
    assert_eq!(
        call(&gw, &k3.token("frank", &["redcap-dev"])).await.status,
        200,
        "last good keys kept"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let gw = TestGateway::start().await;
    let before = gw.env.gateway.jwt.verifications.load(Ordering::Relaxed);
    for _ in 0..50 {
        assert_eq!(call(&gw, &gw.jwt).await.status, 200);
    }
    assert_eq!(
        gw.env.gateway.jwt.verifications.load(Ordering::Relaxed) - before,
        1
    );
    // An expired token is never served from the cache.
    let expired = gw.env.issuer.token_with(json!({"exp": 1000}));
    assert_eq!(call(&gw, &expired).await.status, 401);
    assert_eq!(call(&gw, &expired).await.status, 401);
}

#[tokio::test]
async fn discovery_and_cache_control() {
    let idp = Idp::start().await;
    let k1 = DevIssuer::new_rsa(&idp.url, "k1").unwrap();
    idp.serve(&[&k1]);
    *idp.cache_control.lock().unwrap() = Some("public, max-age=120".into());
    let gw = TestGateway::start_with(with_issuer(issuer_section(
        &idp.url,
        "discovery = true",
        "",
    )))
    .await;
    assert_eq!(
        call(&gw, &k1.token("alice", &["redcap-dev"])).await.status,
        200
    );
    let iss = gw
        .env
        .gateway
        .jwt
        .issuers()
        .find(|i| i.issuer == idp.url)
        .unwrap()
        .clone();
    assert_eq!(
        iss.next_refresh(),
        Duration::from_secs(120),
        "Cache-Control max-age is honored"
    );

    // A discovery document naming another issuer is refused: no keys, 401.
    let other = Idp::start().await;
    let k = DevIssuer::new_rsa(&other.url, "k").unwrap();
    other.serve(&[&k]);
    *other.discovery_issuer.lock().unwrap() = Some("https://evil.example".into());
    let gw2 = TestGateway::start_with(with_issuer(issuer_section(
        &other.url,
        "discovery = true",
        "",
    )))
    .await;
    let r = call(&gw2, &k.token("alice", &["redcap-dev"])).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("keys are not available"), "{}", r.text());
    assert_eq!(other.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_rejected_with_401_and_nothing_is_forwarded() {
    let idp = Idp::start().await;
    let good = DevIssuer::new_rsa(&idp.url, "good").unwrap();
    idp.serve(&[&good]);
    // An attacker's own JWKS server, to prove jku/x5u are never fetched.
    let evil = Idp::start().await;
    let attacker = DevIssuer::new_rsa(&idp.url, "good").unwrap();
    evil.serve(&[&attacker]);
    let gw = TestGateway::start_with(with_issuer(issuer_section(
        &idp.url,
        &format!("jwks_url = \"{}/jwks\"", idp.url),
        "",
    )))
    .await;
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = good.claims(json!({}));
    let valid = good.token_with(json!({}));
    assert_eq!(
        call(&gw, &valid).await.status,
        200,
        "the control token works"
    );

    let mut attacks: Vec<(&str, String)> = vec![];
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        ),
    ));
    // HS256 "signed" with the issuer's public key (algorithm confusion).
    let pem = good.public_pem.clone().unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("good".into());
    attacks.push((
        "HS256 with the RSA public key",
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(pem.as_bytes())).unwrap(),
    ));
    attacks.push((
        "unknown kid",
        DevIssuer::new_rsa(&idp.url, "nope")
            .unwrap()
            .token_with(json!({})),
    ));
    let mut jku = attacker.header();
    jku.jku = Some(format!("{}/jwks", evil.url));
    jku.x5u = Some(format!("{}/jwks", evil.url));
    attacks.push((
        "jku/x5u to the attacker's keys",
        attacker.sign(&jku, &claims),
    ));
    attacks.push(("expired", good.token_with(json!({"exp": 1_000_000}))));
    attacks.push((
        "nbf in the future",
        good.token_with(json!({"nbf": 9_999_999_999u64})),
    ));
    attacks.push((
        "wrong iss (unknown issuer)",
        good.token_with(json!({"iss": "https://other.example"})),
    ));
    attacks.push((
        "iss of the dev issuer, signed by this key",
        good.sign(
            &good.header(),
            &good.claims(json!({"iss": redcap_gateway::dev::DEV_ISSUER})),
        ),
    ));
    attacks.push(("wrong aud", good.token_with(json!({"aud": "someone-else"}))));
    attacks.push(("no aud", good.token_with(json!({"aud": null}))));
    attacks.push(("no exp", good.token_with(json!({"exp": null}))));
    let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    parts[1] =
        b64(&good
            .claims(json!({"preferred_username": "admin", "groups": ["redcap-dev", "admins"]})));
    attacks.push(("tampered payload", parts.join(".")));
    attacks.push((
        "missing user claim",
        good.token_with(json!({"preferred_username": null})),
    ));
    attacks.push((
        "empty user claim",
        good.token_with(json!({"preferred_username": ""})),
    ));
    attacks.push((
        "9 KiB token",
        good.token_with(json!({"pad": "x".repeat(9 * 1024)})),
    ));
    attacks.push(("not a JWT", "hello".into()));
    attacks.push(("two dots only", "..".into()));

    for (name, token) in &attacks {
        let r = call(&gw, token).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{name}"
        );
        assert!(r.json()["error"].is_string(), "{name}");
    }
    // A 64 KiB token exceeds the request-head limit: hyper answers 431 (never a reset).
    let huge = good.token_with(json!({"pad": "x".repeat(64 * 1024)}));
    assert_eq!(call(&gw, &huge).await.status, 431);
    assert_eq!(evil.fetches(), 0, "jku/x5u are never fetched");
    assert_eq!(
        gw.env.fake.requests().len(),
        1,
        "only the control request reached REDCap"
    );
}

#[tokio::test]
async fn kubernetes_service_accounts() {
    let idp = Idp::start().await;
    let cluster = DevIssuer::new_rsa(&idp.url, "sa-key").unwrap();
    idp.serve(&[&cluster]);
    let section = issuer_section(
        &idp.url,
        &format!("jwks_url = \"{}/jwks\"", idp.url),
        "kind = \"kubernetes\"",
    );
    let gw = TestGateway::start_with(move |t| {
        let t = with_issuer(section)(t);
        format!("{t}\n[[projects.demo.grants]]\ngroups = [\"system:serviceaccounts:pipelines\"]\nallow = [\"record:export\"]\nexport = \"full\"\n")
    })
    .await;
    let sa = |ns: &str, name: &str, claimed_ns: &str| {
        cluster.token_with(json!({
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {"namespace": claimed_ns, "serviceaccount": {"name": name, "uid": "1"}},
            "preferred_username": null, "groups": null,
        }))
    };
    let ok = send(form(
        Request::post(gw.api()).header(
            "authorization",
            format!("Bearer {}", sa("pipelines", "nightly", "pipelines")),
        ),
        "content=record&format=json",
    ))
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let other_ns = send(form(
        Request::post(gw.api()).header(
            "authorization",
            format!("Bearer {}", sa("default", "x", "default")),
        ),
        "content=record&format=json&returnFormat=json",
    ))
    .await;
    assert_eq!(other_ns.status, 403, "grants are by namespace");
    assert!(
        other_ns.text().contains("system:serviceaccount:default:x"),
        "{}",
        other_ns.text()
    );
    let inconsistent = call(&gw, &sa("pipelines", "nightly", "kube-system")).await;
    assert_eq!(inconsistent.status, 401, "sub and kubernetes.io must agree");
}

fn personal_section(dir: &std::path::Path) -> String {
    personal_tokens(dir, "test-key-test-key-test-key-test-key", "")
}

fn personal_cfg(gw: &TestGateway) -> redcap_gateway::config::PersonalTokensConfig {
    gw.env.gateway.config.personal_tokens.clone().unwrap()
}

#[tokio::test]
async fn personal_tokens_in_the_token_field() {
    let dir = tempfile::tempdir().unwrap();
    let section = personal_section(dir.path());
    let gw = TestGateway::start_with(before_projects(section)).await;
    let cfg = personal_cfg(&gw);
    let (tok, rec) = redcap_gateway::auth::personal::issue(
        &cfg,
        "dev-user",
        "demo",
        vec!["redcap-dev".into()],
        None,
        "test",
    )
    .unwrap();
    gw.env.gateway.personal.as_ref().unwrap().reload().unwrap();

    let plain = |path: &str, body: String| send(form(Request::post(gw.url(path)), &body));
    // redcaplite-style: no headers, the token in the body.
    let r = plain(
        "/p/demo/api/",
        format!("token={}&content=record&format=json", tok.expose()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = gw.env.fake.last_request().unwrap();
    assert_eq!(
        up.param("token").as_deref(),
        Some(gw.token()),
        "the personal token is replaced"
    );
    // POST /api/: the token names the project.
    let r = plain(
        "/api/",
        format!("token={}&content=record&format=json", tok.expose()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Grants still apply to the token's user.
    let r = plain(
        "/p/demo/api/",
        format!(
            "token={}&content=dag&action=switch&dag=x&returnFormat=json",
            tok.expose()
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    let n = gw.env.fake.requests().len();

    // A second project exists: the token is refused there.
    let r = plain(
        "/p/demo/api/",
        "token=0123456789ABCDEF0123456789ABCDEF&content=record&returnFormat=json".into(),
    )
    .await;
    assert_eq!(r.status, 401, "an unknown token");
    let r = plain(
        "/p/demo/api/",
        format!(
            "token={}&content=record&returnFormat=json",
            tok.expose().to_lowercase()
        ),
    )
    .await;
    assert_eq!(r.status, 401, "case matters");
    let r = plain("/p/demo/api/", "content=record&returnFormat=csv".into()).await;
    assert_eq!(r.status, 401);
    assert!(
        r.text().starts_with("ERROR: "),
        "in the caller's format: {}",
        r.text()
    );
    let r = plain(
        "/p/demo/api/",
        format!("token={0}&token={0}&content=record", tok.expose()),
    )
    .await;
    assert_eq!(r.status, 400, "duplicate token fields are ambiguous");

    // Revoked: refused after the reload.
    assert!(redcap_gateway::auth::personal::revoke(&cfg, &rec.id).unwrap());
    gw.env.gateway.personal.as_ref().unwrap().reload().unwrap();
    let r = plain(
        "/p/demo/api/",
        format!("token={}&content=record&returnFormat=json", tok.expose()),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.env.fake.requests().len(),
        n,
        "no refused call reached REDCap"
    );

    // A Bearer JWT still decides when present; the token field is then a placeholder.
    let r = send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {}", gw.jwt)),
        "token=00000000000000000000000000000000&content=version",
    ))
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn personal_tokens_are_bound_to_their_project() {
    let dir = tempfile::tempdir().unwrap();
    let section = personal_section(dir.path());
    let token_file = dir.path().join("other.token");
    std::fs::write(&token_file, "FEDCBA9876543210FEDCBA9876543210").unwrap();
    let other = format!(
        "\n[projects.other]\ntoken = \"file:{}\"\n[[projects.other.grants]]\nusers = [\"dev-user\"]\nallow = [\"read\"]\nexport = \"full\"\n",
        token_file.display()
    );
    let gw =
        TestGateway::start_with(move |t| format!("{}{other}", before_projects(section)(t))).await;
    let (tok, _) = redcap_gateway::auth::personal::issue(
        &personal_cfg(&gw),
        "dev-user",
        "demo",
        vec!["redcap-dev".into()],
        None,
        "",
    )
    .unwrap();
    gw.env.gateway.personal.as_ref().unwrap().reload().unwrap();
    let r = send(form(
        Request::post(gw.url("/p/other/api/")),
        &format!("token={}&content=record&returnFormat=json", tok.expose()),
    ))
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("not valid for this project"),
        "{}",
        r.text()
    );
    let r = send(form(
        Request::post(gw.url("/api/")).header("x-redcap-project", "other"),
        &format!("token={}&content=record&returnFormat=json", tok.expose()),
    ))
    .await;
    assert_eq!(r.status, 401);
    assert!(gw.env.fake.requests().is_empty());
}
