//! Credential: after parsing, a request authenticated by JWT keeps its principal (its
//! `token` field was only a placeholder); one without a Bearer header must carry a valid
//! personal token in the `token` field, bound to the project it calls. A request never
//! falls through to REDCap with the client's own token.

use std::sync::Arc;

use super::authenticate::AwaitingPersonalToken;
use super::route::ProjectName;
use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::auth::personal::PersonalTokens;
use crate::auth::{AuthError, Principal};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::redcap::RedcapCall;

#[derive(Clone)]
pub struct ResolveCredential {
    personal: Option<Arc<PersonalTokens>>,
}

pub type CredentialLayer = StepLayer<ResolveCredential>;

impl ResolveCredential {
    pub fn layer(personal: Option<Arc<PersonalTokens>>) -> CredentialLayer {
        StepLayer(ResolveCredential { personal })
    }
}

impl Step for ResolveCredential {
    async fn apply(&self, mut req: Req) -> Result<Req> {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        let routed = req
            .extensions()
            .get::<ProjectName>()
            .map(|p| p.0.to_string());
        if req.extensions().get::<AwaitingPersonalToken>().is_none() {
            if req.extensions().get::<Arc<Principal>>().is_none() {
                return Err(GatewayError::Unauthenticated(AuthError::Missing));
            }
            if routed.is_none() {
                return Err(GatewayError::BadRequest(
                    "name the project: POST /p/{project}/api/ or send an X-Redcap-Project header"
                        .into(),
                ));
            }
            return Ok(req);
        }
        let personal = self
            .personal
            .as_ref()
            .ok_or(GatewayError::Unauthenticated(AuthError::Missing))?;
        let call = req
            .extensions()
            .get::<Arc<RedcapCall>>()
            .ok_or(GatewayError::Unauthenticated(AuthError::Missing))?;
        let presented = call
            .token_field
            .as_deref()
            .ok_or(GatewayError::Unauthenticated(AuthError::Missing))?;
        let (principal, project) = personal.verify(presented, routed.as_deref())?;
        let principal = Arc::new(principal);
        let project: Arc<str> = project.into();
        if let Some(ctx) = &ctx {
            let _ = ctx.principal.set(principal.clone());
            let _ = ctx.project.set(project.clone());
        }
        if routed.is_none() {
            req.extensions_mut().insert(ProjectName(project));
        }
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}
