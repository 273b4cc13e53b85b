//! The inner request path (route through forward) as one chain of handlers.
//!
//! tower calls a service through `&mut self`, so a middleware whose future outlives
//! `call` must clone its inner service, and every layer clones the whole stack beneath
//! it: per request, a cost that grows with the square of the depth. Here each phase holds
//! its successor behind an `Arc` and hands out `'static` futures, so a request costs one
//! reference count per phase and the whole chain polls as one future. `Pipeline` puts
//! the chain back behind tower's `Service` for the outer layers.
//!
//! Most phases are steps, which transform (or refuse) the request before passing it on:
//! route, authenticate, parse, credential, policy, vault, audit intent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Req, Resp, Result};
use crate::error::GatewayError;

/// A phase of the inner path. `handle` must not borrow `self` in its future.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Req) -> impl Future<Output = Result<Resp>> + Send + 'static;
}

pub trait Step: Clone + Send + Sync + 'static {
    fn apply(&self, req: Req) -> impl Future<Output = Result<Req>> + Send;
}

#[derive(Clone)]
pub struct StepLayer<T>(pub T);

impl<T: Clone, S> Layer<S> for StepLayer<T> {
    type Service = Then<T, S>;
    fn layer(&self, next: S) -> Self::Service {
        Then {
            step: self.0.clone(),
            next: Arc::new(next),
        }
    }
}

/// A step, then the rest of the chain.
pub struct Then<T, S> {
    step: T,
    next: Arc<S>,
}

impl<T: Step, S: Handler> Handler for Then<T, S> {
    fn handle(&self, req: Req) -> impl Future<Output = Result<Resp>> + Send + 'static {
        let step = self.step.clone();
        let next = self.next.clone();
        async move {
            let req = step.apply(req).await?;
            next.handle(req).await
        }
    }
}

/// Ends a chain of handlers: a tower `Service` that is always ready and costs one
/// reference count to clone.
pub struct PipelineLayer;

impl<H> Layer<H> for PipelineLayer {
    type Service = Pipeline<H>;
    fn layer(&self, chain: H) -> Pipeline<H> {
        Pipeline(Arc::new(chain))
    }
}

pub struct Pipeline<H>(Arc<H>);

impl<H> Clone for Pipeline<H> {
    fn clone(&self) -> Self {
        Pipeline(self.0.clone())
    }
}

impl<H: Handler> Service<Req> for Pipeline<H> {
    type Response = Resp;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Resp>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin(self.0.handle(req))
    }
}
