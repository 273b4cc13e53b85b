//! The sign-in portal in a real browser against a real OIDC provider: headless chromium
//! (Debian `chromium`, `chromium-driver`) driven by selenium signs in at npm
//! `oidc-provider`'s interactive login, creates a token and reads it from the page;
//! PyCap and redcaplite use it through the gateway; revoking it on the page makes the
//! next call fail (tests/clients/portal_browser.py). Screenshots of each page are kept in
//! target/portal-screenshots. Then a code the IdP gave another client is refused.

mod common;

use std::path::Path;

use common::*;
use tokio::process::Command;

const OIDC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/oidc");
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/portal_browser.py"
);
const SHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/portal-screenshots");

fn available() -> bool {
    let ok = have("node", &["--version"])
        && Path::new(OIDC).join("node_modules/oidc-provider").is_dir()
        && Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && have(
            "python3",
            &["-c", "import selenium, redcap, redcaplite, requests"],
        );
    if !ok {
        assert!(
            !required(),
            "the browser test needs chromium, chromium-driver, selenium, PyCap, redcaplite and oidc-provider in CI"
        );
        eprintln!("SKIPPED: the portal browser test needs chromium, chromium-driver, PyPI selenium and npm oidc-provider");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_gets_a_token_and_revokes_it() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let st = Command::new("node")
        .arg(format!("{OIDC}/genkeys.mjs"))
        .arg(&keys)
        .arg("portal-key")
        .status()
        .await
        .unwrap();
    assert!(st.success());

    let listeners = TestGateway::listeners();
    let addr = listeners[0].local_addr().unwrap();
    let public = format!("http://{addr}");
    let idp_port = free_port();
    let idp = format!("http://127.0.0.1:{idp_port}");
    let mut provider = Command::new("node")
        .arg(format!("{OIDC}/portal_provider.mjs"))
        .arg(idp_port.to_string())
        .arg(&keys)
        .arg(format!("{public}/portal/callback"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    assert!(wait_for_port(idp_port).await, "oidc-provider did not start");

    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "portal-secret\n").unwrap();
    let cookie_key = dir.path().join("cookie-key");
    std::fs::write(&cookie_key, "a-cookie-key-of-at-least-thirty-two-bytes").unwrap();
    let section = format!(
        "\n[[auth.issuers]]\nissuer = \"{idp}\"\ndiscovery = true\naudiences = [\"redcap-gateway\"]\n\
         algorithms = [\"RS256\"]\ngroups_claim = \"groups\"\n{}\n[portal]\npublic_url = \"{public}\"\n\
         issuer = \"{idp}\"\nclient_id = \"portal\"\nclient_secret = \"file:{}\"\n\
         cookie_key = \"file:{}\"\nscopes = [\"openid\", \"profile\"]\n",
        personal_tokens(dir.path(), &"k".repeat(32), "self_service = true\n"),
        secret.display(),
        cookie_key.display(),
    );
    let gw = TestGateway::start_on(listeners, before_projects(section)).await;

    let _ = std::fs::remove_dir_all(SHOTS);
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(&public)
        .arg(&idp)
        .arg(SHOTS)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{stderr}"
    );
    let shots = std::fs::read_dir(SHOTS).unwrap().count();
    assert!(shots >= 8, "a screenshot of each page: {shots}");

    // The audit log has the sign-in, the issue and the revoke, as the IdP's user.
    gw.env.gateway.audit.flush().await.unwrap();
    let audit = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    for needle in [
        "\"content\":\"portalSession\",\"action\":\"signin\"",
        "\"content\":\"personalToken\",\"action\":\"issue\"",
        "\"content\":\"personalToken\",\"action\":\"revoke\"",
    ] {
        assert!(audit.contains(needle), "{needle} not in the audit log");
    }
    assert!(!audit.contains("portal-secret"));
    let _ = provider.kill().await;
}
