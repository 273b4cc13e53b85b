//! The sign-in portal against dev mode's sign-in service, without a browser (that is
//! tests/portal_browser.rs): the whole flow through the token desk, with its audit
//! records; and every attack on the sign-in and the session refused, none leaving a
//! session behind.

mod common;

use std::time::Duration;

use common::portal::{element_text, fields, Browser};
use common::*;
use redcap_gateway::dev::idp::Tamper;
use redcap_gateway::portal::session::{Cookies, Session};

fn base(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

async fn audit(gw: &TestGateway) -> Vec<serde_json::Value> {
    gw.env.gateway.audit.flush().await.unwrap();
    std::fs::read_to_string(gw.env.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["phase"] == "final")
        .collect()
}

/// No session cookie is set by this answer (only, at most, cookies being removed).
fn leaves_no_session(r: &Reply) {
    for v in r.headers.get_all("set-cookie") {
        let text = v.to_str().unwrap();
        assert!(
            !text.starts_with("rgw-session=") || text.contains("Max-Age=0"),
            "a session was set: {text}"
        );
    }
}

/// A sign-in, an API call with the token the page shows, revocation on the page: all
/// through the same desk as the JSON endpoint, audited as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_create_use_and_revoke_a_token() {
    let gw = TestGateway::start_portal().await;
    let base = base(&gw);
    let mut b = Browser::new(&base);

    let home = b.get(&format!("{base}/portal/")).await;
    assert_eq!(home.status, 200);
    assert!(home.text().contains("Sign in with single sign-on"));
    for h in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
    ] {
        assert!(home.headers.contains_key(h), "{h}");
    }
    assert_eq!(home.headers["cache-control"], "no-store");

    let projects = b.sign_in(&base, "dev-analyst").await;
    assert_eq!(projects.status, 200, "{}", projects.text());
    let html = projects.text();
    assert!(
        html.contains("Signed in as <strong>dev-analyst</strong>"),
        "{html}"
    );
    assert!(html.contains("De-Identified on every instrument"), "{html}");
    assert!(html.contains("/portal/p/demo"), "{html}");

    let page = b.get(&format!("{base}/portal/p/demo")).await;
    assert_eq!(page.status, 200);
    let csrf = Browser::csrf(&page);
    let issued = b
        .post(
            &format!("{base}/portal/p/demo/tokens"),
            &format!("csrf={csrf}&note=laptop"),
        )
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text());
    let html = issued.text();
    let token = element_text(&html, "new-token").expect("the token on the page");
    assert_eq!(token.len(), 32);
    let shown = html.replace("&#34;", "\"").replace("&quot;", "\"");
    assert!(shown.contains(&format!("Project(\"{base}/p/demo/api/\", \"{token}\")")));
    assert!(shown.contains("RedcapClient(") && shown.contains("redcap_read("));

    // The token works as the analyst: de-identified (no name).
    let call = |t: String| {
        let api = gw.api();
        async move {
            send(form(
                http::Request::post(api),
                &format!("token={t}&content=record&format=json&returnFormat=json"),
            ))
            .await
        }
    };
    let r = call(token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("\"name\""), "{}", r.text());

    // Listed with its note and its last use; revoked from the page.
    let page = b.get(&format!("{base}/portal/p/demo")).await;
    let html = page.text();
    let ids = fields(&html, "id");
    assert_eq!(ids.len(), 1, "{html}");
    assert!(
        html.contains("laptop") && !html.contains("not seen"),
        "{html}"
    );
    assert!(!html.contains(&token), "the token is shown only once");
    let r = b
        .post(
            &format!("{base}/portal/p/demo/revoke"),
            &format!("csrf={csrf}&id={}", ids[0]),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let after = b.get(&format!("{base}{}", Browser::location(&r))).await;
    assert!(after.text().contains("is revoked"), "{}", after.text());
    assert_eq!(
        call(token.clone()).await.status,
        401,
        "a revoked token fails"
    );

    // Sign-out ends the session; its cookie no longer opens a page.
    let stolen = b.clone();
    let r = b
        .post(&format!("{base}/portal/logout"), &format!("csrf={csrf}"))
        .await;
    assert_eq!(r.status, 303);
    assert!(b.cookies.is_empty(), "{:?}", b.cookies);
    let mut stolen = stolen;
    let r = stolen.get(&format!("{base}/portal/p/demo")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.text().contains("/portal/login?next=%2Fportal%2Fp%2Fdemo"),
        "{}",
        r.text()
    );
    let r = stolen
        .post(
            &format!("{base}/portal/p/demo/tokens"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());

    let records = audit(&gw).await;
    let find = |content: &str, action: &str| {
        records
            .iter()
            .find(|r| r["content"] == content && r["action"] == action)
            .unwrap_or_else(|| panic!("no {content}/{action} record in {records:#?}"))
            .clone()
    };
    let signin = find("portalSession", "signin");
    assert_eq!(signin["user"], "dev-analyst");
    assert_eq!(signin["credential"], "portal_session");
    assert_eq!(signin["decision"], "allow");
    let issue = find("personalToken", "issue");
    assert_eq!(issue["rule"], "self_service");
    assert_eq!(issue["project"], "demo");
    let change = issue["changes"][0].as_str().unwrap();
    assert!(
        change.starts_with(&ids[0]) && change.contains("issued"),
        "{change}"
    );
    let revoke = find("personalToken", "revoke");
    assert_eq!(revoke["changes"][0], format!("{}: revoked", ids[0]));
    find("portalSession", "signout");
    let text = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    assert!(!text.contains(&token), "the token reached the audit log");
    assert!(
        !text.contains(&csrf),
        "the CSRF token reached the audit log"
    );
}

/// The portal and the JSON endpoint are two doors to one desk: the per-user limit of
/// live tokens counts both.
/// Every portal answer carries the security headers (tower-http's set-header layers):
/// pages, assets, redirects, error pages, refusals. No HSTS over plain http (dev mode on
/// loopback), and never compressed (pages hold CSRF and personal tokens: BREACH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_portal_answer_carries_the_security_headers() {
    let gw = TestGateway::start_portal().await;
    let base = base(&gw);
    let mut b = Browser::new(&base);
    for (path, status) in [
        ("/portal/", 200),
        ("/portal/assets/portal.css", 200),
        ("/portal/login?next=/portal/", 303),
        ("/portal/nothing-here", 404),
        ("/portal/p/demo", 401),
        ("/portal/callback?state=forged&code=x", 401),
    ] {
        let r = b
            .get_with(&format!("{base}{path}"), &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        for (h, want) in [
            ("content-security-policy", "default-src 'none'"),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "same-origin"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
            ("permissions-policy", "camera=()"),
            ("cache-control", "no-store"),
        ] {
            let got = r.headers.get(h).map(|v| v.to_str().unwrap());
            assert!(
                got.is_some_and(|v| v.starts_with(want)),
                "{path}: {h} is {got:?}"
            );
        }
        assert!(
            !r.headers.contains_key("strict-transport-security"),
            "{path}"
        );
        assert!(!r.headers.contains_key("content-encoding"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_and_the_json_endpoint_share_the_limits() {
    let gw = TestGateway::start_portal().await;
    let base = base(&gw);
    for _ in 0..5 {
        let r = post_to(&gw, "/p/demo/tokens", &gw.jwt, "note=json").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut b = Browser::new(&base);
    let page = b.sign_in(&base, "dev-user").await;
    assert_eq!(page.status, 200);
    let page = b.get(&format!("{base}/portal/p/demo")).await;
    assert_eq!(
        fields(&page.text(), "id").len(),
        5,
        "the JSON door's tokens are listed"
    );
    let csrf = Browser::csrf(&page);
    let r = b
        .post(
            &format!("{base}/portal/p/demo/tokens"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("already holds 5 unexpired tokens"),
        "{}",
        r.text()
    );
    // And a bad expiry is refused by the same rule.
    let r = b
        .post(
            &format!("{base}/portal/p/demo/tokens"),
            &format!("csrf={csrf}&expires=2099-01-01"),
        )
        .await;
    assert!(r.status == 400 || r.status == 403, "{}", r.text());
}

async fn post_to(gw: &TestGateway, path: &str, jwt: &str, body: &str) -> Reply {
    send(form(
        http::Request::post(gw.url(path)).header("authorization", format!("Bearer {jwt}")),
        body,
    ))
    .await
}

/// The cookie key the dev gateway was configured with.
fn cookies_of(gw: &TestGateway) -> Cookies {
    let reference = &gw.env.gateway.config.portal.as_ref().unwrap().cookie_key;
    let key = redcap_gateway::secret::read_ref(reference).unwrap();
    Cookies::new(
        &key,
        false,
        Duration::from_secs(3600),
        Duration::from_secs(600),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_sign_in_are_refused_and_leave_no_session() {
    let gw = TestGateway::start_portal().await;
    let base = base(&gw);
    let idp = gw.env.idp.clone().unwrap();

    // A forged state: the browser's sign-in is another one.
    let mut b = Browser::new(&base);
    let callback = b.until_callback(&base, "dev-user").await;
    let forged = callback.replace("state=", "state=x");
    let r = b.get(&forged).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("state"), "{}", r.text());
    leaves_no_session(&r);
    assert!(
        b.cookies.is_empty(),
        "the sign-in's cookie is gone: {:?}",
        b.cookies
    );

    // A replayed answer: the same callback with the same login cookie, twice.
    let mut b = Browser::new(&base);
    let callback = b.until_callback(&base, "dev-user").await;
    let login_cookie = b.cookies.clone();
    let r = b.get(&callback).await;
    assert_eq!(r.status, 303, "the first one signs in: {}", r.text());
    let mut replay = Browser::new(&base);
    replay.cookies = login_cookie;
    let r = replay.get(&callback).await;
    assert_eq!(r.status, 401, "{}", r.text());
    leaves_no_session(&r);

    // An answer arriving in a browser that started no sign-in (login CSRF).
    let mut victim_attacker = Browser::new(&base);
    let callback = victim_attacker.until_callback(&base, "dev-user").await;
    let mut victim = Browser::new(&base);
    let r = victim.get(&callback).await;
    assert_eq!(r.status, 401, "{}", r.text());
    leaves_no_session(&r);

    // A code from another sign-in, with this sign-in's state: PKCE makes it useless.
    let mut first = Browser::new(&base);
    let other = first.until_callback(&base, "dev-user").await;
    let mut b = Browser::new(&base);
    let mine = b.until_callback(&base, "dev-user").await;
    let code_of = |u: &str| {
        url::Url::parse(u)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned()
    };
    let mixed = mine.replace(&code_of(&mine), &code_of(&other));
    let r = b.get(&mixed).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("refused the code"), "{}", r.text());
    leaves_no_session(&r);

    // ID tokens that are not this sign-in's: wrong nonce, another issuer, another key,
    // another audience, expired.
    let now = redcap_gateway::clock::now_unix();
    for (what, tamper) in [
        (
            "nonce",
            Tamper {
                claims: serde_json::json!({"nonce": "another"}),
                ..Default::default()
            },
        ),
        (
            "issuer",
            Tamper {
                claims: serde_json::json!({"iss": "https://other-idp.example"}),
                ..Default::default()
            },
        ),
        (
            "key",
            Tamper {
                foreign_key: true,
                ..Default::default()
            },
        ),
        (
            "audience",
            Tamper {
                claims: serde_json::json!({"aud": "another-client"}),
                ..Default::default()
            },
        ),
        (
            "azp",
            Tamper {
                claims: serde_json::json!({"aud": ["redcap-gateway-dev", "x"], "azp": "x"}),
                ..Default::default()
            },
        ),
        (
            "expired",
            Tamper {
                claims: serde_json::json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
                ..Default::default()
            },
        ),
        (
            "no nonce",
            Tamper {
                claims: serde_json::json!({"nonce": null}),
                ..Default::default()
            },
        ),
    ] {
        let mut b = Browser::new(&base);
        let callback = b.until_callback(&base, "dev-user").await;
        idp.tamper_next(tamper);
        let r = b.get(&callback).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(r.text().contains("ID token"), "{what}: {}", r.text());
        leaves_no_session(&r);
        let home = b.get(&format!("{base}/portal/")).await;
        assert!(
            home.text().contains("Sign in with single sign-on"),
            "{what}"
        );
    }

    // An open redirect through the return address.
    for next in [
        "https://evil.example/",
        "//evil.example/portal/",
        "/portal/../api/",
        "/\\evil.example",
    ] {
        let mut b = Browser::new(&base);
        let r = b
            .get(&format!("{base}/portal/login?next={}", url_encode(next)))
            .await;
        assert_eq!(r.status, 400, "{next}: {}", r.text());
        assert!(r.headers.get("location").is_none());
        assert!(b.cookies.is_empty(), "{next}: no sign-in started");
    }
    let mut b = Browser::new(&base);
    let r = b
        .get(&format!("{base}/portal/login?next=/portal/p/demo"))
        .await;
    assert_eq!(r.status, 303, "a portal page is a fine return address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_session_are_refused() {
    let gw = TestGateway::start_portal().await;
    let base = base(&gw);
    let mut b = Browser::new(&base);
    b.sign_in(&base, "dev-user").await;
    let page = b.get(&format!("{base}/portal/p/demo")).await;
    let csrf = Browser::csrf(&page);
    let issue = format!("{base}/portal/p/demo/tokens");

    // No CSRF token, another value, and another session's.
    for body in ["note=x".to_string(), "csrf=AAAA&note=x".to_string()] {
        let r = b.post(&issue, &body).await;
        assert_eq!(r.status, 403, "{body}: {}", r.text());
    }
    let mut other = Browser::new(&base);
    let other_page = other.sign_in(&base, "dev-user").await;
    let other_csrf = Browser::csrf(&other_page);
    let r = b.post(&issue, &format!("csrf={other_csrf}")).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A cross-site POST: another Origin, or the browser saying so.
    let mut cross = b.clone();
    cross.origin = Some("https://evil.example".into());
    let r = cross.post(&issue, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(
        http::Request::post(&issue)
            .header(
                "cookie",
                format!("rgw-session={}", b.cookies["rgw-session"]),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "cross-site")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "csrf={csrf}"
            ))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A tampered cookie: one character changed, then the value cut short.
    let value = b.cookies["rgw-session"].clone();
    let mut chars: Vec<char> = value.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    for bad in [
        chars.iter().collect::<String>(),
        value[..value.len() - 4].to_string(),
    ] {
        let mut t = b.clone();
        t.cookies.insert("rgw-session".into(), bad);
        let r = t.get(&format!("{base}/portal/")).await;
        assert!(
            r.text().contains("Sign in with single sign-on"),
            "{}",
            r.text()
        );
        let r = t.post(&issue, &format!("csrf={csrf}")).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }

    // An expired session sealed with the real key.
    let cookies = cookies_of(&gw);
    let expired = Session {
        sid: "s".into(),
        user: "dev-user".into(),
        groups: vec!["redcap-dev".into()],
        issuer: gw.env.idp.as_ref().unwrap().issuer.clone(),
        exp: redcap_gateway::clock::now_unix() - 1,
        csrf: "c".into(),
    };
    let set = cookies.seal(&expired).unwrap();
    let mut t = Browser::new(&base);
    t.keep(&Reply {
        status: 200,
        headers: [(http::header::SET_COOKIE, set)].into_iter().collect(),
        body: bytes::Bytes::new(),
    });
    let r = t.post(&issue, "csrf=c").await;
    assert_eq!(r.status, 401, "{}", r.text());
    // The same session unexpired is accepted: the key was right.
    let fine = Session {
        exp: expired.exp + 3600,
        ..expired
    };
    t.keep(&Reply {
        status: 200,
        headers: [(http::header::SET_COOKIE, cookies.seal(&fine).unwrap())]
            .into_iter()
            .collect(),
        body: bytes::Bytes::new(),
    });
    let r = t.get(&format!("{base}/portal/p/demo")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Another user's project page, and one that does not exist: the same refusal.
    let mut site = Browser::new(&base);
    site.sign_in(&base, "dev-site-a").await;
    let r = site.get(&format!("{base}/portal/p/nope")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // The JSON door refuses a session cookie (it wants a JWT).
    let r = send(form(
        http::Request::post(gw.url("/p/demo/tokens")).header(
            "cookie",
            format!("rgw-session={}", b.cookies["rgw-session"]),
        ),
        "note=x",
    ))
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
}
