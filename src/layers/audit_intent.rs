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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuditConfig, AuditSink};
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    fn request(body: &str) -> Req {
        let call = RedcapCall::from_form(
            &parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap(),
        )
        .unwrap();
        let mut req = http::Request::new(crate::body::empty());
        req.extensions_mut().insert(Arc::new(call));
        let ctx = RequestContext::of(&mut req);
        let _ = ctx.request_id.set("r-1".into());
        req
    }

    fn audit(path: &std::path::Path, reads: WhenAuditFails) -> Arc<Audit> {
        Audit::start(&AuditConfig {
            sink: AuditSink::File,
            path: Some(path.to_path_buf()),
            on_failure_reads: reads,
            ..AuditConfig::default()
        })
        .unwrap()
    }

    /// A change passes only once its intent is in the log; a read writes none. When the
    /// log cannot be written, changes are refused, and reads as configured.
    #[tokio::test]
    async fn a_change_passes_only_after_its_intent_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let step = AuditIntent {
            audit: audit(&path, WhenAuditFails::Refuse),
        };
        let intents = || {
            std::fs::read_to_string(&path)
                .unwrap()
                .matches("\"phase\":\"intent\"")
                .count()
        };
        step.apply(request("content=record&format=json"))
            .await
            .unwrap();
        assert_eq!(intents(), 0, "a read writes no intent");
        step.apply(request("content=record&action=import&format=json&data=[]"))
            .await
            .unwrap();
        assert_eq!(intents(), 1, "written before the change goes on");

        // /dev/full takes no write: the log turns unhealthy.
        for (reads, read_passes) in [
            (WhenAuditFails::Refuse, false),
            (WhenAuditFails::Serve, true),
        ] {
            let step = AuditIntent {
                audit: audit(std::path::Path::new("/dev/full"), reads),
            };
            let change = step
                .apply(request("content=record&action=import&format=json&data=[]"))
                .await;
            assert!(matches!(change, Err(GatewayError::AuditUnavailable)));
            let read = step.apply(request("content=record&format=json")).await;
            assert_eq!(read.is_ok(), read_passes, "{reads:?}");
        }
    }
}
