//! Real REDCap clients through the gateway (PyCap 2.7.0, from PyPI).

mod common;

use common::*;

/// Skips (or, in CI, fails) when a Python package check does not pass.
fn have_python(check: &str, package: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", check])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            !required(),
            "{package} is required in CI but is not installed"
        );
        eprintln!("SKIPPED: {package} is not installed (pip install {package})");
    }
    ok
}

fn have_pycap() -> bool {
    have_python(
        "import redcap, sys; sys.exit(0 if __import__('importlib.metadata').metadata.version('PyCap') == '2.7.0' else 1)",
        "PyCap==2.7.0",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycap_works_through_the_gateway() {
    if !have_pycap() {
        return;
    }
    let gw = TestGateway::start().await;
    let denied = gw.env.issuer.token("mallory", &["another-team"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pycap_e2e.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &gw.api(), &gw.jwt, &denied])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "PyCap checks failed");
    assert!(stdout.contains("pycap: all checks passed"));

    // Every request REDCap saw carried the project token, never PyCap's placeholder.
    let seen = gw.env.fake.requests();
    assert!(seen.len() >= 15, "{} requests", seen.len());
    for r in &seen {
        assert_eq!(
            r.param("token").as_deref(),
            Some(gw.token()),
            "{:?}",
            r.param("content")
        );
        assert!(!r.headers.contains_key("authorization"));
    }
    // The delete went out as a real PHP array, as REDCap requires.
    let delete = seen
        .iter()
        .find(|r| r.param("action").as_deref() == Some("delete"))
        .unwrap();
    assert!(
        String::from_utf8_lossy(&delete.body).contains("users%5B0%5D=carol"),
        "{:?}",
        delete.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redcaplite_and_pycap_without_headers_use_personal_tokens() {
    if !have_pycap() {
        return;
    }
    if !have_python("import redcaplite", "redcaplite") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let section = personal_tokens(dir.path(), "client-test-key-client-test-key-0001", "");
    let gw = TestGateway::start_with(before_projects(section)).await;
    let cfg = gw.env.gateway.config.personal_tokens.clone().unwrap();
    let (token, _) = redcap_gateway::auth::personal::issue(
        &cfg,
        "dev-user",
        "demo",
        vec!["redcap-dev".into()],
        None,
        "ci",
    )
    .unwrap();
    gw.env.gateway.personal.as_ref().unwrap().reload().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/personal_tokens.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, &gw.api(), &gw.url("/api/"), token.expose()])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client checks failed");
    assert!(stdout.contains("personal tokens: all checks passed"));
    let seen = gw.env.fake.requests();
    assert!(seen.len() >= 14);
    for r in &seen {
        assert_eq!(
            r.param("token").as_deref(),
            Some(gw.token()),
            "the personal token never reaches REDCap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycap_sees_only_what_export_rights_allow() {
    if !have_pycap() {
        return;
    }
    // The analysts may also ask for logs (the grant allows it; export rights refuse it),
    // and have no access to the consent instrument (its file field).
    let gw = TestGateway::start_with(|t| {
        t.replace(
            "allow = [\"read\"]\nexport = \"deidentified\"",
            "allow = [\"read\", \"log:export\"]\nexport = \"deidentified\"\nexport_forms = { consent = \"none\" }",
        )
    })
    .await;
    let analyst = gw
        .env
        .issuer
        .token("ana", &[redcap_gateway::dev::DEV_DEID_GROUP]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/pycap_export_rights.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, &gw.api(), &analyst, &gw.jwt])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "PyCap export-rights checks failed");
    assert!(stdout.contains("pycap export rights: all checks passed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycap_as_a_site_sees_and_changes_only_its_records() {
    if !have_pycap() {
        return;
    }
    let gw = TestGateway::start().await;
    let site = gw
        .env
        .issuer
        .token("sam", &[redcap_gateway::dev::DEV_SITE_GROUP]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/pycap_dag_scope.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, &gw.api(), &site])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "PyCap DAG-scope checks failed");
    assert!(stdout.contains("pycap dag scope: all checks passed"));
}
