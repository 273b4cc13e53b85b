//! The Kubernetes manifests in deploy/k8s (kustomizations rendered by `kubectl kustomize`),
//! as a platform team would apply them: valid
//! against Kubernetes' own schemas (PyPI `kubernetes-validate`, strict), the sidecar a
//! native one (so a Job completes), every gateway container locked down, and the config
//! each manifest embeds accepted by `redcap-gateway check-config`.

mod common;

use std::process::Command;

/// Runs `cmd`; its output, when it fails.
fn succeeds(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");

/// Each kustomization in deploy/k8s (base, central, sidecar), rendered by
/// `kubectl kustomize` into `dir` as NAME.yaml, as `kubectl apply -k` would send it.
/// None (skipped) without kubectl.
fn rendered(dir: &std::path::Path) -> Option<Vec<String>> {
    if !common::have("kubectl", &["version", "--client"]) {
        return None;
    }
    let mut files = Vec::new();
    for name in ["base", "central", "sidecar"] {
        let out = Command::new("kubectl")
            .args(["kustomize", &format!("{DEPLOY}/{name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/k8s/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, &out.stdout).unwrap();
        files.push(path.display().to_string());
    }
    Some(files)
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    if !common::have("kubernetes-validate", &["--version"]) {
        return;
    }
    let Some(files) = rendered(dir.path()) else {
        return;
    };
    succeeds(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .args(files),
    );
}

#[test]
fn sidecars_are_native_and_embedded_configs_pass_check_config() {
    if !common::have("python3", &["-c", "import yaml"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(files) = rendered(dir.path()) else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/manifests.py");
    succeeds(
        Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .args(files),
    );
    // The project tokens the manifests mount from a Secret, here a directory.
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::write(
        tokens.join("cohort-study"),
        "0123456789ABCDEF0123456789ABCDEF",
    )
    .unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "dir:/var/run/secrets/redcap",
            &format!("dir:{}", tokens.display()),
        );
        std::fs::write(&path, text).unwrap();
        succeeds(
            Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
                // The central install's audit key, from its Secret.
                .env("REDCAP_GATEWAY_AUDIT_KEY", "k".repeat(32))
                .arg("check-config")
                .arg(&path),
        );
        checked += 1;
    }
    assert!(checked >= 3, "{checked} embedded configs");
    // The central install's placeholder Secret fails closed: a gateway given it as the
    // project token refuses to start.
    let central = std::fs::read_to_string(dir.path().join("central.yaml")).unwrap();
    assert!(central.contains("cohort-study: REPLACE-ME"), "{central}");
    std::fs::write(tokens.join("cohort-study"), "REPLACE-ME").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
        .env("REDCAP_GATEWAY_AUDIT_KEY", "k".repeat(32))
        .arg("check-config")
        .arg(dir.path().join("central-redcap-gateway.toml"))
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is not a REDCap token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const MONITORING: [&str; 2] = [
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/redcap-gateway.json"
    ),
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml"),
];

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !common::have("promtool", &["--version"]) {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        succeeds(Command::new("promtool").args(args).current_dir(dir));
    }
}

/// The dashboard's and the alerts' queries against what a running gateway's /metrics
/// serves: every metric name, and every label a query filters or groups by.
#[tokio::test]
async fn dashboard_and_alerts_name_only_served_metrics_and_labels() {
    use common::{form, send, TestGateway};
    if !common::have("python3", &["-c", "import yaml, prometheus_client.parser"]) {
        return;
    }
    let gw = TestGateway::start().await;
    let admin_addr = gw.serve_admin().await;
    // Traffic fills the request families; the families that only faults fill (a limit
    // reached, a failed JWKS fetch or reload) are touched with values the gateway uses,
    // so that their label names are served.
    gw.post("content=record&format=json").await;
    send(form(http::Request::post(gw.api()), "content=record")).await;
    let m = &gw.env.gateway.metrics;
    m.rate_limited.with_label_values(&["upstream"]).inc();
    m.jwks_refreshes.with_label_values(&["error"]).inc();
    m.config_reloads
        .with_label_values(&["config", "error"])
        .inc();
    m.metadata_refreshes
        .with_label_values(&["demo", "ok"])
        .inc();
    m.metadata_fetched.with_label_values(&["demo"]).set(1);
    m.open_connections.with_label_values(&["0"]).set(0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = send(form(
        http::Request::get(format!("http://{admin_addr}/metrics")),
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.txt");
    std::fs::write(&metrics, r.text()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/promql_names.py");
    succeeds(
        Command::new("python3")
            .arg(script)
            .arg(&metrics)
            .args(MONITORING),
    );
}
