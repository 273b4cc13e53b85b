//! Rate limit: refuses (429 with Retry-After, never forwarded) calls over a per-user,
//! per-project or per-user-and-project rate, holds calls briefly under the upstream cap,
//! and caps calls in flight per user and to REDCap.

use std::future::Future;
use std::sync::Arc;

use tower::Layer;

use super::route::ProjectName;
use super::step::Handler;
use super::{Req, Resp, Result};
use crate::auth::Principal;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::ratelimit::{RateLimits, Refusal};
use crate::redcap::RedcapCall;

#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Arc<RateLimits>,
}

impl RateLimitLayer {
    pub fn new(limits: Arc<RateLimits>) -> Self {
        RateLimitLayer { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, next: S) -> Self::Service {
        RateLimit {
            next,
            limits: self.limits.clone(),
        }
    }
}

pub struct RateLimit<S> {
    next: S,
    limits: Arc<RateLimits>,
}

impl<S: Handler> Handler for RateLimit<S> {
    fn handle(&self, mut req: Req) -> impl Future<Output = Result<Resp>> + Send + '_ {
        let next = &self.next;
        let limits = &self.limits;
        async move {
            let user = req
                .extensions()
                .get::<Arc<Principal>>()
                .map_or("", |p| p.user.as_str());
            let project = req.extensions().get::<ProjectName>().map_or("", |p| &*p.0);
            let mutating = req
                .extensions()
                .get::<Arc<RedcapCall>>()
                .is_some_and(|c| c.operation.is_mutating());
            let cost = if mutating { limits.mutating_cost } else { 1 };
            // The permit (concurrency caps) is held until REDCap's answer has been sent on:
            // the request context keeps it until the response body is done.
            let permit = limits.admit(user, project, cost).await.map_err(refused)?;
            // (Alone, without the outer layers, the context goes with the request: the
            // permit is then held until the response head.)
            let _ = RequestContext::of(&mut req).concurrency.set(permit);
            next.handle(req).await
        }
    }
}

/// A refusal as the client sees it (`From<Refusal> for GatewayError`).
pub fn refused(r: Refusal) -> GatewayError {
    GatewayError::from(r)
}
