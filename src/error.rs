//! Every failure on the request path as data, and the one table that maps it to an HTTP
//! status and a REDCap-shaped body (used by the rescue layer, and nowhere else).

use http::StatusCode;

use crate::auth::AuthError;
use crate::redcap::multipart::MultipartError;
use crate::redcap::{CallError, FormError};

/// Which side caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Gateway,
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("not found: the REDCap API is served at POST /p/{{project}}/api/")]
    NotFound,
    #[error("method not allowed: the REDCap API accepts POST only")]
    MethodNotAllowed,
    #[error("unknown project {0:?}")]
    UnknownProject(String),
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("the request head (request line and headers) is larger than {0} bytes")]
    HeaderTooLarge(usize),
    #[error(
        "unsupported Content-Type: send application/x-www-form-urlencoded or multipart/form-data"
    )]
    UnsupportedMediaType,
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("the gateway is handling too many requests; retry shortly")]
    Overloaded,
    #[error("too many connections are open ({0}); retry in a few seconds")]
    TooManyConnections(usize),
    /// REDCap answered 429: its per-IP rate limit, which bans the gateway's address for
    /// every user (REDCAP.md). Its plain-text answer is passed on in REDCap's shape.
    #[error("REDCap refused the call: its rate limit for the gateway's address was reached; retry later")]
    UpstreamRateLimited,
    #[error("the gateway is shutting down; retry shortly")]
    ShuttingDown,
    #[error("the project's REDCap token is not available")]
    TokenUnavailable,
    #[error("the project's metadata could not be loaded from REDCap, so your export rights cannot be applied; retry shortly")]
    MetadataUnavailable,
    #[error("your calls are scoped to data access groups, and REDCap's answers do not say each record's group (the project token's owner must be in no data access group); refused")]
    DagScopeUnavailable,
    #[error("{0}")]
    UpstreamUnreadable(String),
    #[error("the audit log cannot be written; changes are refused until it can")]
    AuditUnavailable,
    #[error("the personal-token file cannot be written; retry shortly")]
    TokenStoreUnavailable,
    #[error("rate limit reached ({limit}); retry in {retry_after_secs} s")]
    RateLimited {
        limit: &'static str,
        retry_after_secs: u64,
    },
    #[error("REDCap could not be reached")]
    UpstreamUnreachable,
    #[error("REDCap did not answer in time")]
    UpstreamTimeout,
    /// The portal's sign-in was refused (state, cookie, code or ID token).
    #[error("sign-in refused: {0}")]
    SignInRefused(String),
    /// The portal could not talk to the IdP (discovery, token endpoint).
    #[error("the sign-in service could not be reached: {0}")]
    IdpUnavailable(String),
}

impl From<crate::redcap::metadata::Refusal> for GatewayError {
    fn from(r: crate::redcap::metadata::Refusal) -> Self {
        use crate::redcap::metadata::Refusal;
        match r {
            Refusal::Forbidden(m) => GatewayError::Forbidden(m),
            Refusal::BadRequest(m) => GatewayError::BadRequest(m),
        }
    }
}

/// A rate-limit refusal as the client sees it: 429 with the wait, or 503 when the limits
/// cannot be checked.
impl From<crate::ratelimit::Refusal> for GatewayError {
    fn from(r: crate::ratelimit::Refusal) -> Self {
        use crate::ratelimit::Refusal;
        match r {
            Refusal::Limited { limit, retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                GatewayError::RateLimited {
                    limit,
                    retry_after_secs: secs.max(1),
                }
            }
            Refusal::Unavailable => GatewayError::Overloaded,
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            NotFound | UnknownProject(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Unauthenticated(_) | SignInRefused(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Overloaded
            | TooManyConnections(_)
            | ShuttingDown
            | TokenUnavailable
            | MetadataUnavailable
            | DagScopeUnavailable
            | AuditUnavailable
            | TokenStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RateLimited { .. } | UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnreachable | UpstreamUnreadable(_) | IdpUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn side(&self) -> Side {
        use GatewayError::*;
        match self {
            Overloaded
            | TooManyConnections(_)
            | ShuttingDown
            | TokenUnavailable
            | AuditUnavailable
            | TokenStoreUnavailable => Side::Gateway,
            MetadataUnavailable | DagScopeUnavailable | UpstreamUnreadable(_) => Side::Upstream,
            UpstreamUnreachable | UpstreamTimeout | IdpUnavailable(_) | UpstreamRateLimited => {
                Side::Upstream
            }
            _ => Side::Client,
        }
    }

    /// A short stable label (metrics, audit).
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UnknownProject(_) => "unknown_project",
            Unauthenticated(_) => "unauthenticated",
            Forbidden(_) => "forbidden",
            BadRequest(_) => "bad_request",
            PayloadTooLarge(_) => "payload_too_large",
            HeaderTooLarge(_) => "header_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            BodyTimeout => "body_timeout",
            Overloaded => "overloaded",
            TooManyConnections(_) => "too_many_connections",
            ShuttingDown => "shutting_down",
            TokenUnavailable => "token_unavailable",
            MetadataUnavailable => "metadata_unavailable",
            DagScopeUnavailable => "dag_scope_unavailable",
            UpstreamUnreadable(_) => "upstream_unreadable",
            AuditUnavailable => "audit_unavailable",
            TokenStoreUnavailable => "token_store_unavailable",
            RateLimited { .. } => "rate_limited",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamRateLimited => "upstream_rate_limited",
            SignInRefused(_) => "sign_in_refused",
            IdpUnavailable(_) => "idp_unavailable",
        }
    }
}

impl From<FormError> for GatewayError {
    fn from(e: FormError) -> Self {
        GatewayError::BadRequest(e.to_string())
    }
}

impl From<CallError> for GatewayError {
    fn from(e: CallError) -> Self {
        GatewayError::BadRequest(e.to_string())
    }
}

impl From<MultipartError> for GatewayError {
    fn from(e: MultipartError) -> Self {
        match e {
            MultipartError::BodyTooLarge => GatewayError::PayloadTooLarge(0),
            other => GatewayError::BadRequest(other.to_string()),
        }
    }
}
