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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use crate::config::PersonalTokensConfig;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    /// A request as the steps before leave it: routed to `project` (or not), parsed,
    /// with a JWT principal or waiting for a personal token.
    fn request(project: Option<&str>, jwt_user: Option<&str>, body: &str) -> Req {
        let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
        let mut req = http::Request::new(crate::body::empty());
        if let Some(p) = project {
            req.extensions_mut().insert(ProjectName(Arc::from(p)));
        }
        match jwt_user {
            Some(user) => {
                req.extensions_mut().insert(Arc::new(Principal {
                    user: user.into(),
                    groups: Vec::new(),
                    issuer: "https://idp".into(),
                    credential: CredentialKind::Jwt,
                }));
            }
            None => {
                req.extensions_mut().insert(AwaitingPersonalToken);
            }
        }
        req.extensions_mut()
            .insert(Arc::new(RedcapCall::from_form(&form).unwrap()));
        RequestContext::of(&mut req);
        req
    }

    /// A JWT caller keeps its principal (its `token` field is a placeholder); a personal
    /// token names its user and is good only for its own project, which it supplies when
    /// the path names none; anything else is a 401, never a pass to REDCap.
    #[test]
    fn a_personal_token_is_bound_to_its_project() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: PersonalTokensConfig = toml::from_str(&format!(
            "file = \"{}/tokens.json\"\nkey = \"{}\"",
            dir.path().display(),
            "k".repeat(32)
        ))
        .unwrap();
        let (token, _) =
            crate::auth::personal::issue(&cfg, "jdoe", "demo", vec!["g".into()], None, "").unwrap();
        let step = ResolveCredential {
            personal: Some(Arc::new(PersonalTokens::load(&cfg).unwrap())),
        };
        let apply = |req| futures_util::FutureExt::now_or_never(step.apply(req)).unwrap();
        let with_token = |t: &str| format!("token={t}&content=record&format=json");

        let jwt = apply(request(
            Some("demo"),
            Some("ann"),
            &with_token(&"0".repeat(32)),
        ))
        .unwrap();
        assert_eq!(
            jwt.extensions().get::<Arc<Principal>>().unwrap().user,
            "ann"
        );

        let personal = apply(request(Some("demo"), None, &with_token(token.expose()))).unwrap();
        let who = personal.extensions().get::<Arc<Principal>>().unwrap();
        assert_eq!(
            (who.user.as_str(), who.credential),
            ("jdoe", CredentialKind::PersonalToken)
        );

        // POST /api/ with no project: the token names it.
        let unrouted = apply(request(None, None, &with_token(token.expose()))).unwrap();
        assert_eq!(
            &*unrouted.extensions().get::<ProjectName>().unwrap().0,
            "demo"
        );

        for (project, body) in [
            (Some("other"), with_token(token.expose())),
            (Some("demo"), with_token(&"0".repeat(32))),
            (Some("demo"), "content=record&format=json".to_string()),
        ] {
            assert!(
                matches!(
                    apply(request(project, None, &body)),
                    Err(GatewayError::Unauthenticated(_))
                ),
                "{project:?} {body}"
            );
        }
        // A JWT caller must name the project.
        assert!(matches!(
            apply(request(None, Some("ann"), "content=record")),
            Err(GatewayError::BadRequest(_))
        ));
    }
}
