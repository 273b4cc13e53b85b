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
use super::route::ProjectName;
use super::step::Handler;
use super::vault::Overrides;
use super::{Req, Resp, Result};
use crate::auth::Principal;
use crate::context::{ExportAudit, RequestContext};
use crate::error::GatewayError;
use crate::metadata_cache::MetadataCache;
use crate::policy::export::{self, Screen};
use crate::policy::Policy;
use crate::redcap::metadata::Refusal;
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

fn refusal(r: Refusal) -> GatewayError {
    match r {
        Refusal::Forbidden(m) => GatewayError::Forbidden(m),
        Refusal::BadRequest(m) => GatewayError::BadRequest(m),
    }
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
        let screen = with_post(req, |post| export::screen(call, post, &rights, names_user))?
            .map_err(refusal)?;
        if screen == Screen::Pass {
            return Ok(());
        }
        let snap = self.cache.current(project).await.map_err(|e| {
            tracing::warn!(project, error = %e, "restricted export refused: no project metadata");
            GatewayError::MetadataUnavailable
        })?;
        let view = snap.view(&rights);
        let ruled = with_post(req, |post| {
            export::rule(&screen, call, post, &snap.meta, &view)
        })?;
        let Some(plan) = ruled.map_err(refusal)? else {
            return Ok(());
        };
        if let Some(ctx) = req.extensions().get::<Arc<RequestContext>>() {
            let _ = ctx.export.set(ExportAudit::new(
                &rights,
                &plan.fields,
                plan.dropped.clone(),
            ));
        }
        let ext = req.extensions_mut();
        match ext.get_mut::<Overrides>() {
            Some(ov) => ov.fields = Some(plan.fields),
            None => {
                ext.insert(Overrides {
                    fields: Some(plan.fields),
                    dags: false,
                });
            }
        }
        Ok(())
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
