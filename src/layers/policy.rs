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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use crate::config::GrantConfig;
    use crate::policy::ProjectPolicy;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    fn step() -> Authorize {
        let grant: GrantConfig = toml::from_str(
            "groups = [\"staff\"]\nallow = [\"read\", \"user:*\"]\nexport = \"full\"",
        )
        .unwrap();
        let project = ProjectPolicy::compile(&[grant]).unwrap();
        Authorize {
            policy: Arc::new(Policy::new([("demo".to_string(), project)].into())),
        }
    }

    /// A request as the steps before leave it: project, principal, parsed call, context.
    fn request(group: &str, body: &str) -> (Req, Arc<RequestContext>) {
        let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
        let mut req = http::Request::new(crate::body::empty());
        req.extensions_mut().insert(ProjectName(Arc::from("demo")));
        req.extensions_mut().insert(Arc::new(Principal {
            user: "jdoe".into(),
            groups: vec![group.into()],
            issuer: "https://idp".into(),
            credential: CredentialKind::Jwt,
        }));
        req.extensions_mut()
            .insert(Arc::new(RedcapCall::from_form(&form).unwrap()));
        let ctx = RequestContext::of(&mut req);
        (req, ctx)
    }

    fn apply(req: Req) -> Result<Req> {
        futures_util::FutureExt::now_or_never(step().apply(req)).unwrap()
    }

    /// Allowed calls go on with the decision noted for the audit record; a denial is a
    /// 403 naming the rule; data that cannot be read is a 400; a request the earlier
    /// steps did not authenticate and parse never passes.
    #[test]
    fn decisions_become_answers() {
        let (req, ctx) = request("staff", "content=record&format=json");
        assert!(apply(req).is_ok());
        assert!(ctx.decision.get().is_some_and(|d| d.allowed));

        let (req, ctx) = request("staff", "content=record&action=import&format=json&data=[]");
        let Err(GatewayError::Forbidden(why)) = apply(req) else {
            panic!("a record import with read rights")
        };
        assert!(why.starts_with("denied by the gateway's "), "{why}");
        assert!(ctx.decision.get().is_some_and(|d| !d.allowed));

        let (req, _) = request("visitors", "content=record&format=json");
        assert!(matches!(apply(req), Err(GatewayError::Forbidden(_))));

        let (req, _) = request(
            "staff",
            "content=user&action=import&format=json&data=%5B%7B%22username%22%3A",
        );
        assert!(matches!(apply(req), Err(GatewayError::BadRequest(_))));

        let (mut req, _) = request("staff", "content=record&format=json");
        req.extensions_mut().remove::<Arc<Principal>>();
        assert!(matches!(apply(req), Err(GatewayError::Forbidden(_))));
    }
}
