//! The personal-token desk: the one implementation of self-service tokens, behind two
//! doors (the JSON endpoint `POST /p/{project}/tokens`, `layers/self_service.rs`, and the
//! sign-in portal's pages, `portal/`), so both apply the same limits, the same rate
//! limits and write the same audit records.
//!
//! - issue, for a user some grant of the project names: a new token, shown once; the
//!   token file keeps only its hash, with the user's groups so grants apply to it as
//!   to the sign-in. `expires` (`YYYY-MM-DD`, at most `self_service_max_lifetime`
//!   ahead, the default) and a note.
//! - list: the user's own tokens for the project (id, created, expiry, note, last use
//!   seen by this gateway; never a token or a hash).
//! - revoke: removes one of the user's own tokens for the project; it is refused from
//!   the next request on.
//!
//! Each call is audited (content `personalToken`, the action, the token's id as the
//! change) and charged to the user's rate (`rate_limit.per_user`: a change costs
//! `mutating_cost`, a list 1). A token itself is never logged or recorded.

use std::sync::Arc;

use crate::auth::personal::{self, PersonalTokens};
use crate::auth::{CredentialKind, Principal};
use crate::config::PersonalTokensConfig;
use crate::context::{CallSummary, RequestContext};
use crate::error::GatewayError;
use crate::policy::{Decision, Effect, Policy};
use crate::ratelimit::RateLimits;
use crate::secret::Secret;

type Result<T> = std::result::Result<T, GatewayError>;

/// The longest note, in characters.
pub const MAX_NOTE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Issue,
    List,
    Revoke,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "issue" => Some(Action::Issue),
            "list" => Some(Action::List),
            "revoke" => Some(Action::Revoke),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::List => "list",
            Action::Revoke => "revoke",
        }
    }
}

/// Who asks, for which project, and the request's context (for the audit record).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub ctx: Option<&'a Arc<RequestContext>>,
    pub who: &'a Principal,
    pub project: &'a Arc<str>,
}

/// A token just issued: the only time the token itself exists outside its holder.
pub struct Issued {
    pub token: Secret,
    pub id: String,
    pub project: String,
    pub user: String,
    /// RFC 3339.
    pub expires: String,
}

/// One of the caller's tokens, as they may see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub created: String,
    pub expires: String,
    pub expired: bool,
    pub note: String,
    /// RFC 3339, when this gateway has seen the token used since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

pub struct TokenDesk {
    cfg: PersonalTokensConfig,
    tokens: Arc<PersonalTokens>,
    policy: Arc<Policy>,
    limits: Arc<RateLimits>,
    /// One change of the file at a time in this process (its lock covers the others).
    writing: tokio::sync::Mutex<()>,
}

/// Records what the audit record says was asked, as soon as it is known.
pub fn summarize(ctx: Option<&Arc<RequestContext>>, action: &'static str) {
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

pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// A note is at most `MAX_NOTE` printable characters.
pub fn check_note(note: &str) -> Result<()> {
    if note.chars().count() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(GatewayError::BadRequest(format!(
            "note must be at most {MAX_NOTE} printable characters"
        )));
    }
    Ok(())
}

impl TokenDesk {
    /// Open when personal tokens are configured with `self_service = true`.
    pub fn new(
        cfg: Option<&PersonalTokensConfig>,
        tokens: Option<Arc<PersonalTokens>>,
        policy: Arc<Policy>,
        limits: Arc<RateLimits>,
    ) -> Option<Arc<TokenDesk>> {
        match (cfg, tokens) {
            (Some(cfg), Some(tokens)) if cfg.self_service => Some(Arc::new(TokenDesk {
                cfg: cfg.clone(),
                tokens,
                policy,
                limits,
                writing: tokio::sync::Mutex::new(()),
            })),
            _ => None,
        }
    }

    /// The longest lifetime of a self-issued token.
    pub fn max_lifetime(&self) -> std::time::Duration {
        self.cfg.self_service_max_lifetime.0
    }

    /// Records the action for the audit record, checks the credential (an SSO sign-in:
    /// a personal token cannot mint more of itself) and charges the user's rate. Every
    /// door calls this first.
    pub async fn open(&self, caller: Caller<'_>, action: Action) -> Result<()> {
        summarize(caller.ctx, action.as_str());
        if !matches!(
            caller.who.credential,
            CredentialKind::Jwt | CredentialKind::Session
        ) {
            return Err(GatewayError::Unauthenticated(
                crate::auth::AuthError::Missing,
            ));
        }
        let cost = match action {
            Action::List => 1,
            Action::Issue | Action::Revoke => self.limits.mutating_cost,
        };
        self.limits
            .charge_user(&caller.who.user, cost)
            .await
            .map_err(GatewayError::from)
    }

    pub async fn issue(
        &self,
        caller: Caller<'_>,
        expires: Option<&str>,
        note: &str,
    ) -> Result<Issued> {
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
        check_note(note)?;
        let expires_at = personal::expiry(
            expires,
            self.cfg.self_service_max_lifetime.0,
            "personal_tokens.self_service_max_lifetime",
        )
        .map_err(|e| GatewayError::BadRequest(format!("expires: {e}")))?;
        let issued = {
            let _one = self.writing.lock().await;
            let cfg = self.cfg.clone();
            let (user, groups, proj) = (who.user.clone(), who.groups.clone(), project.clone());
            let (note, max) = (note.to_string(), self.cfg.self_service_max_per_user);
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
                 allowed); revoke one first",
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
        Ok(Issued {
            token,
            id: record.id,
            project: record.project,
            user: record.user,
            expires,
        })
    }

    pub async fn list(&self, caller: Caller<'_>) -> Result<Vec<Listed>> {
        let Caller { who, project, .. } = caller;
        let cfg = self.cfg.clone();
        let records = tokio::task::spawn_blocking(move || personal::list(&cfg))
            .await
            .map_err(|_| GatewayError::TokenStoreUnavailable)?
            .map_err(unavailable)?;
        let now = personal::now_unix();
        Ok(records
            .iter()
            .filter(|t| t.user == who.user && *t.project == **project)
            .map(|t| Listed {
                id: t.id.clone(),
                created: t.created.clone(),
                expires: rfc3339(t.expires_at),
                expired: t.expires_at <= now,
                note: t.note.clone(),
                last_used: self.tokens.last_used(&t.id).map(rfc3339),
            })
            .collect())
    }

    pub async fn revoke(&self, caller: Caller<'_>, id: &str) -> Result<()> {
        let Caller { ctx, who, project } = caller;
        if id.is_empty() {
            return Err(GatewayError::BadRequest(
                "revoke needs the token's id".into(),
            ));
        }
        let removed = {
            let _one = self.writing.lock().await;
            let (cfg, id, user, proj) = (
                self.cfg.clone(),
                id.to_string(),
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
        Ok(())
    }
}
