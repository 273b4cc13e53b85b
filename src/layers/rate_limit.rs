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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use crate::config::RateLimitConfig;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    /// Answers 200, keeping the request's context (and so its concurrency permit) in the
    /// response, as the observe layer's guard does.
    struct Ok200;

    impl Handler for Ok200 {
        async fn handle(&self, mut req: Req) -> Result<Resp> {
            let mut resp = Resp::new(crate::body::empty());
            resp.extensions_mut().insert(RequestContext::of(&mut req));
            Ok(resp)
        }
    }

    fn request(user: &str, body: &str) -> Req {
        let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
        let mut req = http::Request::new(crate::body::empty());
        req.extensions_mut().insert(ProjectName(Arc::from("demo")));
        req.extensions_mut().insert(Arc::new(Principal {
            user: user.into(),
            groups: Vec::new(),
            issuer: "https://idp".into(),
            credential: CredentialKind::Jwt,
        }));
        req.extensions_mut()
            .insert(Arc::new(RedcapCall::from_form(&form).unwrap()));
        req
    }

    /// Each user's rate is their own, a change costs `mutating_cost`, a refusal is a 429
    /// that never reaches the handler, and a user's calls in flight are capped until
    /// their responses are done.
    #[tokio::test]
    async fn rates_costs_and_the_concurrency_cap() {
        let cfg: RateLimitConfig = toml::from_str(
            "per_user = { limit = 4, per = \"60s\" }\nmutating_cost = 3\nper_user_concurrency = 1",
        )
        .unwrap();
        let metrics = Arc::new(crate::telemetry::Metrics::new().unwrap());
        let limits = Arc::new(RateLimits::new(&cfg, metrics).await.unwrap());
        let layer = RateLimitLayer::new(limits).layer(Ok200);
        let read = "content=record&format=json";
        let import = "content=record&action=import&format=json&data=[]";

        // One in flight per user: a second call while the first's response is not done
        // is refused; once it is, the next goes.
        let first = layer.handle(request("ann", read)).await.unwrap();
        assert!(matches!(
            layer.handle(request("ann", read)).await,
            Err(GatewayError::RateLimited { .. })
        ));
        drop(first);
        layer.handle(request("ann", read)).await.unwrap();
        // A change costs 3 of cat's 4 a minute: then one read, and no more.
        layer.handle(request("cat", import)).await.unwrap();
        layer.handle(request("cat", read)).await.unwrap();
        assert!(matches!(
            layer.handle(request("cat", read)).await,
            Err(GatewayError::RateLimited { .. })
        ));
        // bob's rate is his own.
        for _ in 0..4 {
            layer.handle(request("bob", read)).await.unwrap();
        }
        let Err(GatewayError::RateLimited {
            retry_after_secs, ..
        }) = layer.handle(request("bob", read)).await
        else {
            panic!("bob's fifth call within the minute")
        };
        assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}");
    }
}
