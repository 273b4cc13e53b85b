//! The gateway's middleware, one module per layer. The order is written in `stack.rs`.

pub mod access_log;
pub mod audit_intent;
pub mod authenticate;
pub mod credential;
pub mod dag_scope;
pub mod export_rights;
pub mod forward;
pub mod limits;
pub mod observe;
pub mod parse;
pub mod policy;
pub mod rate_limit;
pub mod request_id;
pub mod rescue;
pub mod route;
pub mod self_service;
pub mod step;
pub mod vault;

use http::{Request, Response};

use crate::body::Body;
use crate::error::GatewayError;

pub type Req = Request<Body>;
pub type Resp = Response<Body>;
pub type Result<T> = std::result::Result<T, GatewayError>;

/// The project, caller and call the routing, authentication and parsing steps attached
/// to a request, for the steps after them.
pub fn call_parts(
    req: &Req,
) -> Result<(
    route::ProjectName,
    std::sync::Arc<crate::auth::Principal>,
    std::sync::Arc<crate::redcap::RedcapCall>,
)> {
    let e = req.extensions();
    match (
        e.get::<route::ProjectName>(),
        e.get::<std::sync::Arc<crate::auth::Principal>>(),
        e.get::<std::sync::Arc<crate::redcap::RedcapCall>>(),
    ) {
        (Some(p), Some(w), Some(c)) => Ok((p.clone(), w.clone(), c.clone())),
        _ => Err(GatewayError::Forbidden(
            "the request was not authenticated and parsed".into(),
        )),
    }
}

/// The project's metadata copy, or the 503 a restricted or scoped call gets without one.
pub async fn metadata_of(
    cache: &std::sync::Arc<crate::metadata_cache::MetadataCache>,
    project: &str,
) -> Result<std::sync::Arc<crate::metadata_cache::Snapshot>> {
    cache.current(project).await.map_err(|e| {
        tracing::warn!(project, error = %e, "call refused: no project metadata to apply export rights or DAG scope");
        GatewayError::MetadataUnavailable
    })
}
