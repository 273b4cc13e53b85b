//! End to end against a real OIDC provider (npm `oidc-provider`, installed by .ci/run):
//! a client-credentials grant gets a real RS256 JWT that the gateway accepts; the provider
//! rotates its signing key and the gateway follows; the provider goes down and the
//! cached keys keep serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::process::{Child, Command};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/oidc");

fn available() -> bool {
    let ok =
        have("node", &["--version"]) && Path::new(DIR).join("node_modules/oidc-provider").is_dir();
    if !ok {
        assert!(
            !required(),
            "oidc-provider is required in CI: npm ci --prefix tests/e2e/oidc"
        );
        eprintln!("SKIPPED: run `npm ci --prefix tests/e2e/oidc` for the OIDC end-to-end test");
    }
    ok
}

async fn genkey(dir: &Path, kid: &str) -> PathBuf {
    let out = dir.join(format!("{kid}.json"));
    let st = Command::new("node")
        .arg(format!("{DIR}/genkeys.mjs"))
        .arg(&out)
        .arg(kid)
        .status()
        .await
        .unwrap();
    assert!(st.success());
    out
}

async fn provider(port: u16, keys: &[&Path]) -> Child {
    let child = Command::new("node")
        .arg(format!("{DIR}/provider.mjs"))
        .arg(port.to_string())
        .args(keys)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    assert!(wait_for_port(port).await, "oidc-provider did not start");
    child
}

async fn stop(mut c: Child) {
    let _ = c.kill().await;
    let _ = c.wait().await;
}

/// A client-credentials grant, as a pipeline would do it.
async fn access_token(port: u16) -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("pipeline:pipeline-secret");
    let r = send(
        Request::post(format!("http://127.0.0.1:{port}/token"))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(
                "grant_type=client_credentials&resource=urn%3Aredcap-gateway&scope=redcap",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn kid(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

async fn call(gw: &TestGateway, jwt: &str) -> Reply {
    send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {jwt}")),
        "content=record&format=json&returnFormat=json",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_oidc_provider_rotation_and_outage() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k1 = genkey(dir.path(), "k1").await;
    let k2 = genkey(dir.path(), "k2").await;
    let port = common::free_port();
    let idp = provider(port, &[&k1]).await;
    let issuer = format!("http://127.0.0.1:{port}");
    let section = format!(
        "\n[[auth.issuers]]\nissuer = \"{issuer}\"\ndiscovery = true\naudiences = [\"redcap-gateway\"]\nalgorithms = [\"RS256\"]\nuser_claim = \"preferred_username\"\ngroups_claim = \"groups\"\njwks_refresh_cooldown = \"200ms\"\n"
    );
    let gw = TestGateway::start_with(before_projects(section)).await;

    // A real token from a real grant is accepted; REDCap sees the project token.
    let t1 = access_token(port).await;
    assert_eq!(kid(&t1), "k1");
    let r = call(&gw, &t1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(
        gw.env
            .fake
            .last_request()
            .unwrap()
            .param("token")
            .as_deref(),
        Some(gw.token())
    );
    let denied = send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {t1}")),
        "content=dag&action=switch&dag=x&returnFormat=json",
    ))
    .await;
    assert!(
        denied.text().contains("svc-pipeline"),
        "the user comes from the token: {}",
        denied.text()
    );

    // Rotation: the provider restarts signing with k2 (still publishing k1).
    stop(idp).await;
    let idp = provider(port, &[&k2, &k1]).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t2 = access_token(port).await;
    assert_eq!(kid(&t2), "k2");
    assert_eq!(
        call(&gw, &t2).await.status,
        200,
        "the gateway fetched the new key"
    );
    assert_eq!(
        call(&gw, &t1).await.status,
        200,
        "old tokens stay valid while k1 is published"
    );
    let t3 = access_token(port).await;

    // The provider goes down: keys already fetched keep verifying new tokens.
    stop(idp).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        call(&gw, &t3).await.status,
        200,
        "a token never seen before, verified with cached keys"
    );
    let iss = gw
        .env
        .gateway
        .jwt
        .issuers()
        .find(|i| i.issuer == issuer)
        .unwrap()
        .clone();
    assert!(
        iss.refresh_now().await.is_err(),
        "the provider is really down"
    );
    assert_eq!(
        call(&gw, &t2).await.status,
        200,
        "a failed refresh keeps the last good keys"
    );
    // Each fetch was counted by result: the first load and the rotation, then the failure.
    let metrics = gw.env.gateway.metrics.render();
    let count = |result: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("redcap_gateway_jwks_refreshes_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("ok") >= 2, "{metrics}");
    assert!(count("error") >= 1, "{metrics}");
}
