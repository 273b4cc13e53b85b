//! Forward: the innermost service. Sends the rewritten request to `{upstream}/api/` (never
//! with a query string) over the serving thread's connection pool (`upstream.rs`) and
//! streams REDCap's answer back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use http::{Request, Uri};

use super::step::Handler;
use super::{Req, Resp, Result};
use crate::body::boxed;
use crate::error::GatewayError;
use crate::upstream::Upstream;

/// Hop-by-hop headers (RFC 9110 7.6.1, and the old `keep-alive`/`proxy-connection`).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes every header whose name `doomed` picks, in one pass over the names present
/// (a request has a handful; a `remove` per candidate name hashes each one).
pub fn remove_headers(h: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let gone: Vec<HeaderName> = h.keys().filter(|n| doomed(n)).cloned().collect();
    for n in gone {
        h.remove(n);
    }
}

/// Removes hop-by-hop headers, including those named by `Connection`, and `also`.
pub fn strip_hop_by_hop(h: &mut HeaderMap, also: &[HeaderName]) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    remove_headers(h, |n| {
        is_hop_by_hop(n) || also.contains(n) || named.contains(n)
    });
}

/// `{url}/api/`; a URL that already ends in `/api` or `/api/` is used as it is.
pub fn api_uri(base: &str) -> std::result::Result<Uri, String> {
    let base = base.trim_end_matches('/');
    let full = if base.ends_with("/api") {
        format!("{base}/")
    } else {
        format!("{base}/api/")
    };
    full.parse::<Uri>()
        .map_err(|e| format!("upstream URL {full:?}: {e}"))
}

/// The innermost handler (its requests' futures borrow it).
pub struct Forward {
    upstream: Upstream,
    /// The API's path (`/api/`, or `/redcap/api/`): the request line's target.
    path: Uri,
    /// The `Host` header for the API's URL.
    host: HeaderValue,
    timeout: Duration,
    /// Longest REDCap may pause once its answer has begun (`IdleLimited`).
    body_idle: Duration,
    metrics: Arc<crate::telemetry::Metrics>,
}

/// `host[:port]` of a URI, the port only when it is not the scheme's default.
fn host_header(uri: &Uri) -> HeaderValue {
    let host = uri.host().unwrap_or("");
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let text = match uri.port_u16() {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Forward {
    /// `upstream` is a pool to `api`'s host.
    pub fn new(
        upstream: Upstream,
        api: &Uri,
        timeout: Duration,
        body_idle: Duration,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Self {
        let path = api
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        Forward {
            upstream,
            host: host_header(api),
            path,
            timeout,
            body_idle,
            metrics,
        }
    }
}

impl Handler for Forward {
    fn handle(&self, req: Req) -> impl Future<Output = Result<Resp>> + Send + '_ {
        let this = self;
        async move {
            let ctx = req
                .extensions()
                .get::<Arc<crate::context::RequestContext>>()
                .cloned();
            let (parts, body) = req.into_parts();
            let started = std::time::Instant::now();
            let mut out = Request::post(this.path.clone())
                .body(body)
                .map_err(|_| GatewayError::UpstreamUnreachable)?;
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers, &[http::header::EXPECT]);
            headers.insert(HOST, this.host.clone());
            *out.headers_mut() = headers;
            let sent = tokio::time::timeout(this.timeout, this.upstream.send(out)).await;
            let resp = match sent {
                Err(_) => return Err(GatewayError::UpstreamTimeout),
                Ok(Err(e)) => {
                    if let Some(err) = find_cause::<crate::redcap::multipart::MultipartError>(&e) {
                        return Err(GatewayError::BadRequest(err.to_string()));
                    }
                    let id = ctx
                        .as_ref()
                        .and_then(|c| c.request_id.get())
                        .map(String::as_str)
                        .unwrap_or("-");
                    tracing::warn!(request_id = id, error = %e, "upstream request failed");
                    return Err(GatewayError::UpstreamUnreachable);
                }
                Ok(Ok(r)) => r,
            };
            this.metrics
                .upstream_duration
                .observe(started.elapsed().as_secs_f64());
            if let Some(ctx) = &ctx {
                let _ = ctx.upstream_status.set(resp.status().as_u16());
            }
            if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
                this.metrics.upstream_banned.inc();
                tracing::error!(
                    "REDCap answered 429: its per-IP rate limit was reached, and it bans the \
                     gateway's address for every user; keep rate_limit.upstream below it"
                );
                return Err(GatewayError::UpstreamRateLimited);
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, &[]);
            let body = IdleLimited {
                inner: body,
                idle: this.body_idle,
                fresh: false,
                sleep: None,
            };
            Ok(Resp::from_parts(parts, boxed(body)))
        }
    }
}

/// REDCap's answer, cut off with an error when no byte has come for `idle` once it has
/// begun. The timer is armed only when REDCap keeps the body waiting (a small answer that
/// comes whole never arms it, nor reads the clock), and only re-armed when REDCap has
/// sent something since: the wait counts from the first time the body had nothing.
struct IdleLimited {
    inner: crate::upstream::PooledBody,
    idle: Duration,
    /// A frame came since the timer was armed.
    fresh: bool,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("REDCap sent nothing for {0:?} in the middle of its answer: cut off")]
struct Stalled(Duration);

impl http_body::Body for IdleLimited {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>>
    {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.fresh = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = match &mut this.sleep {
                    Some(sleep) if this.fresh => {
                        sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                        sleep
                    }
                    Some(sleep) => sleep,
                    None => this.sleep.insert(Box::pin(tokio::time::sleep(idle))),
                };
                this.fresh = false;
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(idle = ?this.idle, "REDCap stalled mid-answer; transfer cut off");
                        Poll::Ready(Some(Err(Box::new(Stalled(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Finds an error of type T in a source chain (a client body error surfaces wrapped).
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_uris() {
        assert_eq!(
            api_uri("https://r.example.edu").unwrap(),
            "https://r.example.edu/api/"
        );
        assert_eq!(
            api_uri("https://r.example.edu/redcap/").unwrap(),
            "https://r.example.edu/redcap/api/"
        );
        assert_eq!(
            api_uri("https://r.example.edu/api").unwrap(),
            "https://r.example.edu/api/"
        );
        assert_eq!(
            api_uri("https://r.example.edu/api/").unwrap(),
            "https://r.example.edu/api/"
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        h.insert("expect", "100-continue".parse().unwrap());
        strip_hop_by_hop(&mut h, &[http::header::EXPECT]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn host_headers() {
        let host = |u: &str| host_header(&u.parse().unwrap());
        assert_eq!(host("https://r.example.edu/api/"), "r.example.edu");
        assert_eq!(host("https://r.example.edu:443/api/"), "r.example.edu");
        assert_eq!(
            host("https://r.example.edu:8443/api/"),
            "r.example.edu:8443"
        );
        assert_eq!(host("http://127.0.0.1:8080/api/"), "127.0.0.1:8080");
        assert_eq!(host("http://[::1]:80/api/"), "[::1]");
    }
}
