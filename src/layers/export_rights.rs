//! Export rights: for a caller whose data export rights are restricted, each content is
//! allowed, rewritten or refused so that REDCap itself never sends a column the caller
//! may not see (docs/ARCHITECTURE.md, "Export rights"). Record exports get their field
//! set spelled out (`FieldsOverride`, applied by the vault step); side doors that return
//! data the gateway cannot narrow (reports, logs, PDFs, survey links, ...) are refused.
//! Full-rights callers pass untouched. A call that changes the project's structure
//! (metadata, events, arms, ...) marks the metadata copy stale once REDCap has answered.

use std::sync::Arc;

use tower::Layer;

use super::parse::{FormBody, ParsedBody};
use super::route::ProjectName;
use super::step::Handler;
use super::{Req, Resp, Result};
use crate::auth::Principal;
use crate::context::{ExportAudit, RequestContext};
use crate::error::GatewayError;
use crate::metadata_cache::MetadataCache;
use crate::policy::{ExportRights, Policy};
use crate::redcap::metadata::{ExportParams, Refusal};
use crate::redcap::php_form::PhpArray;
use crate::redcap::{Operation, RedcapCall};

/// The field list the vault step sends REDCap instead of the client's `fields`/`forms`.
#[derive(Clone, Debug)]
pub struct FieldsOverride(pub Arc<str>);

/// Contents that return no record data (metadata, structure, DAG and role lists).
const NO_RECORD_DATA: &[&str] = &[
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

/// Imports and deletes that change what the metadata copy describes.
fn changes_structure(call: &RedcapCall) -> bool {
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

#[derive(Clone)]
pub struct ExportRightsLayer {
    policy: Arc<Policy>,
    cache: Arc<MetadataCache>,
}

impl ExportRightsLayer {
    pub fn new(policy: Arc<Policy>, cache: Arc<MetadataCache>) -> Self {
        ExportRightsLayer { policy, cache }
    }
}

impl<S> Layer<S> for ExportRightsLayer {
    type Service = GuardExports<S>;
    fn layer(&self, next: S) -> GuardExports<S> {
        GuardExports {
            policy: self.policy.clone(),
            cache: self.cache.clone(),
            next,
        }
    }
}

pub struct GuardExports<S> {
    policy: Arc<Policy>,
    cache: Arc<MetadataCache>,
    next: S,
}

fn refusal(r: Refusal) -> GatewayError {
    match r {
        Refusal::Forbidden(m) => GatewayError::Forbidden(m),
        Refusal::BadRequest(m) => GatewayError::BadRequest(m),
    }
}

fn side_door(content: &str, rights: &ExportRights) -> GatewayError {
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
    GatewayError::Forbidden(format!(
        "content={content} is not available with your export rights ({}): {why}",
        rights.describe()
    ))
}

/// Reads the parsed body's `$_POST` without taking it (the vault step takes it).
fn with_post<T>(req: &Req, f: impl FnOnce(&PhpArray) -> T) -> Option<T> {
    req.extensions().get::<ParsedBody>()?.with(|b| match b {
        FormBody::Urlencoded { form, .. } => f(&form.post),
        FormBody::Multipart(mp) => f(&mp.form.post),
    })
}

impl<S: Handler> GuardExports<S> {
    /// Allows, rewrites or refuses a restricted caller's call.
    async fn apply(
        &self,
        req: &mut Req,
        project: &str,
        who: &Principal,
        call: &RedcapCall,
    ) -> Result<()> {
        let Some(rights) = self.policy.export_rights(project, who) else {
            return Ok(());
        };
        let op = call.operation;
        let content = call.content;
        if op.is_mutating() {
            return Ok(());
        }
        if NO_RECORD_DATA.contains(&content) {
            return Ok(());
        }
        let scalar = |req: &Req, name: &str| -> Option<String> {
            with_post(req, |post| match post.get_str(name)? {
                crate::redcap::php_form::PhpValue::Str(s) => {
                    Some(String::from_utf8_lossy(s).into_owned())
                }
                _ => None,
            })?
        };
        match (content, op) {
            ("record", Operation::Export) => {}
            ("fileRepository", Operation::Other("list")) => return Ok(()),
            ("project_xml", _) => {
                // Only REDCap's own spelling of "metadata only" is taken as such.
                return match scalar(req, "returnMetadataOnly").as_deref() {
                    Some("true") => Ok(()),
                    _ => Err(side_door(content, &rights)),
                };
            }
            ("user", Operation::Export) if self.policy.names_user_export(project, who) => {
                return Ok(())
            }
            ("file" | "fileInfo", Operation::Export) => {
                let snap = self.snapshot(project).await?;
                let view = snap.view(&rights);
                let field = scalar(req, "field").unwrap_or_default();
                let ok = snap
                    .meta
                    .fields
                    .iter()
                    .position(|f| {
                        f.name == field && f.kind == crate::redcap::metadata::FieldKind::File
                    })
                    .is_some_and(|i| view.allows(i));
                return if ok {
                    Ok(())
                } else {
                    Err(side_door(content, &rights))
                };
            }
            _ => return Err(side_door(content, &rights)),
        }
        let snap = self.snapshot(project).await?;
        let view = snap.view(&rights);
        let params = with_post(req, ExportParams::read)
            .ok_or_else(|| GatewayError::BadRequest("the request body was not parsed".into()))?
            .map_err(refusal)?;
        let plan = snap.meta.plan(&view, &params).map_err(refusal)?;
        if let Some(ctx) = req.extensions().get::<Arc<RequestContext>>() {
            let _ = ctx.export.set(ExportAudit::new(
                &rights,
                &plan.fields,
                plan.dropped.clone(),
            ));
        }
        req.extensions_mut().insert(FieldsOverride(plan.fields));
        Ok(())
    }

    async fn snapshot(&self, project: &str) -> Result<Arc<crate::metadata_cache::Snapshot>> {
        self.cache.current(project).await.map_err(|e| {
            tracing::warn!(project, error = %e, "restricted export refused: no project metadata");
            GatewayError::MetadataUnavailable
        })
    }
}

impl<S: Handler> Handler for GuardExports<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        let found = (
            req.extensions().get::<ProjectName>().cloned(),
            req.extensions().get::<Arc<Principal>>().cloned(),
            req.extensions().get::<Arc<RedcapCall>>().cloned(),
        );
        let (Some(project), Some(who), Some(call)) = found else {
            return Err(GatewayError::Forbidden(
                "the request was not authenticated and parsed".into(),
            ));
        };
        self.apply(&mut req, &project.0, &who, &call).await?;
        if !changes_structure(&call) {
            return self.next.handle(req).await;
        }
        let resp = self.next.handle(req).await;
        if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
            self.cache.invalidate(&project.0);
        }
        resp
    }
}
