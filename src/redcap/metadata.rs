//! A project's fields as REDCap's export rights see them (REDCAP.md, "Data export
//! rights"): which instrument each belongs to and what kind of data it holds, compiled
//! from `content=metadata` (plus `exportFieldNames` for checkbox columns and the
//! project's unique event names), and what each export level removes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::rights::{ExportLevel, ExportRights};

/// What a field holds, for the export rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// `text` without validation: free text, removed from de-identified exports.
    FreeText,
    /// `notes`: removed from de-identified exports.
    Notes,
    /// `text` validated as a `date*`/`datetime*` type: removed from de-identified exports
    /// (the API never date-shifts).
    Date,
    /// `text` with any other validation (email, phone, integer, time, ...): kept.
    ValidatedText,
    /// radio, dropdown, yesno, truefalse, slider, sql.
    Choice,
    Checkbox,
    Calc,
    /// file and signature.
    File,
    /// `{form}_complete`, added by REDCap to every instrument.
    Complete,
    /// No data: never a column.
    Descriptive,
    /// A field type this gateway does not know: treated as identifying (kept only at
    /// Full Data Set), so a new REDCap field type fails closed.
    Unknown,
}

impl FieldKind {
    fn of(field_type: &str, validation: &str) -> FieldKind {
        match field_type {
            "text" if validation.is_empty() => FieldKind::FreeText,
            "text" if validation.starts_with("date") => FieldKind::Date,
            "text" => FieldKind::ValidatedText,
            "notes" => FieldKind::Notes,
            "radio" | "dropdown" | "yesno" | "truefalse" | "slider" | "sql" => FieldKind::Choice,
            "checkbox" => FieldKind::Checkbox,
            "calc" => FieldKind::Calc,
            "file" => FieldKind::File,
            "descriptive" => FieldKind::Descriptive,
            _ => FieldKind::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FieldKind::FreeText => "free text",
            FieldKind::Notes => "notes",
            FieldKind::Date => "date",
            FieldKind::ValidatedText => "validated text",
            FieldKind::Choice => "choice",
            FieldKind::Checkbox => "checkbox",
            FieldKind::Calc => "calc",
            FieldKind::File => "file",
            FieldKind::Complete => "form status",
            FieldKind::Descriptive => "descriptive",
            FieldKind::Unknown => "unknown type",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// Index into `ProjectMetadata::forms`.
    pub form: usize,
    pub kind: FieldKind,
    /// Tagged as an identifier in the Online Designer.
    pub identifier: bool,
    /// The columns REDCap writes for it (`name___code` for each checkbox choice).
    pub columns: Vec<String>,
}

/// Why a level removes a field, or `None` when it keeps it. REDCap's rules, field by
/// field, by the field's own instrument's level. The record id field is the row's key:
/// the free-text rule does not remove it (REDCap keeps it in de-identified exports), but
/// an identifier tag or No Access on its instrument do.
pub fn removed_by(
    kind: FieldKind,
    identifier: bool,
    record_id: bool,
    level: ExportLevel,
) -> Option<&'static str> {
    match level {
        ExportLevel::Full => None,
        ExportLevel::None => Some("no access to its instrument"),
        _ if identifier => Some("identifier"),
        _ if kind == FieldKind::Unknown => Some("field type unknown to the gateway"),
        ExportLevel::RemoveIdentifiers => None,
        ExportLevel::Deidentified => match kind {
            FieldKind::FreeText if !record_id => Some("free text"),
            FieldKind::Notes => Some("notes"),
            FieldKind::Date => Some("date"),
            _ => None,
        },
    }
}

/// One project's compiled metadata.
#[derive(Debug, Clone)]
pub struct ProjectMetadata {
    /// Instruments in REDCap's order.
    pub forms: Vec<String>,
    /// Fields in export order: each instrument's fields, then its `{form}_complete`.
    pub fields: Vec<Field>,
    /// The first field: REDCap's record id.
    pub record_id: usize,
    /// Unique event names (longitudinal projects), for `[event][field]` in logic.
    pub events: HashSet<String>,
    by_name: HashMap<String, usize>,
    by_form: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct MetadataRow {
    field_name: String,
    form_name: String,
    field_type: String,
    #[serde(default)]
    text_validation_type_or_show_slider_number: Option<String>,
    #[serde(default)]
    identifier: Option<String>,
}

#[derive(Deserialize)]
struct ExportFieldName {
    original_field_name: String,
    export_field_name: String,
}

#[derive(Deserialize)]
struct EventRow {
    unique_event_name: String,
}

/// REDCap's field names: a lower-case letter, then lower-case letters, digits and `_`.
fn is_field_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl ProjectMetadata {
    /// From REDCap's JSON answers to `content=metadata`, `content=exportFieldNames` and,
    /// for a longitudinal project, `content=event`. Anything unexpected (a field name
    /// REDCap would not make, a field twice, no fields) is an error: the last good copy
    /// is kept instead.
    pub fn from_json(
        metadata: &[u8],
        export_names: &[u8],
        events: Option<&[u8]>,
    ) -> Result<ProjectMetadata, String> {
        let rows: Vec<MetadataRow> =
            serde_json::from_slice(metadata).map_err(|e| format!("metadata: {e}"))?;
        let names: Vec<ExportFieldName> =
            serde_json::from_slice(export_names).map_err(|e| format!("exportFieldNames: {e}"))?;
        let events: Vec<EventRow> = match events {
            Some(e) => serde_json::from_slice(e).map_err(|e| format!("event: {e}"))?,
            None => Vec::new(),
        };
        let mut columns: HashMap<&str, Vec<String>> = HashMap::new();
        for n in &names {
            columns
                .entry(n.original_field_name.as_str())
                .or_default()
                .push(n.export_field_name.clone());
        }
        let mut m = ProjectMetadata {
            forms: Vec::new(),
            fields: Vec::new(),
            record_id: 0,
            events: events.into_iter().map(|e| e.unique_event_name).collect(),
            by_name: HashMap::new(),
            by_form: HashMap::new(),
        };
        if rows.is_empty() {
            return Err("metadata: the project has no fields".into());
        }
        for row in &rows {
            if !is_field_name(&row.field_name) || !crate::config::is_instrument_name(&row.form_name)
            {
                return Err(format!(
                    "metadata: unexpected field or instrument name {:?}/{:?}",
                    row.field_name, row.form_name
                ));
            }
            if m.by_form.get(&row.form_name) != Some(&m.forms.len().wrapping_sub(1)) {
                if m.by_form.contains_key(&row.form_name) {
                    return Err(format!(
                        "metadata: instrument {} is not contiguous",
                        row.form_name
                    ));
                }
                m.close_form();
                m.by_form.insert(row.form_name.clone(), m.forms.len());
                m.forms.push(row.form_name.clone());
            }
            let validation = row
                .text_validation_type_or_show_slider_number
                .as_deref()
                .unwrap_or("");
            let kind = FieldKind::of(&row.field_type, validation);
            // REDCap writes "y" or nothing; anything else is read as a tag (fail closed).
            let identifier = !row.identifier.as_deref().unwrap_or("").trim().is_empty();
            let cols = match kind {
                FieldKind::Descriptive => Vec::new(),
                _ => columns
                    .remove(row.field_name.as_str())
                    .unwrap_or_else(|| vec![row.field_name.clone()]),
            };
            m.push(Field {
                name: row.field_name.clone(),
                form: m.forms.len() - 1,
                kind,
                identifier,
                columns: cols,
            })?;
        }
        m.close_form();
        Ok(m)
    }

    fn push(&mut self, f: Field) -> Result<(), String> {
        if self
            .by_name
            .insert(f.name.clone(), self.fields.len())
            .is_some()
        {
            return Err(format!("metadata: field {} appears twice", f.name));
        }
        self.fields.push(f);
        Ok(())
    }

    /// Adds `{form}_complete` after the last instrument's fields.
    fn close_form(&mut self) {
        let Some(form) = self.forms.len().checked_sub(1) else {
            return;
        };
        let name = format!("{}_complete", self.forms[form]);
        if self.by_name.contains_key(&name) {
            return;
        }
        let _ = self.push(Field {
            columns: vec![name.clone()],
            name,
            form,
            kind: FieldKind::Complete,
            identifier: false,
        });
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.by_name.get(name).map(|&i| &self.fields[i])
    }

    pub fn form_index(&self, name: &str) -> Option<usize> {
        self.by_form.get(name).copied()
    }

    /// The index of a field in `fields`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Why `rights` remove field `i`, or `None` when they keep it.
    pub fn removed(&self, i: usize, rights: &ExportRights) -> Option<&'static str> {
        let f = &self.fields[i];
        removed_by(
            f.kind,
            f.identifier,
            i == self.record_id,
            rights.level(&self.forms[f.form]),
        )
    }

    /// What `rights` may export of this project, computed once per rights.
    pub fn view(&self, rights: &ExportRights) -> ExportView {
        let allowed: Vec<bool> = (0..self.fields.len())
            .map(|i| self.removed(i, rights).is_none())
            .collect();
        let names: Vec<&str> = self
            .fields
            .iter()
            .zip(&allowed)
            .filter(|(f, ok)| **ok && f.kind != FieldKind::Descriptive)
            .map(|(f, _)| f.name.as_str())
            .collect();
        ExportView {
            rights: rights.clone(),
            all: Arc::from(names.join(",")),
            count: names.len(),
            allowed,
        }
    }
}

/// The fields one set of rights may export.
#[derive(Debug, Clone)]
pub struct ExportView {
    pub rights: ExportRights,
    allowed: Vec<bool>,
    /// Every allowed field (the record id included), comma-joined in export order: what
    /// an export naming no fields and no forms asks REDCap for.
    pub all: Arc<str>,
    pub count: usize,
}

impl ExportView {
    pub fn allows(&self, i: usize) -> bool {
        self.allowed.get(i).copied().unwrap_or(false)
    }
}

/// A restricted export's refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 403: the caller's export rights do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 400: the request cannot be read for certain.
    #[error("{0}")]
    BadRequest(String),
}

/// The parameters of an Export Records call that the gateway reads before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportParams {
    pub fields: Vec<String>,
    pub forms: Vec<String>,
    pub survey_fields: bool,
    pub filter_logic: Option<String>,
}

/// Parameters a restricted record export may carry (REDCap 15's Export Records, plus
/// the ones the gateway strips or replaces). Any other is refused: a parameter this
/// gateway does not know could make REDCap add columns.
pub const EXPORT_PARAMS: &[&str] = &[
    "token",
    "content",
    "action",
    "format",
    "returnFormat",
    "type",
    "records",
    "fields",
    "forms",
    "events",
    "rawOrLabel",
    "rawOrLabelHeaders",
    "exportCheckboxLabel",
    "exportSurveyFields",
    "exportDataAccessGroups",
    "filterLogic",
    "dateRangeBegin",
    "dateRangeEnd",
    "csvDelimiter",
    "decimalCharacter",
    "exportBlankForGrayFormStatus",
    "combineCheckboxOptions",
    // Sent by PyCap 2.7.0 (label or unique event names: the shape, not the columns).
    "eventName",
    "mobile_app",
    "mobileApp",
    "uuid",
    "project_init",
];

use super::php_form::{PhpArray, PhpKey, PhpValue};

/// A list parameter as REDCap reads it: an array, or a comma-separated string.
pub fn list(post: &PhpArray, name: &'static str) -> Result<Vec<String>, Refusal> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| {
            Refusal::BadRequest(format!("the parameter \"{name}\" is not valid UTF-8"))
        })
    };
    let mut out = Vec::new();
    match post.get_str(name) {
        None => {}
        // REDCap splits a string on commas.
        Some(PhpValue::Str(s)) => {
            for part in text(s)?.split(',') {
                let part = part.trim();
                if !part.is_empty() {
                    out.push(part.to_string());
                }
            }
        }
        Some(PhpValue::Array(a)) => {
            for (_, v) in a.iter() {
                match v {
                    PhpValue::Str(s) => {
                        let s = text(s)?;
                        if !s.trim().is_empty() {
                            out.push(s.trim().to_string());
                        }
                    }
                    PhpValue::Array(_) => {
                        return Err(Refusal::BadRequest(format!(
                        "the parameter \"{name}\" must be a flat array or a comma-separated list"
                    )))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// REDCap's reading of a flag: anything but absent, empty, `0` or `false` is read as
/// true here, so a spelling REDCap might take for true is never let through as false.
pub fn flag(post: &PhpArray, name: &'static str) -> Result<bool, Refusal> {
    match post.get_str(name) {
        None => Ok(false),
        Some(PhpValue::Str(s)) => {
            let s = String::from_utf8_lossy(s);
            let s = s.trim();
            Ok(!(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false")))
        }
        Some(PhpValue::Array(_)) => Err(Refusal::BadRequest(format!(
            "the parameter \"{name}\" must be a single value, not an array"
        ))),
    }
}

impl ExportParams {
    /// Reads `$_POST` as REDCap will; refuses parameters outside `EXPORT_PARAMS`.
    pub fn read(post: &PhpArray) -> Result<ExportParams, Refusal> {
        for (k, _) in post.iter() {
            let known = match k {
                PhpKey::Str(s) => EXPORT_PARAMS.iter().any(|p| p.as_bytes() == &s[..]),
                PhpKey::Int(_) => false,
            };
            if !known {
                let name: String = k.as_bytes_lossy().chars().take(64).collect();
                return Err(Refusal::BadRequest(format!(
                    "the parameter \"{name}\" is not accepted on an export with restricted export rights"
                )));
            }
        }
        let filter_logic = match post.get_str("filterLogic") {
            None => None,
            Some(PhpValue::Str(s)) => Some(
                std::str::from_utf8(s)
                    .map_err(|_| {
                        Refusal::BadRequest(
                            "the parameter \"filterLogic\" is not valid UTF-8".into(),
                        )
                    })?
                    .to_string(),
            ),
            Some(PhpValue::Array(_)) => {
                return Err(Refusal::BadRequest(
                    "the parameter \"filterLogic\" must be a single value, not an array".into(),
                ))
            }
        };
        Ok(ExportParams {
            fields: list(post, "fields")?,
            forms: list(post, "forms")?,
            survey_fields: flag(post, "exportSurveyFields")?,
            filter_logic: filter_logic.filter(|l| !l.trim().is_empty()),
        })
    }
}

/// What the gateway asks REDCap for instead of the client's `fields` and `forms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPlan {
    /// The comma-joined field list sent as `fields` (never empty).
    pub fields: Arc<str>,
    /// Named fields and instruments the caller's rights removed, with why.
    pub dropped: Vec<String>,
}

impl ProjectMetadata {
    /// The field set for a restricted export: the union of the named fields and the
    /// fields of the named instruments (the record id only when named by either), or
    /// every field when neither is named, intersected with what the rights allow.
    /// A named field or instrument the rights remove is dropped and reported; when
    /// nothing but the record id is left of what was named, or nothing at all, the call
    /// is refused. `filterLogic` may name only fields the rights allow.
    pub fn plan(&self, view: &ExportView, p: &ExportParams) -> Result<ExportPlan, Refusal> {
        if p.survey_fields {
            return Err(Refusal::Forbidden(
                "exportSurveyFields adds the survey identifier and survey timestamps, which are identifier and date columns your export rights do not include".into(),
            ));
        }
        if let Some(logic) = &p.filter_logic {
            self.check_logic(view, logic)?;
        }
        if p.fields.is_empty() && p.forms.is_empty() {
            if view.count == 0 {
                return Err(Refusal::Forbidden(format!(
                    "your export rights ({}) allow no field of this project",
                    view.rights.describe()
                )));
            }
            return Ok(ExportPlan {
                fields: view.all.clone(),
                dropped: Vec::new(),
            });
        }
        let mut chosen = vec![false; self.fields.len()];
        let mut dropped = Vec::new();
        let mut unknown = Vec::new();
        for name in &p.fields {
            match self.position(name) {
                Some(i) => match self.removed(i, &view.rights) {
                    None => chosen[i] = true,
                    Some(why) => dropped.push(format!("{name} ({why})")),
                },
                None => unknown.push(name.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(Refusal::BadRequest(format!(
                "The following values in the parameter \"fields\" are not valid: {}",
                unknown.join(", ")
            )));
        }
        for form in &p.forms {
            let Some(fi) = self.form_index(form) else {
                return Err(Refusal::BadRequest(format!(
                    "The following values in the parameter \"forms\" are not valid: {form}"
                )));
            };
            if view.rights.level(form) == ExportLevel::None {
                dropped.push(format!("instrument {form} (no access)"));
                continue;
            }
            for (i, f) in self.fields.iter().enumerate() {
                if f.form == fi && view.allows(i) {
                    chosen[i] = true;
                }
            }
        }
        let names: Vec<&str> = self
            .fields
            .iter()
            .zip(&chosen)
            .filter(|(f, c)| **c && f.kind != FieldKind::Descriptive)
            .map(|(f, _)| f.name.as_str())
            .collect();
        let only_key = names.iter().all(|n| *n == self.fields[self.record_id].name);
        if names.is_empty() || (only_key && !dropped.is_empty()) {
            return Err(Refusal::Forbidden(format!(
                "your export rights ({}) do not allow {}",
                view.rights.describe(),
                if dropped.is_empty() {
                    "any of the fields asked for".to_string()
                } else {
                    dropped.join(", ")
                }
            )));
        }
        Ok(ExportPlan {
            fields: Arc::from(names.join(",")),
            dropped,
        })
    }

    /// A filter may name allowed fields, event names, instance numbers and the smart
    /// variables that hold no record data.
    pub fn check_logic(&self, view: &ExportView, logic: &str) -> Result<(), Refusal> {
        let refs = super::logic::references(logic)
            .map_err(|e| Refusal::BadRequest(format!("filterLogic: {e}")))?;
        for r in refs {
            let ok = match self.position(r.name) {
                Some(i) => view.allows(i),
                None if r.name == "record-name" => view.allows(self.record_id),
                None => {
                    r.name.bytes().all(|b| b.is_ascii_digit())
                        || self.events.contains(r.name)
                        || super::logic::SAFE_SMART_VARIABLES.contains(&r.name)
                }
            };
            if !ok {
                let why = match self.position(r.name) {
                    Some(i) => self.removed(i, &view.rights).unwrap_or("not allowed"),
                    None => "not a field, event or smart variable the gateway allows",
                };
                return Err(Refusal::Forbidden(format!(
                    "filterLogic names [{}] ({why}), which your export rights do not include",
                    r.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};
    use ExportLevel::*;

    /// Every field kind on two instruments.
    pub(crate) fn sample() -> ProjectMetadata {
        let meta = serde_json::json!([
            {"field_name":"record_id","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"name","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":"y"},
            {"field_name":"nickname","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"dob","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"date_ymd","identifier":""},
            {"field_name":"seen_at","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"datetime_seconds_mdy","identifier":""},
            {"field_name":"email","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"email","identifier":""},
            {"field_name":"wake","form_name":"demographics","field_type":"text","text_validation_type_or_show_slider_number":"time","identifier":""},
            {"field_name":"notes","form_name":"demographics","field_type":"notes","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"sex","form_name":"demographics","field_type":"radio","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"race","form_name":"demographics","field_type":"checkbox","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"bmi","form_name":"demographics","field_type":"calc","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"intro","form_name":"demographics","field_type":"descriptive","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"mrn","form_name":"consent","field_type":"text","text_validation_type_or_show_slider_number":"integer","identifier":"y"},
            {"field_name":"consent_file","form_name":"consent","field_type":"file","text_validation_type_or_show_slider_number":"","identifier":""},
            {"field_name":"gadget","form_name":"consent","field_type":"hologram","text_validation_type_or_show_slider_number":"","identifier":""}
        ]);
        let names = serde_json::json!([
            {"original_field_name":"race","choice_value":"1","export_field_name":"race___1"},
            {"original_field_name":"race","choice_value":"2","export_field_name":"race___2"}
        ]);
        ProjectMetadata::from_json(
            meta.to_string().as_bytes(),
            names.to_string().as_bytes(),
            Some(br#"[{"unique_event_name":"visit_1_arm_1"}]"#),
        )
        .unwrap()
    }

    fn rights(default: ExportLevel, forms: &[(&str, ExportLevel)]) -> ExportRights {
        ExportRights {
            default,
            forms: forms.iter().map(|(f, l)| (f.to_string(), *l)).collect(),
        }
    }

    fn params(body: &str) -> Result<ExportParams, Refusal> {
        ExportParams::read(
            &parse_urlencoded(body.as_bytes(), PhpLimits::default())
                .unwrap()
                .post,
        )
    }

    #[test]
    fn complete_fields_and_checkbox_columns() {
        let m = sample();
        assert_eq!(m.forms, ["demographics", "consent"]);
        let names: Vec<&str> = m.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names[12], "demographics_complete");
        assert_eq!(names.last(), Some(&"consent_complete"));
        assert_eq!(m.field("race").unwrap().columns, ["race___1", "race___2"]);
        assert!(m.field("intro").unwrap().columns.is_empty());
    }

    /// Each level against each field kind: what REDCap keeps (REDCAP.md).
    #[test]
    fn table_per_level_and_field_kind() {
        let m = sample();
        #[rustfmt::skip]
        let want: &[(&str, [bool; 4])] = &[
            // field            none   deid   remove_ids full
            ("record_id",       [false, true,  true,  true]),
            ("name",            [false, false, false, true]),
            ("nickname",        [false, false, true,  true]),
            ("dob",             [false, false, true,  true]),
            ("seen_at",         [false, false, true,  true]),
            ("email",           [false, true,  true,  true]),
            ("wake",            [false, true,  true,  true]),
            ("notes",           [false, false, true,  true]),
            ("sex",             [false, true,  true,  true]),
            ("race",            [false, true,  true,  true]),
            ("bmi",             [false, true,  true,  true]),
            ("demographics_complete", [false, true, true, true]),
            ("mrn",             [false, false, false, true]),
            ("consent_file",    [false, true,  true,  true]),
            ("gadget",          [false, false, false, true]),
            ("consent_complete",[false, true,  true,  true]),
        ];
        for (name, by_level) in want {
            for (level, want) in [None, Deidentified, RemoveIdentifiers, Full]
                .iter()
                .zip(by_level)
            {
                let view = m.view(&rights(*level, &[]));
                let i = m.position(name).unwrap();
                assert_eq!(view.allows(i), *want, "{name} at {level:?}");
            }
        }
    }

    #[test]
    fn per_instrument_levels() {
        let m = sample();
        let v = m.view(&rights(Full, &[("consent", None)]));
        assert_eq!(
            &*v.all,
            "record_id,name,nickname,dob,seen_at,email,wake,notes,sex,race,bmi,demographics_complete"
        );
        let v = m.view(&rights(None, &[("consent", Deidentified)]));
        assert_eq!(&*v.all, "consent_file,consent_complete");
    }

    #[test]
    fn plans_union_fields_and_forms_and_drop_what_rights_remove() {
        let m = sample();
        let v = m.view(&rights(Deidentified, &[]));
        let plan = |b: &str| m.plan(&v, &params(b).unwrap());
        assert_eq!(
            &*plan("content=record").unwrap().fields,
            "record_id,email,wake,sex,race,bmi,demographics_complete,consent_file,consent_complete"
        );
        // The record id only when named; union of fields and forms, in export order.
        assert_eq!(
            &*plan("content=record&fields=sex&forms[]=consent")
                .unwrap()
                .fields,
            "sex,consent_file,consent_complete"
        );
        assert_eq!(
            &*plan("fields[0]=bmi&fields[1]=sex").unwrap().fields,
            "sex,bmi"
        );
        let p = plan("fields=record_id,sex,name").unwrap();
        assert_eq!(&*p.fields, "record_id,sex");
        assert_eq!(p.dropped, ["name (identifier)"]);
        // Only the record id left of what was named: refused, naming what was removed.
        let e = plan("fields[]=name&fields[]=record_id").unwrap_err();
        assert!(
            matches!(&e, Refusal::Forbidden(m) if m.contains("name (identifier)")),
            "{e}"
        );
        assert!(matches!(plan("fields=dob"), Err(Refusal::Forbidden(_))));
        assert!(matches!(plan("fields=nope"), Err(Refusal::BadRequest(_))));
        assert!(matches!(plan("forms=nope"), Err(Refusal::BadRequest(_))));
        assert!(matches!(
            plan("exportSurveyFields=true"),
            Err(Refusal::Forbidden(_))
        ));
        assert!(plan("exportSurveyFields=False&exportDataAccessGroups=true").is_ok());
        let none = m.view(&rights(None, &[]));
        assert!(matches!(
            m.plan(&none, &params("").unwrap()),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn unknown_parameters_and_odd_shapes_are_refused() {
        assert!(params("content=record&report_id=3").is_err());
        assert!(params("fields[a][b]=x").is_err());
        assert!(params("filterLogic[]=x").is_err());
        assert!(params("exportSurveyFields[]=1").is_err());
        assert_eq!(
            params("fields=a,%20b,,c&forms[]=f").unwrap().fields,
            ["a", "b", "c"]
        );
        assert!(params("exportSurveyFields=yes").unwrap().survey_fields);
    }

    #[test]
    fn filter_logic_only_on_allowed_fields() {
        let m = sample();
        let v = m.view(&rights(Deidentified, &[]));
        let check = |l: &str| m.check_logic(&v, l);
        assert!(check("[sex] = '1' and [visit_1_arm_1][bmi] > 20").is_ok());
        assert!(check("[race(1)] = '1' or [race:checked] <> '' or [event-name] = 'x'").is_ok());
        assert!(check("[record-name] <> '' and [email] <> ''").is_ok());
        for bad in [
            "[name] = 'Ada'",
            "[visit_1_arm_1][dob] > '2000-01-01'",
            "[notes(1)] = '1'",
            "[mrn:value] = '1'",
            "[sex] = '[name]'",
            "[survey-participant-email] <> ''",
            "[nickname",
            "&#91;name&#93; = 'Ada'",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_that_is_not_what_redcap_writes_is_refused() {
        let ok = |m: &str| ProjectMetadata::from_json(m.as_bytes(), b"[]", Option::None);
        assert!(ok("[]").is_err());
        assert!(ok(r#"[{"field_name":"A","form_name":"f","field_type":"text"}]"#).is_err());
        assert!(ok(r#"[{"field_name":"a","form_name":"f","field_type":"text"},{"field_name":"a","form_name":"f","field_type":"text"}]"#).is_err());
        assert!(ok(r#"[{"field_name":"a","form_name":"f","field_type":"text"},{"field_name":"b","form_name":"g","field_type":"text"},{"field_name":"c","form_name":"f","field_type":"text"}]"#).is_err());
        assert!(
            ok(r#"[{"field_name":"a","form_name":"f","field_type":"text","identifier":"x"}]"#)
                .unwrap()
                .fields[0]
                .identifier
        );
    }
}
