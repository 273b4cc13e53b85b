//! REDCap-aware rules on calls that change users, roles and DAG membership. Pure
//! functions of (call, parsed data, rules): no network, table-tested.
//!
//! DAG membership changes through three doors, and all three are checked: user import
//! (`data_access_group`), userDagMapping import, and userRoleMapping import (its
//! `data_access_group` column).

use regex::Regex;

use crate::config::{UnknownFields, UserRulesConfig};
use crate::redcap::user_data::{DataRow, FieldValue};

/// Numeric rights a user-import row (or a role definition) may carry.
pub const NUMERIC_RIGHTS: &[&str] = &[
    "design",
    "alerts",
    "user_rights",
    "data_access_groups",
    "data_export",
    "reports",
    "stats_and_charts",
    "manage_survey_participants",
    "calendar",
    "data_import_tool",
    "data_comparison_tool",
    "logging",
    "email_logging",
    "file_repository",
    "data_quality_create",
    "data_quality_execute",
    "data_quality_resolution",
    "api_export",
    "api_import",
    "api_modules",
    "mobile_app",
    "mobile_app_download_data",
    "record_create",
    "record_rename",
    "record_delete",
    "lock_records_customization",
    "lock_records",
    "lock_records_all_forms",
    "mycap_participants",
    "double_data",
    "random_setup",
    "random_dashboard",
    "random_perform",
];

/// Other fields REDCap's user export/import carries (checked separately or harmless).
const USER_TEXT_FIELDS: &[&str] = &[
    "username",
    "expiration",
    "data_access_group",
    "email",
    "firstname",
    "lastname",
    "forms",
    "forms_export",
    "data_access_group_id",
];
const ROLE_TEXT_FIELDS: &[&str] = &["unique_role_name", "role_label", "forms", "forms_export"];

/// Per-form data-entry level, comparable across REDCap's legacy and bitmask encodings.
pub fn form_level(v: &str) -> Option<u8> {
    // Legacy: 0 none, 2 read-only, 1 view & edit, 3 edit survey responses.
    // REDCap 14+: 128 none, 129 read-only, 130 view & edit, +8 delete, +16 edit survey.
    Some(match v.trim().parse::<u32>().ok()? {
        0 | 128 => 0,
        2 | 129 => 1,
        1 | 130 => 2,
        3 | 138 | 146 => 3,
        154 => 4,
        _ => return None,
    })
}

pub fn form_level_name(s: &str) -> Option<u8> {
    Some(match s {
        "none" => 0,
        "read-only" => 1,
        "view-edit" => 2,
        "edit-survey" | "delete" => 3,
        "full" => 4,
        _ => return None,
    })
}

/// Export level: 0 none, 2 de-identified, 3 remove identifiers, 1 full data set.
pub fn export_level(v: &str) -> Option<u8> {
    Some(match v.trim().parse::<u32>().ok()? {
        0 => 0,
        2 => 1,
        3 => 2,
        1 => 3,
        _ => return None,
    })
}

pub fn export_level_name(s: &str) -> Option<u8> {
    Some(match s {
        "none" => 0,
        "deidentified" => 1,
        "remove-identifiers" => 2,
        "full" => 3,
        _ => return None,
    })
}

/// Compiled rules for one project.
#[derive(Debug)]
pub struct UserRules {
    pattern: Option<Regex>,
    protected: Vec<String>,
    expiration_required: bool,
    expiration_max_days: Option<u32>,
    dags: Vec<String>,
    allow_all_dags: bool,
    roles: Vec<String>,
    max_delete: usize,
    unknown: UnknownFields,
    numeric: Vec<(String, i64)>,
    forms: Option<u8>,
    forms_export: Option<u8>,
}

/// What an allowed change does, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    pub users: Vec<String>,
    /// `username: field=value` for every right, DAG or role set.
    pub changes: Vec<String>,
}

/// The outcome of the user rules: reasons are empty when allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub rule: &'static str,
    pub reasons: Vec<String>,
    pub effect: Effect,
}

impl UserRules {
    pub fn compile(c: &UserRulesConfig, token_owner: Option<&str>) -> Result<UserRules, String> {
        let pattern = match &c.username_pattern {
            Some(p) => Some(
                Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("username_pattern: {e}"))?,
            ),
            None => None,
        };
        let mut protected = c.protected_users.clone();
        protected.extend(token_owner.map(str::to_string));
        for k in c.ceilings.numeric.keys() {
            if !NUMERIC_RIGHTS.contains(&k.as_str()) {
                return Err(format!("ceilings: unknown right {k:?}"));
            }
        }
        let forms = match &c.ceilings.forms {
            Some(s) => Some(form_level_name(s).ok_or_else(|| {
                format!(
                    "ceilings.forms: {s:?} is not none, read-only, view-edit, edit-survey or full"
                )
            })?),
            None => None,
        };
        let forms_export = match &c.ceilings.forms_export {
            Some(s) => Some(export_level_name(s).ok_or_else(|| format!("ceilings.forms_export: {s:?} is not none, deidentified, remove-identifiers or full"))?),
            None => None,
        };
        if c.max_users_per_delete == 0 {
            return Err("max_users_per_delete must be at least 1".into());
        }
        Ok(UserRules {
            pattern,
            protected,
            expiration_required: c.expiration_required,
            expiration_max_days: c.expiration_max_days,
            dags: c.assignable_dags.clone(),
            allow_all_dags: c.allow_all_dags,
            roles: c.assignable_roles.clone(),
            max_delete: c.max_users_per_delete,
            unknown: c.unknown_fields,
            numeric: c
                .ceilings
                .numeric
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            forms,
            forms_export,
        })
    }

    fn check_username(&self, user: &str, why: &mut Vec<String>, at: &str) {
        if user.is_empty() {
            why.push(format!("{at}: username is missing"));
            return;
        }
        if self.protected.iter().any(|p| p.eq_ignore_ascii_case(user)) {
            why.push(format!("{at}: user {user} is protected"));
        }
        if let Some(p) = &self.pattern {
            if !p.is_match(user) {
                why.push(format!(
                    "{at}: username {user:?} does not match the allowed pattern"
                ));
            }
        }
    }

    /// The DAG rule, shared by all three doors. `None` means the row leaves it out.
    fn check_dag(
        &self,
        dag: Option<&str>,
        why: &mut Vec<String>,
        at: &str,
        omitted_means_all: bool,
    ) {
        match dag {
            None if !omitted_means_all => {}
            None | Some("") => {
                if !self.allow_all_dags {
                    why.push(format!(
                        "{at}: no DAG (access to all records) may not be given{}",
                        if dag.is_none() { "; name data_access_group, since leaving it out may remove the user from their DAG" } else { "" }
                    ));
                }
            }
            Some(d) => {
                if !self.dags.iter().any(|a| a == "*" || a == d) {
                    why.push(format!("{at}: DAG {d:?} may not be assigned"));
                }
            }
        }
    }

    fn check_rights(
        &self,
        row: &DataRow,
        why: &mut Vec<String>,
        changes: &mut Vec<String>,
        at: &str,
        who: &str,
    ) {
        for (name, max) in &self.numeric {
            if let Some(v) = row.get(name) {
                match v.text().map(str::trim).filter(|t| !t.is_empty()) {
                    None => {}
                    Some(t) => match t.parse::<i64>() {
                        Ok(n) if n <= *max => {}
                        Ok(n) => why.push(format!("{at}: {name}={n} is above the ceiling {max}")),
                        Err(_) => why.push(format!("{at}: {name}={t:?} is not a number")),
                    },
                }
            }
        }
        for (field, ceiling, level, kind) in [
            (
                "forms",
                self.forms,
                form_level as fn(&str) -> Option<u8>,
                "data entry",
            ),
            (
                "forms_export",
                self.forms_export,
                export_level as fn(&str) -> Option<u8>,
                "export",
            ),
        ] {
            let Some(v) = row.get(field) else { continue };
            match v.forms() {
                Err(e) => why.push(format!("{at}: {field}: {e}")),
                Ok(pairs) => {
                    for (form, value) in pairs {
                        match (level(&value), ceiling) {
                            (None, _) => why.push(format!(
                                "{at}: {field} {form}:{value} is not a known {kind} right"
                            )),
                            (Some(l), Some(max)) if l > max => why.push(format!(
                                "{at}: {field} {form}:{value} is above the {kind} ceiling"
                            )),
                            _ => {}
                        }
                    }
                }
            }
        }
        for (k, v) in &row.0 {
            match v {
                FieldValue::Text(t) if k != "username" && k != "unique_role_name" => {
                    changes.push(change(who, k, [t.as_str()]))
                }
                FieldValue::Forms(f) => changes.push(change(
                    who,
                    k,
                    f.iter().enumerate().flat_map(|(i, (a, b))| {
                        [if i > 0 { "," } else { "" }, a.as_str(), ":", b.as_str()]
                    }),
                )),
                _ => {}
            }
        }
    }

    fn check_unknown(&self, row: &DataRow, known: &[&str], why: &mut Vec<String>, at: &str) {
        if self.unknown == UnknownFields::Allow {
            return;
        }
        for (k, _) in &row.0 {
            if !known.contains(&k.as_str()) && !NUMERIC_RIGHTS.contains(&k.as_str()) {
                why.push(format!(
                    "{at}: unknown field {k:?} (a future REDCap field may grant rights)"
                ));
            }
        }
    }

    fn check_expiration(&self, row: &DataRow, why: &mut Vec<String>, at: &str, today: u64) {
        match row
            .text("expiration")
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None if self.expiration_required => why.push(format!("{at}: expiration is required")),
            None => {}
            Some(d) => match crate::auth::personal::end_of_day(d) {
                None => why.push(format!("{at}: expiration {d:?} is not YYYY-MM-DD")),
                Some(end) => {
                    if let Some(max) = self.expiration_max_days {
                        let latest = today + (u64::from(max) + 1) * 86_400;
                        if end > latest {
                            why.push(format!(
                                "{at}: expiration {d} is more than {max} days ahead"
                            ));
                        }
                    }
                }
            },
        }
    }

    /// The shape every per-user rule shares: label each row, check its username and
    /// fields, let `check` add the rule's own reasons and changes, list the users.
    fn each_user_row(
        &self,
        rule: &'static str,
        rows: &[DataRow],
        known: &[&str],
        mut check: impl FnMut(&DataRow, &str, &str, &mut Vec<String>, &mut Effect),
    ) -> Outcome {
        let mut why = Vec::new();
        let mut effect = Effect::default();
        if rows.is_empty() {
            why.push("the data holds no rows".into());
        }
        for (i, row) in rows.iter().enumerate() {
            let user = row.text("username").unwrap_or("").trim().to_string();
            let at = format!(
                "row {} ({})",
                i + 1,
                if user.is_empty() { "?" } else { &user }
            );
            self.check_username(&user, &mut why, &at);
            self.check_unknown(row, known, &mut why, &at);
            check(row, &user, &at, &mut why, &mut effect);
            effect.users.push(user);
        }
        Outcome {
            rule,
            reasons: why,
            effect,
        }
    }

    /// content=user import.
    pub fn user_import(&self, rows: &[DataRow], now: u64) -> Outcome {
        self.each_user_row("user_import", rows, USER_TEXT_FIELDS, |row, user, at, why, effect| {
            self.check_expiration(row, why, at, now);
            if row.text("data_access_group_id").is_some_and(|v| !v.trim().is_empty()) {
                why.push(format!("{at}: set data_access_group (a unique group name), not data_access_group_id"));
            }
            if matches!(row.get("data_access_group"), Some(FieldValue::Forms(_))) {
                why.push(format!("{at}: data_access_group must be text"));
            }
            self.check_dag(row.text("data_access_group").map(str::trim), why, at, true);
            self.check_rights(row, why, &mut effect.changes, at, user);
        })
    }

    /// content=userRole import: role definitions get the same ceilings.
    pub fn role_import(&self, rows: &[DataRow]) -> Outcome {
        let mut why = Vec::new();
        let mut effect = Effect::default();
        for (i, row) in rows.iter().enumerate() {
            let role = row
                .text("unique_role_name")
                .unwrap_or("")
                .trim()
                .to_string();
            let label = row.text("role_label").unwrap_or("").to_string();
            let name = if role.is_empty() {
                format!("new role {label:?}")
            } else {
                role.clone()
            };
            let at = format!("row {} ({name})", i + 1);
            if !role.is_empty() && !self.roles.iter().any(|r| r == "*" || *r == role) {
                why.push(format!("{at}: role {role} may not be changed"));
            }
            self.check_unknown(row, ROLE_TEXT_FIELDS, &mut why, &at);
            self.check_rights(row, &mut why, &mut effect.changes, &at, &name);
        }
        if rows.is_empty() {
            why.push("the data holds no roles".into());
        }
        Outcome {
            rule: "user_role",
            reasons: why,
            effect,
        }
    }

    /// content=userDagMapping import.
    pub fn dag_mapping(&self, rows: &[DataRow]) -> Outcome {
        let known = ["username", "redcap_data_access_group"];
        self.each_user_row(
            "user_dag_mapping",
            rows,
            &known,
            |row, user, at, why, effect| {
                let dag = row
                    .text("redcap_data_access_group")
                    .map(str::trim)
                    .unwrap_or("");
                self.check_dag(Some(dag), why, at, true);
                effect
                    .changes
                    .push(change(user, "data_access_group", [dag]));
            },
        )
    }

    /// content=userRoleMapping import (which can also move users between DAGs).
    pub fn role_mapping(&self, rows: &[DataRow]) -> Outcome {
        let known = ["username", "unique_role_name", "data_access_group"];
        self.each_user_row(
            "user_role_mapping",
            rows,
            &known,
            |row, user, at, why, effect| {
                let role = row.text("unique_role_name").unwrap_or("").trim();
                if !role.is_empty() && !self.roles.iter().any(|r| r == "*" || r == role) {
                    why.push(format!("{at}: role {role} may not be assigned"));
                }
                effect.changes.push(change(user, "role", [role]));
                if let Some(dag) = row.text("data_access_group").map(str::trim) {
                    self.check_dag(Some(dag), why, at, false);
                    effect
                        .changes
                        .push(change(user, "data_access_group", [dag]));
                }
            },
        )
    }

    /// content=user&action=delete.
    pub fn user_delete(&self, users: &[String]) -> Outcome {
        let mut why = Vec::new();
        if users.is_empty() {
            why.push("no users named (users[]=...)".into());
        }
        if users.len() > self.max_delete {
            why.push(format!(
                "{} users in one call; at most {} may be deleted at once",
                users.len(),
                self.max_delete
            ));
        }
        for u in users {
            self.check_username(u, &mut why, &format!("user {u}"));
        }
        Outcome {
            rule: "user_delete",
            reasons: why,
            effect: Effect {
                users: users.to_vec(),
                changes: users.iter().map(|u| format!("{u}: deleted")).collect(),
            },
        }
    }
}

/// `who: field=value` for the audit record's changes, written with `push_str`: an import
/// names every right it sets, and a `format!` per right was most of a one-row policy check.
fn change<'a>(who: &str, field: &str, value: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::with_capacity(who.len() + field.len() + 24);
    for part in [who, ": ", field, "="] {
        s.push_str(part);
    }
    for part in value {
        s.push_str(part);
    }
    s
}
