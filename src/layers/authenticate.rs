//! Authenticate: a Bearer JWT becomes a `Principal`; the client's Authorization header
//! is removed so it can never reach REDCap. Without valid credentials: 401.

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};

use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::auth::jwt::JwtVerifier;
use crate::auth::AuthError;
use crate::body::collect_limited;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::redcap::call::sniff_return_format;
use crate::redcap::php_form::{parse_urlencoded, PhpLimits};
use crate::redcap::ReturnFormat;

/// Small unauthenticated bodies are read to answer the error in the client's format.
const SNIFF_LIMIT: u64 = 64 * 1024;

#[derive(Clone)]
pub struct Authenticate {
    jwt: Arc<JwtVerifier>,
    /// Whether a request without a Bearer header may carry a personal token instead.
    personal_tokens: bool,
}

/// Marks a request with no Bearer header: the `token` field must be a personal token,
/// checked once the body is parsed (layers/credential.rs).
#[derive(Debug, Clone, Copy)]
pub struct AwaitingPersonalToken;

pub type AuthenticateLayer = StepLayer<Authenticate>;

impl Authenticate {
    pub fn layer(jwt: Arc<JwtVerifier>, personal_tokens: bool) -> AuthenticateLayer {
        StepLayer(Authenticate {
            jwt,
            personal_tokens,
        })
    }

    async fn principal(
        &self,
        headers: &http::HeaderMap,
    ) -> std::result::Result<Arc<crate::auth::Principal>, AuthError> {
        let token = bearer_token(headers)?;
        self.jwt.verify(token).await
    }
}

/// The token of the one `Authorization: Bearer` header.
fn bearer_token(headers: &http::HeaderMap) -> std::result::Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            AuthError::Duplicate
        } else {
            AuthError::Missing
        });
    };
    // `HeaderValue::to_str` checks a ~1 KB JWT a byte at a time; `is_ascii` a word at
    // a time. Control characters never get this far (hyper refuses them).
    let value = std::str::from_utf8(value.as_bytes())
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::BadScheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::BadScheme);
    }
    Ok(token.trim())
}

/// The error format of an unauthenticated request, from a small urlencoded body only.
async fn sniff_error_format(req: Req) -> ReturnFormat {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let small = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= SNIFF_LIMIT);
    if !(is_form && small) {
        return ReturnFormat::Json;
    }
    let read = collect_limited(req.into_body(), SNIFF_LIMIT as usize);
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(bytes)) => match parse_urlencoded(&bytes, PhpLimits::default()) {
            Ok(form) => sniff_return_format(&form),
            Err(_) => ReturnFormat::Json,
        },
        _ => ReturnFormat::Json,
    }
}

impl Step for Authenticate {
    async fn apply(&self, mut req: Req) -> Result<Req> {
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        // A Bearer header decides; without one, the token field may be a personal token.
        if self.personal_tokens && !req.headers().contains_key(AUTHORIZATION) {
            req.extensions_mut().insert(AwaitingPersonalToken);
            return Ok(req);
        }
        let headers = std::mem::take(req.headers_mut());
        let verified = self.principal(&headers).await;
        *req.headers_mut() = headers;
        match verified {
            Ok(p) => {
                req.headers_mut().remove(AUTHORIZATION);
                if let Some(ctx) = &ctx {
                    let _ = ctx.principal.set(p.clone());
                }
                req.extensions_mut().insert(p);
                Ok(req)
            }
            Err(e) => {
                if let Some(ctx) = ctx {
                    ctx.set_error_format(sniff_error_format(req).await);
                }
                Err(GatewayError::Unauthenticated(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, http::HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    /// The one Bearer header's token, or why there is none.
    #[test]
    fn the_bearer_token_of_one_header() {
        let token = |values: &[&[u8]]| bearer_token(&headers(values)).map(str::to_string);
        assert_eq!(token(&[b"Bearer a.b.c"]).unwrap(), "a.b.c");
        // RFC 9110 11.1: the scheme is case-insensitive; spaces around the token go.
        assert_eq!(token(&[b"bEaReR  a.b.c "]).unwrap(), "a.b.c");
        assert!(matches!(token(&[]), Err(AuthError::Missing)));
        assert!(matches!(
            token(&[b"Bearer a.b.c", b"Bearer a.b.c"]),
            Err(AuthError::Duplicate)
        ));
        assert!(matches!(token(&[b"Basic dTpw"]), Err(AuthError::BadScheme)));
        assert!(matches!(token(&[b"Bearer"]), Err(AuthError::BadScheme)));
        assert!(matches!(
            token(&[b"Bearer \xff\xfe"]),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            token(&["Bearer é".as_bytes()]),
            Err(AuthError::Malformed)
        ));
    }
}
