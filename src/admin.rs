//! The admin listener: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (tokens,
//! keys and the audit log ready). It is off the request path, so it stands on tower-http's
//! layers rather than the handler chain of `stack.rs`:
//! - `CatchPanicLayer`: a panic answers 500 and the listener goes on;
//! - `TimeoutLayer`: an answer that takes over 10 s is a 503 (a scraper's own timeout is
//!   shorter; the listener never holds a connection open on a stuck render);
//! - `CompressionLayer`: `/metrics` gzipped when the scraper asks (Prometheus does);
//! - `SetResponseHeaderLayer`: `Cache-Control: no-store` on every answer;
//! - `TraceLayer`: a span per request, at debug level (probes every few seconds would
//!   drown the info log).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::body::{full, Body};
use crate::reload::Live;

/// The longest an admin answer may take, and a client may take to send its request head.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The Prometheus text exposition format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
            _ = &mut shutdown => return Ok(()),
        };
        let svc = TowerToHyperService::new(service(live.clone()));
        tokio::spawn(async move {
            // HTTP/1.1 only, so hyper's header timer runs from the connection's start: a
            // client that sends nothing, or a head slowly, is closed after it.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ANSWER_WITHIN)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The admin endpoints with their layers: a tower service of `http` requests, so tests
/// call it without a socket.
pub fn service<B: http_body::Body + Send + 'static>(
    live: Arc<Live>,
) -> impl tower::Service<
    Request<B>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = impl Into<crate::BoxError>>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            answer(500, "the admin endpoint failed")
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ANSWER_WITHIN,
        ))
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::overriding(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .service_fn(move |req: Request<B>| {
            let live = live.clone();
            async move { Ok::<_, Infallible>(route(&live, req.uri().path())) }
        })
}

fn route(live: &Live, path: &str) -> Response<Body> {
    let g = live.gateway();
    match path {
        "/metrics" => {
            let mut resp = answer(200, g.metrics.render());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
            resp
        }
        "/healthz" => answer(200, "ok"),
        "/readyz" => match g.ready() {
            Ok(()) => answer(200, "ready"),
            Err(e) => answer(503, e),
        },
        _ => answer(404, "not found"),
    }
}

fn answer(status: u16, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
