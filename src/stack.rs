//! The whole request path, outermost first. This is the one place the order is written.
//! Every failure below Rescue is a typed `GatewayError`; Rescue turns it into a
//! REDCap-shaped response, so the access log, metrics and audit see every request.
//! The layers compose one chain of handlers (`layers::step`), served as one tower
//! `Service` by `Pipeline`.

use tower::ServiceBuilder;

use crate::gateway::Gateway;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::audit_intent::AuditIntent;
use crate::layers::authenticate::Authenticate;
use crate::layers::credential::ResolveCredential;
use crate::layers::dag_scope::DagScopeLayer;
use crate::layers::export_rights::ExportRightsLayer;
use crate::layers::forward::Forward;
use crate::layers::limits::LimitsLayer;
use crate::layers::observe::ObserveLayer;
use crate::layers::parse::Parse;
use crate::layers::policy::Authorize;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::route::Route;
use crate::layers::self_service::SelfServiceLayer;
use crate::layers::step::{Handler, Pipeline, PipelineLayer};
use crate::layers::vault::Inject;
use crate::portal::PortalLayer;

/// `upstream` is the serving thread's own pool (`g.upstream.pool()`), so a request's
/// connection tasks stay on its thread.
pub fn build(g: &Gateway, upstream: crate::upstream::Upstream) -> Pipeline<impl Handler> {
    let self_service = SelfServiceLayer::new(g.desk.clone());
    ServiceBuilder::new()
        .layer(PipelineLayer)
        .layer(RequestIdLayer)
        .layer(AccessLogLayer)
        .layer(ObserveLayer::new(g.audit.clone(), g.metrics.clone()))
        .layer(RescueLayer)
        .layer(LimitsLayer::new(
            g.in_flight.clone(),
            g.draining.clone(),
            g.limits.max_header_bytes,
        ))
        .layer(PortalLayer::new(g.portal.clone()))
        .layer(Route::layer(g.project_names(), self_service.enabled()))
        .layer(Authenticate::layer(g.jwt.clone(), g.personal.is_some()))
        .layer(self_service)
        .layer(Parse::layer(g.limits.parse))
        .layer(ResolveCredential::layer(g.personal.clone()))
        .layer(Authorize::layer(g.policy.clone()))
        .layer(RateLimitLayer::new(g.limits_rt.clone()))
        .layer(ExportRightsLayer::new(g.policy.clone(), g.metadata.clone()))
        .layer(DagScopeLayer::new(g.policy.clone(), g.metadata.clone()))
        .layer(Inject::layer(
            g.vault.clone(),
            g.limits.parse.php.max_input_vars,
        ))
        .layer(AuditIntent::layer(g.audit.clone()))
        .service(Forward::new(
            upstream,
            &g.api,
            g.upstream_timeout,
            g.config.upstream.body_idle_timeout.0,
            g.metrics.clone(),
        ))
}
