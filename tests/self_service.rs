//! Self-service personal tokens: an SSO user with a grant gets a working token for the
//! project, shown once; nobody else does, and the issuance is audited without the token.

mod common;

use common::*;
use http::Request;

fn with_self_service(dir: &std::path::Path, extra: &str) -> impl FnOnce(String) -> String {
    before_projects(personal_tokens(
        dir,
        "test-key-test-key-test-key-test-key",
        &format!(
            "self_service = true\nself_service_max_lifetime = \"30d\"\n\
             self_service_max_per_user = 2\n{extra}"
        ),
    ))
}

async fn ask(gw: &TestGateway, auth: Option<&str>, body: &str) -> Reply {
    let mut b = Request::post(gw.url("/p/demo/tokens"));
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    send(form(b, body)).await
}

fn date_in(days: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

#[tokio::test]
async fn a_granted_sso_user_gets_a_working_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(with_self_service(dir.path(), "")).await;
    let bearer = format!("Bearer {}", gw.jwt);
    let r = ask(&gw, Some(&bearer), "note=laptop").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    let j = r.json();
    let token = j["token"].as_str().unwrap().to_string();
    assert!(redcap_gateway::secret::is_redcap_token(&token), "{token}");
    assert_eq!(j["user"], "dev-user");
    assert_eq!(j["project"], "demo");
    assert!(j["id"].as_str().unwrap().starts_with("pt_"));
    assert!(j["expires"]
        .as_str()
        .unwrap()
        .starts_with(&date_in(30)[..4]));

    // It works at once, as REDCap's own `token` field, with no header.
    let r = send(form(
        Request::post(gw.api()),
        &format!("token={token}&content=record&format=json"),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = gw.env.fake.last_request().unwrap();
    assert_eq!(up.param("token").as_deref(), Some(gw.token()));

    // The file holds its hash, never the token; the audit log names it by id only.
    let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
    assert!(!file.contains(&token));
    assert!(file.contains("\"note\": \"laptop\""), "{file}");
    assert!(
        file.contains("redcap-dev"),
        "the user's groups are kept: {file}"
    );
    gw.env.gateway.audit.flush().await.unwrap();
    let audit = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    assert!(!audit.contains(&token), "the token reached the audit log");
    let issued = audit
        .lines()
        .find(|l| l.contains("\"content\":\"personalToken\""))
        .expect("an audit record for the issuance");
    assert!(issued.contains("\"action\":\"issue\""), "{issued}");
    assert!(issued.contains("\"decision\":\"allow\""), "{issued}");
    assert!(issued.contains(j["id"].as_str().unwrap()), "{issued}");
}

#[tokio::test]
async fn only_granted_sso_users_within_the_limits_get_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(with_self_service(dir.path(), "")).await;
    let bearer = format!("Bearer {}", gw.jwt);

    // No credential, or a personal token instead of a JWT: 401.
    assert_eq!(ask(&gw, None, "").await.status, 401);
    let first = ask(&gw, Some(&bearer), "").await.json();
    let tok = first["token"].as_str().unwrap();
    let r = ask(&gw, None, &format!("token={tok}")).await;
    assert_eq!(
        r.status,
        401,
        "a personal token cannot mint another: {}",
        r.text()
    );
    // A valid JWT whose user holds no grant on the project: 403, named.
    let outsider = gw.env.issuer.token("outsider", &["elsewhere"]);
    let r = ask(&gw, Some(&format!("Bearer {outsider}")), "").await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"].as_str().unwrap().contains("no grant"),
        "{}",
        r.text()
    );
    // Expiry: at most self_service_max_lifetime ahead, not in the past, a real date.
    for bad in [date_in(60), "2020-01-01".to_string(), "soon".to_string()] {
        let r = ask(&gw, Some(&bearer), &format!("expires={bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().starts_with("expires"));
    }
    let r = ask(&gw, Some(&bearer), "note=%07bell").await;
    assert_eq!(r.status, 400, "control characters in the note");
    // Two live tokens per user and project: the third is refused.
    let second = ask(&gw, Some(&bearer), &format!("expires={}", date_in(7))).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let third = ask(&gw, Some(&bearer), "").await;
    assert_eq!(third.status, 403, "{}", third.text());
    assert!(third.text().contains("already holds 2"), "{}", third.text());
    // Not a REDCap call and not a GET.
    let get = send(
        Request::get(gw.url("/p/demo/tokens"))
            .header("authorization", &bearer)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(get.status, 405);
    let r = send(form(
        Request::post(gw.url("/p/nope/tokens")).header("authorization", &bearer),
        "",
    ))
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn self_service_is_off_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let gw = TestGateway::start_with(move |t| {
        with_self_service(&path, "")(t).replace("self_service = true", "self_service = false")
    })
    .await;
    let r = ask(&gw, Some(&format!("Bearer {}", gw.jwt)), "").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let plain = TestGateway::start().await;
    let r = ask(&plain, Some(&format!("Bearer {}", plain.jwt)), "").await;
    assert_eq!(r.status, 404, "without [personal_tokens] at all");
}

/// Concurrent issuances never lose each other's tokens (the file is changed under a lock).
#[tokio::test]
async fn concurrent_issues_all_land_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(with_self_service(dir.path(), "")).await;
    let users = ["ann", "bob", "cyd", "dee", "eve", "fay"];
    let calls: Vec<_> = users
        .iter()
        .map(|u| {
            let jwt = gw.env.issuer.token(u, &[redcap_gateway::dev::DEV_GROUP]);
            let url = gw.url("/p/demo/tokens");
            tokio::spawn(async move {
                send(form(
                    Request::post(url).header("authorization", format!("Bearer {jwt}")),
                    "",
                ))
                .await
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200);
    }
    let cfg = gw.env.gateway.config.personal_tokens.clone().unwrap();
    let listed = redcap_gateway::auth::personal::list(&cfg).unwrap();
    assert_eq!(listed.len(), users.len(), "{listed:?}");
}

/// Users list and revoke their own tokens, and only their own; a revoked token is refused
/// from the next request on.
#[tokio::test]
async fn users_list_and_revoke_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(with_self_service(dir.path(), "")).await;
    let bearer = format!("Bearer {}", gw.jwt);
    let issued = ask(&gw, Some(&bearer), "note=ci").await.json();
    let (token, id) = (
        issued["token"].as_str().unwrap().to_string(),
        issued["id"].as_str().unwrap().to_string(),
    );
    let other = gw
        .env
        .issuer
        .token("colleague", &[redcap_gateway::dev::DEV_GROUP]);
    let theirs = ask(&gw, Some(&format!("Bearer {other}")), "").await.json();

    let listed = ask(&gw, Some(&bearer), "action=list").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let listed = listed.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "only my own: {listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["note"], "ci");
    assert_eq!(listed[0]["expired"], false);
    let text = serde_json::to_string(listed).unwrap();
    assert!(!text.contains(&token) && !text.contains("hash"), "{text}");

    // Someone else's id is not mine to revoke; an unknown one neither.
    let r = ask(
        &gw,
        Some(&bearer),
        &format!("action=revoke&id={}", theirs["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        ask(&gw, Some(&bearer), "action=revoke&id=pt_000000000000")
            .await
            .status,
        400
    );
    assert_eq!(ask(&gw, Some(&bearer), "action=revoke").await.status, 400);
    assert_eq!(ask(&gw, Some(&bearer), "action=steal").await.status, 400);

    let export = || {
        send(form(
            Request::post(gw.api()),
            &format!("token={token}&content=record&format=json"),
        ))
    };
    assert_eq!(export().await.status, 200);
    let r = ask(&gw, Some(&bearer), &format!("action=revoke&id={id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], id.as_str());
    assert_eq!(export().await.status, 401, "refused at once");
    // The colleague's token is untouched.
    let cfg = gw.env.gateway.config.personal_tokens.clone().unwrap();
    let left = redcap_gateway::auth::personal::list(&cfg).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user, "colleague");
    gw.env.gateway.audit.flush().await.unwrap();
    let audit = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"action\":\"revoke\"") && l.contains(&format!("{id}: revoked"))),
        "{audit}"
    );
}

/// Token calls are charged to the caller's own rate (`rate_limit.per_user`).
#[tokio::test]
async fn token_calls_count_against_the_users_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let gw = TestGateway::start_with(move |t| {
        with_self_service(&path, "")(t).replacen(
            "[upstream]",
            "[rate_limit]\nper_user = { limit = 2, per = \"1m\" }\nmutating_cost = 1\n\n[upstream]",
            1,
        )
    })
    .await;
    let bearer = format!("Bearer {}", gw.jwt);
    let r = ask(&gw, Some(&bearer), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ask(&gw, Some(&bearer), "action=list").await.status, 200);
    let r = ask(&gw, Some(&bearer), "action=list").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
}
