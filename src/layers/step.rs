//! A layer that transforms (or refuses) the request before passing it on. Most phases of
//! the request path are such steps: route, authenticate, parse, policy, vault.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Req, Resp, Result};
use crate::error::GatewayError;

pub trait Step: Clone + Send + Sync + 'static {
    fn apply(&self, req: Req) -> impl Future<Output = Result<Req>> + Send;
}

#[derive(Clone)]
pub struct StepLayer<T>(pub T);

impl<T: Clone, S> Layer<S> for StepLayer<T> {
    type Service = StepService<T, S>;
    fn layer(&self, inner: S) -> Self::Service {
        StepService {
            step: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct StepService<T, S> {
    step: T,
    inner: S,
}

impl<T, S> Service<Req> for StepService<T, S>
where
    T: Step,
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
        let step = self.step.clone();
        let mut inner = super::take_ready(&mut self.inner);
        Box::pin(async move {
            let req = step.apply(req).await?;
            inner.call(req).await
        })
    }
}
