//! Route: only `POST /p/{project}/api/` (and `POST /api/` with an `X-Redcap-Project`
//! header), plus `POST /p/{project}/tokens` when self-service personal tokens are on.
//! The query string is never used or forwarded.

use std::collections::HashSet;
use std::sync::Arc;

use http::Method;

use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::context::RequestContext;
use crate::error::GatewayError;

pub const PROJECT_HEADER: &str = "x-redcap-project";

/// The project a request is for (a name from the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName(pub Arc<str>);

/// Marks a request for the self-service token endpoint (`layers/self_service.rs`).
#[derive(Debug, Clone, Copy)]
pub struct TokenEndpoint;

#[derive(Clone)]
pub struct Route {
    /// The configured names, shared by every request for them (no copy per request).
    projects: Arc<HashSet<Arc<str>>>,
    /// Whether `/p/{project}/tokens` exists.
    tokens: bool,
}

pub type RouteLayer = StepLayer<Route>;

impl Route {
    /// `tokens`: serve the self-service token endpoint too.
    pub fn layer(projects: impl IntoIterator<Item = String>, tokens: bool) -> RouteLayer {
        StepLayer(Route {
            projects: Arc::new(projects.into_iter().map(Arc::from).collect()),
            tokens,
        })
    }

    /// The project named by the path (None for `/api/`), and whether it is the token
    /// endpoint.
    fn project_from_path<'a>(&self, path: &'a str) -> Option<(Option<&'a str>, bool)> {
        if path == "/api/" || path == "/api" {
            return Some((None, false));
        }
        let rest = path.strip_prefix("/p/")?;
        let (project, tail) = rest.split_once('/')?;
        match tail {
            "api/" | "api" => Some((Some(project), false)),
            "tokens" if self.tokens => Some((Some(project), true)),
            _ => None,
        }
    }
}

impl Step for Route {
    async fn apply(&self, mut req: Req) -> Result<Req> {
        let Some((from_path, token_endpoint)) = self.project_from_path(req.uri().path()) else {
            return Err(GatewayError::NotFound);
        };
        if req.method() != Method::POST {
            return Err(GatewayError::MethodNotAllowed);
        }
        let project = match from_path {
            Some(p) => p,
            None => match req
                .headers()
                .get(PROJECT_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some(p) => p,
                // POST /api/ without a header: a personal token may name the project.
                None => return Ok(req),
            },
        };
        let Some(project) = self.projects.get(project).cloned() else {
            return Err(GatewayError::UnknownProject(project.to_string()));
        };
        if let Some(ctx) = req.extensions().get::<Arc<RequestContext>>() {
            let _ = ctx.project.set(project.clone());
        }
        req.extensions_mut().insert(ProjectName(project));
        if token_endpoint {
            req.extensions_mut().insert(TokenEndpoint);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;

    fn route(method: &str, uri: &str) -> Result<Req> {
        let r = Route {
            projects: Arc::new([Arc::from("demo")].into_iter().collect()),
            tokens: true,
        };
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(empty())
            .unwrap();
        futures_util::FutureExt::now_or_never(r.apply(req)).unwrap()
    }

    #[test]
    fn routes() {
        let ok = route("POST", "/p/demo/api/?type=module").unwrap();
        assert_eq!(
            ok.extensions().get::<ProjectName>().unwrap().0.as_ref(),
            "demo"
        );
        assert!(matches!(
            route("GET", "/p/demo/api/"),
            Err(GatewayError::MethodNotAllowed)
        ));
        assert!(matches!(
            route("POST", "/p/other/api/"),
            Err(GatewayError::UnknownProject(_))
        ));
        assert!(matches!(
            route("POST", "/p/demo/api/x"),
            Err(GatewayError::NotFound)
        ));
        assert!(matches!(route("POST", "/"), Err(GatewayError::NotFound)));
        let tokens = route("POST", "/p/demo/tokens").unwrap();
        assert!(tokens.extensions().get::<TokenEndpoint>().is_some());
        assert!(ok.extensions().get::<TokenEndpoint>().is_none());
        assert!(matches!(
            route("POST", "/p/demo/tokens/x"),
            Err(GatewayError::NotFound)
        ));
        // The project may come from a personal token later.
        assert!(route("POST", "/api/")
            .unwrap()
            .extensions()
            .get::<ProjectName>()
            .is_none());
    }
}
