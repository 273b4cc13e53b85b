//! Operations: the audit log (complete, chained, fail-closed, secret-free), Prometheus
//! metrics (parsed by a real text-format parser), and rate limits (a fake clock for the
//! global cap, a real Redis shared by two gateways).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::Request;
use redcap_gateway::audit::chain;
use redcap_gateway::config::{Dur, RateConfig};
use redcap_gateway::ratelimit::RateLimits;

fn audit_lines(gw: &TestGateway) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let (_, _, body) = chain::open(l).expect("sealed line");
            serde_json::from_str(&format!("{{{body}")).unwrap()
        })
        .collect()
}

async fn wait_for_finals(gw: &TestGateway, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        gw.env.gateway.audit.flush().await.unwrap();
        let lines = audit_lines(gw);
        if lines.iter().filter(|l| l["phase"] == "final").count() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit_lines(gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_final_record_and_changes_an_intent_first() {
    let gw = TestGateway::start().await;
    let auth = format!("Bearer {}", gw.jwt);
    let import = "content=user&format=json&returnFormat=json&data=%5B%7B%22username%22%3A%22eve%22%2C%22data_access_group%22%3A%22site_a%22%7D%5D";
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let reqs: Vec<(&str, &str, Option<&str>, &str)> = vec![
        (
            "POST",
            "/p/demo/api/",
            Some(&auth),
            "content=record&format=json",
        ),
        ("POST", "/p/demo/api/", Some(&auth), import),
        (
            "POST",
            "/p/demo/api/",
            Some(&auth),
            "content=user&action=delete&users[]=redcap_owner",
        ),
        (
            "POST",
            "/p/demo/api/",
            Some(&auth),
            "content=record&content=user",
        ),
        ("POST", "/p/demo/api/", None, "content=record"),
        ("POST", "/p/nope/api/", Some(&auth), "content=record"),
        ("GET", "/p/demo/api/", Some(&auth), ""),
        ("POST", "/elsewhere", None, ""),
        (
            "POST",
            "/p/demo/api/",
            Some("Bearer forged.token.here"),
            "token=0123456789ABCDEF0123456789ABCDEF&content=record",
        ),
    ];
    for (method, path, a, body) in &reqs {
        let mut b = Request::builder().method(*method).uri(gw.url(path));
        if let Some(a) = a {
            b = b.header("authorization", *a);
        }
        let r = send(form(b, body)).await;
        ids.push(r.headers["x-request-id"].to_str().unwrap().to_string());
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 403, 400, 401, 404, 405, 404, 401]);
    let lines = wait_for_finals(&gw, reqs.len()).await;
    let finals: Vec<_> = lines.iter().filter(|l| l["phase"] == "final").collect();
    assert_eq!(
        finals.len(),
        reqs.len(),
        "exactly one final record per request"
    );
    let by_id: HashMap<String, &serde_json::Value> = finals
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap().to_string(), *l))
        .collect();
    assert_eq!(by_id.len(), reqs.len(), "request ids are distinct");
    for (id, status) in ids.iter().zip(&statuses) {
        let rec = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(rec["status"], *status, "{rec}");
        assert_eq!(rec["complete"], true);
    }
    // The allowed import: an intent record, written before the final one, naming the change.
    let intents: Vec<_> = lines.iter().filter(|l| l["phase"] == "intent").collect();
    assert_eq!(intents.len(), 1, "only the allowed change has an intent");
    assert_eq!(intents[0]["request_id"], ids[1].as_str());
    assert_eq!(intents[0]["users"], serde_json::json!(["eve"]));
    assert!(intents[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "eve: data_access_group=site_a"));
    let pos = |phase: &str, id: &str| {
        lines
            .iter()
            .position(|l| l["phase"] == phase && l["request_id"] == id)
            .unwrap()
    };
    assert!(pos("intent", &ids[1]) < pos("final", &ids[1]));
    // Denials carry the rule and reasons; the record names the real person.
    let denied = by_id[&ids[2]];
    assert_eq!(
        (denied["decision"].as_str(), denied["rule"].as_str()),
        (Some("deny"), Some("user_delete"))
    );
    assert_eq!(denied["user"], "dev-user");
    assert_eq!(denied["users"], serde_json::json!(["redcap_owner"]));
    assert_eq!(by_id[&ids[4]]["error"], "unauthenticated");
    assert_eq!(by_id[&ids[0]]["upstream_status"], 200);
    // The chain verifies, and holds no secret.
    let text = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    assert!(chain::verify(&[("audit.log".into(), text.clone())], None).is_ok());
    for secret in [
        gw.token(),
        gw.jwt.rsplit('.').next().unwrap(),
        "0123456789ABCDEF0123456789ABCDEF",
    ] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
    assert!(!text.contains("site_a\\\"}"), "no raw data payloads");
}

#[tokio::test]
async fn verify_audit_names_the_first_broken_line() {
    let gw = TestGateway::start().await;
    for _ in 0..5 {
        gw.post("content=version").await;
    }
    wait_for_finals(&gw, 5).await;
    let path = gw.env.dir.path().join("audit.log");
    let verify = |file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
            .arg("verify-audit")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = verify(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: 5 records"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("\"dev-user\"", "\"someone-else\"");
    let tampered = gw.env.dir.path().join("tampered.log");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let out = verify(&tampered);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("tampered.log:3"), "{stdout}");
    lines.remove(1);
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let out = verify(&tampered);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tampered.log:2"),
        "a deleted line"
    );
}

#[tokio::test]
async fn audit_rotation_keeps_one_chain() {
    let gw = TestGateway::start_with(|t| {
        t.replace("[audit]\n", "[audit]\nmax_bytes = \"4KiB\"\nkeep = 20\n")
    })
    .await;
    for _ in 0..30 {
        gw.post("content=version").await;
    }
    wait_for_finals(&gw, 1).await;
    for _ in 0..100 {
        gw.env.gateway.audit.flush().await.unwrap();
        let files = redcap_gateway::audit::chain_files(&gw.env.dir.path().join("audit.log"));
        let texts: Vec<(String, String)> = files
            .iter()
            .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
            .collect();
        let v = chain::verify(&texts, None).unwrap();
        if v.records >= 30 {
            assert!(files.len() > 2, "rotated into several files");
            assert!(!v.starts_mid_chain);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("records missing");
}

#[tokio::test]
async fn a_failing_audit_sink_refuses_changes_and_serves_reads_when_configured() {
    let gw = TestGateway::start_with(set_first("path", "/dev/full".to_string())).await;
    let import = "content=userDagMapping&format=json&returnFormat=json&data=%5B%7B%22username%22%3A%22bob%22%2C%22redcap_data_access_group%22%3A%22site_a%22%7D%5D";
    let r = gw.post(import).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("audit"));
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        gw.env.fake.requests().is_empty(),
        "the change never reached REDCap"
    );
    let r = gw.post("content=record&format=json").await;
    assert_eq!(r.status, 200, "reads are served (on_failure_reads = serve)");
    assert!(
        gw.env.gateway.ready().is_err(),
        "not ready while the audit log fails"
    );

    let gw = TestGateway::start_with(set_first(
        "path",
        "/dev/full\"\non_failure_reads = \"refuse".to_string(),
    ))
    .await;
    assert_eq!(gw.post(import).await.status, 503);
    let r = gw.post("content=record&format=json").await;
    assert_eq!(
        r.status, 503,
        "reads are refused too (on_failure_reads = refuse)"
    );
}

fn python_parse_metrics(text: &str) -> Option<serde_json::Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {"type": fam.type, "samples": [[s.name, s.labels, s.value] for s in fam.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named") {
            assert!(!required(), "prometheus_client is required in CI");
            eprintln!("SKIPPED: pip install prometheus_client");
            return None;
        }
        panic!("the Prometheus parser rejected the metrics: {err}");
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_bounded_labels() {
    let gw = TestGateway::start().await;
    let admin_addr = gw.serve_admin().await;
    gw.post("content=record&format=json").await;
    gw.post("content=dag&action=switch&dag=x").await;
    send(form(Request::post(gw.api()), "content=record")).await;
    let expired = gw.env.issuer.token_with(serde_json::json!({"exp": 1000}));
    send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {expired}")),
        "content=record",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = send(form(
        Request::get(format!("http://{admin_addr}/metrics")),
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains("dev-user"), "user names never become labels");
    let Some(families) = python_parse_metrics(&text) else {
        return;
    };
    for name in [
        "redcap_gateway_requests",
        "redcap_gateway_request_duration_seconds",
        "redcap_gateway_upstream_duration_seconds",
        "redcap_gateway_requests_in_flight",
        "redcap_gateway_auth_failures",
        "redcap_gateway_audit_writes",
        "redcap_gateway_response_bytes",
    ] {
        assert!(
            families.get(name).is_some(),
            "missing {name}: {:?}",
            families.as_object().unwrap().keys().collect::<Vec<_>>()
        );
    }
    let samples = families["redcap_gateway_requests"]["samples"]
        .as_array()
        .unwrap();
    let find = |decision: &str, status: &str| {
        samples.iter().any(|s| {
            s[1]["decision"] == decision && s[1]["status"] == status && s[1]["project"] == "demo"
        })
    };
    assert!(
        find("allow", "2xx") && find("deny", "4xx") && find("none", "4xx"),
        "{samples:?}"
    );
    let auth = families["redcap_gateway_auth_failures"]["samples"]
        .as_array()
        .unwrap();
    assert!(
        auth.iter().any(|s| s[1]["reason"] == "missing")
            && auth.iter().any(|s| s[1]["reason"] == "expired"),
        "{auth:?}"
    );
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/nothing", 404)] {
        let r = send(form(Request::get(format!("http://{admin_addr}{path}")), "")).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
    }
    // Gzipped when the scraper asks, as Prometheus does (tower-http's compression).
    let zipped = send(form(
        Request::get(format!("http://{admin_addr}/metrics")).header("accept-encoding", "gzip"),
        "",
    ))
    .await;
    assert_eq!(zipped.headers["content-encoding"], "gzip");
    assert!(zipped.body.starts_with(&[0x1f, 0x8b]), "a gzip stream");
    assert!(
        zipped.body.len() * 3 < text.len(),
        "{} bytes",
        zipped.body.len()
    );
}

#[tokio::test]
async fn rate_limited_calls_get_429_with_retry_after_and_are_not_forwarded() {
    let gw = TestGateway::start_with(|t| t.replacen("\n[projects.demo]", "\n[rate_limit]\nper_user = { limit = 3, per = \"60s\" }\nmutating_cost = 2\n\n[projects.demo]", 1)).await;
    for _ in 0..3 {
        assert_eq!(gw.post("content=version").await.status, 200);
    }
    for rf in ["json", "csv", "xml"] {
        let r = gw.post(&format!("content=version&returnFormat={rf}")).await;
        assert_eq!(r.status, 429);
        let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&secs), "{secs}");
        assert!(r.text().contains("rate limit"), "{}", r.text());
    }
    assert_eq!(gw.env.fake.requests().len(), 3);
    // Another user is not affected.
    let other = gw.env.issuer.token("someone", &["redcap-dev"]);
    let r = send(form(
        Request::post(gw.api()).header("authorization", format!("Bearer {other}")),
        "content=version",
    ))
    .await;
    assert_eq!(r.status, 200);
}

/// Many users, a fake clock: everything the upstream cap lets through stays within
/// REDCap's budget in every window, however the users' traffic is shaped.
#[test]
fn the_upstream_cap_holds_for_many_users_on_a_fake_clock() {
    let clock = governor::clock::FakeRelativeClock::default();
    let per_min = 500u32;
    let burst = 20u32;
    let upstream = RateLimits::local_with_clock(
        &RateConfig {
            limit: per_min,
            per: Dur(Duration::from_secs(60)),
            burst: Some(burst),
        },
        clock.clone(),
    );
    let per_user = RateLimits::local_with_clock(
        &RateConfig {
            limit: 120,
            per: Dur(Duration::from_secs(60)),
            burst: Some(30),
        },
        clock.clone(),
    );
    let mut allowed_at = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let step = Duration::from_millis(5);
    let mut now = Duration::ZERO;
    // 200 users, each trying at random moments, for 5 virtual minutes.
    while now < Duration::from_secs(300) {
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let user = format!("u{}", seed % 200);
            let cost = if seed.is_multiple_of(10) { 5 } else { 1 };
            if per_user.check_now(&user, cost).is_ok() && upstream.check_now("all", cost).is_ok() {
                for _ in 0..cost {
                    allowed_at.push(now);
                }
            }
        }
        clock.advance(step);
        now += step;
    }
    // In every 60 s window: at most burst + per_min units reached REDCap.
    let mut worst = 0;
    let mut lo = 0;
    for hi in 0..allowed_at.len() {
        while allowed_at[hi] - allowed_at[lo] >= Duration::from_secs(60) {
            lo += 1;
        }
        worst = worst.max(hi - lo + 1);
    }
    assert!(worst as u32 <= per_min + burst, "{worst} in one minute");
    assert!(
        allowed_at.len() as u32 >= per_min * 4,
        "the cap is used, not starved: {}",
        allowed_at.len()
    );
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis() -> Option<Redis> {
    if !have("redis-server", &["--version"]) {
        return None;
    }
    let port = common::free_port();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned at once, so the server is stopped on every path.
    let server = Redis(server, port);
    assert!(wait_for_port(port).await, "redis-server did not start");
    Some(server)
}

fn shared_limits(port: u16, extra: &str) -> impl FnOnce(String) -> String {
    let section = format!(
        "\n[rate_limit]\nupstream = {{ limit = 10, per = \"60s\" }}\nupstream_queue = \"0s\"\nredis_url = \"redis://127.0.0.1:{port}/\"\nreplicas = 2\n{extra}\n"
    );
    before_projects(section)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_upstream_cap_through_redis() {
    let Some(r) = redis().await else { return };
    let a = TestGateway::start_with(shared_limits(r.1, "")).await;
    let b = TestGateway::start_with(shared_limits(r.1, "")).await;
    // Replica A spends 6 of the shared 10; replica B then gets only the remaining 4.
    let mut a_ok = 0;
    for _ in 0..6 {
        a_ok += u32::from(a.post("content=version").await.status == 200);
    }
    let mut b_statuses = Vec::new();
    for _ in 0..6 {
        b_statuses.push(b.post("content=version").await.status);
    }
    assert_eq!(a_ok, 6);
    let b_ok = b_statuses.iter().filter(|s| **s == 200).count();
    assert!((4..=5).contains(&b_ok), "B sees A's usage: {b_statuses:?}");
    assert!(b_statuses.iter().all(|s| *s == 200 || *s == 429));
    // A burst from both at once: nothing more gets through.
    let (ra, rb) = tokio::join!(a.post("content=version"), b.post("content=version"));
    assert!(ra.status == 429 && rb.status == 429);
    let forwarded = a.env.fake.requests().len() + b.env.fake.requests().len();
    assert_eq!(forwarded, 6 + b_ok, "only admitted calls reached REDCap");

    // Redis goes away: each replica falls back to its share (10 / 2 replicas), counted.
    drop(r);
    let c = TestGateway::start_with(shared_limits(1, "redis_timeout = \"100ms\"")).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(c.post("content=version").await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(c.env.gateway.metrics.redis_errors.get() >= 8);
    let d = TestGateway::start_with(shared_limits(
        1,
        "redis_timeout = \"100ms\"\non_redis_error = \"reject\"",
    ))
    .await;
    let r = d.post("content=version&returnFormat=json").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(d.env.fake.requests().is_empty());
}

/// A client's own short, printable `X-Request-Id` is kept end to end (REDCap, response,
/// audit record); an unusable one (too long, not printable) is replaced by a fresh UUID,
/// so every record carries an id that can be searched for.
#[tokio::test]
async fn client_request_ids_are_kept_when_usable_and_replaced_otherwise() {
    let gw = TestGateway::start().await;
    let long = "x".repeat(129);
    let cases: [(&[u8], bool); 3] = [
        (b"job-42.step-7", true),
        (long.as_bytes(), false),
        (b"caf\xc3\xa9", false),
    ];
    let mut sent = Vec::new();
    for (id, kept) in cases {
        let req = form(
            Request::post(gw.api())
                .header("authorization", format!("Bearer {}", gw.jwt))
                .header("x-request-id", http::HeaderValue::from_bytes(id).unwrap()),
            "content=record&format=json",
        );
        let r = send(req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echoed = r.headers["x-request-id"].as_bytes().to_vec();
        let up = gw.env.fake.last_request().expect("reached REDCap");
        assert_eq!(up.headers["x-request-id"].as_bytes(), &echoed[..]);
        if kept {
            assert_eq!(echoed, id);
        } else {
            assert_ne!(echoed, id);
            let uuid = uuid::Uuid::parse_str(std::str::from_utf8(&echoed).unwrap()).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
        }
        sent.push(String::from_utf8(echoed).unwrap());
    }
    let lines = wait_for_finals(&gw, sent.len()).await;
    for id in &sent {
        assert!(
            lines
                .iter()
                .any(|l| l["phase"] == "final" && l["request_id"] == id.as_str()),
            "no final record for {id}"
        );
    }
}
