//! Limits: a cap on requests in flight (more are answered 503 at once, never queued
//! without bound), and refusal of new work while the gateway drains for shutdown. A
//! request is in flight until its response body has been sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::{Req, Resp, Result};
use crate::context::RequestContext;
use crate::error::GatewayError;

#[derive(Clone)]
pub struct LimitsLayer {
    permits: Arc<Semaphore>,
    draining: Arc<AtomicBool>,
}

impl LimitsLayer {
    /// `permits` is shared by every serving thread's stack.
    pub fn new(permits: Arc<Semaphore>, draining: Arc<AtomicBool>) -> Self {
        LimitsLayer { permits, draining }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    limits: LimitsLayer,
}

impl<S> Service<Req> for Limits<S>
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

    fn call(&mut self, mut req: Req) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let limits = self.limits.clone();
        let ctx = RequestContext::of(&mut req);
        Box::pin(async move {
            if limits.draining.load(Ordering::Relaxed) {
                return Err(GatewayError::ShuttingDown);
            }
            let permit = limits
                .permits
                .try_acquire_owned()
                .map_err(|_| GatewayError::Overloaded)?;
            // Held by the context until the response body is done.
            let _ = ctx.in_flight.set(permit);
            drop(ctx);
            inner.call(req).await
        })
    }
}
