//! The portal's OIDC client: discovery of the IdP's endpoints, the authorization URL
//! (code flow, PKCE S256, `state`, `nonce`), and the code exchange. The OAuth2 protocol
//! is the `oauth2` crate's; the HTTP is the gateway's own client (no redirects are
//! followed, bodies are bounded). The ID token it returns is verified by the caller
//! with the issuer's keys (`auth::jwt::Issuer::verify_id_token`).

use std::sync::Mutex;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::http_client::HttpClient;
use crate::secret::Secret;

/// Discovery documents and token answers larger than this are refused.
const MAX_ANSWER: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The token endpoint's answer carries the ID token beside the access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenField {}

type TokenAnswer = StandardTokenResponse<IdTokenField, BasicTokenType>;
type OAuth = Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

pub struct OidcClient {
    issuer: String,
    client_id: String,
    client_secret: Option<Secret>,
    redirect_uri: String,
    scopes: Vec<String>,
    http: HttpClient,
    /// Built from the discovery document on first use (and again after a failure).
    oauth: Mutex<Option<std::sync::Arc<OAuth>>>,
}

/// What a sign-in must remember until the IdP sends the user back.
pub struct Started {
    /// The URL to send the browser to.
    pub url: String,
    pub pkce_verifier: String,
}

impl OidcClient {
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Option<Secret>,
        redirect_uri: String,
        scopes: Vec<String>,
        http: HttpClient,
    ) -> OidcClient {
        OidcClient {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            client_secret,
            redirect_uri,
            scopes,
            http,
            oauth: Mutex::new(None),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The OAuth2 client for the IdP's discovered endpoints.
    async fn oauth(&self) -> Result<std::sync::Arc<OAuth>, String> {
        if let Some(c) = self.oauth.lock().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let (body, _) = self
            .http
            .get_bytes(&url, MAX_ANSWER, TIMEOUT)
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        let doc: Discovery =
            serde_json::from_slice(&body).map_err(|e| format!("discovery document: {e}"))?;
        if doc.issuer != self.issuer {
            return Err("the discovery document names another issuer".into());
        }
        if let Some(methods) = &doc.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err("the IdP does not support PKCE with S256".into());
            }
        }
        let auth = AuthUrl::new(doc.authorization_endpoint)
            .map_err(|e| format!("authorization_endpoint: {e}"))?;
        let token =
            TokenUrl::new(doc.token_endpoint).map_err(|e| format!("token_endpoint: {e}"))?;
        let redirect =
            RedirectUrl::new(self.redirect_uri.clone()).map_err(|e| format!("redirect: {e}"))?;
        let mut client = Client::<
            BasicErrorResponse,
            TokenAnswer,
            BasicTokenIntrospectionResponse,
            StandardRevocableToken,
            BasicRevocationErrorResponse,
        >::new(ClientId::new(self.client_id.clone()))
        .set_auth_uri(auth)
        .set_token_uri(token)
        .set_redirect_uri(redirect);
        if let Some(s) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        let client = std::sync::Arc::new(client);
        if let Ok(mut g) = self.oauth.lock() {
            *g = Some(client.clone());
        }
        Ok(client)
    }

    /// The IdP's authorization URL for a new sign-in with this `state` and `nonce`.
    pub async fn start(&self, state: &str, nonce: &str) -> Result<Started, String> {
        let oauth = self.oauth().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = state.to_string();
        let (url, _) = oauth
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("nonce", nonce.to_string())
            .set_pkce_challenge(challenge)
            .url();
        Ok(Started {
            url: url.to_string(),
            pkce_verifier: verifier.secret().to_string(),
        })
    }

    /// Exchanges the code the IdP sent back for its ID token (unverified: the caller
    /// verifies it). Errors name the problem, never a code, a verifier or a token.
    pub async fn exchange(&self, code: &str, pkce_verifier: &str) -> Result<Secret, String> {
        let oauth = self.oauth().await?;
        let http = |req: oauth2::HttpRequest| {
            let client = self.http.clone();
            async move { send(&client, req).await }
        };
        let answer = oauth
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                oauth2::RequestTokenError::ServerResponse(r) => {
                    format!("the IdP refused the code ({})", r.error().as_ref())
                }
                oauth2::RequestTokenError::Request(e) => format!("token endpoint: {e}"),
                oauth2::RequestTokenError::Parse(..) => {
                    "the token endpoint's answer is not a token response".into()
                }
                oauth2::RequestTokenError::Other(_) => "the token endpoint failed".into(),
            })?;
        answer
            .extra_fields()
            .id_token
            .clone()
            .map(Secret::new)
            .ok_or_else(|| "the token endpoint sent no ID token (is openid a scope?)".into())
    }
}

/// One request to the IdP through the gateway's client, bounded in size and time.
async fn send(
    client: &HttpClient,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let req = http::Request::from_parts(parts, crate::body::full(body));
    let fut = async {
        let resp = client
            .inner
            .request(req)
            .await
            .map_err(|e| HttpError(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = crate::body::collect_limited(body, MAX_ANSWER)
            .await
            .map_err(|e| HttpError(e.to_string()))?;
        Ok(http::Response::from_parts(parts, body.to_vec()))
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| HttpError(format!("timed out after {TIMEOUT:?}")))?
}
