//! Self-service personal tokens: `POST /p/{project}/tokens`, for a user signed in with
//! SSO (a Bearer JWT, never a personal token) who holds a grant on the project. The
//! answer shows the new token once; the token file keeps only its hash, with the user's
//! groups so grants apply to it as to the JWT. Form fields (optional): `expires`
//! (`YYYY-MM-DD`, at most `self_service_max_lifetime` ahead, the default) and `note`.
//! The issuance is audited (content `personalToken`, action `issue`, the token's id and
//! expiry as its change); the token itself is never logged or recorded.

use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use tower::Layer;

use super::route::{ProjectName, TokenEndpoint};
use super::step::Handler;
use super::{Req, Resp, Result};
use crate::auth::personal::{self, PersonalTokens};
use crate::auth::{AuthError, CredentialKind, Principal};
use crate::body::collect_limited;
use crate::config::PersonalTokensConfig;
use crate::context::{CallSummary, RequestContext};
use crate::error::GatewayError;
use crate::policy::{Decision, Effect, Policy};
use crate::redcap::php_form::{parse_urlencoded, PhpLimits, PhpValue};

/// The form is two short fields.
const MAX_BODY: usize = 4096;
const MAX_NOTE: usize = 200;

pub struct SelfServiceLayer {
    state: Option<Arc<State>>,
}

struct State {
    cfg: PersonalTokensConfig,
    tokens: Arc<PersonalTokens>,
    policy: Arc<Policy>,
    /// One issuance at a time in this process (the file lock covers other processes).
    issuing: tokio::sync::Mutex<()>,
}

impl SelfServiceLayer {
    /// Active when personal tokens are configured with `self_service = true`.
    pub fn new(
        cfg: Option<&PersonalTokensConfig>,
        tokens: Option<Arc<PersonalTokens>>,
        policy: Arc<Policy>,
    ) -> Self {
        let state = match (cfg, tokens) {
            (Some(cfg), Some(tokens)) if cfg.self_service => Some(Arc::new(State {
                cfg: cfg.clone(),
                tokens,
                policy,
                issuing: tokio::sync::Mutex::new(()),
            })),
            _ => None,
        };
        SelfServiceLayer { state }
    }
}

impl<S> Layer<S> for SelfServiceLayer {
    type Service = SelfService<S>;
    fn layer(&self, next: S) -> Self::Service {
        SelfService {
            next,
            state: self.state.clone(),
        }
    }
}

pub struct SelfService<S> {
    next: S,
    state: Option<Arc<State>>,
}

impl<S: Handler> Handler for SelfService<S> {
    async fn handle(&self, req: Req) -> Result<Resp> {
        if req.extensions().get::<TokenEndpoint>().is_none() {
            return self.next.handle(req).await;
        }
        // Route only marks the endpoint when self-service is on.
        let state = self.state.as_ref().ok_or(GatewayError::NotFound)?;
        state.issue(req).await
    }
}

impl State {
    async fn issue(&self, req: Req) -> Result<Resp> {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        if let Some(ctx) = &ctx {
            let _ = ctx.call.set(CallSummary {
                content: "personalToken",
                action: "issue",
                format: "json",
                return_format: "json",
                users: Vec::new(),
            });
        }
        // A JWT only: a personal token cannot mint more of itself.
        let who = req
            .extensions()
            .get::<Arc<Principal>>()
            .filter(|p| p.credential == CredentialKind::Jwt)
            .cloned()
            .ok_or(GatewayError::Unauthenticated(AuthError::Missing))?;
        let project = req
            .extensions()
            .get::<ProjectName>()
            .map(|p| p.0.clone())
            .ok_or(GatewayError::NotFound)?;
        let deny = |reason: String| {
            if let Some(ctx) = &ctx {
                let _ = ctx
                    .decision
                    .set(decision(false, vec![reason.clone()], Effect::default()));
            }
            GatewayError::Forbidden(reason)
        };
        if !self.policy.names(&project, &who) {
            return Err(deny(format!(
                "{} holds no grant on project {project}, so cannot have a token for it",
                who.user
            )));
        }
        let (expires, note) = read_form(req).await?;
        let expires_at = personal::expiry(
            expires.as_deref(),
            self.cfg.self_service_max_lifetime.0,
            "personal_tokens.self_service_max_lifetime",
        )
        .map_err(|e| GatewayError::BadRequest(format!("expires: {e}")))?;

        let issued = {
            let _one = self.issuing.lock().await;
            let cfg = self.cfg.clone();
            let (user, groups, proj) = (who.user.clone(), who.groups.clone(), project.clone());
            let max = self.cfg.self_service_max_per_user;
            tokio::task::spawn_blocking(move || {
                personal::issue_at(&cfg, &user, &proj, groups, expires_at, &note, Some(max))
            })
            .await
            .map_err(|_| GatewayError::TokenStoreUnavailable)?
            .map_err(|e| {
                tracing::error!(error = %e, "personal-token file not written");
                GatewayError::TokenStoreUnavailable
            })?
        };
        let (token, record) = issued.map_err(|live| {
            deny(format!(
                "{} already holds {live} unexpired tokens for project {project} (the most \
                 allowed); ask an administrator to revoke one",
                who.user
            ))
        })?;
        // Usable at once, not only after the next poll of the file.
        if let Err(e) = self.tokens.reload() {
            tracing::warn!(error = %e, "personal tokens not reloaded after an issue");
        }
        let expires = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.expires_at),
        )
        .to_string();
        if let Some(ctx) = &ctx {
            let effect = Effect {
                users: vec![who.user.clone()],
                changes: vec![format!("{}: issued, expires {expires}", record.id)],
            };
            let _ = ctx.decision.set(decision(true, Vec::new(), effect));
        }
        let body = serde_json::json!({
            "token": token.expose(),
            "id": record.id,
            "project": record.project,
            "user": record.user,
            "expires": expires,
        });
        let mut resp = Resp::new(crate::body::full(super::vault::wiped(
            serde_json::to_vec(&body).unwrap_or_default(),
        )));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

fn decision(allowed: bool, reasons: Vec<String>, effect: Effect) -> Decision {
    Decision {
        allowed,
        rule: "self_service",
        reasons,
        effect,
        trace: Vec::new(),
    }
}

/// The optional `expires` and `note` of a small urlencoded body, read as PHP would.
async fn read_form(req: Req) -> Result<(Option<String>, String)> {
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
    let expires = field("expires")?.filter(|e| !e.is_empty());
    let note = field("note")?.unwrap_or_default();
    if note.chars().count() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(GatewayError::BadRequest(format!(
            "note must be at most {MAX_NOTE} printable characters"
        )));
    }
    Ok((expires, note))
}
