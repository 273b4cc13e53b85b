//! The module graph of src/ flows one way: no top-level module reaches itself through
//! `crate::` paths (tests/structure/modules.py lists the graph and its cycles; run it with
//! `--dot` to see the edges). docs/ARCHITECTURE.md opens with the layers.

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

/// The check itself finds a cycle when there is one (a tiny src/ with one), and skips
/// only what is inside a test module.
#[test]
fn the_cycle_check_fails_on_a_cycle() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        // An import after a test module counts too.
        (
            "config.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::secret::x;\n}\nuse crate::server::run;\n",
        ),
        ("server.rs", "use crate::config::Config;\n"),
        ("secret.rs", ""),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("python3")
        .arg(format!("{root}/tests/structure/modules.py"))
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("CYCLE: config <-> server"), "{text}");
}
