//! Limits: a cap on requests in flight (more are answered 503 at once, never queued
//! without bound), refusal of new work while the gateway drains for shutdown, and the
//! request head's size (`limits.max_header_bytes`, answered 431 in REDCap's shape; hyper
//! reads heads up to 64 KiB past it and refuses larger ones itself, with an empty body).
//! A request is in flight until its response body has been sent.

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
    max_head: usize,
}

impl LimitsLayer {
    /// `permits` is shared by every serving thread's stack.
    pub fn new(permits: Arc<Semaphore>, draining: Arc<AtomicBool>, max_head: usize) -> Self {
        LimitsLayer {
            permits,
            draining,
            max_head,
        }
    }
}

/// The request head's size as sent (request line and header lines, CRLFs included).
pub fn head_size(req: &Req) -> usize {
    // `METHOD SP target SP HTTP/1.1 CRLF`, then `name: value CRLF` each, then CRLF.
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}

/// hyper reads request heads up to this much past `limits.max_header_bytes`, so that
/// the gateway can answer a head over the limit in REDCap's shape.
pub const HEAD_HEADROOM: usize = 64 << 10;

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
        if head_size(&req) > self.limits.max_head {
            return Err(GatewayError::HeaderTooLarge(self.limits.max_head));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;

    /// Keeps the request's context in its response, as the observe layer's guard does
    /// (the permit lives as long as the response).
    struct KeepContext;

    impl Handler for KeepContext {
        async fn handle(&self, mut req: Req) -> Result<Resp> {
            let mut resp = Resp::new(empty());
            resp.extensions_mut().insert(RequestContext::of(&mut req));
            Ok(resp)
        }
    }

    fn call(limits: &Limits<KeepContext>, header: usize) -> Result<Resp> {
        let req = http::Request::post("/p/demo/api/")
            .header("x-pad", "a".repeat(header))
            .body(empty())
            .unwrap();
        futures_util::FutureExt::now_or_never(limits.handle(req)).unwrap()
    }

    #[test]
    fn draining_head_size_and_the_in_flight_cap() {
        let draining = Arc::new(AtomicBool::new(false));
        let layer = LimitsLayer::new(Arc::new(Semaphore::new(1)), draining.clone(), 1024);
        let limits = layer.layer(KeepContext);

        let first = call(&limits, 10).unwrap();
        // The one permit is held by the first response until it is dropped.
        assert!(matches!(call(&limits, 10), Err(GatewayError::Overloaded)));
        drop(first);
        let again = call(&limits, 10).unwrap();
        drop(again);

        // The head as sent: just under and just over the limit.
        let empty_pad = http::Request::post("/p/demo/api/")
            .header("x-pad", "")
            .body(empty())
            .unwrap();
        let under = 1024 - head_size(&empty_pad);
        assert!(call(&limits, under).is_ok());
        assert!(matches!(
            call(&limits, under + 1),
            Err(GatewayError::HeaderTooLarge(1024))
        ));

        draining.store(true, Ordering::Relaxed);
        assert!(matches!(call(&limits, 10), Err(GatewayError::ShuttingDown)));
    }
}
