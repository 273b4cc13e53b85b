//! The portal's pages: askama templates (`templates/portal/`, compiled in and
//! HTML-escaped), and the words they show for rights and tokens.

use askama::Template;

use crate::policy::Access;
use crate::redcap::rights::{ExportLevel, ExportRights};

/// One project as the pages show it.
pub struct ProjectCard {
    pub name: String,
    /// The caller's export rights, in REDCap's words.
    pub export: String,
    pub grants: Vec<GrantLine>,
}

pub struct GrantLine {
    /// `read, record:import`.
    pub allow: String,
    /// `every record` or `data access groups site_a, site_b only`.
    pub records: String,
}

fn level_words(l: ExportLevel) -> &'static str {
    match l {
        ExportLevel::None => "No Access",
        ExportLevel::Deidentified => "De-Identified",
        ExportLevel::RemoveIdentifiers => "Remove All Identifier Fields",
        ExportLevel::Full => "Full Data Set",
    }
}

/// `De-Identified on every instrument; consent: No Access`.
pub fn rights_words(r: Option<&ExportRights>) -> String {
    let Some(r) = r else {
        return "Full Data Set on every instrument".into();
    };
    let mut s = format!("{} on every instrument", level_words(r.default));
    if !r.forms.is_empty() {
        s.push_str(" except ");
        let parts: Vec<String> = r
            .forms
            .iter()
            .map(|(f, l)| format!("{f}: {}", level_words(*l)))
            .collect();
        s.push_str(&parts.join(", "));
    }
    s
}

impl ProjectCard {
    pub fn new(name: &str, access: &Access) -> ProjectCard {
        ProjectCard {
            name: name.to_string(),
            export: rights_words(access.export.as_ref()),
            grants: access
                .grants
                .iter()
                .map(|g| GrantLine {
                    allow: g.allow.join(", "),
                    records: match &g.dags {
                        None => "every record".into(),
                        Some(d) => format!("data access groups {} only", d.join(", ")),
                    },
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/signin.html")]
pub struct SigninPage<'a> {
    pub user: Option<&'a str>,
    pub csrf: &'a str,
    pub login_href: &'a str,
    pub message: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "portal/projects.html")]
pub struct ProjectsPage<'a> {
    pub user: Option<&'a str>,
    pub csrf: &'a str,
    pub projects: Vec<ProjectCard>,
}

/// A token just issued, with snippets ready to paste.
pub struct IssuedView {
    pub token: String,
    pub id: String,
    pub expires: String,
    pub api_url: String,
    pub redcapr: String,
    pub pycap: String,
    pub redcaplite: String,
}

impl IssuedView {
    pub fn new(token: &str, id: &str, expires: &str, api_url: &str) -> IssuedView {
        IssuedView {
            token: token.to_string(),
            id: id.to_string(),
            expires: expires.to_string(),
            api_url: api_url.to_string(),
            redcapr: format!(
                "library(REDCapR)\nrecords <- redcap_read(\n  redcap_uri = \"{api_url}\",\n  token = \"{token}\"\n)$data"
            ),
            pycap: format!(
                "from redcap import Project\nproject = Project(\"{api_url}\", \"{token}\")\nrecords = project.export_records()"
            ),
            redcaplite: format!(
                "from redcaplite import RedcapClient\nclient = RedcapClient(\"{api_url}\", \"{token}\")\nrecords = client.export_records()"
            ),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/project.html")]
pub struct ProjectPage<'a> {
    pub user: Option<&'a str>,
    pub csrf: &'a str,
    pub p: ProjectCard,
    pub tokens: Vec<crate::desk::Listed>,
    pub issued: Option<IssuedView>,
    pub notice: Option<String>,
    pub error: Option<String>,
    pub max_days: u64,
    pub today: String,
    pub default_expiry: String,
}

#[derive(Template)]
#[template(path = "portal/error.html")]
pub struct ErrorPage<'a> {
    pub user: Option<&'a str>,
    pub csrf: &'a str,
    pub title: &'a str,
    pub message: &'a str,
}

/// `YYYY-MM-DD` of a Unix time (UTC).
pub fn date(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(..10).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rights_in_redcaps_words() {
        assert_eq!(rights_words(None), "Full Data Set on every instrument");
        let r = ExportRights {
            default: ExportLevel::Deidentified,
            forms: BTreeMap::from([("consent".to_string(), ExportLevel::None)]),
        };
        assert_eq!(
            rights_words(Some(&r)),
            "De-Identified on every instrument except consent: No Access"
        );
        assert_eq!(date(86_400 * 365), "1971-01-01");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = ErrorPage {
            user: Some("<script>"),
            csrf: "\"><x",
            title: "t",
            message: "<img src=x onerror=alert(1)>",
        };
        let html = page.render().unwrap();
        assert!(
            !html.contains("<script>") && !html.contains("<img"),
            "{html}"
        );
        assert!(!html.contains("\"><x"), "{html}");
        assert!(
            html.contains("img src=x onerror"),
            "the text is shown, escaped: {html}"
        );
    }
}
