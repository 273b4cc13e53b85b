//! Dev mode's sign-in service: a small OpenID provider on loopback, so the quick start's
//! portal signs in with a click. It speaks the parts of OIDC the portal uses, strictly:
//! discovery, JWKS, the authorization endpoint (code flow, PKCE S256 required, the
//! registered redirect URI only) with a page to pick a dev user, and the token endpoint
//! (client secret, single-use codes that expire in a minute, the PKCE verifier checked)
//! answering a signed ID token with the nonce. A test fixture: never in the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest;
use tokio::net::TcpListener;

use super::DevIssuer;

/// The users the sign-in page offers, with their groups.
pub const DEV_USERS: &[(&str, &str, &str)] = &[
    ("dev-user", super::DEV_GROUP, "full export, every record"),
    (
        "dev-analyst",
        super::DEV_DEID_GROUP,
        "De-Identified export rights",
    ),
    ("dev-site-a", super::DEV_SITE_GROUP, "site A's records only"),
];

pub const DEV_CLIENT_ID: &str = "redcap-gateway-dev";

/// The authorization request's fields, carried from the sign-in page to its form's POST.
pub const AUTHORIZE_FIELDS: &[&str] = &[
    "client_id",
    "redirect_uri",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "response_type",
];

struct Pending {
    redirect_uri: String,
    nonce: String,
    challenge: String,
    user: String,
    group: String,
    until: u64,
}

/// A test's change to the next ID token the provider signs (attacks on the portal).
#[derive(Default)]
pub struct Tamper {
    /// Claims merged over the real ones (`null` removes one).
    pub claims: serde_json::Value,
    /// Signed by another key under the same key id.
    pub foreign_key: bool,
}

struct State {
    signer: DevIssuer,
    tamper: Mutex<Option<Tamper>>,
    client_secret: String,
    redirect_uri: String,
    codes: Mutex<HashMap<String, Pending>>,
}

#[derive(Clone)]
pub struct DevIdp {
    state: Arc<State>,
    pub issuer: String,
}

type Resp = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    answer(status, "application/json", v.to_string())
}

fn oauth_error(code: &str) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": code }),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn form(text: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl DevIdp {
    /// Starts on 127.0.0.1 (a free port); `redirect_uri` is the one registered client's.
    pub async fn start(redirect_uri: &str, client_secret: &str) -> Result<DevIdp, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let issuer = format!("http://{addr}");
        let state = Arc::new(State {
            signer: DevIssuer::new(&issuer)?,
            tamper: Mutex::new(None),
            client_secret: client_secret.to_string(),
            redirect_uri: redirect_uri.to_string(),
            codes: Mutex::new(HashMap::new()),
        });
        let idp = DevIdp {
            state: state.clone(),
            issuer,
        };
        let served = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let idp = served.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let idp = idp.clone();
                        async move { Ok::<_, std::convert::Infallible>(idp.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(idp)
    }

    /// The next ID token is changed as `t` says (then tokens are genuine again).
    pub fn tamper_next(&self, t: Tamper) {
        if let Ok(mut g) = self.state.tamper.lock() {
            *g = Some(t);
        }
    }

    /// The `[[auth.issuers]]` entry for this provider (keys found by discovery).
    pub fn issuer_config(&self) -> String {
        format!(
            "\n[[auth.issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"{}\"]\nalgorithms = [\"EdDSA\"]\ngroups_claim = \"groups\"\n",
            self.issuer,
            super::DEV_AUDIENCE
        )
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return oauth_error("invalid_request"),
        };
        let query = parts.uri.query().unwrap_or("").as_bytes().to_vec();
        match (parts.method.clone(), parts.uri.path()) {
            (Method::GET, "/.well-known/openid-configuration") => self.discovery(),
            (Method::GET, "/jwks") => json(
                StatusCode::OK,
                serde_json::to_value(self.state.signer.jwks()).unwrap_or_default(),
            ),
            (Method::GET, "/authorize") => self.sign_in_page(&form(&query)),
            (Method::POST, "/authorize") => self.signed_in(&form(&body)),
            (Method::POST, "/token") => self.token(&parts.headers, &form(&body)),
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found"),
        }
    }

    fn discovery(&self) -> Resp {
        let i = &self.issuer;
        json(
            StatusCode::OK,
            serde_json::json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/authorize"),
                "token_endpoint": format!("{i}/token"),
                "jwks_uri": format!("{i}/jwks"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["EdDSA"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            }),
        )
    }

    /// The authorization request's checks; the fields to carry to the next step.
    fn check_authorize(&self, q: &HashMap<String, String>) -> Result<(), &'static str> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        if get("client_id") != DEV_CLIENT_ID {
            return Err("unknown client_id");
        }
        if get("redirect_uri") != self.state.redirect_uri {
            return Err("redirect_uri is not the registered one");
        }
        if get("response_type") != "code" || !get("scope").split(' ').any(|s| s == "openid") {
            return Err("only the code flow with scope openid is supported");
        }
        if get("code_challenge_method") != "S256" || get("code_challenge").len() < 43 {
            return Err("PKCE with S256 is required");
        }
        if get("state").is_empty() || get("nonce").is_empty() {
            return Err("state and nonce are required");
        }
        Ok(())
    }

    fn sign_in_page(&self, q: &HashMap<String, String>) -> Resp {
        if let Err(e) = self.check_authorize(q) {
            return answer(StatusCode::BAD_REQUEST, "text/plain", e);
        }
        let hidden: String = AUTHORIZE_FIELDS
            .iter()
            .map(|k| {
                format!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    html_escape(q.get(*k).map(String::as_str).unwrap_or(""))
                )
            })
            .collect();
        let users: String = DEV_USERS
            .iter()
            .map(|(u, g, what)| {
                format!("<p><button type=\"submit\" name=\"user\" value=\"{u}\">Sign in as {u}</button> (group {g}: {what})</p>")
            })
            .collect();
        answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Dev sign-in</title></head><body><h1>Dev sign-in</h1><p>redcap-gateway dev mode's own sign-in service: pick a user.</p><form method=\"post\" action=\"/authorize\">{hidden}{users}</form></body></html>"
            ),
        )
    }

    fn signed_in(&self, f: &HashMap<String, String>) -> Resp {
        if let Err(e) = self.check_authorize(f) {
            return answer(StatusCode::BAD_REQUEST, "text/plain", e);
        }
        let user = f.get("user").map(String::as_str).unwrap_or("");
        let Some((user, group, _)) = DEV_USERS.iter().find(|(u, _, _)| *u == user) else {
            return answer(StatusCode::BAD_REQUEST, "text/plain", "unknown user");
        };
        let code = crate::portal::session::random_token();
        if let Ok(mut codes) = self.state.codes.lock() {
            codes.insert(
                code.clone(),
                Pending {
                    redirect_uri: self.state.redirect_uri.clone(),
                    nonce: f["nonce"].clone(),
                    challenge: f["code_challenge"].clone(),
                    user: user.to_string(),
                    group: group.to_string(),
                    until: crate::clock::now_unix() + 60,
                },
            );
        }
        let mut to = url::Url::parse(&self.state.redirect_uri).expect("registered URI parses");
        to.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &f["state"]);
        let mut r = answer(StatusCode::SEE_OTHER, "text/plain", "");
        if let Ok(v) = http::HeaderValue::from_str(to.as_str()) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    }

    fn client_authenticated(&self, headers: &http::HeaderMap, f: &HashMap<String, String>) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD;
        let basic = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| b64.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok());
        let (id, secret) = match &basic {
            Some(pair) => match pair.split_once(':') {
                Some((i, s)) => (
                    url::form_urlencoded::parse(format!("a={i}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default(),
                    url::form_urlencoded::parse(format!("a={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default(),
                ),
                None => return false,
            },
            None => (
                f.get("client_id").cloned().unwrap_or_default(),
                f.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        let same =
            subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), self.state.client_secret.as_bytes());
        id == DEV_CLIENT_ID && bool::from(same)
    }

    fn token(&self, headers: &http::HeaderMap, f: &HashMap<String, String>) -> Resp {
        if !self.client_authenticated(headers, f) {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "invalid_client" }),
            );
        }
        if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return oauth_error("unsupported_grant_type");
        }
        let code = f.get("code").map(String::as_str).unwrap_or("");
        // Single use: taken out whatever follows.
        let pending = self
            .state
            .codes
            .lock()
            .ok()
            .and_then(|mut c| c.remove(code));
        let Some(p) = pending else {
            return oauth_error("invalid_grant");
        };
        let verifier = f.get("code_verifier").map(String::as_str).unwrap_or("");
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        if p.until <= crate::clock::now_unix()
            || f.get("redirect_uri") != Some(&p.redirect_uri)
            || challenge != p.challenge
        {
            return oauth_error("invalid_grant");
        }
        let now = crate::clock::now_unix();
        let mut claims = serde_json::json!({
            "aud": DEV_CLIENT_ID,
            "sub": p.user,
            "preferred_username": p.user,
            "groups": [p.group],
            "nonce": p.nonce,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        });
        let tamper = self.state.tamper.lock().ok().and_then(|mut t| t.take());
        let mut foreign = None;
        if let Some(t) = tamper {
            if let (Some(base), serde_json::Value::Object(more)) =
                (claims.as_object_mut(), t.claims)
            {
                base.extend(more);
            }
            if t.foreign_key {
                foreign = DevIssuer::new(&self.issuer).ok();
            }
        }
        let signer = foreign.as_ref().unwrap_or(&self.state.signer);
        let id_token = signer.token_with(claims);
        json(
            StatusCode::OK,
            serde_json::json!({
                "access_token": crate::portal::session::random_token(),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }),
        )
    }
}
