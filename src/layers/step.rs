//! The inner request path (route through forward) as one chain of handlers.
//!
//! tower calls a service through `&mut self`, so a middleware whose future outlives
//! `call` must clone its inner service, and every layer clones the whole stack beneath
//! it: per request, a cost that grows with the square of the depth. Here each phase owns
//! its successor, and a request's future borrows the chain, which `Pipeline` keeps alive
//! with one reference count per request; the whole chain polls as one future. `Pipeline`
//! puts the chain back behind tower's `Service` for the outer layers.
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

/// A phase of the inner path. Its future borrows the chain, which `Pipeline` keeps alive
/// (one `Arc` per request for the whole chain, not a reference count per phase).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Req) -> impl Future<Output = Result<Resp>> + Send + '_;
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
            next,
        }
    }
}

/// A step, then the rest of the chain.
pub struct Then<T, S> {
    step: T,
    next: S,
}

impl<T: Step, S: Handler> Handler for Then<T, S> {
    async fn handle(&self, req: Req) -> Result<Resp> {
        let req = self.step.apply(req).await?;
        self.next.handle(req).await
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
        let chain = self.0.clone();
        Box::pin(async move { chain.handle(req).await })
    }
}
