//! The sign-in portal under `/portal/`: analysts sign in with the institution's SSO in a
//! browser (OIDC code flow with PKCE, `state` and `nonce`, `oidc.rs`), keep a session
//! in an encrypted cookie (`session.rs`), see their projects and rights, and get and
//! revoke their own personal tokens through the token desk (`desk.rs`), the same code
//! as the JSON self-service endpoint. Pages are server-rendered (`pages.rs`); the
//! only script and stylesheet are served from here.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /portal/` | your projects, or the sign-in page |
//! | `GET /portal/login?next=/portal/...` | to the IdP |
//! | `GET /portal/callback` | back from the IdP: a session |
//! | `POST /portal/logout` | sign out |
//! | `GET /portal/p/{project}` | rights, new token form, your tokens |
//! | `POST /portal/p/{project}/tokens` | create a token (shown once) |
//! | `POST /portal/p/{project}/revoke` | revoke one |
//!
//! Every POST needs the session's CSRF token and must not come from another site
//! (`Origin`, `Sec-Fetch-Site`). Every answer carries a strict CSP and is never cached.

pub mod oidc;
pub mod pages;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tower::Layer;

use crate::auth::jwt::Issuer;
use crate::auth::Principal;
use crate::body::{collect_limited, full};
use crate::config::PortalConfig;
use crate::context::{CallSummary, RequestContext};
use crate::desk::{Action, Caller, TokenDesk};
use crate::error::GatewayError;
use crate::layers::step::Handler;
use crate::layers::{Req, Resp, Result};
use crate::policy::{Decision, Effect, Policy};
use oidc::OidcClient;
use pages::{ErrorPage, IssuedView, ProjectCard, ProjectPage, ProjectsPage, SigninPage};
use session::{safe_next, set_cookie, Cookies, Session};

/// Portal forms are a few short fields.
const MAX_FORM: usize = 8 * 1024;

pub struct Portal {
    /// `https://gateway.example.edu`: the origin every POST must come from.
    origin: String,
    oidc: OidcClient,
    issuer: Arc<Issuer>,
    cookies: Cookies,
    desk: Arc<TokenDesk>,
    policy: Arc<Policy>,
}

impl Portal {
    /// The portal for a validated config. `issuer` is the verifier's issuer of that
    /// name; `secrets` the client secret and cookie key, read from their references.
    pub fn new(
        cfg: &PortalConfig,
        issuer: Arc<Issuer>,
        desk: Arc<TokenDesk>,
        policy: Arc<Policy>,
        http: crate::http_client::HttpClient,
    ) -> std::result::Result<Portal, String> {
        let origin = cfg.public_url.trim_end_matches('/').to_string();
        let client_secret = cfg
            .client_secret
            .as_deref()
            .map(crate::secret::read_ref)
            .transpose()
            .map_err(|e| format!("portal.client_secret: {e}"))?;
        let key = crate::secret::read_ref(&cfg.cookie_key)
            .map_err(|e| format!("portal.cookie_key: {e}"))?;
        let secure = origin.starts_with("https://");
        Ok(Portal {
            oidc: OidcClient::new(
                &cfg.issuer,
                &cfg.client_id,
                client_secret,
                format!("{origin}/portal/callback"),
                cfg.scopes.clone(),
                http,
            ),
            origin,
            issuer,
            cookies: Cookies::new(&key, secure, cfg.session_lifetime.0, cfg.login_timeout.0),
            desk,
            policy,
        })
    }

    /// Sign-outs and spent sign-ins carry over to the portal of a reloaded config.
    pub fn keep_memory_of(&mut self, old: &Portal) {
        self.cookies.keep_memory_of(&old.cookies);
    }
}

/// The portal's place in the stack: requests under `/portal` are its own; the rest go on.
/// Its pages are a tower service on tower-http's layers (`pages`), built once; the
/// request path beside it keeps the handler chain.
pub struct PortalLayer {
    pages: Option<Pages>,
}

/// The portal's pages with their layers, boxed once (pages are not the hot path).
type Pages = tower::util::BoxCloneSyncService<Req, Resp, std::convert::Infallible>;

impl PortalLayer {
    pub fn new(portal: Option<Arc<Portal>>) -> Self {
        PortalLayer {
            pages: portal.map(pages),
        }
    }
}

impl<S> Layer<S> for PortalLayer {
    type Service = PortalService<S>;
    fn layer(&self, next: S) -> Self::Service {
        PortalService {
            next,
            pages: self.pages.clone(),
        }
    }
}

pub struct PortalService<S> {
    next: S,
    pages: Option<Pages>,
}

fn is_portal_path(path: &str) -> bool {
    path == "/portal" || path.starts_with("/portal/")
}

impl<S: Handler> Handler for PortalService<S> {
    async fn handle(&self, req: Req) -> Result<Resp> {
        use tower::ServiceExt;
        match &self.pages {
            Some(pages) if is_portal_path(req.uri().path()) => {
                let Ok(resp) = pages.clone().oneshot(req).await;
                Ok(resp)
            }
            _ => self.next.handle(req).await,
        }
    }
}

/// Strict CSP: only this gateway's own script and stylesheet, no frames, forms post
/// only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The security headers on every portal answer, error pages and redirects included.
const SECURITY_HEADERS: [(&str, &str); 8] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    // Not `no-referrer`: with it, browsers send `Origin: null` on the portal's own forms.
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
    ("cache-control", "no-store"),
];

/// The pages on tower-http's layers: a panic answers 500 (the outer layers still audit
/// the call), and every answer carries the security headers (HSTS too, over https).
/// Not compressed: every page carries the session's CSRF token, and a token page a new
/// personal token, next to text the caller chose (BREACH).
fn pages(portal: Arc<Portal>) -> Pages {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::set_header::SetResponseHeaderLayer;
    let https = portal.cookies.secure();
    let header = |(name, value): (&'static str, &'static str)| {
        SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    let [csp, nosniff, frames, referrer, opener, resource, permissions, cache] =
        SECURITY_HEADERS.map(header);
    let hsts = https.then(|| header(("strict-transport-security", "max-age=31536000")));
    let service = tower::ServiceBuilder::new()
        .map_response(|resp: http::Response<_>| resp.map(crate::body::Body::new))
        .layer(CatchPanicLayer::custom(|_| {
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The portal failed to answer.".into(),
            )
        }))
        .layer(csp)
        .layer(nosniff)
        .layer(frames)
        .layer(referrer)
        .layer(opener)
        .layer(resource)
        .layer(permissions)
        .layer(cache)
        .option_layer(hsts)
        .service_fn(move |mut req: Req| {
            let portal = portal.clone();
            async move {
                let ctx = RequestContext::of(&mut req);
                Ok::<_, std::convert::Infallible>(portal.serve(&ctx, req).await)
            }
        });
    tower::util::BoxCloneSyncService::new(service)
}

/// What the audit record says a portal request was.
fn summarize(ctx: &RequestContext, content: &'static str, action: &'static str) {
    let _ = ctx.call.set(CallSummary {
        content,
        action,
        format: "html",
        return_format: "html",
        users: Vec::new(),
    });
}

/// A request's signed-in user.
struct SignedIn {
    session: Session,
    who: Arc<Principal>,
}

/// An HTML answer with the portal's security headers, never cached.
fn html(status: StatusCode, body: String) -> Resp {
    let mut resp = Resp::new(full(crate::layers::vault::wiped(body.into_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn redirect(to: &str) -> Resp {
    let mut resp = Resp::new(crate::body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Resp {
    let mut resp = Resp::new(full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The fields of a query or form body; a field given twice is refused.
fn fields(text: &[u8]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(text) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(GatewayError::BadRequest(format!("field {k:?} given twice")));
        }
    }
    Ok(out)
}

impl Portal {
    async fn serve(&self, ctx: &Arc<RequestContext>, req: Req) -> Resp {
        let signed_in = self.signed_in(req.headers());
        let path_is_callback = req.uri().path() == "/portal/callback";
        let user = signed_in
            .as_ref()
            .map(|s| (s.who.user.clone(), s.session.csrf.clone()));
        let mut resp = match self.route(ctx, signed_in, req).await {
            Ok(resp) => resp,
            Err(e) => {
                let _ = ctx.error.set((
                    e.kind(),
                    match &e {
                        GatewayError::Unauthenticated(a) => Some(a.reason()),
                        _ => None,
                    },
                ));
                self.error_page(&e, user.as_ref().map(|(u, c)| (u.as_str(), c.as_str())))
            }
        };
        if path_is_callback {
            // A sign-in is tried once: its cookie goes, whatever the outcome.
            set_cookie(
                resp.headers_mut(),
                self.cookies.clear(self.cookies.login_name()),
            );
        }
        resp
    }

    fn error_page(&self, e: &GatewayError, user: Option<(&str, &str)>) -> Resp {
        let status = e.status();
        let title = match status {
            StatusCode::UNAUTHORIZED => "Not signed in",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            s if s.is_server_error() => "Not available",
            _ => "Refused",
        };
        let message = match e {
            GatewayError::NotFound => "There is no such page in this portal.".to_string(),
            GatewayError::MethodNotAllowed => "That page does not take this method.".to_string(),
            other => other.to_string(),
        };
        let page = ErrorPage {
            user: user.map(|u| u.0),
            csrf: user.map_or("", |u| u.1),
            title,
            message: &message,
        };
        let mut resp = html(status, page.render().unwrap_or_default());
        if let GatewayError::RateLimited {
            retry_after_secs, ..
        } = e
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if matches!(e, GatewayError::MethodNotAllowed) {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        resp
    }

    fn signed_in(&self, headers: &http::HeaderMap) -> Option<SignedIn> {
        let session = self.cookies.session(headers).ok()?;
        let who = Arc::new(session.principal());
        Some(SignedIn { session, who })
    }

    async fn route(
        &self,
        ctx: &Arc<RequestContext>,
        signed_in: Option<SignedIn>,
        req: Req,
    ) -> Result<Resp> {
        if let Some(s) = &signed_in {
            let _ = ctx.principal.set(s.who.clone());
        }
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/portal").unwrap_or("");
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = req.method() == Method::POST;
        let project_path = rest.strip_prefix("/p/").map(|p| match p.split_once('/') {
            Some((name, tail)) => (name, tail),
            None => (p, ""),
        });
        match (rest, project_path) {
            ("" | "/", _) if get => {
                summarize(ctx, "portal", "view");
                Ok(self.home(signed_in))
            }
            ("/assets/portal.css", _) if get => Ok(asset(
                "text/css; charset=utf-8",
                include_str!("assets/portal.css"),
            )),
            ("/assets/portal.js", _) if get => Ok(asset(
                "text/javascript; charset=utf-8",
                include_str!("assets/portal.js"),
            )),
            ("/login", _) if get => {
                summarize(ctx, "portalSession", "start");
                self.login(req.uri().query().unwrap_or("")).await
            }
            ("/callback", _) if get => {
                summarize(ctx, "portalSession", "signin");
                self.callback(ctx, req).await
            }
            ("/logout", _) if post => {
                summarize(ctx, "portalSession", "signout");
                self.logout(ctx, signed_in, req).await
            }
            (_, Some((name, ""))) if get => {
                summarize(ctx, "portal", "view");
                if signed_in.is_none() {
                    // A bookmark or a link: sign in, then back here.
                    let next = safe_next(&path).unwrap_or("/portal/");
                    let href = format!("/portal/login?next={}", encode(next));
                    return Ok(self.signin_page(
                        Some("Sign in to see this project."),
                        &href,
                        StatusCode::UNAUTHORIZED,
                    ));
                }
                let (s, project) = self.project_of(ctx, signed_in, name)?;
                // Listing the tokens is charged as the JSON door's list is.
                let caller = Caller {
                    ctx: None,
                    who: &s.who,
                    project: &project,
                };
                self.desk.open(caller, Action::List).await?;
                let notice = revoked_notice(req.uri().query().unwrap_or(""));
                self.project_page(&s, &project, None, notice).await
            }
            (_, Some((name, "tokens"))) if post => {
                crate::desk::summarize(Some(ctx), Action::Issue.as_str());
                let (s, project) = self.project_of(ctx, signed_in, name)?;
                self.issue(ctx, &s, &project, req).await
            }
            (_, Some((name, "revoke"))) if post => {
                crate::desk::summarize(Some(ctx), Action::Revoke.as_str());
                let (s, project) = self.project_of(ctx, signed_in, name)?;
                self.revoke(ctx, &s, &project, req).await
            }
            (
                "" | "/" | "/assets/portal.css" | "/assets/portal.js" | "/login" | "/callback"
                | "/logout",
                _,
            )
            | (_, Some((_, "" | "tokens" | "revoke"))) => Err(GatewayError::MethodNotAllowed),
            _ => Err(GatewayError::NotFound),
        }
    }

    fn home(&self, signed_in: Option<SignedIn>) -> Resp {
        let Some(s) = signed_in else {
            return self.signin_page(None, "/portal/login", StatusCode::OK);
        };
        let projects = self
            .policy
            .projects_naming(&s.who)
            .into_iter()
            .filter_map(|name| {
                let access = self.policy.access(name, &s.who)?;
                Some(ProjectCard::new(name, &access))
            })
            .collect();
        let page = ProjectsPage {
            user: Some(&s.who.user),
            csrf: &s.session.csrf,
            projects,
        };
        html(StatusCode::OK, page.render().unwrap_or_default())
    }

    fn signin_page(&self, message: Option<&str>, login_href: &str, status: StatusCode) -> Resp {
        let page = SigninPage {
            user: None,
            csrf: "",
            login_href,
            message,
        };
        html(status, page.render().unwrap_or_default())
    }

    /// The signed-in caller and a project some grant of theirs names.
    fn project_of(
        &self,
        ctx: &RequestContext,
        signed_in: Option<SignedIn>,
        name: &str,
    ) -> Result<(SignedIn, Arc<str>)> {
        let s = signed_in.ok_or_else(|| {
            GatewayError::SignInRefused("your session is missing or over; sign in again".into())
        })?;
        if !crate::config::is_project_name(name) || !self.policy.names(name, &s.who) {
            // The same answer for a project that does not exist and one that is not
            // theirs: the portal does not list other people's projects.
            return Err(GatewayError::Forbidden(format!(
                "no grant of project {name:?} names you"
            )));
        }
        let project: Arc<str> = Arc::from(name);
        let _ = ctx.project.set(project.clone());
        Ok((s, project))
    }

    async fn login(&self, query: &str) -> Result<Resp> {
        let q = fields(query.as_bytes())?;
        let next = match q.get("next") {
            None => "/portal/",
            Some(n) => safe_next(n).ok_or_else(|| {
                GatewayError::BadRequest(
                    "the return address after sign-in must be a page of this portal".into(),
                )
            })?,
        };
        let (state, nonce) = (session::random_token(), session::random_token());
        let started = self.oidc.start(&state, &nonce).await.map_err(|e| {
            tracing::warn!(error = %e, "portal: the IdP's discovery failed");
            GatewayError::IdpUnavailable("its discovery document could not be read".into())
        })?;
        let cookie = self
            .cookies
            .start_login(&state, &nonce, &started.pkce_verifier, next)
            .ok_or_else(|| GatewayError::BadRequest("the sign-in could not be started".into()))?;
        let mut resp = redirect(&started.url);
        set_cookie(resp.headers_mut(), cookie);
        Ok(resp)
    }

    async fn callback(&self, ctx: &RequestContext, req: Req) -> Result<Resp> {
        let refused = GatewayError::SignInRefused;
        let (req, _) = req.into_parts();
        let outcome = async {
            let q = fields(req.uri.query().unwrap_or("").as_bytes())?;
            let state = q.get("state").map(String::as_str).unwrap_or("");
            let login = self
                .cookies
                .finish_login(&req.headers, state)
                .map_err(|why| refused(why.into()))?;
            if let Some(err) = q.get("error") {
                let code: String = err
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect();
                return Err(refused(format!("the sign-in service answered {code}")));
            }
            let code = q
                .get("code")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| refused("the answer carries no code".into()))?;
            let id_token = self
                .oidc
                .exchange(code, &login.pkce_verifier)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "portal: code exchange failed");
                    if e.starts_with("the IdP refused") {
                        refused(e)
                    } else {
                        GatewayError::IdpUnavailable("its token endpoint failed".into())
                    }
                })?;
            let mut who = self
                .issuer
                .verify_id_token(id_token.expose(), self.oidc.client_id(), &login.nonce)
                .await
                .map_err(|e| refused(format!("the ID token: {e}")))?;
            // Only groups some grant names matter; the rest would not fit in a cookie.
            who.groups.retain(|g| self.policy.names_group(g));
            Ok((who, login.next))
        };
        let (who, next) = outcome.await?;
        let (session, cookie) = self.cookies.open_session(&who).ok_or_else(|| {
            refused("your sign-in does not fit in a session cookie (too many groups)".into())
        })?;
        let who = Arc::new(session.principal());
        let _ = ctx.principal.set(who.clone());
        let _ = ctx.decision.set(Decision {
            allowed: true,
            rule: "portal",
            reasons: Vec::new(),
            effect: Effect {
                users: vec![who.user.clone()],
                changes: vec!["signed in".into()],
            },
            trace: Vec::new(),
            bad_input: false,
        });
        let mut resp = redirect(&next);
        set_cookie(resp.headers_mut(), cookie);
        Ok(resp)
    }

    /// The form of a state-changing request: from this site, with this session's CSRF
    /// token.
    async fn form(&self, s: &Session, req: Req) -> Result<HashMap<String, String>> {
        let h = req.headers();
        if let Some(site) = h.get("sec-fetch-site") {
            if site.as_bytes() != b"same-origin" {
                return Err(GatewayError::Forbidden(
                    "the form was sent from another site".into(),
                ));
            }
        }
        if let Some(origin) = h.get(header::ORIGIN) {
            if origin.as_bytes() != self.origin.as_bytes() {
                return Err(GatewayError::Forbidden(
                    "the form was sent from another site".into(),
                ));
            }
        }
        let is_form = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            collect_limited(req.into_body(), MAX_FORM),
        )
        .await
        .map_err(|_| GatewayError::BodyTimeout)?
        .map_err(|_| GatewayError::PayloadTooLarge(MAX_FORM as u64))?;
        let f = fields(&body)?;
        if !s.csrf_matches(f.get("csrf").map(String::as_str).unwrap_or("")) {
            return Err(GatewayError::Forbidden(
                "the form's CSRF token is missing or not this session's; reload the page".into(),
            ));
        }
        Ok(f)
    }

    async fn logout(
        &self,
        ctx: &RequestContext,
        signed_in: Option<SignedIn>,
        req: Req,
    ) -> Result<Resp> {
        let Some(s) = signed_in else {
            let mut resp = redirect("/portal/");
            set_cookie(
                resp.headers_mut(),
                self.cookies.clear(self.cookies.session_name()),
            );
            return Ok(resp);
        };
        self.form(&s.session, req).await?;
        self.cookies.revoke(&s.session);
        let _ = ctx.decision.set(Decision {
            allowed: true,
            rule: "portal",
            reasons: Vec::new(),
            effect: Effect {
                users: vec![s.who.user.clone()],
                changes: vec!["signed out".into()],
            },
            trace: Vec::new(),
            bad_input: false,
        });
        let mut resp = redirect("/portal/");
        set_cookie(
            resp.headers_mut(),
            self.cookies.clear(self.cookies.session_name()),
        );
        Ok(resp)
    }

    /// The project's page. A token just issued is shown even if the list of tokens
    /// cannot be read (it exists nowhere else).
    async fn project_page(
        &self,
        s: &SignedIn,
        project: &Arc<str>,
        issued: Option<IssuedView>,
        notice: Option<String>,
    ) -> Result<Resp> {
        let caller = Caller {
            ctx: None,
            who: &s.who,
            project,
        };
        let (tokens, error) = match self.desk.list(caller).await {
            Ok(t) => (t, None),
            Err(e) if issued.is_some() => (Vec::new(), Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let access = self.policy.access(project, &s.who).ok_or_else(|| {
            GatewayError::Forbidden(format!("no grant of project {project} names you"))
        })?;
        let now = crate::clock::now_unix();
        let max = self.desk.max_lifetime().as_secs();
        let page = ProjectPage {
            user: Some(&s.who.user),
            csrf: &s.session.csrf,
            p: ProjectCard::new(project, &access),
            tokens,
            issued,
            notice,
            error,
            max_days: max / 86_400,
            today: pages::date(now),
            default_expiry: pages::date(now + max),
        };
        Ok(html(StatusCode::OK, page.render().unwrap_or_default()))
    }

    /// A token change's form (from this site, with the CSRF token), the caller, and the
    /// desk opened for the action (audited, rate charged).
    async fn desk_form<'a>(
        &self,
        ctx: &'a Arc<RequestContext>,
        s: &'a SignedIn,
        project: &'a Arc<str>,
        req: Req,
        action: Action,
    ) -> Result<(HashMap<String, String>, Caller<'a>)> {
        let f = self.form(&s.session, req).await?;
        let caller = Caller {
            ctx: Some(ctx),
            who: &s.who,
            project,
        };
        self.desk.open(caller, action).await?;
        Ok((f, caller))
    }

    async fn issue(
        &self,
        ctx: &Arc<RequestContext>,
        s: &SignedIn,
        project: &Arc<str>,
        req: Req,
    ) -> Result<Resp> {
        let (f, caller) = self.desk_form(ctx, s, project, req, Action::Issue).await?;
        let expires = f
            .get("expires")
            .map(String::as_str)
            .filter(|e| !e.is_empty());
        let note = f.get("note").map(String::as_str).unwrap_or("");
        let issued = self.desk.issue(caller, expires, note).await?;
        let api = format!("{}/p/{project}/api/", self.origin);
        let view = IssuedView::new(issued.token.expose(), &issued.id, &issued.expires, &api);
        drop(issued);
        self.project_page(s, project, Some(view), None).await
    }

    async fn revoke(
        &self,
        ctx: &Arc<RequestContext>,
        s: &SignedIn,
        project: &Arc<str>,
        req: Req,
    ) -> Result<Resp> {
        let (f, caller) = self.desk_form(ctx, s, project, req, Action::Revoke).await?;
        let id = f.get("id").map(String::as_str).unwrap_or("");
        self.desk.revoke(caller, id).await?;
        // Back to the page by GET, so a reload does not post the form again.
        Ok(redirect(&format!("/portal/p/{project}?revoked={id}")))
    }
}

/// "Token pt_... is revoked", for the page a revoke redirects to (a well-formed token
/// id only: the query is the browser's to change).
fn revoked_notice(query: &str) -> Option<String> {
    let q = fields(query.as_bytes()).ok()?;
    let id = q.get("revoked")?;
    let hex = id.strip_prefix("pt_")?;
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("Token {id} is revoked: it no longer works."))
}
