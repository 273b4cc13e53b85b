//! Policy: the decision for (Principal, RedcapCall, project). A denial is a 403 in
//! REDCap's error shape naming the rule and every reason; data that cannot be read is a
//! 400 with the parser's reason.

use std::sync::Arc;

use super::route::ProjectName;
use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::auth::Principal;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::policy::Policy;
use crate::redcap::RedcapCall;

#[derive(Clone)]
pub struct Authorize {
    policy: Arc<Policy>,
}

pub type PolicyLayer = StepLayer<Authorize>;

impl Authorize {
    pub fn layer(policy: Arc<Policy>) -> PolicyLayer {
        StepLayer(Authorize { policy })
    }
}

impl Step for Authorize {
    async fn apply(&self, req: Req) -> Result<Req> {
        let missing =
            || GatewayError::Forbidden("the request was not authenticated and parsed".into());
        let project = req.extensions().get::<ProjectName>().ok_or_else(missing)?;
        let who = req
            .extensions()
            .get::<Arc<Principal>>()
            .ok_or_else(missing)?;
        let call = req
            .extensions()
            .get::<Arc<RedcapCall>>()
            .ok_or_else(missing)?;
        let d = self.policy.decide(&project.0, who, call);
        if let Some(ctx) = req.extensions().get::<Arc<RequestContext>>() {
            let _ = ctx.decision.set(d.clone());
        }
        if d.allowed {
            return Ok(req);
        }
        if d.bad_input {
            // Malformed data is bad input, as a malformed record import is; 403 is kept
            // for rules that denied a well-formed call.
            return Err(GatewayError::BadRequest(d.reasons.join("; ")));
        }
        Err(GatewayError::Forbidden(format!(
            "denied by the gateway's {} policy: {}",
            d.rule,
            d.reasons.join("; ")
        )))
    }
}
