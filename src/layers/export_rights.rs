//! Export rights: for a caller whose data export rights are restricted, each content is
//! allowed, rewritten or refused so that REDCap itself never sends a column the caller
//! may not see (docs/ARCHITECTURE.md, "Export rights"). Record exports get their field
//! set spelled out (`vault::Overrides`, applied by the vault step); side doors that return
//! data the gateway cannot narrow (reports, logs, PDFs, survey links, ...) are refused.
//! Full-rights callers pass untouched. A call that changes the project's structure
//! (metadata, events, arms, ...) marks the metadata copy stale once REDCap has answered.

use std::sync::Arc;

use tower::Layer;

use super::parse::with_post;
use super::step::Handler;
use super::vault::Overrides;
use super::{call_parts, metadata_of, Req, Resp, Result};
use crate::auth::Principal;
use crate::context::{ExportAudit, RequestContext};
use crate::metadata_cache::MetadataCache;
use crate::policy::export::{self, Screen};
use crate::policy::Policy;
use crate::redcap::RedcapCall;

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

impl<S: Handler> GuardExports<S> {
    /// Allows, rewrites or refuses a restricted caller's call (`policy::export`).
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
        let names_user = self.policy.names_user_export(project, who);
        let screen = with_post(req, |post| export::screen(call, post, &rights, names_user))??;
        if screen == Screen::Pass {
            return Ok(());
        }
        let snap = metadata_of(&self.cache, project).await?;
        let view = snap.view(&rights);
        let ruled = with_post(req, |post| {
            export::rule(&screen, call, post, &snap.meta, &view)
        })?;
        let Some(plan) = ruled? else {
            return Ok(());
        };
        if let Some(ctx) = req.extensions().get::<Arc<RequestContext>>() {
            let _ = ctx.export.set(ExportAudit::new(
                &rights,
                &plan.fields,
                plan.dropped.clone(),
            ));
        }
        req.extensions_mut()
            .get_or_insert_default::<Overrides>()
            .fields = Some(plan.fields);
        Ok(())
    }
}

impl<S: Handler> Handler for GuardExports<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        let (project, who, call) = call_parts(&req)?;
        self.apply(&mut req, &project.0, &who, &call).await?;
        if !export::changes_structure(&call) {
            return self.next.handle(req).await;
        }
        let resp = self.next.handle(req).await;
        if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
            self.cache.invalidate(&project.0);
        }
        resp
    }
}
