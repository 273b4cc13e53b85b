//! Export rights end to end against the fake REDCap: what reaches a restricted caller
//! in every format, what is asked of REDCap, the side doors, and the metadata copy.

mod common;

use common::*;
use redcap_gateway::dev::{DEV_DEID_GROUP, DEV_GROUP};

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

/// Random projects, rights and Export Records parameters, end to end through the gateway
/// and the fake REDCap. The oracle below is REDCap's rules as REDCAP.md states them,
/// written apart from `redcap::metadata`, so that a rule dropped there fails here.
mod random_exports {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use redcap_gateway::fake_redcap::data::Row;
    use redcap_gateway::fake_redcap::FakeProject;
    use std::collections::BTreeSet;

    const FORMS: [&str; 3] = ["intake", "labs", "followup"];
    const LEVELS: [&str; 4] = ["none", "deidentified", "remove_identifiers", "full"];
    /// (field_type, validation) pairs, an unknown type among them.
    const TYPES: &[(&str, &str)] = &[
        ("text", ""),
        ("text", "date_ymd"),
        ("text", "datetime_seconds_mdy"),
        ("text", "email"),
        ("text", "integer"),
        ("text", "time"),
        ("notes", ""),
        ("radio", ""),
        ("dropdown", ""),
        ("yesno", ""),
        ("truefalse", ""),
        ("slider", ""),
        ("sql", ""),
        ("checkbox", ""),
        ("calc", ""),
        ("file", ""),
        ("descriptive", ""),
        ("hologram", ""),
    ];
    const CODES: [&str; 3] = ["1", "2", "98"];

    #[derive(Debug, Clone)]
    struct GenField {
        name: String,
        form: usize,
        ty: &'static str,
        validation: &'static str,
        identifier: bool,
        codes: Vec<&'static str>,
    }

    impl GenField {
        fn complete(form: usize) -> GenField {
            GenField {
                name: format!("{}_complete", FORMS[form]),
                form,
                ty: "complete",
                validation: "",
                identifier: false,
                codes: Vec::new(),
            }
        }

        fn columns(&self) -> Vec<String> {
            match self.ty {
                "descriptive" => Vec::new(),
                "checkbox" => self
                    .codes
                    .iter()
                    .map(|c| format!("{}___{c}", self.name))
                    .collect(),
                _ => vec![self.name.clone()],
            }
        }

        /// REDCap's rule for the field at its instrument's level (0 none .. 3 full).
        fn kept_at(&self, level: usize, record_id: bool) -> bool {
            match level {
                3 => true,
                0 => false,
                _ if self.identifier => false,
                // A type the gateway does not know is kept only in a full data set.
                _ if self.ty == "hologram" => false,
                2 => true,
                _ => {
                    let free_text = self.ty == "text" && self.validation.is_empty();
                    let date = self.ty == "text" && self.validation.starts_with("date");
                    !((free_text && !record_id) || self.ty == "notes" || date)
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    struct Case {
        /// Every field in export order, `_complete` ones included; the first is the id.
        fields: Vec<GenField>,
        forms: usize,
        /// Grant levels as indices into LEVELS: the default, and one per instrument.
        default: usize,
        per_form: [Option<usize>; 3],
        named_fields: Vec<Index>,
        named_forms: Vec<Index>,
        unknown_field: bool,
        spelling: usize,
        format: usize,
        eav: bool,
        dags: bool,
        survey: bool,
        labels: bool,
        logic: Option<(Index, usize)>,
    }

    impl Case {
        /// The effective level of an instrument: the widest of the caller's grants.
        fn level(&self, form: usize) -> usize {
            self.default.max(self.per_form[form].unwrap_or(0))
        }

        fn kept(&self, i: usize) -> bool {
            let f = &self.fields[i];
            f.kept_at(self.level(f.form), i == 0)
        }

        fn project(&self) -> FakeProject {
            let mut p = FakeProject::demo(1, "redcap_owner");
            p.metadata = self
                .fields
                .iter()
                .filter(|f| f.ty != "complete")
                .map(|f| {
                    let choices: Vec<String> =
                        f.codes.iter().map(|c| format!("{c}, Choice {c}")).collect();
                    Row::of(&[
                        ("field_name", &f.name),
                        ("form_name", FORMS[f.form]),
                        ("field_type", f.ty),
                        ("text_validation_type_or_show_slider_number", f.validation),
                        ("identifier", if f.identifier { "y" } else { "" }),
                        ("select_choices_or_calculations", &choices.join(" | ")),
                    ])
                })
                .collect();
            p.records = ["1", "2"]
                .iter()
                .map(|id| {
                    let mut r = Row::of(&[
                        ("redcap_data_access_group", "site_a"),
                        ("redcap_survey_identifier", "ada@example.edu"),
                    ]);
                    for form in &FORMS[..self.forms] {
                        r.set(&format!("{form}_timestamp"), "2026-01-02 10:00");
                    }
                    for (i, f) in self.fields.iter().enumerate() {
                        for c in f.columns() {
                            let v = if i == 0 {
                                id.to_string()
                            } else {
                                format!("v_{c}")
                            };
                            r.set(&c, &v);
                        }
                    }
                    r
                })
                .collect();
            p
        }

        fn groups(&self) -> Vec<String> {
            let mut g = vec![format!("px_{}", LEVELS[self.default])];
            for (form, l) in self.per_form.iter().enumerate() {
                if let Some(l) = l {
                    g.push(format!("px_{}_{}", FORMS[form], LEVELS[*l]));
                }
            }
            g
        }

        fn list(&self, name: &str, values: &[String]) -> String {
            match self.spelling {
                0 => format!("&{name}={}", values.join(",")),
                1 => values.iter().map(|v| format!("&{name}[]={v}")).collect(),
                _ => values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("&{name}[{i}]={v}"))
                    .collect(),
            }
        }

        fn named(&self) -> (Vec<usize>, Vec<usize>) {
            let mut fields: Vec<usize> = self
                .named_fields
                .iter()
                .map(|i| i.index(self.fields.len()))
                .collect();
            fields.dedup();
            let mut forms: Vec<usize> = self
                .named_forms
                .iter()
                .map(|i| i.index(self.forms))
                .collect();
            forms.dedup();
            (fields, forms)
        }

        fn body(&self) -> String {
            let format = ["json", "csv", "xml"][self.format];
            let mut b = format!("content=record&format={format}&returnFormat={format}");
            let (fields, forms) = self.named();
            let mut names: Vec<String> = fields
                .iter()
                .map(|&i| self.fields[i].name.clone())
                .collect();
            if self.unknown_field {
                names.push("not_a_field".into());
            }
            if !names.is_empty() {
                b += &self.list("fields", &names);
            }
            let forms: Vec<String> = forms.iter().map(|&f| FORMS[f].to_string()).collect();
            if !forms.is_empty() {
                b += &self.list("forms", &forms);
            }
            if self.eav {
                b += "&type=eav";
            }
            if self.dags {
                b += "&exportDataAccessGroups=true";
            }
            if self.survey {
                b += "&exportSurveyFields=true";
            }
            if self.labels {
                b += "&rawOrLabel=label&rawOrLabelHeaders=label&exportCheckboxLabel=true";
            }
            if let Some((i, shape)) = &self.logic {
                let f = &self.fields[i.index(self.fields.len())].name;
                let logic = match shape {
                    0 => format!("[{f}] <> ''"),
                    1 => format!("[{f}(1)] = '1' or [record_id] = '2'"),
                    _ => format!("([{f}:value] > 3)"),
                };
                b += &format!("&filterLogic={}", url_encode(&logic));
            }
            b
        }

        /// What REDCap would have answered the caller with its own token: the status,
        /// and for a 200 the columns.
        fn expected(&self) -> (u16, BTreeSet<String>) {
            let refused = (403, BTreeSet::new());
            let full = self.default == 3;
            if self.survey && !full {
                return refused;
            }
            if let Some((i, shape)) = &self.logic {
                let named = i.index(self.fields.len());
                let key = *shape == 1 && !self.kept(0);
                if !full && (!self.kept(named) || key) {
                    return refused;
                }
            }
            if self.unknown_field {
                return (400, BTreeSet::new());
            }
            let (fields, forms) = self.named();
            let all = fields.is_empty() && forms.is_empty();
            let mut dropped = fields.iter().any(|&i| !self.kept(i));
            dropped |= forms.iter().any(|&f| self.level(f) == 0);
            let mut cols = BTreeSet::new();
            let mut key_only = true;
            for (i, f) in self.fields.iter().enumerate() {
                let asked = all || fields.contains(&i) || forms.contains(&f.form);
                if asked && self.kept(i) {
                    key_only &= i == 0 || f.ty == "descriptive";
                    cols.extend(f.columns());
                    if self.survey {
                        cols.insert("redcap_survey_identifier".to_string());
                        cols.insert(format!("{}_timestamp", FORMS[f.form]));
                    }
                }
            }
            if !full && (cols.is_empty() || (key_only && dropped)) {
                return refused;
            }
            if self.dags {
                cols.insert("redcap_data_access_group".to_string());
            }
            (200, cols)
        }
    }

    fn field() -> impl Strategy<Value = (usize, bool, Vec<usize>)> {
        (
            0..TYPES.len(),
            prop::bool::weighted(0.25),
            prop::collection::btree_set(0..CODES.len(), 1..=3),
        )
            .prop_map(|(t, id, codes)| (t, id, codes.into_iter().collect()))
    }

    fn case() -> impl Strategy<Value = Case> {
        let forms = prop::collection::vec(prop::collection::vec(field(), 1..5), 1..=3);
        let level = 0..4usize;
        (
            (forms, prop::bool::weighted(0.2), level.clone()),
            prop::array::uniform3(prop::option::of(level)),
            (
                prop::collection::vec(any::<Index>(), 0..4),
                prop::collection::vec(any::<Index>(), 0..3),
                prop::bool::weighted(0.05),
                0..3usize,
            ),
            (
                0..3usize,
                any::<bool>(),
                any::<bool>(),
                prop::bool::weighted(0.1),
                any::<bool>(),
            ),
            prop::option::weighted(0.3, (any::<Index>(), 0..3usize)),
        )
            .prop_map(
                |((forms, id_tagged, default), per_form, named, shape, logic)| {
                    let mut fields = vec![GenField {
                        name: "record_id".into(),
                        form: 0,
                        ty: "text",
                        validation: "",
                        identifier: id_tagged,
                        codes: Vec::new(),
                    }];
                    for (form, list) in forms.iter().enumerate() {
                        for (n, (t, identifier, codes)) in list.iter().enumerate() {
                            let (ty, validation) = TYPES[*t];
                            fields.push(GenField {
                                name: format!("{}_f{n}", FORMS[form]),
                                form,
                                ty,
                                validation,
                                identifier: *identifier,
                                codes: codes.iter().map(|c| CODES[*c]).collect(),
                            });
                        }
                        fields.push(GenField::complete(form));
                    }
                    Case {
                        fields,
                        forms: forms.len(),
                        default,
                        per_form,
                        named_fields: named.0,
                        named_forms: named.1,
                        unknown_field: named.2,
                        spelling: named.3,
                        format: shape.0,
                        eav: shape.1,
                        dags: shape.2,
                        survey: shape.3,
                        labels: shape.4,
                        logic,
                    }
                },
            )
    }

    /// One grant per default level and one per (instrument, level): a caller holding
    /// several gets the widest per instrument.
    fn grants(config: String) -> String {
        let mut extra = String::new();
        for l in LEVELS {
            extra += &format!(
                "\n[[projects.demo.grants]]\ngroups = [\"px_{l}\"]\nallow = [\"read\"]\nexport = \"{l}\"\n"
            );
            for f in FORMS {
                extra += &format!(
                    "\n[[projects.demo.grants]]\ngroups = [\"px_{f}_{l}\"]\nallow = [\"read\"]\nexport = \"none\"\nexport_forms = {{ {f} = \"{l}\" }}\n"
                );
            }
        }
        let at = config
            .find("[projects.demo.user_rules]")
            .expect("the dev config has user rules");
        let mut out = config;
        out.insert_str(at, &extra);
        out
    }

    async fn check(gw: &TestGateway, case: &Case) -> Result<(), TestCaseError> {
        gw.env.fake.add_project(gw.token(), case.project());
        gw.env
            .gateway
            .metadata
            .refresh("demo")
            .await
            .map_err(|e| TestCaseError::fail(format!("metadata refresh: {e}")))?;
        let body = case.body();
        let groups = case.groups();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let jwt = gw.env.issuer.token("pat", &groups);
        gw.env.fake.clear_requests();
        let r = post_as(gw, &jwt, &body).await;
        let (status, want) = case.expected();
        prop_assert_eq!(r.status, status, "{} -> {}", body, r.text());
        let asked = gw.env.fake.last_request();
        if status == 200 {
            let format = ["json", "csv", "xml"][case.format];
            let got: BTreeSet<String> = columns(format, case.eav, &r).into_iter().collect();
            prop_assert_eq!(&got, &want, "{}", body);
        }
        let asked = asked.filter(|_| case.default != 3);
        if let Some(asked) = asked {
            // REDCap itself was asked only for fields the rights keep, never for forms.
            prop_assert!(status == 200, "a refused export reached REDCap: {}", body);
            let fields = asked.param("fields").unwrap_or_default();
            for name in fields.split(',') {
                let i = case.fields.iter().position(|f| f.name == name);
                prop_assert!(
                    i.is_some_and(|i| case.kept(i)),
                    "REDCap was asked for {:?} ({})",
                    name,
                    body
                );
            }
            prop_assert!(asked.post.get_str("forms").is_none());
        }
        // A full-rights caller's request goes to REDCap as it came, with the token.
        let r = gw.post(&body).await;
        prop_assert!(r.status == 200 || r.status == 400 && case.unknown_field);
        let up = gw.env.fake.last_request().expect("forwarded");
        prop_assert_eq!(
            String::from_utf8_lossy(&up.body).into_owned(),
            format!("{body}&token={}", gw.token())
        );
        Ok(())
    }

    #[test]
    fn no_column_outside_the_rights_ever_reaches_a_restricted_caller() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let gw = rt.block_on(TestGateway::start_with(grants));
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&case(), |case| rt.block_on(check(&gw, &case)));
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
