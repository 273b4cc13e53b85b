//! The module graph of src/ flows one way: no top-level module reaches itself through
//! `crate::` paths (tests/structure/modules.py lists the graph and its cycles; run it with
//! `--dot` to see the edges), and no module but a fixture imports the fixtures.
//! docs/ARCHITECTURE.md opens with the layers.

use std::process::Command;

#[test]
fn src_modules_form_no_import_cycle() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/structure/modules.py"))
        .arg(format!("{root}/src"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "import cycles among src modules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The check run over a tiny src/ of `files` (name, text): whether it passed, and what it
/// printed.
fn check_of(files: &[(&str, &str)]) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("python3")
        .arg(format!("{root}/tests/structure/modules.py"))
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The check itself finds a cycle when there is one (a tiny src/ with one), and skips
/// only what is inside a test module.
#[test]
fn the_cycle_check_fails_on_a_cycle() {
    let (passed, text) = check_of(&[
        // An import after a test module counts too.
        (
            "config.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::secret::x;\n}\nuse crate::server::run;\n",
        ),
        ("server.rs", "use crate::config::Config;\n"),
        ("secret.rs", ""),
    ]);
    assert!(!passed, "{text}");
    assert!(text.contains("CYCLE: config <-> server"), "{text}");
}

/// The fixtures (the fake REDCap, dev mode) stay out of the request path: a module that
/// imports one fails the check, while fixtures may import each other and anything below.
#[test]
fn the_check_fails_when_the_request_path_imports_a_fixture() {
    let (passed, text) = check_of(&[
        (
            "dev.rs",
            "use crate::fake_redcap::FakeRedcap;\nuse crate::secret::x;\n",
        ),
        ("fake_redcap.rs", "use crate::body::full;\n"),
        ("auth.rs", "use crate::dev::random_token;\n"),
        ("secret.rs", ""),
        // Tests may use the fixtures.
        (
            "body.rs",
            "#[cfg(all(test, feature = \"dev\"))]\nmod tests {\n    use crate::dev::x;\n}\n",
        ),
    ]);
    assert!(!passed, "{text}");
    assert_eq!(
        text.trim(),
        "FIXTURE: auth imports dev (a test fixture; only fixtures and tests may)"
    );
}

/// The shipped build (deploy/Dockerfile: `--no-default-features`) compiles without the
/// fixtures: the request path does not need them. Its own target directory, so the
/// binary the other tests run is never replaced by one without `dev`.
#[test]
fn the_shipped_build_compiles_without_the_fixtures() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args([
            "check",
            "--quiet",
            "--no-default-features",
            "--bin",
            "redcap-gateway",
        ])
        .arg("--manifest-path")
        .arg(format!("{root}/Cargo.toml"))
        .arg("--target-dir")
        .arg(format!("{root}/target/no-fixtures"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
