//! DAG scoping end to end against the fake REDCap: a site's staff read and change only
//! their site's records, in every format; the refusals; the audit record.

mod common;

use common::*;
use redcap_gateway::dev::DEV_SITE_GROUP;
use redcap_gateway::fake_redcap::data::{parse_rows, Row};

fn site_a(gw: &TestGateway) -> String {
    gw.env.issuer.token("sam", &[DEV_SITE_GROUP])
}

/// Records of three DAGs and one in none.
async fn three_dags() -> TestGateway {
    let gw = TestGateway::start().await;
    let mut p = gw.env.fake.project(gw.token()).unwrap();
    let mut extra = p.records[0].clone();
    extra.set("record_id", "4");
    extra.set("redcap_data_access_group", "site_c");
    p.records.push(extra.clone());
    extra.set("record_id", "5");
    extra.set("redcap_data_access_group", "");
    p.records.push(extra);
    gw.env.fake.add_project(gw.token(), p);
    gw
}

fn records(format: &str, eav: bool, r: &Reply) -> (Vec<String>, Vec<Row>) {
    let rows =
        parse_rows(format, &r.body).unwrap_or_else(|e| panic!("{format}: {e}: {}", r.text()));
    let key = if eav { "record" } else { "record_id" };
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r.get(key).unwrap().to_string())
        .collect();
    ids.dedup();
    (ids, rows)
}

#[tokio::test]
async fn a_site_sees_only_its_records_in_every_format() {
    let gw = three_dags().await;
    let sam = site_a(&gw);
    for format in ["json", "csv", "xml"] {
        for eav in [false, true] {
            for asked in [false, true] {
                let mut body = format!("content=record&format={format}&returnFormat={format}");
                if eav {
                    body += "&type=eav";
                }
                if asked {
                    body += "&exportDataAccessGroups=true";
                }
                let r = post_as(&gw, &sam, &body).await;
                assert_eq!(r.status, 200, "{body}: {}", r.text());
                assert!(r.headers.get("content-length").is_none());
                let (ids, rows) = records(format, eav, &r);
                assert_eq!(ids, ["1", "3"], "{body}");
                for secret in ["Grace", "site_b", "site_c"] {
                    assert!(
                        !r.text().contains(secret),
                        "{body}: {secret} reached site A"
                    );
                }
                let dag_seen = rows.iter().any(|row| {
                    row.get("redcap_data_access_group").is_some()
                        || row.get("field_name") == Some("redcap_data_access_group")
                });
                assert_eq!(dag_seen, asked, "{body}");
                let up = gw.env.fake.last_request().unwrap();
                assert_eq!(up.param("exportDataAccessGroups").as_deref(), Some("true"));
            }
        }
        // Unscoped: every record, the request as it came.
        let r = gw.post(&format!("content=record&format={format}")).await;
        assert_eq!(records(format, false, &r).0, ["1", "2", "3", "4", "5"]);
    }
    // Other delimiters, named records.
    for d in ["tab", ";", "|", "^"] {
        let r = post_as(
            &gw,
            &sam,
            &format!(
                "content=record&format=csv&csvDelimiter={}&records=1,2",
                url_encode(d)
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{d}: {}", r.text());
        assert_eq!(r.text().lines().count(), 2, "{d}: {}", r.text());
    }
    // The audit record says the call was scoped and how many rows were dropped.
    let mut last = None;
    for _ in 0..50 {
        let audit = std::fs::read_to_string(gw.env.dir.path().join("audit.log")).unwrap();
        last = audit
            .lines()
            .find(|l| l.contains("\"dag_scope\":\"site_a\"") && l.contains("\"phase\":\"final\""))
            .map(str::to_string);
        if last.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = last.expect("a scoped export is audited");
    // The first scoped export (json, flat): records 2, 4 and 5 dropped.
    assert!(first.contains("\"rows_dropped\":3"), "{first}");
}

#[tokio::test]
async fn labels_odm_and_side_doors_are_refused() {
    let gw = TestGateway::start_with(|t| {
        t.replace(
            "allow = [\"read\", \"record:import\", \"record:delete\"]",
            "allow = [\"read\", \"record:import\", \"record:delete\", \"log:export\", \"pdf:export\", \"file:*\"]",
        )
    })
    .await;
    let sam = site_a(&gw);
    for body in [
        "content=record&format=json&rawOrLabel=label",
        "content=record&format=csv&rawOrLabelHeaders=label",
        "content=record&format=odm",
        "content=record&format=csv&csvDelimiter=x",
        "content=report&report_id=1&format=json",
        "content=log&format=json",
        "content=pdf&record=1&format=json",
        "content=file&action=export&record=2&field=consent_file&format=json",
    ] {
        let r = post_as(&gw, &sam, body).await;
        assert_eq!(r.status, 403, "{body}: {}", r.text());
    }
    // A file of a site A record passes the scope (the fake has no file: its own 400).
    let r = post_as(
        &gw,
        &sam,
        "content=file&action=export&record=1&field=consent_file&format=json",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn imports_and_deletes_stay_in_the_sites_groups() {
    let gw = TestGateway::start().await;
    let sam = site_a(&gw);
    let import = |data: &str| {
        format!(
            "content=record&action=import&format=json&data={}",
            url_encode(data)
        )
    };
    for (data, why) in [
        (
            r#"[{"record_id":"9","age":"1","redcap_data_access_group":"site_b"}]"#,
            "not one of your",
        ),
        (r#"[{"record_id":"9","age":"1"}]"#, "must give each row"),
        // Record 2 is site B's: an import would move it into site A.
        (
            r#"[{"record_id":"2","age":"1","redcap_data_access_group":"site_a"}]"#,
            "not in your data access groups",
        ),
    ] {
        let r = post_as(&gw, &sam, &import(data)).await;
        assert_eq!(r.status, 403, "{data}: {}", r.text());
        assert!(r.text().contains(why), "{data}: {}", r.text());
    }
    let r = post_as(&gw, &sam, &import(r#"[{"record_id":"9","age":"1","redcap_data_access_group":"site_a"},{"record_id":"1","age":"37","redcap_data_access_group":"site_a"}]"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // eav: each record's group row.
    let eav = |data: &str| {
        format!(
            "content=record&action=import&format=json&type=eav&data={}",
            url_encode(data)
        )
    };
    let r = post_as(
        &gw,
        &sam,
        &eav(r#"[{"record":"10","field_name":"age","value":"3"}]"#),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post_as(&gw, &sam, &eav(r#"[{"record":"10","field_name":"age","value":"3"},{"record":"10","field_name":"redcap_data_access_group","value":"site_a"}]"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Deletes: a record of another group and one that does not exist get the same answer.
    for records in ["records[]=2", "records[]=1&records[]=77"] {
        let r = post_as(
            &gw,
            &sam,
            &format!("content=record&action=delete&{records}"),
        )
        .await;
        assert_eq!(r.status, 403, "{records}: {}", r.text());
        assert!(r.text().contains("not in your data access groups"));
    }
    let before = gw.env.fake.project(gw.token()).unwrap().records.len();
    let r = post_as(&gw, &sam, "content=record&action=delete&records[]=9").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gw.env.fake.project(gw.token()).unwrap().records.len(),
        before - 1
    );
}

#[tokio::test]
async fn an_owner_in_a_dag_refuses_scoped_calls_with_503() {
    let gw = TestGateway::start().await;
    let mut p = gw.env.fake.project(gw.token()).unwrap();
    p.owner_dag = "site_b".into();
    gw.env.fake.add_project(gw.token(), p);
    let r = post_as(&gw, &site_a(&gw), "content=record&format=json").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("data access group"), "{}", r.text());
    assert!(!r.text().contains("Grace"));
    // Asking REDCap for record 2's group: the answer has no DAG column.
    let r = post_as(
        &gw,
        &site_a(&gw),
        "content=record&action=delete&records[]=2",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
}

/// Export rights and DAG scope together: the columns the rights keep, of the site's rows.
#[tokio::test]
async fn rights_and_scope_apply_together() {
    let gw = TestGateway::start_with(|t| {
        t.replace(
            "allow = [\"read\", \"record:import\", \"record:delete\"]\nexport = \"full\"",
            "allow = [\"read\", \"record:import\", \"record:delete\"]\nexport = \"deidentified\"",
        )
    })
    .await;
    let sam = site_a(&gw);
    for format in ["json", "csv", "xml"] {
        let r = post_as(
            &gw,
            &sam,
            &format!("content=record&format={format}&returnFormat={format}"),
        )
        .await;
        assert_eq!(r.status, 200, "{format}: {}", r.text());
        let (ids, rows) = records(format, false, &r);
        assert_eq!(ids, ["1", "3"], "{format}");
        for row in &rows {
            assert!(
                row.get("name").is_none() && row.get("dob").is_none(),
                "{format}: {row:?}"
            );
            assert!(row.get("redcap_data_access_group").is_none(), "{format}");
        }
        let up = gw.env.fake.last_request().unwrap();
        assert_eq!(up.param("exportDataAccessGroups").as_deref(), Some("true"));
        assert!(!up.param("fields").unwrap().contains("name"));
    }
}
