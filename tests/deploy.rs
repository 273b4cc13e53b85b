//! The Kubernetes manifests in deploy/k8s, as a platform team would apply them: valid
//! against Kubernetes' own schemas (PyPI `kubernetes-validate`, strict), the sidecar a
//! native one (so a Job completes), every gateway container locked down, and the config
//! each manifest embeds accepted by `redcap-gateway check-config`.

mod common;

use std::process::Command;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");

fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(DEPLOY)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    if !common::have("kubernetes-validate", &["--version"]) {
        return;
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sidecars_are_native_and_embedded_configs_pass_check_config() {
    if !common::have("python3", &["-c", "import yaml"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/manifests.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
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
        let out = Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "{checked} embedded configs");
}
