//! The request path as one chain of handlers, composed with tower's `Layer`s.
//!
//! tower calls a service through `&mut self`, so a middleware whose future outlives
//! `call` must clone its inner service, and every layer clones the whole stack beneath
//! it: per request, a cost that grows with the square of the depth, plus a boxed future
//! per layer. Here each phase owns its successor, and a request's future borrows the
//! chain, which `Pipeline` keeps alive with one reference count per request; the whole
//! chain polls as one future, unboxed. `Pipeline` is the chain as a tower `Service`.
//!
//! Outer phases wrap the rest of the chain (request id, access log, observe, rescue,
//! limits); inner ones are steps, which transform (or refuse) the request before passing
//! it on: route, authenticate, parse, credential, policy, vault, audit intent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Req, Resp, Result};
use crate::error::GatewayError;
use crate::redcap::ReturnFormat;

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

/// Heads a chain of handlers: a tower `Service` that is always ready and costs one
/// reference count to clone.
pub struct PipelineLayer;

impl<H> Layer<H> for PipelineLayer {
    type Service = Pipeline<H>;
    fn layer(&self, chain: H) -> Pipeline<H> {
        Pipeline(Arc::new(chain))
    }
}

pub struct Pipeline<H>(Arc<H>);

impl<H: Handler> Pipeline<H> {
    pub fn into_chain(self) -> Arc<H> {
        self.0
    }

    /// The response to a request, as the server wants it, through a chain it holds (a
    /// serving thread's current stack): neither boxed nor fallible (an error that escaped
    /// the chain, which rescue prevents, is still answered in REDCap's shape).
    pub async fn serve_owned(
        chain: Arc<H>,
        req: Req,
    ) -> std::result::Result<Resp, std::convert::Infallible> {
        Ok(match chain.handle(req).await {
            Ok(resp) => resp,
            Err(e) => super::rescue::error_response(&e, ReturnFormat::Json),
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;

    /// Appends its name to the request's `x-trace` header, or refuses.
    #[derive(Clone)]
    struct Mark(&'static str, bool);

    impl Step for Mark {
        async fn apply(&self, mut req: Req) -> Result<Req> {
            if !self.1 {
                return Err(GatewayError::Forbidden(self.0.into()));
            }
            let trace = req
                .headers()
                .get("x-trace")
                .map(|v| format!("{} {}", v.to_str().unwrap(), self.0))
                .unwrap_or_else(|| self.0.to_string());
            req.headers_mut()
                .insert("x-trace", http::HeaderValue::from_str(&trace).unwrap());
            Ok(req)
        }
    }

    /// Answers with the trace the steps left.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, req: Req) -> Result<Resp> {
            let mut resp = Resp::new(empty());
            if let Some(t) = req.headers().get("x-trace") {
                resp.headers_mut().insert("x-trace", t.clone());
            }
            Ok(resp)
        }
    }

    fn run(chain: impl Handler) -> Result<Resp> {
        let req = http::Request::new(empty());
        futures_util::FutureExt::now_or_never(Pipeline::serve_owned(Arc::new(chain), req))
            .unwrap()
            .map_err(|never| match never {})
    }

    /// Steps run outermost first, each once; the first refusal ends the chain, and the
    /// pipeline answers it in REDCap's shape rather than failing.
    #[test]
    fn steps_run_in_order_and_the_first_refusal_ends_the_chain() {
        let layers = |second_allows| {
            StepLayer(Mark("route", true)).layer(
                StepLayer(Mark("auth", second_allows))
                    .layer(StepLayer(Mark("policy", true)).layer(Echo)),
            )
        };
        let resp = run(layers(true)).unwrap();
        assert_eq!(resp.headers()["x-trace"], "route auth policy");
        let refused = run(layers(false)).unwrap();
        assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);
        assert!(refused.headers().get("x-trace").is_none());
    }
}
