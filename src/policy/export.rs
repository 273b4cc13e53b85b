//! What a call by a caller with restricted export rights becomes: passed as it is, a
//! record export narrowed to the fields the rights keep, or refused (REDCAP.md, "Data
//! export rights"; docs/ARCHITECTURE.md, "Export rights"). Pure functions, so that the
//! request path (`layers::export_rights`) and `policy explain` rule alike.
//!
//! Ruling is two steps: `screen` needs only the call, and says whether the project's
//! metadata is needed; `rule` finishes with it.

use crate::redcap::metadata::Refusal;
use crate::redcap::metadata::{ExportParams, ExportPlan, ExportView, FieldKind, ProjectMetadata};
use crate::redcap::php_form::PhpArray;
use crate::redcap::{ExportRights, Operation, RedcapCall};

/// Contents that return no record data (metadata, structure, DAG and role lists).
pub const NO_RECORD_DATA: &[&str] = &[
    "metadata",
    "exportFieldNames",
    "project",
    "version",
    "instrument",
    "event",
    "arm",
    "formEventMapping",
    "repeatingFormsEvents",
    "dag",
    "userDagMapping",
    "userRole",
    "userRoleMapping",
    "generateNextRecordName",
    "attachment",
];

/// The first step's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    /// Nothing to narrow: forwarded as it came.
    Pass,
    /// A record export: its field set is computed from the metadata.
    Records,
    /// A file (or file info) export of this field: allowed when the rights keep it.
    File(String),
}

/// Imports and deletes that change what the metadata copy describes.
pub fn changes_structure(call: &RedcapCall) -> bool {
    matches!(call.operation, Operation::Import | Operation::Delete)
        && matches!(
            call.content,
            "metadata"
                | "arm"
                | "event"
                | "formEventMapping"
                | "repeatingFormsEvents"
                | "project"
                | "project_settings"
        )
}

/// The refusal of a content that returns data the gateway cannot narrow.
pub fn side_door(content: &str, rights: &ExportRights) -> Refusal {
    let why = match content {
        "report" => {
            "a report exports its own fields and filter; export records with fields instead"
        }
        "log" => "the logging shows the values that were changed",
        "participantList" => "the participant list holds e-mail addresses and identifiers",
        "pdf" => "a PDF holds every field of its instruments",
        "fileRepository" => "the file repository holds exported data files",
        "project_xml" => "the project XML carries record data unless returnMetadataOnly=true",
        "user" => "the user list is shown only to grants that allow user:export by name",
        "file" | "fileInfo" => "the file field is not one your export rights include",
        _ => "it returns record data the gateway cannot narrow to your rights",
    };
    Refusal::Forbidden(format!(
        "content={content} is not available with your export rights ({}): {why}",
        rights.describe()
    ))
}

/// The first step, for a caller whose rights are restricted. `names_user_export`: a
/// grant naming the caller allows `user:export` by name (not through `read`).
pub fn screen(
    call: &RedcapCall,
    post: &PhpArray,
    rights: &ExportRights,
    names_user_export: bool,
) -> Result<Screen, Refusal> {
    let (content, op) = (call.content, call.operation);
    // Imports and deletes return no data; the grants and user rules decide them.
    if op.is_mutating() || NO_RECORD_DATA.contains(&content) {
        return Ok(Screen::Pass);
    }
    match (content, op) {
        ("record", Operation::Export) => Ok(Screen::Records),
        ("fileRepository", Operation::Other("list")) => Ok(Screen::Pass),
        // Only REDCap's own spelling of "metadata only" is taken as such.
        ("project_xml", _) if post.text("returnMetadataOnly").as_deref() == Some("true") => {
            Ok(Screen::Pass)
        }
        ("user", Operation::Export) if names_user_export => Ok(Screen::Pass),
        ("file" | "fileInfo", Operation::Export) => {
            Ok(Screen::File(post.text("field").unwrap_or_default()))
        }
        _ => Err(side_door(content, rights)),
    }
}

/// The second step: `Some(plan)` for a record export (REDCap is asked for
/// `plan.fields` instead of the client's `fields`/`forms`), `None` when the call passes.
pub fn rule(
    screen: &Screen,
    call: &RedcapCall,
    post: &PhpArray,
    meta: &ProjectMetadata,
    view: &ExportView,
) -> Result<Option<ExportPlan>, Refusal> {
    match screen {
        Screen::Pass => Ok(None),
        Screen::File(name) => match meta.position(name) {
            Some(i) if meta.fields[i].kind == FieldKind::File && view.allows(i) => Ok(None),
            _ => Err(side_door(call.content, &view.rights)),
        },
        Screen::Records => {
            let params = ExportParams::read(post)?;
            meta.plan(view, &params).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};
    use crate::redcap::ExportLevel;

    fn call(body: &str) -> (RedcapCall, PhpArray) {
        let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
        (RedcapCall::from_form(&form).unwrap(), form.post)
    }

    #[test]
    fn side_doors_are_refused_and_structure_passes() {
        let deid = ExportRights {
            default: ExportLevel::Deidentified,
            forms: Default::default(),
        };
        let s = |b: &str, names_user: bool| {
            let (c, p) = call(b);
            screen(&c, &p, &deid, names_user)
        };
        for b in [
            "content=report&report_id=1",
            "content=log",
            "content=pdf",
            "content=participantList&instrument=a",
            "content=surveyLink&record=1&instrument=a",
            "content=surveyReturnCode&record=1&instrument=a",
            "content=fileRepository&action=export&doc_id=1",
            "content=project_xml",
            "content=project_xml&returnMetadataOnly=1",
            "content=user",
        ] {
            assert!(matches!(s(b, false), Err(Refusal::Forbidden(_))), "{b}");
        }
        for b in [
            "content=metadata",
            "content=record&action=import&data=x",
            "content=record&action=delete&records[]=1",
            "content=fileRepository&action=list",
            "content=project_xml&returnMetadataOnly=true",
        ] {
            assert_eq!(s(b, false), Ok(Screen::Pass), "{b}");
        }
        assert_eq!(s("content=user", true), Ok(Screen::Pass));
        assert_eq!(s("content=record", false), Ok(Screen::Records));
        assert_eq!(
            s("content=file&action=export&field=f&record=1", false),
            Ok(Screen::File("f".into()))
        );
    }
}
