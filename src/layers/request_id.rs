//! Request identity, the outermost phase: every request gets an `X-Request-Id` (the
//! client's own if it is usable, else a random UUID v4), which goes upstream, into the
//! context for logs and audit records, and back on the response. Credentials in the
//! request's headers are marked sensitive, so no `Debug` of the headers can print them.

use http::header::{Entry, AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use tower::Layer;

use super::step::Handler;
use super::{Req, Resp, Result};
use crate::context::RequestContext;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen id kept; a longer one is replaced.
const MAX_CLIENT_ID: usize = 128;

#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, next: S) -> Self::Service {
        RequestId { next }
    }
}

pub struct RequestId<S> {
    next: S,
}

impl<S: Handler> Handler for RequestId<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        mark_sensitive(req.headers_mut());
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(v) if usable(v) => v.clone(),
            _ => {
                let v = new_id();
                req.headers_mut().insert(X_REQUEST_ID, v.clone());
                v
            }
        };
        let ctx = RequestContext::of(&mut req);
        let _ = ctx
            .request_id
            .set(id.to_str().unwrap_or_default().to_owned());
        drop(ctx);
        let mut resp = self.next.handle(req).await?;
        resp.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        Ok(resp)
    }
}

/// A client's id is kept if it is short and printable (it goes into every log line and
/// audit record of the request).
fn usable(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= MAX_CLIENT_ID && v.to_str().is_ok()
}

fn mark_sensitive(headers: &mut HeaderMap) {
    for name in [AUTHORIZATION, COOKIE] {
        if let Entry::Occupied(mut e) = headers.entry(name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

/// A random UUID (v4), written without the formatting machinery (`Uuid::to_string` goes
/// through `fmt`, a few hundred instructions per request).
pub fn new_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hyphenated_v4_uuids_and_differ() {
        let a = new_id().to_str().unwrap().to_string();
        assert_ne!(a, new_id().to_str().unwrap());
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a, parsed.hyphenated().to_string());
    }

    #[test]
    fn only_short_printable_client_ids_are_kept() {
        assert!(usable(&HeaderValue::from_static("abc-123")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
        assert!(!usable(
            &HeaderValue::from_str(&"x".repeat(MAX_CLIENT_ID + 1)).unwrap()
        ));
    }

    #[test]
    fn credentials_are_marked_sensitive() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-other", HeaderValue::from_static("plain"));
        mark_sensitive(&mut h);
        assert!(h[AUTHORIZATION].is_sensitive());
        assert!(h.get_all(COOKIE).iter().all(HeaderValue::is_sensitive));
        assert!(!h["x-other"].is_sensitive());
        assert!(!format!("{h:?}").contains("secret"));
    }
}
