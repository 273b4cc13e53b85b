//! Limits: a cap on requests in flight (more are answered 503 at once, never queued
//! without bound), and refusal of new work while the gateway drains for shutdown. A
//! request is in flight until its response body has been sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::Layer;

use super::step::Handler;
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
    fn layer(&self, next: S) -> Self::Service {
        Limits {
            next,
            limits: self.clone(),
        }
    }
}

pub struct Limits<S> {
    next: S,
    limits: LimitsLayer,
}

impl<S: Handler> Handler for Limits<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        if self.limits.draining.load(Ordering::Relaxed) {
            return Err(GatewayError::ShuttingDown);
        }
        let permit = self
            .limits
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded)?;
        // Held by the context until the response body is done.
        let _ = RequestContext::of(&mut req).in_flight.set(permit);
        self.next.handle(req).await
    }
}
