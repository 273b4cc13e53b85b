//! Rescue: turns every typed error from the layers below into a REDCap-shaped response
//! with the right status, so nothing reaches hyper as a reset and outer layers see all.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use tower::Layer;

use super::step::Handler;
use super::{Req, Resp, Result};
use crate::body::full;
use crate::context::RequestContext;
use crate::error::{GatewayError, Side};
use crate::redcap::ReturnFormat;

#[derive(Clone, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, next: S) -> Self::Service {
        Rescue { next }
    }
}

pub struct Rescue<S> {
    next: S,
}

/// The response for an error, in the client's format.
pub fn error_response(err: &GatewayError, format: ReturnFormat) -> Resp {
    let mut resp = Resp::new(full(format.error_body(&err.to_string())));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    match err {
        GatewayError::Unauthenticated(_) => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"redcap-gateway\", error=\"invalid_token\"",
                ),
            );
        }
        GatewayError::MethodNotAllowed => {
            h.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        GatewayError::Overloaded
        | GatewayError::TooManyConnections(_)
        | GatewayError::ShuttingDown
        | GatewayError::TokenUnavailable
        | GatewayError::AuditUnavailable
        | GatewayError::TokenStoreUnavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        GatewayError::RateLimited {
            retry_after_secs, ..
        } => {
            h.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        // REDCap sends none; its ban lasts minutes, and a retry at once prolongs it.
        GatewayError::UpstreamRateLimited => {
            h.insert(RETRY_AFTER, HeaderValue::from_static("60"));
        }
        _ => {}
    }
    resp
}

/// Never returns an error: every error from below becomes its REDCap-shaped response.
impl<S: Handler> Handler for Rescue<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        let ctx = RequestContext::of(&mut req);
        let err = match self.next.handle(req).await {
            Ok(resp) => return Ok(resp),
            Err(err) => err,
        };
        let reason = match &err {
            GatewayError::Unauthenticated(a) => Some(a.reason()),
            _ => None,
        };
        let _ = ctx.error.set((err.kind(), reason));
        let id = ctx.request_id.get().map(String::as_str).unwrap_or("-");
        match err.side() {
            Side::Client => {
                tracing::info!(request_id = id, error = %err, kind = err.kind(), "request refused")
            }
            Side::Gateway | Side::Upstream => {
                tracing::warn!(request_id = id, error = %err, kind = err.kind(), "request failed")
            }
        }
        Ok(error_response(&err, ctx.error_format()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;

    #[test]
    fn table() {
        let cases: Vec<(GatewayError, u16)> = vec![
            (GatewayError::NotFound, 404),
            (GatewayError::UnknownProject("x".into()), 404),
            (GatewayError::MethodNotAllowed, 405),
            (GatewayError::Unauthenticated(AuthError::Expired), 401),
            (GatewayError::Forbidden("no".into()), 403),
            (GatewayError::BadRequest("bad".into()), 400),
            (GatewayError::PayloadTooLarge(1), 413),
            (GatewayError::UnsupportedMediaType, 415),
            (GatewayError::BodyTimeout, 408),
            (GatewayError::Overloaded, 503),
            (GatewayError::TooManyConnections(9), 503),
            (GatewayError::ShuttingDown, 503),
            (GatewayError::UpstreamUnreachable, 502),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::UpstreamRateLimited, 429),
            (GatewayError::AuditUnavailable, 503),
            (GatewayError::TokenStoreUnavailable, 503),
            (
                GatewayError::RateLimited {
                    limit: "user",
                    retry_after_secs: 3,
                },
                429,
            ),
        ];
        for (err, status) in cases {
            for fmt in [ReturnFormat::Json, ReturnFormat::Csv, ReturnFormat::Xml] {
                let r = error_response(&err, fmt);
                assert_eq!(r.status().as_u16(), status, "{err:?}");
                assert_eq!(r.headers()[CONTENT_TYPE], fmt.content_type());
            }
        }
        let r = error_response(
            &GatewayError::Unauthenticated(AuthError::Missing),
            ReturnFormat::Json,
        );
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(
            error_response(&GatewayError::MethodNotAllowed, ReturnFormat::Json).headers()[ALLOW],
            "POST"
        );
    }
}
