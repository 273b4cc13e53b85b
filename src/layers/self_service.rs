//! Self-service personal tokens over JSON: `POST /p/{project}/tokens`, for a user signed
//! in with SSO (a Bearer JWT, never a personal token). One door to the token desk
//! (`desk.rs`, which the sign-in portal also uses); this layer reads the form and
//! writes JSON.
//!
//! - `action=issue` (the default): fields `expires` (`YYYY-MM-DD`) and `note`; the
//!   token is in the answer, once.
//! - `action=list`: the user's own tokens for the project.
//! - `action=revoke&id=pt_...`.

use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use tower::Layer;

use super::route::{ProjectName, TokenEndpoint};
use super::step::Handler;
use super::{Req, Resp, Result};
use crate::auth::{AuthError, CredentialKind, Principal};
use crate::body::collect_limited;
use crate::context::RequestContext;
use crate::desk::{summarize, Action, Caller, TokenDesk};
use crate::error::GatewayError;
use crate::redcap::php_form::{parse_urlencoded, PhpLimits, PhpValue};

/// The form is a few short fields.
const MAX_BODY: usize = 4096;

pub struct SelfServiceLayer {
    desk: Option<Arc<TokenDesk>>,
}

impl SelfServiceLayer {
    /// Active when the desk is open (personal tokens with `self_service = true`).
    pub fn new(desk: Option<Arc<TokenDesk>>) -> Self {
        SelfServiceLayer { desk }
    }

    /// Whether the endpoint exists (route serves `/p/{project}/tokens` only then).
    pub fn enabled(&self) -> bool {
        self.desk.is_some()
    }
}

impl<S> Layer<S> for SelfServiceLayer {
    type Service = SelfService<S>;
    fn layer(&self, next: S) -> Self::Service {
        SelfService {
            next,
            desk: self.desk.clone(),
        }
    }
}

pub struct SelfService<S> {
    next: S,
    desk: Option<Arc<TokenDesk>>,
}

impl<S: Handler> Handler for SelfService<S> {
    async fn handle(&self, req: Req) -> Result<Resp> {
        if req.extensions().get::<TokenEndpoint>().is_none() {
            return self.next.handle(req).await;
        }
        // Route only marks the endpoint when self-service is on.
        let desk = self.desk.as_ref().ok_or(GatewayError::NotFound)?;
        serve(desk, req).await
    }
}

/// The fields of a token request (all optional).
struct Form {
    action: Option<String>,
    expires: Option<String>,
    note: String,
    id: Option<String>,
}

async fn serve(desk: &TokenDesk, req: Req) -> Result<Resp> {
    let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
    let ctx = ctx.as_ref();
    // Refused before the action is known: recorded as an issue.
    let refuse = |e: GatewayError| {
        summarize(ctx, "issue");
        e
    };
    // A JWT only: a personal token cannot mint more of itself.
    let who: Arc<Principal> = req
        .extensions()
        .get::<Arc<Principal>>()
        .filter(|p| p.credential == CredentialKind::Jwt)
        .cloned()
        .ok_or_else(|| refuse(GatewayError::Unauthenticated(AuthError::Missing)))?;
    let project = req
        .extensions()
        .get::<ProjectName>()
        .map(|p| p.0.clone())
        .ok_or_else(|| refuse(GatewayError::NotFound))?;
    let form = read_form(req).await.map_err(refuse)?;
    let action = form.action.as_deref().unwrap_or("issue");
    let action = Action::parse(action).ok_or_else(|| {
        refuse(GatewayError::BadRequest(format!(
            "action {action:?}: use issue, list or revoke"
        )))
    })?;
    let caller = Caller {
        ctx,
        who: &who,
        project: &project,
    };
    desk.open(caller, action).await?;
    match action {
        Action::List => {
            let mine = desk.list(caller).await?;
            Ok(json(&serde_json::to_value(mine).unwrap_or_default()))
        }
        Action::Revoke => {
            let id = form.id.unwrap_or_default();
            desk.revoke(caller, &id).await?;
            Ok(json(&serde_json::json!({ "revoked": id })))
        }
        Action::Issue => {
            let issued = desk
                .issue(caller, form.expires.as_deref(), &form.note)
                .await?;
            Ok(json(&serde_json::json!({
                "token": issued.token.expose(),
                "id": issued.id,
                "project": issued.project,
                "user": issued.user,
                "expires": issued.expires,
            })))
        }
    }
}

/// A JSON answer that is never cached, from a buffer wiped when sent (it may hold a
/// token).
fn json(body: &serde_json::Value) -> Resp {
    let mut resp = Resp::new(crate::body::full(super::vault::wiped(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A small urlencoded body, read as PHP would.
async fn read_form(req: Req) -> Result<Form> {
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        collect_limited(req.into_body(), MAX_BODY),
    )
    .await
    .map_err(|_| GatewayError::BodyTimeout)?
    .map_err(|_| GatewayError::PayloadTooLarge(MAX_BODY as u64))?;
    let form = parse_urlencoded(&body, PhpLimits::default())?;
    let field = |name: &str| -> Result<Option<String>> {
        match form.post.get_str(name) {
            None => Ok(None),
            Some(PhpValue::Str(v)) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| GatewayError::BadRequest(format!("{name} is not UTF-8"))),
            Some(PhpValue::Array(_)) => Err(GatewayError::BadRequest(format!(
                "{name} must be a single value"
            ))),
        }
    };
    Ok(Form {
        action: field("action")?,
        expires: field("expires")?.filter(|e| !e.is_empty()),
        note: field("note")?.unwrap_or_default(),
        id: field("id")?,
    })
}
