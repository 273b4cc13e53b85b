//! Rate limit: refuses (429 with Retry-After, never forwarded) calls over a per-user,
//! per-project or per-user-and-project rate, holds calls briefly under the upstream cap,
//! and caps calls in flight per user and to REDCap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::route::ProjectName;
use super::{Req, Resp, Result};
use crate::auth::Principal;
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
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: Arc<RateLimits>,
}

impl<S> Service<Req> for RateLimit<S>
where
    S: Service<Req, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Resp>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let limits = self.limits.clone();
        Box::pin(async move {
            let user = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.user.clone())
                .unwrap_or_default();
            let project = req
                .extensions()
                .get::<ProjectName>()
                .map(|p| p.0.to_string())
                .unwrap_or_default();
            let mutating = req
                .extensions()
                .get::<Arc<RedcapCall>>()
                .is_some_and(|c| c.operation.is_mutating());
            let cost = if mutating { limits.mutating_cost } else { 1 };
            let _permit = match limits.admit(&user, &project, cost).await {
                Ok(p) => p,
                Err(Refusal::Limited { limit, retry_after }) => {
                    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    return Err(GatewayError::RateLimited {
                        limit,
                        retry_after_secs: secs.max(1),
                    });
                }
                Err(Refusal::Unavailable) => return Err(GatewayError::Overloaded),
            };
            inner.call(req).await
        })
    }
}
