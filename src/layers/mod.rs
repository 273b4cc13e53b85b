//! The gateway's middleware, one module per layer. The order is written in `stack.rs`.

pub mod access_log;
pub mod audit_intent;
pub mod authenticate;
pub mod credential;
pub mod dag_scope;
pub mod export_rights;
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
