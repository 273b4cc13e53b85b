//! Export rights end to end against the fake REDCap: what reaches a restricted caller
//! in every format, what is asked of REDCap, the side doors, and the metadata copy.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use redcap_gateway::dev::{DEV_DEID_GROUP, DEV_GROUP};

async fn post_as(gw: &TestGateway, jwt: &str, body: &str) -> Reply {
    send(
        Request::post(gw.api())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("Bearer {jwt}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

fn analyst(gw: &TestGateway) -> String {
    gw.env.issuer.token("ana", &[DEV_DEID_GROUP])
}

/// The columns of an export answer, in any format.
fn columns(format: &str, eav: bool, r: &Reply) -> Vec<String> {
    let rows = redcap_gateway::fake_redcap::data::parse_rows(format, &r.body)
        .unwrap_or_else(|e| panic!("{format}: {e}: {}", r.text()));
    let mut cols: Vec<String> = Vec::new();
    for row in rows {
        if eav {
            let f = row.get("field_name").unwrap().to_string();
            if !cols.contains(&f) {
                cols.push(f);
            }
        } else {
            for (k, _) in row.0 {
                if !cols.contains(&k) {
                    cols.push(k);
                }
            }
        }
    }
    cols
}

const DEID_COLUMNS: &[&str] = &[
    "record_id",
    "age",
    "diet___1",
    "diet___2",
    "demographics_complete",
    "consent_file",
    "consent_complete",
];

#[tokio::test]
async fn a_deidentified_group_gets_exactly_the_allowed_columns_in_every_format() {
    let gw = TestGateway::start().await;
    let ana = analyst(&gw);
    for format in ["json", "csv", "xml"] {
        for eav in [false, true] {
            let ty = if eav { "&type=eav" } else { "" };
            let body = format!("content=record&format={format}&returnFormat={format}{ty}");
            let r = post_as(&gw, &ana, &body).await;
            assert_eq!(r.status, 200, "{format} {}", r.text());
            let got = columns(format, eav, &r);
            let mut want: Vec<String> = DEID_COLUMNS.iter().map(|s| s.to_string()).collect();
            if eav {
                // eav rows carry values, not empty cells: consent_file is empty.
                want.retain(|c| c != "consent_file");
            }
            assert_eq!(got, want, "{format} eav={eav}");
            for secret in ["Ada", "1990-01-01", "called on Monday"] {
                assert!(
                    !r.text().contains(secret),
                    "{format}: {secret} reached the analyst"
                );
            }
            let up = gw.env.fake.last_request().unwrap();
            assert_eq!(
                up.param("fields").unwrap(),
                "record_id,age,diet,demographics_complete,consent_file,consent_complete"
            );
        }
        // A full-rights member of the dev group sees everything, forwarded unchanged.
        let body = format!("content=record&format={format}");
        let r = gw.post(&body).await;
        assert_eq!(r.status, 200);
        let cols = columns(format, false, &r);
        for c in ["name", "dob", "notes"] {
            assert!(cols.contains(&c.to_string()), "{format}: {c}");
        }
        let up = gw.env.fake.last_request().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&up.body),
            format!("{body}&token={}", gw.token())
        );
    }
}

#[tokio::test]
async fn named_fields_are_narrowed_and_forbidden_ones_refused() {
    let gw = TestGateway::start().await;
    let ana = analyst(&gw);
    // PyCap names every field (and the record id): forbidden ones are dropped, audited.
    let r = post_as(
        &gw,
        &ana,
        "content=record&format=json&fields[0]=record_id&fields[1]=name&fields[2]=age&forms[0]=consent",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        columns("json", false, &r),
        ["record_id", "age", "consent_file", "consent_complete"]
    );
    // Nothing but the record id left of what was named: 403 naming the field.
    for body in [
        "content=record&format=json&fields[0]=name&fields[1]=record_id",
        "content=record&format=json&fields=dob",
        "content=record&format=json&exportSurveyFields=true",
        "content=record&format=json&filterLogic=%5Bname%5D%3D%27Ada%27",
        "content=record&format=json&filterLogic=%5Bage%5D%3D%27%5Bnotes%5D%27",
    ] {
        let r = post_as(&gw, &ana, body).await;
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string(), "REDCap's error shape");
    }
    let r = post_as(
        &gw,
        &ana,
        "content=record&format=csv&returnFormat=csv&fields=name",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("ERROR: "), "{}", r.text());
    assert!(r.text().contains("name (identifier)"), "{}", r.text());
    // Unknown fields and parameters the gateway does not know: 400.
    for body in [
        "content=record&format=json&fields=ssn",
        "content=record&format=json&report_id=1",
    ] {
        assert_eq!(post_as(&gw, &ana, body).await.status, 400, "{body}");
    }
    // A filter on allowed fields passes through as sent.
    let r = post_as(
        &gw,
        &ana,
        "content=record&format=json&filterLogic=%5Bage%5D%3E40",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
    let dropped = log
        .lines()
        .find(|l| l.contains("\"export_dropped\":[\"name (identifier)\"]"))
        .expect("the drop is audited");
    assert!(
        dropped.contains("\"export_rights\":\"deidentified\""),
        "{dropped}"
    );
    assert!(dropped.contains("\"export_fields\":\"record_id,age,consent_file,consent_complete\""));
}

#[tokio::test]
async fn side_doors_are_refused_for_restricted_callers_only() {
    let gw = TestGateway::start_with(|t| {
        t.replace(
            "allow = [\"read\"]\nexport = \"deidentified\"",
            "allow = [\"read\", \"project_xml:export\", \"log:export\", \"pdf:export\"]\nexport = \"deidentified\"",
        )
    })
    .await;
    let ana = analyst(&gw);
    let refused = [
        "content=report&report_id=1&format=json",
        "content=fileRepository&action=export&doc_id=1&format=json",
        "content=file&action=export&record=1&field=name&format=json",
        "content=project_xml&format=json",
        "content=project_xml&returnMetadataOnly=1&format=json",
        "content=log&format=json",
        "content=pdf&record=1&format=json",
    ];
    for body in refused {
        let r = post_as(&gw, &ana, body).await;
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains("export rights"), "{body}: {e}");
    }
    gw.env.fake.clear_requests();
    // Metadata, and a file field the rights include, pass.
    for body in [
        "content=metadata&format=json",
        "content=exportFieldNames&format=json",
        "content=file&action=export&record=1&field=consent_file&format=json",
        "content=project_xml&returnMetadataOnly=true&format=json",
    ] {
        let r = post_as(&gw, &ana, body).await;
        assert_ne!(r.status, 403, "{body}: {}", r.text());
    }
    assert_eq!(gw.env.fake.requests().len(), 4);
    // The full group is not affected (the fake has no report: REDCap's own 400).
    let r = gw.post("content=report&report_id=1&format=json").await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn metadata_copy_is_kept_when_redcap_fails_and_refreshed_after_an_import() {
    let gw = TestGateway::start_with(|t| {
        t.replacen(
            "allow = [\"read\", ",
            "allow = [\"read\", \"metadata:import\", ",
            1,
        )
    })
    .await;
    let ana = analyst(&gw);
    let cache = gw.env.gateway.metadata.clone();
    let metrics = gw.env.gateway.metrics.clone();
    // REDCap refuses the token now: the refresh fails, the last good copy stays in use.
    let project = gw.env.fake.remove_project(gw.token()).unwrap();
    assert!(cache.refresh("demo").await.is_err());
    gw.env.fake.add_project(gw.token(), project);
    let r = post_as(&gw, &ana, "content=record&format=json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = metrics.render();
    assert!(
        text.contains(
            "redcap_gateway_metadata_refreshes_total{project=\"demo\",result=\"error\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("redcap_gateway_metadata_fetched_timestamp_seconds{project=\"demo\"}"));

    // A metadata import through the gateway (age tagged as an identifier): the next
    // restricted export uses the new classification.
    let mut meta: Vec<serde_json::Value> =
        serde_json::from_slice(&gw.post("content=metadata&format=json").await.body).unwrap();
    for m in &mut meta {
        if m["field_name"] == "age" {
            m["identifier"] = "y".into();
        }
    }
    let data = serde_json::to_string(&meta).unwrap();
    let body = format!("content=metadata&format=json&data={}", url_encode(&data));
    let jwt = gw.env.issuer.token("dev-user", &[DEV_GROUP]);
    let r = post_as(&gw, &jwt, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_as(&gw, &ana, "content=record&format=json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!columns("json", false, &r).contains(&"age".to_string()));
}

#[tokio::test]
async fn restricted_callers_fail_closed_without_any_metadata() {
    // REDCap is unreachable from the start: the analyst gets 503 in REDCap's shape, the
    // full group's call goes on to REDCap (and gets 502).
    let gw = TestGateway::start_with(|t| {
        t.replace(
            "[upstream]\nurl = \"",
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n#",
        )
    })
    .await;
    let r = post_as(&gw, &analyst(&gw), "content=record&format=json").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("metadata"));
    let r = gw.post("content=record&format=json").await;
    assert_eq!(r.status, 502, "{}", r.text());
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
