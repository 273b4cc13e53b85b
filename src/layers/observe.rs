//! Observe: metrics and the final audit record, exactly once per request. A guard is
//! created when the request arrives and travels into the response body. The record of a
//! complete answer is written before the answer's last bytes are released to the caller
//! (a crash right after a caller got an answer cannot lose its record); when the body is
//! dropped because the client went away, or the request is dropped before any response,
//! the guard writes the record as it goes. Either way it counts the request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::oneshot;
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

/// allow, deny, or none (refused before a decision).
fn decision(ctx: &RequestContext) -> &'static str {
    match ctx.decision.get() {
        Some(d) if d.allowed => "allow",
        Some(_) => "deny",
        None => "none",
    }
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
        decision: decision(ctx),
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
    /// The record has been written (before the answer's end).
    written: bool,
}

impl Final {
    fn record(&self) -> Record<'_> {
        let mut r = record(&self.ctx, "final");
        r.status = self.status;
        r.bytes_out = Some(self.bytes_out);
        r.duration_ms = Some((self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
        r.complete = self.ended;
        r
    }

    /// Writes the record of a complete answer; `Some` while the writer thread has it.
    fn write_before_answer(
        &mut self,
    ) -> Option<oneshot::Receiver<std::result::Result<(), String>>> {
        self.ended = true;
        self.written = true;
        let r = self.record();
        self.audit.record_before_answer(&r)
    }
}

impl Drop for Final {
    fn drop(&mut self) {
        if !self.written {
            self.audit.record(&self.record());
        }
        let ctx = &self.ctx;
        let m = &self.metrics;
        m.in_flight.dec();
        m.bytes_out.inc_by(self.bytes_out);
        if let Some(n) = ctx.bytes_in.get() {
            m.bytes_in.inc_by(*n);
        }
        if let Some((_, Some(reason))) = ctx.error.get() {
            m.auth_failures.with_label_values(&[reason]).inc();
        }
        let call = ctx.call.get();
        let decision = decision(ctx);
        let status = self.status.map_or("none", status_class);
        m.requests
            .with_label_values(&[
                ctx.project.get().map_or("-", |p| &**p),
                call.map_or("-", |c| c.content),
                call.map_or("-", |c| c.action),
                decision,
                status,
            ])
            .inc();
    }
}

/// The response body, counted; the guard goes when the body does. Its last frame (or
/// its end, for a chunked answer) is held until the final record is written.
struct Observed {
    inner: Body,
    guard: Final,
    /// The answer's length when known (Content-Length): the frame that completes it is
    /// the last, whether or not the body beneath says so.
    length: Option<u64>,
    /// The last frame (or the end), held until the writer thread has written the record.
    held: Option<Held>,
}

struct Held {
    frame: Option<std::result::Result<Frame<Bytes>, BoxError>>,
    written: oneshot::Receiver<std::result::Result<(), String>>,
}

type Polled = Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>>;

impl Observed {
    /// The answer is complete with `frame` (None: its end): the record first.
    fn finish(
        &mut self,
        cx: &mut Context<'_>,
        frame: Option<std::result::Result<Frame<Bytes>, BoxError>>,
    ) -> Polled {
        match self.guard.write_before_answer() {
            None => Poll::Ready(frame),
            Some(written) => {
                self.held = Some(Held { frame, written });
                self.release(cx)
            }
        }
    }

    fn release(&mut self, cx: &mut Context<'_>) -> Polled {
        let Some(held) = self.held.as_mut() else {
            return Poll::Ready(None);
        };
        // Written, failed (counted and logged by the writer) or the writer gone: the
        // answer goes on either way.
        let _ = std::task::ready!(std::future::Future::poll(Pin::new(&mut held.written), cx));
        Poll::Ready(self.held.take().and_then(|h| h.frame))
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        if this.held.is_some() {
            return this.release(cx);
        }
        if this.guard.written {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.guard.bytes_out += d.len() as u64;
                }
                // hyper stops polling once the body says it has ended, or once it has
                // sent a known length; so the record goes before this frame.
                let complete = this.length.is_some_and(|n| this.guard.bytes_out >= n);
                if complete || this.inner.is_end_stream() {
                    return this.finish(cx, Some(Ok(f)));
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => this.finish(cx, None),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not ended while a record is being written for the last frame.
        self.held.is_none() && (self.guard.written || self.inner.is_end_stream())
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
            written: false,
        };
        let resp = self.next.handle(req).await?;
        guard.status = Some(resp.status().as_u16());
        let project = guard.ctx.project.get().map(|p| &**p).unwrap_or("-");
        metrics
            .duration
            .with_label_values(&[project])
            .observe(guard.started.elapsed().as_secs_f64());
        let (parts, body) = resp.into_parts();
        let length = http_body::Body::size_hint(&body).exact();
        let mut observed = Observed {
            inner: body,
            guard,
            length,
            held: None,
        };
        // An empty answer (a HEAD-like 204, an empty body): hyper will not poll it, so
        // its record is written now.
        if http_body::Body::is_end_stream(&observed.inner) || length == Some(0) {
            if let Some(written) = observed.guard.write_before_answer() {
                let _ = written.await;
            }
        }
        Ok(Resp::from_parts(parts, Body::new(observed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuditConfig, AuditSink};
    use http_body_util::BodyExt;

    /// The observe layer over an audit log at `path`.
    fn observing(path: &std::path::Path) -> ObserveLayer {
        let audit = Audit::start(&AuditConfig {
            sink: AuditSink::File,
            path: Some(path.to_path_buf()),
            ..AuditConfig::default()
        })
        .unwrap();
        ObserveLayer::new(audit, Arc::new(Metrics::new().unwrap()))
    }

    /// How many final records the log at `path` holds.
    fn finals_in(path: &std::path::Path) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches("\"phase\":\"final\"")
            .count()
    }

    /// Answers with the body it is given.
    struct Answer(std::sync::Mutex<Option<Body>>);

    impl Handler for Answer {
        async fn handle(&self, _req: Req) -> Result<Resp> {
            Ok(Resp::new(self.0.lock().unwrap().take().unwrap()))
        }
    }

    /// The answer's last frame (its end, for a body of unknown length) is released only
    /// once its final record is in the log, so a crash after the caller got an answer
    /// cannot lose the record of it.
    #[tokio::test]
    async fn the_record_is_written_before_the_answer_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let layer = observing(&path);
        let finals = || finals_in(&path);
        let known_length = crate::body::full("hello");
        let unknown_length =
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                ["a", "b"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from(s)))),
            )));
        for (n, body) in [known_length, unknown_length].into_iter().enumerate() {
            let observe = layer.layer(Answer(std::sync::Mutex::new(Some(body))));
            let resp = observe
                .handle(http::Request::new(crate::body::empty()))
                .await
                .unwrap();
            let mut body = resp.into_body();
            let mut frames = 0;
            while let Some(frame) = body.frame().await {
                frame.unwrap();
                frames += 1;
                if http_body::Body::is_end_stream(&body) {
                    break;
                }
            }
            assert!(frames >= 1);
            // The body has not been dropped: the record is there already.
            assert_eq!(finals(), n + 1, "body {n}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.lines().last().unwrap().contains("\"complete\":true"),
                "{text}"
            );
            drop(body);
            assert_eq!(finals(), n + 1, "written once");
        }
    }

    /// A body of `chunks` that tells its exact length (or not) but never says it has
    /// ended until polled past its last frame: the observe layer must find the last frame
    /// by the length alone.
    struct Chunks {
        chunks: std::collections::VecDeque<Bytes>,
        exact: Option<u64>,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.exact.map_or_else(
                http_body::SizeHint::default,
                http_body::SizeHint::with_exact,
            )
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the chunks and whether the length is known: the caller gets exactly
        /// the body's bytes, the final record is in the log before the frame that ends
        /// the answer (or its end) is released, it says how many bytes went out, and it
        /// is written once.
        #[test]
        fn the_record_precedes_the_end_of_any_answer(
            chunks in proptest::collection::vec(proptest::collection::vec(0u8..255, 0..40), 0..12),
            known_length in proptest::bool::ANY,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("audit.log");
                let layer = observing(&path);
                let total: usize = chunks.iter().map(Vec::len).sum();
                let body = Chunks {
                    chunks: chunks.iter().map(|c| Bytes::from(c.clone())).collect(),
                    exact: known_length.then_some(total as u64),
                };
                let observe = layer.layer(Answer(std::sync::Mutex::new(Some(Body::new(body)))));
                let resp = observe.handle(http::Request::new(crate::body::empty())).await.unwrap();
                let mut body = resp.into_body();
                let finals = || finals_in(&path);
                let mut got = Vec::new();
                loop {
                    // hyper stops once the body says it has ended.
                    if http_body::Body::is_end_stream(&body) {
                        break;
                    }
                    let Some(frame) = body.frame().await else { break };
                    let data = frame.unwrap().into_data().unwrap();
                    got.extend_from_slice(&data);
                    if known_length && got.len() == total {
                        // The caller now has the whole answer: the record is there.
                        assert_eq!(finals(), 1, "the record before the last {} bytes", data.len());
                    }
                }
                assert_eq!(got, chunks.concat());
                assert_eq!(finals(), 1, "the record before the end");
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains(&format!("\"bytes_out\":{total},")), "{text}");
                drop(body);
                assert_eq!(finals(), 1, "written once");
            });
        }
    }
}
