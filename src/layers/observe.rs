//! Observe: metrics and the final audit record, exactly once per request. A guard is
//! created when the request arrives and travels into the response body; when the body
//! ends, or is dropped because the client went away, or the request is dropped before
//! any response, the guard writes the record and counts the request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use tower::Layer;

use super::step::Handler;
use super::{Req, Resp, Result};
use crate::audit::{Audit, Record};
use crate::body::{Body, BoxError};
use crate::context::{PeerAddr, RequestContext};
use crate::telemetry::{status_class, Metrics};

#[derive(Clone)]
pub struct ObserveLayer {
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(audit: Arc<Audit>, metrics: Arc<Metrics>) -> Self {
        ObserveLayer { audit, metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, next: S) -> Self::Service {
        Observe {
            next,
            layer: self.clone(),
        }
    }
}

pub struct Observe<S> {
    next: S,
    layer: ObserveLayer,
}

/// Builds an audit record from what the layers learned (borrowed, not copied).
pub fn record<'a>(ctx: &'a RequestContext, phase: &'static str) -> Record<'a> {
    const NONE: &[String] = &[];
    let p = ctx.principal.get();
    let call = ctx.call.get();
    let d = ctx.decision.get();
    let effect_users = d
        .map(|d| d.effect.users.as_slice())
        .filter(|u| !u.is_empty());
    Record {
        time: crate::audit::rfc3339_millis(std::time::SystemTime::now()),
        phase,
        request_id: ctx.request_id.get().map_or("", String::as_str),
        user: p.map(|p| p.user.as_str()),
        groups: p.map_or(NONE, |p| p.groups.as_slice()),
        issuer: p.map(|p| p.issuer.as_str()),
        credential: p.map(|p| p.credential.as_str()),
        project: ctx.project.get().map(|p| &**p),
        content: call.map(|c| c.content),
        action: call.map(|c| c.action),
        format: call.map(|c| c.format),
        return_format: call.map(|c| c.return_format),
        decision: match d {
            Some(d) if d.allowed => "allow",
            Some(_) => "deny",
            None => "none",
        },
        rule: d.map(|d| d.rule),
        reasons: d.map_or(NONE, |d| d.reasons.as_slice()),
        users: effect_users
            .or_else(|| call.map(|c| c.users.as_slice()))
            .unwrap_or(NONE),
        changes: d.map_or(NONE, |d| d.effect.changes.as_slice()),
        export_rights: ctx.export.get().map(|e| e.rights.as_str()),
        export_fields: ctx.export.get().map(|e| e.fields.as_str()),
        export_dropped: ctx.export.get().map_or(NONE, |e| e.dropped.as_slice()),
        dag_scope: ctx.dag_scope.get().map(|d| d.dags.as_str()),
        rows_dropped: ctx
            .dag_scope
            .get()
            .map(|d| d.rows_dropped.load(std::sync::atomic::Ordering::Relaxed)),
        error: ctx.error.get().map(|(k, _)| *k),
        bytes_in: ctx.bytes_in.get().copied(),
        upstream_status: ctx.upstream_status.get().copied(),
        client: ctx.client.get().and_then(|p| p.1.to_str().ok()),
        ..Record::default()
    }
}

struct Final {
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    ctx: Arc<RequestContext>,
    started: Instant,
    status: Option<u16>,
    bytes_out: u64,
    ended: bool,
}

impl Drop for Final {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        let mut r = record(ctx, "final");
        r.status = self.status;
        r.bytes_out = Some(self.bytes_out);
        r.duration_ms = Some((self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
        r.complete = self.ended;
        self.audit.record(&r);
        let m = &self.metrics;
        m.in_flight.dec();
        m.bytes_out.inc_by(self.bytes_out);
        if let Some(n) = r.bytes_in {
            m.bytes_in.inc_by(n);
        }
        if let Some((_, Some(reason))) = ctx.error.get() {
            m.auth_failures.with_label_values(&[reason]).inc();
        }
        let status = self.status.map_or("none", status_class);
        m.requests
            .with_label_values(&[
                r.project.unwrap_or("-"),
                r.content.unwrap_or("-"),
                r.action.unwrap_or("-"),
                r.decision,
                status,
            ])
            .inc();
    }
}

/// The response body, counted; the guard goes when the body does.
struct Observed {
    inner: Body,
    guard: Final,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.guard.bytes_out += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.guard.ended = true,
            _ => {}
        }
        // hyper stops polling once the body says it has ended; so must we.
        if this.inner.is_end_stream() {
            this.guard.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Runs before the guard (a field) writes the record.
        if http_body::Body::is_end_stream(&self.inner) {
            self.guard.ended = true;
        }
    }
}

impl<S: Handler> Handler for Observe<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        let ctx = RequestContext::of(&mut req);
        if ctx.client.get().is_none() {
            if let Some(peer) = req.extensions().get::<PeerAddr>() {
                let _ = ctx.client.set(peer.clone());
            }
        }
        let metrics = &self.layer.metrics;
        metrics.in_flight.inc();
        let mut guard = Final {
            audit: self.layer.audit.clone(),
            metrics: metrics.clone(),
            ctx,
            started: Instant::now(),
            status: None,
            bytes_out: 0,
            ended: false,
        };
        let resp = self.next.handle(req).await?;
        guard.status = Some(resp.status().as_u16());
        let project = guard.ctx.project.get().map(|p| &**p).unwrap_or("-");
        metrics
            .duration
            .with_label_values(&[project])
            .observe(guard.started.elapsed().as_secs_f64());
        let (parts, body) = resp.into_parts();
        let body = Body::new(Observed { inner: body, guard });
        Ok(Resp::from_parts(parts, body))
    }
}
