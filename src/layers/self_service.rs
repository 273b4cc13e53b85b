//! Self-service personal tokens: `POST /p/{project}/tokens`, for a user signed in with
//! SSO (a Bearer JWT, never a personal token).
//!
//! - `action=issue` (the default), for a user some grant of the project names: a new
//!   token, shown once in the answer; the token file keeps only its hash, with the
//!   user's groups so grants apply to it as to the JWT. Fields `expires` (`YYYY-MM-DD`,
//!   at most `self_service_max_lifetime` ahead, the default) and `note`.
//! - `action=list`: the user's own tokens for the project (id, expiry, note; never a
//!   token or a hash).
//! - `action=revoke&id=pt_...`: removes one of the user's own tokens for the project;
//!   it is refused from the next request on.
//!
//! Each call is audited (content `personalToken`, the action, the token's id as the
//! change); a token itself is never logged or recorded.

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
use crate::ratelimit::RateLimits;
use crate::redcap::php_form::{parse_urlencoded, PhpLimits, PhpValue};

/// The form is a few short fields.
const MAX_BODY: usize = 4096;
const MAX_NOTE: usize = 200;

pub struct SelfServiceLayer {
    state: Option<Arc<State>>,
}

struct State {
    cfg: PersonalTokensConfig,
    tokens: Arc<PersonalTokens>,
    policy: Arc<Policy>,
    /// Each call is charged to the user's own rate (`rate_limit.per_user`): a change
    /// of the file costs `mutating_cost`, a list 1.
    limits: Arc<RateLimits>,
    /// One change of the file at a time in this process (its lock covers the others).
    writing: tokio::sync::Mutex<()>,
}

impl SelfServiceLayer {
    /// Active when personal tokens are configured with `self_service = true`.
    pub fn new(
        cfg: Option<&PersonalTokensConfig>,
        tokens: Option<Arc<PersonalTokens>>,
        policy: Arc<Policy>,
        limits: Arc<RateLimits>,
    ) -> Self {
        let state = match (cfg, tokens) {
            (Some(cfg), Some(tokens)) if cfg.self_service => Some(Arc::new(State {
                cfg: cfg.clone(),
                tokens,
                policy,
                limits,
                writing: tokio::sync::Mutex::new(()),
            })),
            _ => None,
        };
        SelfServiceLayer { state }
    }
}

impl SelfServiceLayer {
    /// Whether the endpoint exists (route serves `/p/{project}/tokens` only then).
    pub fn enabled(&self) -> bool {
        self.state.is_some()
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
        state.serve(req).await
    }
}

/// Who asks, for which project, and the request's context.
#[derive(Clone, Copy)]
struct Caller<'a> {
    ctx: Option<&'a Arc<RequestContext>>,
    who: &'a Principal,
    project: &'a Arc<str>,
}

/// The fields of a token request (all optional).
struct Form {
    action: Option<String>,
    expires: Option<String>,
    note: String,
    id: Option<String>,
}

/// What the audit record says was done.
fn summarize(ctx: Option<&Arc<RequestContext>>, action: &'static str) {
    if let Some(ctx) = ctx {
        let _ = ctx.call.set(CallSummary {
            content: "personalToken",
            action,
            format: "json",
            return_format: "json",
            users: Vec::new(),
        });
    }
}

fn decide(ctx: Option<&Arc<RequestContext>>, allowed: bool, reasons: Vec<String>, effect: Effect) {
    if let Some(ctx) = ctx {
        let _ = ctx.decision.set(Decision {
            allowed,
            rule: "self_service",
            reasons,
            effect,
            trace: Vec::new(),
            bad_input: false,
        });
    }
}

fn unavailable(e: String) -> GatewayError {
    tracing::error!(error = %e, "personal-token file not read or written");
    GatewayError::TokenStoreUnavailable
}

impl State {
    async fn serve(&self, req: Req) -> Result<Resp> {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        let ctx = ctx.as_ref();
        // Refused before the action is known: recorded as an issue.
        let refuse = |e: GatewayError| {
            summarize(ctx, "issue");
            e
        };
        // A JWT only: a personal token cannot mint more of itself.
        let who = req
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
        let action = match form.action.as_deref().unwrap_or("issue") {
            "issue" => "issue",
            "list" => "list",
            "revoke" => "revoke",
            other => {
                return Err(refuse(GatewayError::BadRequest(format!(
                    "action {other:?}: use issue, list or revoke"
                ))))
            }
        };
        summarize(ctx, action);
        let cost = if action == "list" {
            1
        } else {
            self.limits.mutating_cost
        };
        self.limits
            .charge_user(&who.user, cost)
            .await
            .map_err(super::rate_limit::refused)?;
        let caller = Caller {
            ctx,
            who: &who,
            project: &project,
        };
        match action {
            "list" => self.list(caller).await,
            "revoke" => self.revoke(caller, form).await,
            _ => self.issue(caller, form).await,
        }
    }

    async fn issue(&self, caller: Caller<'_>, form: Form) -> Result<Resp> {
        let Caller { ctx, who, project } = caller;
        let deny = |reason: String| {
            decide(ctx, false, vec![reason.clone()], Effect::default());
            GatewayError::Forbidden(reason)
        };
        if !self.policy.names(project, who) {
            return Err(deny(format!(
                "{} holds no grant on project {project}, so cannot have a token for it",
                who.user
            )));
        }
        let expires_at = personal::expiry(
            form.expires.as_deref(),
            self.cfg.self_service_max_lifetime.0,
            "personal_tokens.self_service_max_lifetime",
        )
        .map_err(|e| GatewayError::BadRequest(format!("expires: {e}")))?;
        let issued = {
            let _one = self.writing.lock().await;
            let cfg = self.cfg.clone();
            let (user, groups, proj) = (who.user.clone(), who.groups.clone(), project.clone());
            let (note, max) = (form.note, self.cfg.self_service_max_per_user);
            tokio::task::spawn_blocking(move || {
                personal::issue_at(&cfg, &user, &proj, groups, expires_at, &note, Some(max))
            })
            .await
            .map_err(|_| GatewayError::TokenStoreUnavailable)?
            .map_err(unavailable)?
        };
        let (token, record) = issued.map_err(|live| {
            deny(format!(
                "{} already holds {live} unexpired tokens for project {project} (the most \
                 allowed); revoke one first (action=revoke)",
                who.user
            ))
        })?;
        // Usable at once, not only after the next poll of the file.
        if let Err(e) = self.tokens.reload() {
            tracing::warn!(error = %e, "personal tokens not reloaded after an issue");
        }
        let expires = rfc3339(record.expires_at);
        let effect = Effect {
            users: vec![who.user.clone()],
            changes: vec![format!("{}: issued, expires {expires}", record.id)],
        };
        decide(ctx, true, Vec::new(), effect);
        Ok(json(&serde_json::json!({
            "token": token.expose(),
            "id": record.id,
            "project": record.project,
            "user": record.user,
            "expires": expires,
        })))
    }

    async fn list(&self, caller: Caller<'_>) -> Result<Resp> {
        let Caller { who, project, .. } = caller;
        let cfg = self.cfg.clone();
        let records = tokio::task::spawn_blocking(move || personal::list(&cfg))
            .await
            .map_err(|_| GatewayError::TokenStoreUnavailable)?
            .map_err(unavailable)?;
        let now = personal::now_unix();
        let mine: Vec<_> = records
            .iter()
            .filter(|t| t.user == who.user && *t.project == **project)
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "created": t.created,
                    "expires": rfc3339(t.expires_at),
                    "expired": t.expires_at <= now,
                    "note": t.note,
                })
            })
            .collect();
        Ok(json(&serde_json::Value::Array(mine)))
    }

    async fn revoke(&self, caller: Caller<'_>, form: Form) -> Result<Resp> {
        let Caller { ctx, who, project } = caller;
        let id = form
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GatewayError::BadRequest("revoke needs the token's id".into()))?;
        let removed = {
            let _one = self.writing.lock().await;
            let (cfg, id, user, proj) = (
                self.cfg.clone(),
                id.clone(),
                who.user.clone(),
                project.clone(),
            );
            tokio::task::spawn_blocking(move || personal::revoke_own(&cfg, &id, &user, &proj))
                .await
                .map_err(|_| GatewayError::TokenStoreUnavailable)?
                .map_err(unavailable)?
        };
        if !removed {
            return Err(GatewayError::BadRequest(format!(
                "{} holds no token {id:?} for project {project}",
                who.user
            )));
        }
        // Refused from the next request on, not only after the next poll of the file.
        if let Err(e) = self.tokens.reload() {
            tracing::warn!(error = %e, "personal tokens not reloaded after a revoke");
        }
        let effect = Effect {
            users: vec![who.user.clone()],
            changes: vec![format!("{id}: revoked")],
        };
        decide(ctx, true, Vec::new(), effect);
        Ok(json(&serde_json::json!({ "revoked": id })))
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
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
    let note = field("note")?.unwrap_or_default();
    if note.chars().count() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(GatewayError::BadRequest(format!(
            "note must be at most {MAX_NOTE} printable characters"
        )));
    }
    Ok(Form {
        action: field("action")?,
        expires: field("expires")?.filter(|e| !e.is_empty()),
        note,
        id: field("id")?,
    })
}
