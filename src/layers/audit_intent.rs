//! Audit intent: before a mutating call (import, delete, rename, DAG or role change, file
//! upload or delete) is forwarded, its intent record is written and flushed. If the
//! audit log cannot be written the call is refused (503): no change without a record.
//! Reads follow `audit.on_failure_reads`.

use std::sync::Arc;

use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::audit::Audit;
use crate::config::WhenAuditFails;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::layers::observe::record;
use crate::redcap::RedcapCall;

#[derive(Clone)]
pub struct AuditIntent {
    audit: Arc<Audit>,
}

pub type AuditIntentLayer = StepLayer<AuditIntent>;

impl AuditIntent {
    pub fn layer(audit: Arc<Audit>) -> AuditIntentLayer {
        StepLayer(AuditIntent { audit })
    }
}

impl Step for AuditIntent {
    async fn apply(&self, req: Req) -> Result<Req> {
        let mutating = req
            .extensions()
            .get::<Arc<RedcapCall>>()
            .is_some_and(|c| c.operation.is_mutating());
        if !mutating {
            if !self.audit.healthy() && self.audit.on_failure_reads == WhenAuditFails::Refuse {
                return Err(GatewayError::AuditUnavailable);
            }
            return Ok(req);
        }
        let Some(ctx) = req.extensions().get::<Arc<RequestContext>>().cloned() else {
            return Err(GatewayError::AuditUnavailable);
        };
        self.audit.intent(&record(&ctx, "intent")).await.map_err(|e| {
            tracing::error!(error = %e, "refusing a mutating call: its intent could not be audited");
            GatewayError::AuditUnavailable
        })?;
        Ok(req)
    }
}
