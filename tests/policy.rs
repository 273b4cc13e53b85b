//! Policy tables: each rule, each data format, the shapes PyCap really sends, and the
//! property that the same users in another format never change the decision.

use proptest::prelude::*;
use redcap_gateway::auth::{CredentialKind, Principal};
use redcap_gateway::config::ProjectConfig;
use redcap_gateway::policy::{Decision, ProjectPolicy};
use redcap_gateway::redcap::php_form::{parse_urlencoded, PhpLimits};
use redcap_gateway::redcap::user_data::{self, DataRow, FieldValue};
use redcap_gateway::redcap::RedcapCall;

/// 2026-11-24T00:00:00Z, so expiration rules are deterministic.
const NOW: u64 = 1_795_478_400;

const PROJECT: &str = r#"
token = "env:UNUSED"
token_owner = "svc_owner"

[[grants]]
groups = ["managers"]
allow = ["read", "user:*", "userDagMapping:*", "userRoleMapping:*", "userRole:*", "dag:*"]

[[grants]]
groups = ["analysts"]
allow = ["read"]

[user_rules]
username_pattern = "[a-z]{2,8}[0-9]{0,3}"
protected_users = ["pi_boss"]
expiration_required = true
expiration_max_days = 365
assignable_dags = ["site_a", "site_b"]
allow_all_dags = false
assignable_roles = ["U-DATAENTRY"]
max_users_per_delete = 3

[user_rules.ceilings]
user_rights = 0
design = 0
api_import = 0
record_delete = 0
lock_records = 1
forms = "read-only"
forms_export = "deidentified"
"#;

fn policy(text: &str) -> ProjectPolicy {
    let p: ProjectConfig = toml::from_str(text).unwrap();
    ProjectPolicy::from_config(&p).unwrap()
}

fn who(groups: &[&str]) -> Principal {
    Principal {
        user: "mgr".into(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        issuer: "t".into(),
        credential: CredentialKind::Jwt,
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decide(p: &ProjectPolicy, groups: &[&str], body: &str) -> Decision {
    let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
    let call = RedcapCall::from_form(&form).unwrap();
    p.decide(&who(groups), &call, NOW)
}

fn rows(pairs: &[&[(&str, &str)]]) -> Vec<DataRow> {
    pairs
        .iter()
        .map(|r| {
            DataRow(
                r.iter()
                    .map(|(k, v)| (k.to_string(), FieldValue::Text(v.to_string())))
                    .collect(),
            )
        })
        .collect()
}

/// The same rows as a call in each format; all three decisions must agree.
fn import_in_all_formats(p: &ProjectPolicy, content: &str, data: &[DataRow]) -> Decision {
    let mut decisions = Vec::new();
    for f in ["json", "csv", "xml"] {
        let body = format!(
            "content={content}&format={f}&data={}",
            enc(&user_data::write(f, data))
        );
        decisions.push(decide(p, &["managers"], &body));
    }
    assert_eq!(
        decisions[0].allowed, decisions[1].allowed,
        "json vs csv: {:?} {:?}",
        decisions[0].reasons, decisions[1].reasons
    );
    assert_eq!(
        decisions[0].allowed, decisions[2].allowed,
        "json vs xml: {:?} {:?}",
        decisions[0].reasons, decisions[2].reasons
    );
    assert_eq!(decisions[0].reasons, decisions[1].reasons);
    assert_eq!(decisions[0].reasons, decisions[2].reasons);
    decisions.remove(0)
}

type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);

#[test]
fn user_import_table() {
    let p = policy(PROJECT);
    let ok: &[(&str, &str)] = &[
        ("username", "jdoe"),
        ("expiration", "2027-06-30"),
        ("data_access_group", "site_a"),
        ("design", "0"),
        ("user_rights", "0"),
        ("lock_records", "1"),
        ("forms", "demographics:2,consent:0"),
        ("forms_export", "demographics:2"),
    ];
    // (case, fields changed from the clean row, expected reason or None for allowed)
    let cases: Vec<Case> = vec![
        ("a clean row", vec![], None),
        (
            "design above ceiling",
            vec![("design", "1")],
            Some("design=1 is above the ceiling 0"),
        ),
        (
            "user_rights above ceiling",
            vec![("user_rights", "2")],
            Some("user_rights=2"),
        ),
        (
            "api_import",
            vec![("api_import", "1")],
            Some("api_import=1"),
        ),
        (
            "record_delete",
            vec![("record_delete", "1")],
            Some("record_delete=1"),
        ),
        (
            "lock_records 2",
            vec![("lock_records", "2")],
            Some("lock_records=2"),
        ),
        (
            "non-numeric right",
            vec![("design", "yes")],
            Some("not a number"),
        ),
        (
            "legacy form view-edit",
            vec![("forms", "demographics:1")],
            Some("demographics:1 is above the data entry ceiling"),
        ),
        (
            "bitmask form read-only",
            vec![("forms", "demographics:129")],
            None,
        ),
        (
            "bitmask form view-edit",
            vec![("forms", "demographics:130")],
            Some("demographics:130"),
        ),
        (
            "bitmask form with delete",
            vec![("forms", "demographics:138")],
            Some("demographics:138"),
        ),
        (
            "unknown form value",
            vec![("forms", "demographics:7")],
            Some("not a known data entry right"),
        ),
        (
            "full export",
            vec![("forms_export", "demographics:1")],
            Some("export ceiling"),
        ),
        (
            "bad username",
            vec![("username", "Robert'); DROP")],
            Some("does not match the allowed pattern"),
        ),
        (
            "protected user",
            vec![("username", "pi_boss")],
            Some("protected"),
        ),
        (
            "token owner",
            vec![("username", "svc_owner")],
            Some("protected"),
        ),
        (
            "no expiration",
            vec![("expiration", "")],
            Some("expiration is required"),
        ),
        (
            "expiration too far",
            vec![("expiration", "2028-01-01")],
            Some("more than 365 days ahead"),
        ),
        (
            "expiration malformed",
            vec![("expiration", "06/30/2027")],
            Some("not YYYY-MM-DD"),
        ),
        (
            "DAG not assignable",
            vec![("data_access_group", "site_c")],
            Some("DAG \"site_c\" may not be assigned"),
        ),
        (
            "all DAGs",
            vec![("data_access_group", "")],
            Some("no DAG (access to all records)"),
        ),
        (
            "DAG by id",
            vec![("data_access_group_id", "102")],
            Some("not data_access_group_id"),
        ),
        (
            "unknown field",
            vec![("super_admin", "1")],
            Some("unknown field \"super_admin\""),
        ),
    ];
    for (name, changes, want) in cases {
        let mut row: Vec<(&str, &str)> = ok.to_vec();
        for (k, v) in &changes {
            match row.iter_mut().find(|(f, _)| f == k) {
                Some(slot) => slot.1 = v,
                None => row.push((k, v)),
            }
        }
        let d = import_in_all_formats(&p, "user", &rows(&[&row]));
        match want {
            None => assert!(d.allowed, "{name}: {:?}", d.reasons),
            Some(w) => {
                assert!(!d.allowed, "{name} should be denied");
                assert_eq!(d.rule, "user_import");
                assert!(
                    d.reasons.iter().any(|r| r.contains(w)),
                    "{name}: {:?}",
                    d.reasons
                );
            }
        }
    }
}

#[test]
fn omitting_the_dag_counts_as_all_dags() {
    let p = policy(PROJECT);
    let d = import_in_all_formats(
        &p,
        "user",
        &rows(&[&[("username", "jdoe"), ("expiration", "2027-01-01")]]),
    );
    assert!(!d.allowed);
    assert!(
        d.reasons[0].contains("leaving it out may remove the user from their DAG"),
        "{:?}",
        d.reasons
    );
}

#[test]
fn one_bad_row_rejects_all_and_every_reason_is_listed() {
    let p = policy(PROJECT);
    // Same columns in every row, as CSV requires.
    let good: &[(&str, &str)] = &[
        ("username", "amy"),
        ("expiration", "2027-01-01"),
        ("data_access_group", "site_a"),
        ("design", "0"),
    ];
    let bad1: &[(&str, &str)] = &[
        ("username", "bob"),
        ("expiration", "2027-01-01"),
        ("data_access_group", "site_a"),
        ("design", "1"),
    ];
    let bad2: &[(&str, &str)] = &[
        ("username", "pi_boss"),
        ("expiration", "2027-01-01"),
        ("data_access_group", "site_z"),
        ("design", "0"),
    ];
    let d = import_in_all_formats(&p, "user", &rows(&[good, bad1, bad2]));
    assert!(!d.allowed);
    let all = d.reasons.join("\n");
    assert!(all.contains("row 2 (bob): design=1"), "{all}");
    assert!(
        all.contains("row 3 (pi_boss): user pi_boss is protected"),
        "{all}"
    );
    assert!(all.contains("row 3 (pi_boss): DAG \"site_z\""), "{all}");
    assert!(!all.contains("row 1"), "{all}");
}

/// What an allowed import sets is listed for the audit record, one `user: field=value`
/// per field, form rights as `form:level` pairs in the order sent.
#[test]
fn an_allowed_import_lists_every_change() {
    let p = policy(PROJECT);
    let data = enc(
        r#"[{"username":"jdoe","expiration":"2027-01-01","data_access_group":"site_a","design":"0","forms":{"demographics":"2","visit":"0"},"forms_export":{"demographics":"2"}}]"#,
    );
    let d = decide(
        &p,
        &["managers"],
        &format!("content=user&format=json&data={data}"),
    );
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(
        d.effect.changes,
        [
            "jdoe: expiration=2027-01-01",
            "jdoe: data_access_group=site_a",
            "jdoe: design=0",
            "jdoe: forms=demographics:2,visit:0",
            "jdoe: forms_export=demographics:2",
        ]
    );
}

#[test]
fn user_import_with_action_export_is_still_checked() {
    let p = policy(PROJECT);
    let data = enc(
        r#"[{"username":"jdoe","design":"1","expiration":"2027-01-01","data_access_group":"site_a"}]"#,
    );
    let d = decide(
        &p,
        &["managers"],
        &format!("content=user&action=export&format=json&data={data}"),
    );
    assert!(!d.allowed);
    assert_eq!(d.rule, "user_import");
}

#[test]
fn pycap_request_shapes() {
    let p = policy(PROJECT);
    // PyCap 2.7.0 import_users: format=json, returnFormat=json, data as a JSON string.
    let data = enc(
        r#"[{"username": "jdoe", "expiration": "2027-01-31", "data_access_group": "site_b", "design": 0, "user_rights": 0}]"#,
    );
    let d = decide(&p, &["managers"], &format!("token=00000000000000000000000000000000&content=user&format=json&returnFormat=json&data={data}"));
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.effect.users, ["jdoe"]);
    assert!(
        d.effect
            .changes
            .iter()
            .any(|c| c == "jdoe: data_access_group=site_b"),
        "{:?}",
        d.effect.changes
    );
    // PyCap delete_users: users[0]=..&users[1]=..
    let d = decide(&p, &["managers"], "token=00000000000000000000000000000000&content=user&action=delete&returnFormat=json&users%5B0%5D=amy&users%5B1%5D=bob");
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.effect.users, ["amy", "bob"]);
    // import_user_dag_assignment
    let data = enc(r#"[{"username": "amy", "redcap_data_access_group": "site_a"}]"#);
    let d = decide(
        &p,
        &["managers"],
        &format!("content=userDagMapping&action=import&format=json&returnFormat=json&data={data}"),
    );
    assert!(d.allowed, "{:?}", d.reasons);
}

#[test]
fn user_delete_table() {
    let p = policy(PROJECT);
    let cases = [
        ("users[]=amy&users[]=bob", true, ""),
        ("users[1]=amy&users[2]=bob", true, ""),
        ("users[]=amy&users[]=svc_owner", false, "protected"),
        ("users[]=amy&users[]=PI_BOSS", false, "protected"),
        (
            "users[]=a1&users[]=b1&users[]=c1&users[]=d1",
            false,
            "at most 3",
        ),
        ("users[]=Amy%20Smith", false, "pattern"),
    ];
    for (users, want, why) in cases {
        let d = decide(
            &p,
            &["managers"],
            &format!("content=user&action=delete&{users}"),
        );
        assert_eq!(d.allowed, want, "{users}: {:?}", d.reasons);
        if !want {
            assert_eq!(d.rule, "user_delete");
            assert!(
                d.reasons.iter().any(|r| r.contains(why)),
                "{users}: {:?}",
                d.reasons
            );
        }
    }
    let d = decide(&p, &["analysts"], "content=user&action=delete&users[]=amy");
    assert!(!d.allowed);
    assert_eq!(d.rule, "grants");
}

#[test]
fn user_dag_mapping_table() {
    let p = policy(PROJECT);
    for (dag, want) in [
        ("site_a", true),
        ("site_b", true),
        ("site_c", false),
        ("", false),
    ] {
        let d = import_in_all_formats(
            &p,
            "userDagMapping",
            &rows(&[&[("username", "amy"), ("redcap_data_access_group", dag)]]),
        );
        assert_eq!(d.allowed, want, "{dag:?}: {:?}", d.reasons);
    }
    let d = import_in_all_formats(
        &p,
        "userDagMapping",
        &rows(&[&[
            ("username", "svc_owner"),
            ("redcap_data_access_group", "site_a"),
        ]]),
    );
    assert!(!d.allowed);
    let all = policy(&PROJECT.replace("allow_all_dags = false", "allow_all_dags = true"));
    let d = import_in_all_formats(
        &all,
        "userDagMapping",
        &rows(&[&[("username", "amy"), ("redcap_data_access_group", "")]]),
    );
    assert!(d.allowed, "{:?}", d.reasons);
}

#[test]
fn user_role_mapping_checks_roles_and_the_dag_door() {
    let p = policy(PROJECT);
    let cases: Vec<(Vec<(&str, &str)>, bool)> = vec![
        (
            vec![("username", "amy"), ("unique_role_name", "U-DATAENTRY")],
            true,
        ),
        (
            vec![("username", "amy"), ("unique_role_name", "U-PI")],
            false,
        ),
        (
            vec![
                ("username", "amy"),
                ("unique_role_name", "U-DATAENTRY"),
                ("data_access_group", "site_b"),
            ],
            true,
        ),
        (
            vec![
                ("username", "amy"),
                ("unique_role_name", "U-DATAENTRY"),
                ("data_access_group", "site_x"),
            ],
            false,
        ),
        (
            vec![
                ("username", "amy"),
                ("unique_role_name", "U-DATAENTRY"),
                ("data_access_group", ""),
            ],
            false,
        ),
        (
            vec![("username", "pi_boss"), ("unique_role_name", "U-DATAENTRY")],
            false,
        ),
    ];
    for (row, want) in cases {
        let d = import_in_all_formats(&p, "userRoleMapping", &rows(&[&row]));
        assert_eq!(d.allowed, want, "{row:?}: {:?}", d.reasons);
    }
}

#[test]
fn role_definitions_get_the_same_ceilings() {
    let p = policy(PROJECT);
    let d = import_in_all_formats(
        &p,
        "userRole",
        &rows(&[&[
            ("unique_role_name", "U-DATAENTRY"),
            ("role_label", "Data entry"),
            ("design", "0"),
            ("forms", "demographics:2"),
        ]]),
    );
    assert!(d.allowed, "{:?}", d.reasons);
    let d = import_in_all_formats(
        &p,
        "userRole",
        &rows(&[&[
            ("unique_role_name", ""),
            ("role_label", "Sneaky"),
            ("user_rights", "1"),
        ]]),
    );
    assert!(!d.allowed);
    assert!(d.reasons[0].contains("user_rights=1"), "{:?}", d.reasons);
    let d = import_in_all_formats(
        &p,
        "userRole",
        &rows(&[&[
            ("unique_role_name", "U-PI"),
            ("role_label", "PI"),
            ("design", "0"),
        ]]),
    );
    assert!(!d.allowed, "roles not listed may not be changed");
}

#[test]
fn dag_switch_and_dag_changes() {
    let p = policy(PROJECT);
    assert!(
        !decide(&p, &["managers"], "content=dag&action=switch&dag=site_a").allowed,
        "dag:* never covers switch"
    );
    assert!(decide(&p, &["managers"], "content=dag&action=import&data=x").allowed);
    assert!(!decide(&p, &["analysts"], "content=dag&action=delete&dags[]=site_a").allowed);
}

#[test]
fn malformed_data_is_denied_with_the_parse_error() {
    let p = policy(PROJECT);
    for (f, data) in [
        ("json", "{not json"),
        ("csv", "username,design\namy\n"),
        ("xml", "<!DOCTYPE x [<!ENTITY a \"b\">]><records/>"),
    ] {
        let d = decide(
            &p,
            &["managers"],
            &format!("content=user&format={f}&data={}", enc(data)),
        );
        assert!(!d.allowed, "{f}");
        assert!(d.reasons[0].starts_with("data: "), "{f}: {:?}", d.reasons);
        assert!(
            d.bad_input,
            "{f}: unreadable data is bad input, not a denial"
        );
    }
}

#[test]
fn strict_defaults_without_user_rules() {
    let p = policy(
        "token = \"env:X\"\n[[grants]]\ngroups = [\"managers\"]\nallow = [\"user:import\"]\n",
    );
    let d = import_in_all_formats(
        &p,
        "user",
        &rows(&[&[("username", "amy"), ("design", "1")]]),
    );
    assert!(!d.allowed);
    let all = d.reasons.join("\n");
    assert!(
        all.contains("design=1 is above the ceiling 0") && all.contains("no DAG"),
        "{all}"
    );
}

fn arb_row() -> impl Strategy<Value = Vec<(String, String)>> {
    let user = prop_oneof![
        Just("amy".to_string()),
        Just("pi_boss".to_string()),
        Just("Bad Name".to_string()),
        "[a-z]{2,6}"
    ];
    let dag = prop_oneof![Just("site_a"), Just("site_b"), Just("site_c"), Just("")];
    let level = prop_oneof![Just("0"), Just("1"), Just("2"), Just("x")];
    let form = prop_oneof![
        Just("0"),
        Just("1"),
        Just("2"),
        Just("129"),
        Just("130"),
        Just("154")
    ];
    let exp = prop_oneof![
        Just("2027-01-01"),
        Just("2030-01-01"),
        Just(""),
        Just("bad")
    ];
    (user, dag, level.clone(), level, form, exp, any::<bool>()).prop_map(
        |(u, d, design, rights, form, exp, with_dag)| {
            let mut r = vec![
                ("username".to_string(), u),
                ("design".into(), design.to_string()),
                ("user_rights".into(), rights.to_string()),
            ];
            r.push(("forms".into(), format!("demographics:{form}")));
            r.push(("expiration".into(), exp.to_string()));
            if with_dag {
                r.push(("data_access_group".into(), d.to_string()));
            }
            r
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Reformatting the same users into another format never changes the decision.
    #[test]
    fn format_never_changes_the_decision(raw in prop::collection::vec(arb_row(), 1..5)) {
        let p = policy(PROJECT);
        let data: Vec<DataRow> = raw
            .iter()
            .map(|r| DataRow(r.iter().map(|(k, v)| (k.clone(), FieldValue::Text(v.clone()))).collect()))
            .collect();
        // CSV needs the same columns in every row.
        let same_columns = data.iter().all(|r| r.0.len() == data[0].0.len());
        prop_assume!(same_columns);
        import_in_all_formats(&p, "user", &data);
    }

    #[test]
    fn user_data_parsers_never_panic(f in prop_oneof![Just("json"), Just("csv"), Just("xml")], bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = user_data::parse(f, &bytes);
    }
}
