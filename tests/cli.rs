//! The command line as an operator uses it: check-config, and the example config.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.example.toml");

#[test]
fn example_config_parses_and_validates() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    // As an operator runs it, with the token in the environment.
    let out = bin()
        .args(["check-config", EXAMPLE])
        .env("REDCAP_TOKEN_COHORT", "0123456789ABCDEF0123456789ABCDEF")
        .env(
            "REDCAP_GATEWAY_TOKEN_KEY",
            "an-hmac-key-of-at-least-32-characters",
        )
        .env("REDCAP_GATEWAY_AUDIT_KEY", "audit-key")
        .env("REDCAP_GATEWAY_PORTAL_SECRET", "portal-client-secret")
        .env(
            "REDCAP_GATEWAY_COOKIE_KEY",
            "a-cookie-key-of-at-least-32-random-bytes",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK (1 project(s), 2 issuer(s))"),
        "{stdout}"
    );
    // Without it, the missing variable is named.
    let out = bin()
        .args(["check-config", EXAMPLE])
        .env_remove("REDCAP_TOKEN_COHORT")
        .env(
            "REDCAP_GATEWAY_TOKEN_KEY",
            "an-hmac-key-of-at-least-32-characters",
        )
        .env("REDCAP_GATEWAY_AUDIT_KEY", "audit-key")
        .env("REDCAP_GATEWAY_PORTAL_SECRET", "portal-client-secret")
        .env(
            "REDCAP_GATEWAY_COOKIE_KEY",
            "a-cookie-key-of-at-least-32-random-bytes",
        )
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDCAP_TOKEN_COHORT"));
    // Every key is written out: the example is the documentation.
    for key in [
        "listen",
        "admin_listen",
        "shutdown_grace",
        "header_read_timeout",
        "max_connections",
        "log_format",
        "workers",
        "max_urlencoded_body",
        "max_multipart_body",
        "max_multipart_field",
        "max_input_vars",
        "max_input_nesting_level",
        "body_timeout",
        "max_concurrent_requests",
        "max_header_bytes",
        "url",
        "ca_file",
        "connect_timeout",
        "request_timeout",
        "body_idle_timeout",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "allow_plain_http",
        "issuer",
        "jwks_url",
        "jwks_file",
        "audiences",
        "algorithms",
        "leeway",
        "user_claim",
        "groups_claim",
        "group_prefix",
        "jwks_refresh_interval",
        "jwks_refresh_cooldown",
        "reload_interval",
        "token",
        "token_owner",
        "groups",
        "users",
        "allow",
        "public_url",
        "client_id",
        "client_secret",
        "cookie_key",
        "scopes",
        "session_lifetime",
        "login_timeout",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "example config does not document {key}"
        );
    }
}

#[test]
fn check_config_explains_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[upstream]
url = "http://127.0.0.1:1"

[projects.a]
token = "file:/nonexistent/token"

[projects.b]
token = "env:REDCAP_GATEWAY_TEST_UNSET_VAR"

[[projects.b.grants]]
groups = ["g"]
allow = ["records:export"]
"#,
    )
    .unwrap();
    let out = bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("records:export"), "{err}");
    assert!(
        err.contains("/nonexistent/token") && err.contains("projects.a.token"),
        "{err}"
    );
    assert!(
        err.contains("REDCAP_GATEWAY_TEST_UNSET_VAR") && err.contains("projects.b.token"),
        "{err}"
    );
}

/// The portal's mistakes an operator can make, each named by check-config.
#[test]
fn check_config_explains_portal_problems() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short-key");
    std::fs::write(&short, "too-short").unwrap();
    let cfg = dir.path().join("portal.toml");
    let write = |portal: &str, self_service: bool| {
        std::fs::write(
            &cfg,
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:1\"\n\n[[auth.issuers]]\nissuer = \"https://sso.example.edu\"\n\
                 discovery = true\naudiences = [\"gw\"]\n\n[personal_tokens]\nfile = \"{}\"\nkey = \"{}\"\n\
                 self_service = {self_service}\n\n[portal]\n{portal}\n",
                dir.path().join("t.json").display(),
                "k".repeat(32)
            ),
        )
        .unwrap();
        let out = bin()
            .args(["check-config", cfg.to_str().unwrap()])
            .env_remove("REDCAP_GATEWAY_TEST_NO_SECRET")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = write(
        &format!(
            "public_url = \"http://gateway.example.edu\"\nissuer = \"https://other.example.edu\"\n\
             client_id = \"portal\"\nclient_secret = \"env:REDCAP_GATEWAY_TEST_NO_SECRET\"\n\
             cookie_key = \"file:{}\"\nscopes = [\"profile\"]\nsession_lifetime = \"30d\"\n",
            short.display()
        ),
        false,
    );
    assert_eq!(code, Some(2), "{err}");
    for needle in [
        "portal.public_url must be https outside loopback",
        "portal.issuer \"https://other.example.edu\" must be one of auth.issuers",
        "portal.client_secret: environment variable REDCAP_GATEWAY_TEST_NO_SECRET is not set",
        "portal.cookie_key must be at least 32 bytes",
        "portal.scopes must include \"openid\"",
        "portal.session_lifetime must be between 5m and 24h",
        "self_service = true",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    assert!(!err.contains("too-short"), "a secret was quoted: {err}");
    let key = dir.path().join("key");
    std::fs::write(&key, "a-cookie-key-of-at-least-32-random-bytes").unwrap();
    let (code, err) = write(
        &format!(
            "public_url = \"https://gateway.example.edu/\"\nissuer = \"https://sso.example.edu\"\n\
             client_id = \"portal\"\ncookie_key = \"file:{}\"\n",
            key.display()
        ),
        true,
    );
    assert_eq!(code, Some(0), "a public client on https is fine: {err}");
    let (code, err) = write(
        &format!(
            "public_url = \"https://gateway.example.edu/portal\"\nissuer = \"https://sso.example.edu\"\n\
             client_id = \"portal\"\ncookie_key = \"file:{}\"\n",
            key.display()
        ),
        true,
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("must be an origin"), "{err}");
}

#[test]
fn check_config_names_unknown_keys_and_missing_env() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"${REDCAP_GATEWAY_TEST_NOPE}\"\nverify_tls = false\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("REDCAP_GATEWAY_TEST_NOPE") && err.contains("upstream.url"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"http://127.0.0.1:1\"\nverify_tls = false\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verify_tls"), "{err}");
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("t");
    std::fs::write(&tok, "0123456789ABCDEF0123456789ABCDEF\n").unwrap();
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[projects.p]\ntoken = \"file:{}\"\n",
            tok.display()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

/// A config with one project `p` (its token in a file) and these grant lines.
fn project_p(grants: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("t");
    std::fs::write(&tok, "0123456789ABCDEF0123456789ABCDEF").unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[projects.p]\ntoken = \"file:{}\"\ntoken_owner = \"owner\"\n{grants}",
            tok.display()
        ),
    )
    .unwrap();
    (dir, cfg)
}

#[test]
fn policy_explain_shows_the_call_the_rules_and_the_decision() {
    let (_dir, cfg) = project_p(
        "[[projects.p.grants]]\ngroups = [\"mgr\"]\nallow = [\"user:*\"]\n[projects.p.user_rules]\nallow_all_dags = true\n",
    );
    let run = |body: &str| {
        bin()
            .args([
                "policy",
                "explain",
                "--config",
                cfg.to_str().unwrap(),
                "--user",
                "jane",
                "--groups",
                "mgr",
                "--project",
                "p",
                "--body",
                body,
            ])
            .output()
            .unwrap()
    };
    let out = run("content=user&action=export&format=json&data=%5B%7B%22username%22%3A%22bob%22%2C%22design%22%3A1%7D%5D");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("-> user:import"),
        "action=export with data is an import: {text}"
    );
    assert!(
        text.contains("consulted: grants: user:import allowed for jane"),
        "{text}"
    );
    assert!(
        text.contains("DENY by user_import") && text.contains("design=1 is above the ceiling 0"),
        "{text}"
    );
    let out = run("content=user&action=delete&users[]=bob");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("decision:  ALLOW") && text.contains("change:    bob: deleted"),
        "{text}"
    );
    let out = run("content=user&content=record");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than once"));
}

#[test]
fn policy_explain_prints_the_field_set_of_a_restricted_export() {
    let (dir, cfg) = project_p(
        "[[projects.p.grants]]\ngroups = [\"analysts\"]\nallow = [\"read\"]\nexport = \"deidentified\"\n\
         [[projects.p.grants]]\ngroups = [\"labs\"]\nallow = [\"read\"]\nexport = \"none\"\nexport_forms = { labs = \"full\" }\n",
    );
    let meta = dir.path().join("metadata.json");
    std::fs::write(
        &meta,
        r#"[{"field_name":"record_id","form_name":"intake","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"name","form_name":"intake","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":"y"},
            {"field_name":"age","form_name":"intake","field_type":"text","text_validation_type_or_show_slider_number":"integer","identifier":""},
            {"field_name":"hba1c","form_name":"labs","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":""}]"#,
    )
    .unwrap();
    let run = |groups: &str, body: &str, with_meta: bool| {
        let mut c = bin();
        c.args([
            "policy",
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            "ana",
            "--groups",
            groups,
            "--project",
            "p",
            "--body",
            body,
        ]);
        if with_meta {
            c.args(["--metadata", meta.to_str().unwrap()]);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run("analysts,labs", "content=record&format=json", true);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("export rights: deidentified; labs=full (widest per instrument"),
        "{text}"
    );
    assert!(
        text.contains("fields:    record_id,age,intake_complete,hba1c,labs_complete"),
        "{text}"
    );
    let (code, text) = run("analysts", "content=record&fields=name,age", true);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("fields:    age") && text.contains("dropped:   name (identifier)"),
        "{text}"
    );
    let (code, text) = run("analysts", "content=record&fields=name", true);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DENY by export_rights (403)"), "{text}");
    let (code, text) = run("analysts", "content=report&report_id=1", false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("content=report is not available"), "{text}");
    let (code, text) = run("analysts", "content=record", false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("give it with --metadata FILE"), "{text}");
}
