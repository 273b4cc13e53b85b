//! No secret ever reaches a log line or an error body: every log (at TRACE, including
//! hyper's and rustls') is captured while requests of every kind run, then scanned.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_jwts_never_reach_logs_or_error_bodies() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let hmac_key = "hmac-key-never-logged-0123456789abcdef";
    let section = personal_tokens(dir.path(), hmac_key, "self_service = true\n");
    let gw = TestGateway::start_with(before_projects(section)).await;
    let valid_jwt = gw.jwt.clone();
    let project_token = gw.token().to_string();
    let personal = "ABCDEF0123456789ABCDEF0123456789";
    let mut bodies = Vec::new();
    let mut push = |r: Reply| bodies.push(r.text());
    push(
        gw.post(&format!("token={personal}&content=record&format=json"))
            .await,
    );
    push(
        gw.post("content=user&action=delete&users[]=alice&returnFormat=xml")
            .await,
    );
    push(gw.post("content=dag&action=switch&dag=x").await);
    push(gw.post("content=record&content=user").await);
    let expired = gw.env.issuer.token_with(serde_json::json!({"exp": 1000}));
    let wrong_aud = gw.env.issuer.token_with(serde_json::json!({"aud": "x"}));
    for bad in [
        expired.as_str(),
        wrong_aud.as_str(),
        "abc.def.ghi",
        personal,
    ] {
        push(
            send(form(
                Request::post(gw.api()).header("authorization", format!("Bearer {bad}")),
                &format!("token={personal}&content=record"),
            ))
            .await,
        );
    }
    push(
        send(
            Request::post(gw.api())
                .header("authorization", format!("Bearer {}", gw.jwt))
                .header("content-type", "multipart/form-data; boundary=b")
                .body(Full::new(Bytes::from(format!(
                    "--b\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n{personal}\r\n--b\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nfile\r\n--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nimport\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nhi\r\n--b--\r\n"
                ))))
                .unwrap(),
        )
        .await,
    );
    // A self-issued token: used, listed, revoked, refused. Only its issuing answer
    // (not an error body) may hold it.
    let tokens = |body: String| {
        send(form(
            Request::post(gw.url("/p/demo/tokens"))
                .header("authorization", format!("Bearer {}", gw.jwt)),
            &body,
        ))
    };
    let issued = tokens(String::new()).await.json();
    let self_issued = issued["token"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    let with_token = |t: String| {
        send(form(
            Request::post(gw.api()),
            &format!("token={t}&content=record&format=json"),
        ))
    };
    push(with_token(self_issued.clone()).await);
    push(tokens("action=list".into()).await);
    push(tokens(format!("action=revoke&id={id}")).await);
    push(with_token(self_issued.clone()).await);
    // A reload rejected for a syntax error on a line holding a literal secret.
    let config = gw.env.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[bad]\nsecret = \"literal-secret-in-config-0123456789\n"),
    )
    .unwrap();
    gw.live.reload_and_log(true, "test").await;
    // A metadata fetch (with the vault token) that REDCap refuses, logged, and a
    // restricted export answered from the last good copy meanwhile.
    let project = gw.env.fake.remove_project(gw.token()).unwrap();
    assert!(gw.env.gateway.metadata.refresh("demo").await.is_err());
    let analyst = gw
        .env
        .issuer
        .token("ana", &[redcap_gateway::dev::DEV_DEID_GROUP]);
    push(
        send(form(
            Request::post(gw.api()).header("authorization", format!("Bearer {analyst}")),
            "content=record&format=json",
        ))
        .await,
    );
    gw.env.fake.add_project(gw.token(), project);
    // The upstream refuses the token: REDCap's 403 body must pass through without it.
    gw.env.fake.add_project(
        "unused",
        redcap_gateway::fake_redcap::FakeProject::demo(9, "x"),
    );
    drop(gw);

    // The portal: a sign-in, a token issued, used and revoked, sign-out, and refused
    // sign-ins and sessions. Only the page that issues the token may show it.
    let gw = TestGateway::start_portal().await;
    let base = format!("http://{}", gw.addr);
    let portal = gw.env.gateway.config.portal.clone().unwrap();
    let cookie_key = redcap_gateway::secret::read_ref(&portal.cookie_key).unwrap();
    let client_secret =
        redcap_gateway::secret::read_ref(portal.client_secret.as_deref().unwrap()).unwrap();
    let mut b = common::portal::Browser::new(&base);
    let callback = b.until_callback(&base, "dev-user").await;
    let code_of = |u: &str, k: &str| {
        url::Url::parse(u)
            .unwrap()
            .query_pairs()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .into_owned()
    };
    let (code, state) = (code_of(&callback, "code"), code_of(&callback, "state"));
    let r = b.get(&callback).await;
    assert_eq!(r.status, 303);
    let page = b.get(&format!("{base}/portal/p/demo")).await;
    let csrf = common::portal::Browser::csrf(&page);
    let cookies = redcap_gateway::portal::session::Cookies::new(
        &cookie_key,
        false,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(60),
    );
    let mut sent = http::HeaderMap::new();
    sent.insert(
        "cookie",
        format!("rgw-session={}", b.cookies["rgw-session"])
            .parse()
            .unwrap(),
    );
    let session = cookies.session(&sent).unwrap();
    let issued = b
        .post(
            &format!("{base}/portal/p/demo/tokens"),
            &format!("csrf={csrf}"),
        )
        .await;
    let portal_token = common::portal::element_text(&issued.text(), "new-token").unwrap();
    let portal_api = gw.api();
    let with_token = |t: String| {
        send(form(
            Request::post(portal_api.clone()),
            &format!("token={t}&content=record&format=json"),
        ))
    };
    push(with_token(portal_token.clone()).await);
    let listed = b.get(&format!("{base}/portal/p/demo")).await;
    let portal_id = common::portal::fields(&listed.text(), "id")[0].clone();
    push(listed);
    push(
        b.post(
            &format!("{base}/portal/p/demo/revoke"),
            &format!("csrf={csrf}&id={portal_id}"),
        )
        .await,
    );
    push(with_token(portal_token.clone()).await);
    push(b.get(&callback).await);
    push(
        b.post(&format!("{base}/portal/p/demo/tokens"), "note=x")
            .await,
    );
    let mut tampered = b.clone();
    tampered.cookies.insert(
        "rgw-session".into(),
        b.cookies["rgw-session"].replace('A', "B"),
    );
    push(
        tampered
            .post(
                &format!("{base}/portal/p/demo/tokens"),
                &format!("csrf={csrf}"),
            )
            .await,
    );
    let mut other = common::portal::Browser::new(&base);
    let cb = other.until_callback(&base, "dev-user").await;
    gw.env
        .idp
        .as_ref()
        .unwrap()
        .tamper_next(redcap_gateway::dev::idp::Tamper {
            claims: serde_json::json!({"nonce": "x"}),
            ..Default::default()
        });
    push(other.get(&cb).await);
    push(
        b.post(&format!("{base}/portal/logout"), &format!("csrf={csrf}"))
            .await,
    );
    gw.env.gateway.audit.flush().await.unwrap();
    let portal_audit = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    assert!(
        portal_audit.contains("portalSession"),
        "the portal's requests were audited"
    );
    drop(gw);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("handled"), "logs were captured");
    assert!(
        logs.contains("config reload rejected"),
        "the rejection was logged"
    );
    assert!(
        logs.contains("project metadata not loaded"),
        "the failed metadata fetch was logged"
    );
    let all = format!("{logs}\n{}", bodies.join("\n"));
    let jwt_signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let secrets = [
        ("project token", project_token),
        ("valid jwt signature", jwt_signature(&valid_jwt)),
        ("personal token", personal.to_string()),
        ("expired jwt signature", jwt_signature(&expired)),
        ("wrong-aud jwt signature", jwt_signature(&wrong_aud)),
        ("self-issued personal token", self_issued),
        ("personal-token HMAC key", hmac_key.to_string()),
        (
            "literal secret in a rejected config",
            "literal-secret-in-config-0123456789".to_string(),
        ),
        ("portal-issued personal token", portal_token),
        ("portal cookie key", cookie_key.expose().to_string()),
        ("portal client secret", client_secret.expose().to_string()),
        ("portal session id", session.sid.clone()),
        ("authorization code", code),
        ("sign-in state", state),
    ];
    for (what, s) in secrets {
        assert!(s.len() >= 32, "{what}: nothing to scan for");
        assert!(!all.contains(&s), "{what} leaked into logs or error bodies");
        assert!(
            !portal_audit.contains(&s),
            "{what} leaked into the audit log"
        );
    }
    // The session's CSRF token is on its own pages (their forms), never in a log.
    assert!(session.csrf.len() >= 32);
    assert!(
        !logs.contains(&session.csrf),
        "the CSRF token reached a log"
    );
    assert!(
        !portal_audit.contains(&session.csrf),
        "the CSRF token reached the audit log"
    );
}
