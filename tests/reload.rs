//! Hot reload: a valid new config takes over, a bad one is rejected while the running
//! one keeps serving, restart-only sections keep their running values, requests in flight
//! finish on the config they started on, and the real binary reloads on SIGHUP and on a
//! change of the file.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use redcap_gateway::reload::Reloaded;

const READ_GRANT: &str = "allow = [\"read\", ";
const NO_READ_GRANT: &str = "allow = [";

fn edit_config(gw: &TestGateway, edit: impl FnOnce(String) -> String) {
    let path = gw.env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

/// `redcap_gateway_reloads_total{what="config",result}` as rendered for Prometheus.
fn reloads(gw: &TestGateway, result: &str) -> u64 {
    counted(gw, "config", result)
}

fn counted(gw: &TestGateway, what: &str, result: &str) -> u64 {
    let text = gw.live.gateway().metrics.render();
    text.lines()
        .find(|l| {
            l.starts_with("redcap_gateway_reloads_total{")
                && l.contains(&format!("what=\"{what}\""))
                && l.contains(&format!("result=\"{result}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_valid_config_takes_over_and_a_bad_one_is_rejected_while_the_last_good_serves() {
    let gw = TestGateway::start().await;
    let export = "content=record&format=json";
    assert_eq!(gw.post(export).await.status, 200);
    let original = std::fs::read_to_string(gw.env.config_path()).unwrap();

    // The dev group loses "read": record exports are denied from the next request on.
    edit_config(&gw, |t| t.replacen(READ_GRANT, NO_READ_GRANT, 1));
    assert_eq!(
        gw.live.reload(false).await.unwrap(),
        Reloaded::Applied { kept: vec![] }
    );
    let r = gw.post(export).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let generation = gw.live.generation();

    // A syntax error, then a config that parses but fails a check: both rejected with
    // their problems named, and the last good config keeps serving.
    edit_config(&gw, |t| t + "\n[[[\n");
    let errs = gw.live.reload(false).await.unwrap_err();
    assert!(errs[0].contains("TOML syntax error at line"), "{errs:?}");
    edit_config(&gw, |_| {
        original.replacen(READ_GRANT, "allow = [\"record:obliterate\", ", 1)
    });
    let errs = gw.live.reload(false).await.unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("record:obliterate")),
        "{errs:?}"
    );
    assert_eq!(gw.live.generation(), generation);
    assert_eq!(gw.post(export).await.status, 403, "still the last good one");
    // The same bad file again is not acted on (or logged) a second time by a poll.
    assert_eq!(gw.live.reload(false).await.unwrap(), Reloaded::Unchanged);
    // A token file that cannot be read is a bad config too.
    edit_config(&gw, |_| original.replace("demo.token", "missing.token"));
    let errs = gw.live.reload(false).await.unwrap_err();
    assert!(errs.iter().any(|e| e.contains("missing.token")), "{errs:?}");

    // A missing file: rejected once, not again on every poll.
    std::fs::remove_file(gw.env.config_path()).unwrap();
    assert!(gw.live.reload(false).await.is_err());
    assert_eq!(gw.live.reload(false).await.unwrap(), Reloaded::Unchanged);

    std::fs::write(gw.env.config_path(), &original).unwrap();
    assert!(matches!(
        gw.live.reload(false).await,
        Ok(Reloaded::Applied { .. })
    ));
    assert_eq!(gw.post(export).await.status, 200);
    assert_eq!(reloads(&gw, "ok"), 2);
    assert_eq!(reloads(&gw, "error"), 4);
}

#[tokio::test]
async fn restart_only_sections_keep_their_running_values() {
    let gw = TestGateway::start().await;
    let audit = gw.env.dir.path().join("audit.log");
    edit_config(&gw, |t| {
        t.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"7s\"")
            .replace("audit.log", "elsewhere.log")
            .replacen(READ_GRANT, NO_READ_GRANT, 1)
    });
    assert_eq!(
        gw.live.reload(false).await.unwrap(),
        Reloaded::Applied {
            kept: vec!["server", "audit"]
        }
    );
    let g = gw.live.gateway();
    assert_eq!(g.config.server.shutdown_grace.0, Duration::from_secs(5));
    assert_eq!(g.config.audit.path.as_deref(), Some(audit.as_path()));
    // The rest of the file did take effect, and the audit chain goes on in one file.
    assert_eq!(gw.post("content=record&format=json").await.status, 403);
    g.audit.flush().await.unwrap();
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.contains("\"decision\":\"deny\""), "{text}");
    assert!(!gw.env.dir.path().join("elsewhere.log").exists());
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_config_they_started_on() {
    let up = slow_ok_upstream(Duration::from_millis(800)).await;
    let gw = TestGateway::start_with(set_first("url", format!("http://{up}"))).await;
    let slow = {
        let api = gw.api();
        let jwt = gw.jwt.clone();
        tokio::spawn(async move {
            send(form(
                http::Request::post(api).header("authorization", format!("Bearer {jwt}")),
                "content=record&format=json",
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    edit_config(&gw, |t| t.replacen(READ_GRANT, NO_READ_GRANT, 1));
    assert!(matches!(
        gw.live.reload(true).await,
        Ok(Reloaded::Applied { .. })
    ));
    assert_eq!(gw.post("content=record&format=json").await.status, 403);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "admitted before the reload: {}", r.text());
}

/// The real binary in dev mode: SIGHUP reloads at once, and an edit of the file is
/// picked up by the watcher without a signal; the process keeps serving throughout.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_reloads_on_sighup_and_on_file_change() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_redcap-gateway"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut jwt, mut config) = (None, None);
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("eyJ") {
            jwt = Some(line.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("The config is ") {
            config = rest.split(':').next().map(std::path::PathBuf::from);
            break;
        }
    }
    let (jwt, config) = (
        jwt.expect("banner JWT"),
        config.expect("banner config path"),
    );
    assert!(wait_for_port(port).await);
    let api = format!("http://127.0.0.1:{port}/p/demo/api/");
    let export = || {
        send(form(
            http::Request::post(api.clone()).header("authorization", format!("Bearer {jwt}")),
            "content=record&format=json",
        ))
    };
    let until = |want: u16| async move {
        for _ in 0..100 {
            if export().await.status == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert_eq!(export().await.status, 200);
    let original = std::fs::read_to_string(&config).unwrap();

    // Written, then signalled at once: SIGHUP reloads without waiting for the poll.
    std::fs::write(&config, original.replacen(READ_GRANT, NO_READ_GRANT, 1)).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(until(403).await, "SIGHUP applied the new grants");
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP did not end it");

    // No signal: the watcher (dev polls every 2 s) sees the edit.
    std::fs::write(&config, &original).unwrap();
    assert!(until(200).await, "the file change was picked up");
}

/// Rate limits and body limits are ordinary settings: a reload changes them.
#[tokio::test]
async fn rate_and_body_limits_change_on_reload() {
    let gw = TestGateway::start().await;
    let export = "content=record&format=json";
    for _ in 0..3 {
        assert_eq!(gw.post(export).await.status, 200);
    }
    edit_config(&gw, |t| {
        t.replacen(
            "[upstream]",
            "[rate_limit]\nper_user = { limit = 1, per = \"1m\" }\n\n\
             [limits]\nmax_urlencoded_body = \"1KiB\"\n\n[upstream]",
            1,
        )
    });
    assert!(matches!(
        gw.live.reload(false).await,
        Ok(Reloaded::Applied { .. })
    ));
    let big = format!("{export}&filterLogic={}", "x".repeat(2000));
    assert_eq!(gw.post(&big).await.status, 413, "the new body limit");
    assert_eq!(gw.post(export).await.status, 200);
    let r = gw.post(export).await;
    assert_eq!(r.status, 429, "the new per-user rate: {}", r.text());
}

/// A project token file rotated in place is picked up (dev polls every 2 s) and counted.
#[tokio::test]
async fn a_rotated_project_token_is_reloaded_and_counted() {
    let gw = TestGateway::start().await;
    let token_file = gw.env.dir.path().join("demo.token");
    let next = redcap_gateway::secret::random_redcap_token();
    std::fs::write(&token_file, next.expose()).unwrap();
    for _ in 0..100 {
        if counted(&gw, "token", "ok") == 1 {
            let v = gw.live.gateway().vault.token("demo").unwrap();
            assert_eq!(v.expose(), next.expose());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rotated token was not reloaded within 5 s");
}

/// A replaced gateway is freed once nothing uses it, so its background work (token file
/// polls, JWKS refreshes) stops instead of piling up with every reload.
#[tokio::test]
async fn a_replaced_gateway_is_dropped() {
    let gw = TestGateway::start().await;
    edit_config(&gw, |t| {
        t.replace("max_users_per_delete = 5", "max_users_per_delete = 4")
    });
    assert!(gw.live.reload(false).await.is_ok());
    assert_eq!(gw.post("content=record&format=json").await.status, 200);
    let replaced = std::sync::Arc::downgrade(&gw.live.gateway());
    edit_config(&gw, |t| {
        t.replace("max_users_per_delete = 4", "max_users_per_delete = 3")
    });
    assert!(gw.live.reload(false).await.is_ok());
    // Every serving thread moves to the new stack on its next request.
    for _ in 0..8 {
        assert_eq!(gw.post("content=record&format=json").await.status, 200);
    }
    for _ in 0..100 {
        if replaced.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the replaced gateway is still alive");
}

/// After a reload, SIGTERM still drains: the drain flag and the in-flight requests of the
/// new generation are the ones shutdown waits for.
#[tokio::test]
async fn shutdown_after_a_reload_still_drains() {
    let up = slow_ok_upstream(Duration::from_millis(500)).await;
    let mut gw = TestGateway::start_with(set_first("url", format!("http://{up}"))).await;
    edit_config(&gw, |t| {
        t.replace("max_users_per_delete = 5", "max_users_per_delete = 4")
    });
    assert!(gw.live.reload(false).await.is_ok());
    let (api, jwt) = (gw.api(), gw.jwt.clone());
    let inflight = tokio::spawn(async move {
        send(form(
            http::Request::post(api).header("authorization", format!("Bearer {jwt}")),
            "content=record&format=json",
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.shutdown();
    assert_eq!(
        inflight.await.unwrap().status,
        200,
        "finished while draining"
    );
    gw.stopped().await;
}
