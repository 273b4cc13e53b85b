//! Request ids: a random UUID (v4) per request, as tower-http's `MakeRequestUuid` makes
//! them, written without the formatting machinery (`Uuid::to_string` goes through
//! `fmt`, a few hundred instructions per request).

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hyphenated_v4_uuids_and_differ() {
        let req = Request::new(());
        let a = MakeUuid.make_request_id(&req).unwrap();
        let b = MakeUuid.make_request_id(&req).unwrap();
        let a = a.header_value().to_str().unwrap().to_string();
        assert_ne!(a, b.header_value().to_str().unwrap());
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a, parsed.hyphenated().to_string());
    }
}
