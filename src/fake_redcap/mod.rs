//! A fake REDCap for dev mode and tests. It is not on the production request path: it
//! stands where REDCap would, reads bodies with the same PHP-exact parser, answers like
//! REDCap (REDCAP.md) in json/csv/xml, and records every request it receives.

pub mod data;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::redcap::php_form::{parse_urlencoded, register_variable, PhpArray, PhpLimits, PhpValue};
use crate::redcap::ReturnFormat;
use data::{parse_rows, write_rows, Row};

pub const REDCAP_VERSION: &str = "15.0.9";

/// What the fake received, exactly.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `$_POST` as PHP would see it.
    pub post: PhpArray,
    /// Uploaded files: (field name, filename, bytes).
    pub files: Vec<(String, String, Bytes)>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<String> {
        match self.post.get_str(name)? {
            PhpValue::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            PhpValue::Array(_) => None,
        }
    }
}

/// One REDCap project in the fake.
#[derive(Debug, Clone)]
pub struct FakeProject {
    pub id: u32,
    pub title: String,
    pub metadata: Vec<Row>,
    pub records: Vec<Row>,
    pub users: Vec<Row>,
    pub roles: Vec<Row>,
    pub dags: Vec<Row>,
    pub user_dags: Vec<Row>,
    pub files: HashMap<(String, String, String), (String, Bytes)>,
    /// The token owner's own DAG (empty: none). REDCap then scopes exports to it and
    /// leaves out the `redcap_data_access_group` column.
    pub owner_dag: String,
}

impl FakeProject {
    /// A small classic project with two forms, three records, users, roles and DAGs.
    pub fn demo(id: u32, owner: &str) -> FakeProject {
        let field = |name: &str, form: &str, ty: &str, label: &str| {
            Row::of(&[
                ("field_name", name),
                ("form_name", form),
                ("section_header", ""),
                ("field_type", ty),
                ("field_label", label),
                ("select_choices_or_calculations", ""),
                ("field_note", ""),
                ("text_validation_type_or_show_slider_number", ""),
                ("text_validation_min", ""),
                ("text_validation_max", ""),
                ("identifier", ""),
                ("branching_logic", ""),
                ("required_field", ""),
                ("custom_alignment", ""),
                ("question_number", ""),
                ("matrix_group_name", ""),
                ("matrix_ranking", ""),
                ("field_annotation", ""),
            ])
        };
        let tagged = |mut r: Row, k: &str, v: &str| {
            r.set(k, v);
            r
        };
        let record = |id: &str, name: &str, age: &str, dag: &str| {
            Row::of(&[
                ("record_id", id),
                ("redcap_data_access_group", dag),
                ("name", name),
                ("age", age),
                ("dob", "1990-01-01"),
                ("notes", "called on Monday"),
                ("diet___1", "1"),
                ("diet___2", "0"),
                ("demographics_complete", "2"),
                ("consent_file", ""),
                ("consent_complete", "0"),
            ])
        };
        let user = |name: &str, dag: &str, rights: &str| {
            let mut r = Row::of(&[
                ("username", name),
                ("email", &format!("{name}@example.edu")),
                ("firstname", name),
                ("lastname", "Example"),
                ("expiration", ""),
                ("data_access_group", dag),
                ("data_access_group_id", ""),
                ("design", rights),
                ("alerts", "0"),
                ("user_rights", rights),
                ("data_access_groups", rights),
                ("reports", "1"),
                ("stats_and_charts", "1"),
                ("manage_survey_participants", "1"),
                ("calendar", "1"),
                ("data_import_tool", rights),
                ("data_comparison_tool", "0"),
                ("logging", rights),
                ("email_logging", "0"),
                ("file_repository", "1"),
                ("data_quality_create", "0"),
                ("data_quality_execute", "0"),
                ("api_export", "1"),
                ("api_import", rights),
                ("api_modules", "0"),
                ("mobile_app", "0"),
                ("mobile_app_download_data", "0"),
                ("record_create", "1"),
                ("record_rename", "0"),
                ("record_delete", rights),
                ("lock_records_customization", "0"),
                ("lock_records", "0"),
                ("lock_records_all_forms", "0"),
            ]);
            r.0.push(("forms".into(), "demographics:1,consent:1".into()));
            r.0.push(("forms_export".into(), "demographics:1,consent:1".into()));
            r
        };
        FakeProject {
            id,
            title: "Gateway demo project".into(),
            metadata: vec![
                field("record_id", "demographics", "text", "Record ID"),
                tagged(
                    field("name", "demographics", "text", "Name"),
                    "identifier",
                    "y",
                ),
                tagged(
                    field("age", "demographics", "text", "Age"),
                    "text_validation_type_or_show_slider_number",
                    "integer",
                ),
                tagged(
                    field("dob", "demographics", "text", "Date of birth"),
                    "text_validation_type_or_show_slider_number",
                    "date_ymd",
                ),
                field("notes", "demographics", "notes", "Notes"),
                tagged(
                    field("diet", "demographics", "checkbox", "Diet"),
                    "select_choices_or_calculations",
                    "1, Vegetarian | 2, Vegan",
                ),
                field("consent_file", "consent", "file", "Signed consent"),
            ],
            records: vec![
                record("1", "Ada", "36", "site_a"),
                record("2", "Grace", "45", "site_b"),
                record("3", "Alan", "41", "site_a"),
            ],
            users: vec![
                user(owner, "", "1"),
                user("alice", "site_a", "0"),
                user("bob", "site_b", "0"),
            ],
            roles: vec![
                Row::of(&[
                    ("unique_role_name", "U-527D39JXAC"),
                    ("role_label", "Data entry"),
                    ("design", "0"),
                    ("user_rights", "0"),
                ]),
                Row::of(&[
                    ("unique_role_name", "U-2119C4Y87T"),
                    ("role_label", "PI"),
                    ("design", "1"),
                    ("user_rights", "1"),
                ]),
            ],
            dags: vec![
                Row::of(&[
                    ("data_access_group_name", "Site A"),
                    ("unique_group_name", "site_a"),
                    ("data_access_group_id", "101"),
                ]),
                Row::of(&[
                    ("data_access_group_name", "Site B"),
                    ("unique_group_name", "site_b"),
                    ("data_access_group_id", "102"),
                ]),
            ],
            user_dags: vec![
                Row::of(&[
                    ("username", "alice"),
                    ("redcap_data_access_group", "site_a"),
                ]),
                Row::of(&[("username", "bob"), ("redcap_data_access_group", "site_b")]),
            ],
            files: HashMap::new(),
            owner_dag: String::new(),
        }
    }
}

#[derive(Default)]
struct State {
    projects: HashMap<String, FakeProject>,
    requests: Vec<RecordedRequest>,
}

/// A running fake REDCap.
#[derive(Clone)]
pub struct FakeRedcap {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
}

const MAX_RECORDED: usize = 10_000;

impl FakeRedcap {
    /// Binds 127.0.0.1:0 and serves until the runtime ends.
    pub async fn start() -> std::io::Result<FakeRedcap> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::serve(listener)
    }

    pub fn serve(listener: TcpListener) -> std::io::Result<FakeRedcap> {
        let addr = listener.local_addr()?;
        let fake = FakeRedcap {
            state: Arc::new(Mutex::new(State::default())),
            addr,
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, std::convert::Infallible>(f.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(fake)
    }

    /// The base URL (REDCap's API is at `{url}/api/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_project(&self, token: &str, project: FakeProject) {
        if let Ok(mut s) = self.state.lock() {
            s.projects.insert(token.to_string(), project);
        }
    }

    /// Forgets a project: its token is then refused with 403, as a revoked one is.
    pub fn remove_project(&self, token: &str) -> Option<FakeProject> {
        self.state.lock().ok()?.projects.remove(token)
    }

    pub fn project(&self, token: &str) -> Option<FakeProject> {
        self.state.lock().ok()?.projects.get(token).cloned()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.lock().ok()?.requests.last().cloned()
    }

    pub fn clear_requests(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.requests.clear();
        }
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(400, "text/plain", "bad body".into()),
        };
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (post, files) = read_post(&ct, &body).await;
        let rec = RecordedRequest {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
            post,
            files,
        };
        if let Ok(mut s) = self.state.lock() {
            if s.requests.len() >= MAX_RECORDED {
                s.requests.remove(0);
            }
            s.requests.push(rec.clone());
        }
        if parts.method != http::Method::POST || parts.uri.path() != "/api/" {
            return respond(404, "text/html", "Not Found".into());
        }
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return respond(500, "text/plain", "poisoned".into()),
        };
        api(&mut state, &rec)
    }
}

async fn read_post(ct: &str, body: &Bytes) -> (PhpArray, Vec<(String, String, Bytes)>) {
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("application/x-www-form-urlencoded") {
        let limits = PhpLimits {
            max_input_vars: usize::MAX,
            max_input_nesting_level: 64,
        };
        return (
            parse_urlencoded(body, limits)
                .map(|f| f.post)
                .unwrap_or_default(),
            Vec::new(),
        );
    }
    let mut post = PhpArray::new();
    let mut files = Vec::new();
    if let Ok(boundary) = multer::parse_boundary(ct) {
        let b = body.clone();
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(b) });
        let mut mp = multer::Multipart::new(stream, boundary);
        while let Ok(Some(field)) = mp.next_field().await {
            let name = field.name().unwrap_or("").to_string();
            let filename = field.file_name().map(str::to_string);
            let mut value = Vec::new();
            let mut field = field;
            while let Some(Ok(chunk)) = field.next().await {
                value.extend_from_slice(&chunk);
            }
            match filename {
                Some(f) => files.push((name, f, Bytes::from(value))),
                None => {
                    let _ = register_variable(&mut post, name.as_bytes(), value, 64);
                }
            }
        }
    }
    (post, files)
}

fn respond(status: u16, ct: &str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn error(status: u16, fmt: ReturnFormat, msg: &str) -> Response<Body> {
    let body = fmt.error_body(msg);
    respond(
        status,
        fmt.content_type(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn values(v: Option<&PhpValue>) -> Vec<String> {
    match v {
        Some(PhpValue::Array(a)) => a
            .iter()
            .filter_map(|(_, v)| match v {
                PhpValue::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
                _ => None,
            })
            .collect(),
        Some(PhpValue::Str(s)) => String::from_utf8_lossy(s)
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => Vec::new(),
    }
}

fn count(fmt: &str, n: usize) -> Response<Body> {
    match fmt {
        "json" => respond(200, "application/json", format!("{{\"count\": {n}}}")),
        "csv" => respond(200, "text/csv", format!("count\n{n}\n")),
        _ => respond(
            200,
            "text/xml",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<ids><count>{n}</count></ids>"),
        ),
    }
}

/// Export Records as REDCap answers it: `fields` and `forms` (arrays or comma strings) are
/// a union, a form bringing its fields and `{form}_complete`; the record id only when
/// named by either; every field when neither is given; checkboxes as `name___code`
/// columns; `exportDataAccessGroups` and `exportSurveyFields` add their columns;
/// `type=eav` gives one row per value.
fn export_records(project: &FakeProject, rec: &RecordedRequest, format: &str) -> Response<Body> {
    let flag = |n: &str| {
        rec.param(n)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    };
    let ids = values(rec.post.get_str("records"));
    let fields = values(rec.post.get_str("fields"));
    let forms = values(rec.post.get_str("forms"));
    let meta = &project.metadata;
    let record_id = meta
        .first()
        .and_then(|m| m.get("field_name"))
        .unwrap_or("record_id")
        .to_string();
    let mut order: Vec<(String, String)> = Vec::new(); // (form, field) in export order
    for (i, m) in meta.iter().enumerate() {
        let form = m.get("form_name").unwrap_or("").to_string();
        order.push((form.clone(), m.get("field_name").unwrap_or("").to_string()));
        let last = meta.get(i + 1).and_then(|n| n.get("form_name")) != Some(form.as_str());
        if last {
            order.push((form.clone(), format!("{form}_complete")));
        }
    }
    let known = |f: &String| order.iter().any(|(_, n)| n == f);
    if let Some(bad) = fields.iter().find(|f| !known(f)) {
        return error(
            400,
            ReturnFormat::from_param(format.as_bytes()),
            &format!("The following values in the parameter \"fields\" are not valid: '{bad}'"),
        );
    }
    let all = fields.is_empty() && forms.is_empty();
    let mut columns: Vec<String> = Vec::new();
    if flag("exportSurveyFields") {
        columns.push("redcap_survey_identifier".into());
    }
    let mut seen_forms: Vec<String> = Vec::new();
    for (form, name) in &order {
        if !(all || fields.contains(name) || forms.contains(form)) {
            continue;
        }
        if flag("exportSurveyFields") && !seen_forms.contains(form) {
            seen_forms.push(form.clone());
            columns.push(format!("{form}_timestamp"));
        }
        let m = meta
            .iter()
            .find(|m| m.get("field_name") == Some(name.as_str()));
        match m.and_then(|m| m.get("field_type")) {
            Some("descriptive") => {}
            Some("checkbox") => {
                let choices = m
                    .and_then(|m| m.get("select_choices_or_calculations"))
                    .unwrap_or("");
                for c in choices.split('|') {
                    let code = c.split(',').next().unwrap_or("").trim();
                    columns.push(format!("{name}___{code}"));
                }
            }
            _ => columns.push(name.clone()),
        }
    }
    // The record id leads, then the DAG column, then the rest.
    if let Some(i) = columns.iter().position(|c| *c == record_id) {
        let id = columns.remove(i);
        columns.insert(0, id);
    }
    if flag("exportDataAccessGroups") && project.owner_dag.is_empty() {
        let at = usize::from(columns.first() == Some(&record_id));
        columns.insert(at, "redcap_data_access_group".into());
    }
    let in_owner_dag = |r: &&Row| {
        project.owner_dag.is_empty()
            || r.get("redcap_data_access_group") == Some(project.owner_dag.as_str())
    };
    let chosen =
        project.records.iter().filter(in_owner_dag).filter(|r| {
            ids.is_empty() || ids.iter().any(|i| Some(i.as_str()) == r.get(&record_id))
        });
    let out: Vec<Row> = if rec.param("type").as_deref() == Some("eav") {
        chosen
            .flat_map(|r| {
                let id = r.get(&record_id).unwrap_or("").to_string();
                columns
                    .iter()
                    .filter_map(|c| {
                        let v = r.get(c).unwrap_or("");
                        (!v.is_empty())
                            .then(|| Row::of(&[("record", &id), ("field_name", c), ("value", v)]))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        chosen
            .map(|r| {
                Row(columns
                    .iter()
                    .map(|c| (c.clone(), r.get(c).unwrap_or("").to_string()))
                    .collect())
            })
            .collect()
    };
    let delimiter = match rec.param("csvDelimiter").as_deref() {
        Some("tab") => b'\t',
        Some(d) if d.len() == 1 => d.as_bytes()[0],
        _ => b',',
    };
    let (text, ct) = match format {
        "csv" => data::write_csv(&out, delimiter),
        _ => write_rows(format, &out),
    };
    respond(200, ct, text)
}

fn plain_count(n: usize) -> Response<Body> {
    respond(200, "text/html; charset=UTF-8", n.to_string())
}

/// REDCap's API/index.php, in small.
fn api(state: &mut State, rec: &RecordedRequest) -> Response<Body> {
    let p = |n: &str| rec.param(n);
    let format = p("format").unwrap_or_else(|| "xml".into());
    let rf = ReturnFormat::from_param(
        p("returnFormat")
            .unwrap_or_else(|| format.clone())
            .as_bytes(),
    );
    let token = p("token").unwrap_or_default();
    let Some(project) = state.projects.get_mut(&token) else {
        return error(403, rf, "You do not have permissions to use the API");
    };
    let content = p("content").unwrap_or_default();
    let action = p("action").unwrap_or_default();
    let data = p("data");
    let rows = |f: &str, rows: &[Row]| {
        let (text, ct) = write_rows(f, rows);
        respond(200, ct, text)
    };
    match content.as_str() {
        "version" => respond(200, "text/html; charset=UTF-8", REDCAP_VERSION.into()),
        "project" => rows(
            &format,
            &[Row::of(&[
                ("project_id", &project.id.to_string()),
                ("project_title", &project.title),
                ("in_production", "0"),
                ("is_longitudinal", "0"),
                ("has_repeating_instruments_or_events", "0"),
                ("record_autonumbering_enabled", "1"),
                ("purpose", "1"),
            ])],
        ),
        "metadata" => match data {
            // Import Metadata replaces the data dictionary and answers the field count.
            Some(d) => match parse_rows(&format, d.as_bytes()) {
                Ok(new) => {
                    let n = new.len();
                    project.metadata = new;
                    count(rf.as_str(), n)
                }
                Err(e) => error(400, rf, &e),
            },
            None => rows(&format, &project.metadata),
        },
        "exportFieldNames" => {
            let fields: Vec<Row> = project
                .metadata
                .iter()
                .flat_map(|m| {
                    let n = m.get("field_name").unwrap_or("").to_string();
                    match m.get("field_type") {
                        Some("descriptive") => Vec::new(),
                        Some("checkbox") => m
                            .get("select_choices_or_calculations")
                            .unwrap_or("")
                            .split('|')
                            .map(|c| {
                                let code = c.split(',').next().unwrap_or("").trim();
                                Row::of(&[
                                    ("original_field_name", &n),
                                    ("choice_value", code),
                                    ("export_field_name", &format!("{n}___{code}")),
                                ])
                            })
                            .collect(),
                        _ => vec![Row::of(&[
                            ("original_field_name", &n),
                            ("choice_value", ""),
                            ("export_field_name", &n),
                        ])],
                    }
                })
                .collect();
            rows(&format, &fields)
        }
        "formEventMapping" => error(
            400,
            rf,
            "You cannot export form/event mappings for classic projects",
        ),
        "record" => match (action.as_str(), data) {
            ("delete", _) => {
                let ids = values(rec.post.get_str("records"));
                let before = project.records.len();
                project
                    .records
                    .retain(|r| !ids.iter().any(|i| Some(i.as_str()) == r.get("record_id")));
                plain_count(before - project.records.len())
            }
            (_, Some(d)) => match parse_rows(&format, d.as_bytes()) {
                Ok(new) => {
                    let n = new.len();
                    for row in new {
                        let id = row.get("record_id").unwrap_or("").to_string();
                        match project
                            .records
                            .iter_mut()
                            .find(|r| r.get("record_id") == Some(&id))
                        {
                            Some(existing) => row.0.iter().for_each(|(k, v)| existing.set(k, v)),
                            None => project.records.push(row),
                        }
                    }
                    count(rf.as_str(), n)
                }
                Err(e) => error(400, rf, &e),
            },
            _ => export_records(project, rec, &format),
        },
        "user" => {
            if action == "delete" {
                let Some(PhpValue::Array(_)) = rec.post.get_str("users") else {
                    return error(
                        400,
                        rf,
                        "The parameter 'users' is missing or is not an array",
                    );
                };
                let names = values(rec.post.get_str("users"));
                let before = project.users.len();
                project
                    .users
                    .retain(|u| !names.iter().any(|n| Some(n.as_str()) == u.get("username")));
                project
                    .user_dags
                    .retain(|u| !names.iter().any(|n| Some(n.as_str()) == u.get("username")));
                return plain_count(before - project.users.len());
            }
            match data {
                Some(d) => match parse_rows(&format, d.as_bytes()) {
                    Ok(new) => {
                        let n = new.len();
                        for row in new {
                            let name = row.get("username").unwrap_or("").to_string();
                            match project
                                .users
                                .iter_mut()
                                .find(|u| u.get("username") == Some(&name))
                            {
                                Some(existing) => {
                                    row.0.iter().for_each(|(k, v)| existing.set(k, v))
                                }
                                None => project.users.push(row),
                            }
                        }
                        plain_count(n)
                    }
                    Err(e) => error(400, rf, &e),
                },
                None => rows(&format, &project.users),
            }
        }
        "userRole" => match data {
            Some(d) => match parse_rows(&format, d.as_bytes()) {
                Ok(new) => plain_count(new.len()),
                Err(e) => error(400, rf, &e),
            },
            None => rows(&format, &project.roles),
        },
        "userRoleMapping" => match data {
            Some(d) => match parse_rows(&format, d.as_bytes()) {
                Ok(new) => plain_count(new.len()),
                Err(e) => error(400, rf, &e),
            },
            None => {
                let m: Vec<Row> = project
                    .users
                    .iter()
                    .map(|u| {
                        Row::of(&[
                            ("username", u.get("username").unwrap_or("")),
                            ("unique_role_name", ""),
                        ])
                    })
                    .collect();
                rows(&format, &m)
            }
        },
        "userDagMapping" => match data {
            Some(d) => match parse_rows(&format, d.as_bytes()) {
                Ok(new) => {
                    let n = new.len();
                    for row in new {
                        let name = row.get("username").unwrap_or("").to_string();
                        let dag = row
                            .get("redcap_data_access_group")
                            .unwrap_or("")
                            .to_string();
                        match project
                            .user_dags
                            .iter_mut()
                            .find(|u| u.get("username") == Some(&name))
                        {
                            Some(m) => m.set("redcap_data_access_group", &dag),
                            None => project.user_dags.push(Row::of(&[
                                ("username", &name),
                                ("redcap_data_access_group", &dag),
                            ])),
                        }
                    }
                    plain_count(n)
                }
                Err(e) => error(400, rf, &e),
            },
            None => rows(&format, &project.user_dags),
        },
        "dag" => match action.as_str() {
            "" | "export" => rows(&format, &project.dags),
            "switch" => plain_count(1),
            "import" | "delete" => plain_count(1),
            _ => error(
                400,
                rf,
                "The value of the parameter \"action\" is not valid",
            ),
        },
        "file" => {
            let key = (
                p("record").unwrap_or_default(),
                p("field").unwrap_or_default(),
                p("event").unwrap_or_default(),
            );
            match action.as_str() {
                "import" => match rec.files.iter().find(|(n, _, _)| n == "file") {
                    Some((_, name, bytes)) => {
                        project.files.insert(key, (name.clone(), bytes.clone()));
                        respond(200, "text/html; charset=UTF-8", String::new())
                    }
                    None => error(400, rf, "No valid file was uploaded"),
                },
                "export" => match project.files.get(&key) {
                    Some((name, bytes)) => {
                        let mut r = Response::new(full(bytes.clone()));
                        if let Ok(v) = format!("text/plain; name=\"{name}\"").parse() {
                            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                        }
                        r
                    }
                    None => error(400, rf, "There is no file to download for this record"),
                },
                "delete" => match project.files.remove(&key) {
                    Some(_) => respond(200, "text/html; charset=UTF-8", String::new()),
                    None => error(400, rf, "There is no file to delete for this record"),
                },
                _ => error(
                    400,
                    rf,
                    "The value of the parameter \"action\" is not valid",
                ),
            }
        }
        "" => error(400, rf, "The parameter 'content' is missing"),
        _ => error(
            400,
            rf,
            "The value of the parameter \"content\" is not valid",
        ),
    }
}
