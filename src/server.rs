//! Building the gateway from a validated config, and serving it on a bound listener.
//! `run` takes the listener and a shutdown future, so tests bind 127.0.0.1:0.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::auth::jwt::{Issuer, JwtVerifier};
use crate::auth::personal::PersonalTokens;
use crate::body::{boxed, full};
use crate::config::Config;
use crate::context::PeerAddr;
use crate::forward::api_uri;
use crate::http_client::ClientHandle;
use crate::layers::parse::ParseLimits;
use crate::policy::{Policy, ProjectPolicy};
use crate::ratelimit::RateLimits;
use crate::redcap::PhpLimits;
use crate::telemetry::Metrics;
use crate::vault::{TokenSource, Vault};

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_concurrent: usize,
    pub parse: ParseLimits,
    pub max_header_bytes: usize,
}

/// Everything the request path needs, built once from the config.
pub struct Gateway {
    pub config: Config,
    pub jwt: Arc<JwtVerifier>,
    pub vault: Arc<Vault>,
    pub personal: Option<Arc<PersonalTokens>>,
    pub policy: Arc<Policy>,
    pub client: ClientHandle,
    pub api: Uri,
    pub upstream_timeout: Duration,
    pub limits: Limits,
    pub draining: Arc<AtomicBool>,
    /// Requests in flight across all serving threads (`limits.max_concurrent_requests`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub limits_rt: Arc<RateLimits>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Gateway {
    /// Builds from a config; `extra_issuers` adds issuers made in code (the dev issuer).
    /// Every problem is reported at once, before any socket is bound.
    pub async fn build(config: Config, extra_issuers: Vec<Issuer>) -> Result<Gateway, Vec<String>> {
        let mut errs = Vec::new();
        let up = &config.upstream;
        let client = ClientHandle::new(&up.client_options());
        let client = match client {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(format!("upstream: {e}"));
                None
            }
        };
        let api = api_uri(&up.url).map_err(|e| errs.push(e)).ok();

        let mut issuers = extra_issuers;
        for (i, cfg) in config.auth.issuers.iter().enumerate() {
            match Issuer::new(cfg, client.clone()) {
                Ok(iss) => issuers.push(iss),
                Err(e) => errs.push(format!("auth.issuers[{i}]: {e}")),
            }
        }
        let sources = config
            .projects
            .iter()
            .filter_map(|(name, p)| match TokenSource::parse(&p.token) {
                Ok(s) => Some((name.clone(), s)),
                Err(e) => {
                    errs.push(format!("projects.{name}.token: {e}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        let vault = Vault::load(sources).map_err(|e| errs.extend(e)).ok();
        let personal = match &config.personal_tokens {
            Some(pt) => match PersonalTokens::load(pt) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    errs.push(format!("personal_tokens.file: {e}"));
                    None
                }
            },
            None => None,
        };
        let mut policies = HashMap::new();
        for (name, p) in &config.projects {
            match ProjectPolicy::from_config(p) {
                Ok(pp) => {
                    policies.insert(name.clone(), pp);
                }
                Err(e) => errs.push(format!("projects.{name}.grants: {e}")),
            }
        }
        let metrics = Metrics::new()
            .map_err(|e| errs.push(format!("metrics: {e}")))
            .ok();
        let audit = Audit::start(&config.audit)
            .map_err(|e| errs.push(format!("audit: {e}")))
            .ok();
        let (Some(client), Some(api), Some(vault), Some(metrics), Some(audit), true) =
            (client, api, vault, metrics, audit, errs.is_empty())
        else {
            return Err(errs);
        };
        metrics.register(Box::new(audit.writes_ok.clone()));
        metrics.register(Box::new(audit.writes_failed.clone()));
        let metrics = Arc::new(metrics);
        let limits_rt = RateLimits::new(&config.rate_limit, metrics.clone())
            .await
            .map_err(|e| vec![format!("rate_limit: {e}")])?;

        let jwt = Arc::new(JwtVerifier::new(issuers));
        let mut tasks = Vec::new();
        for iss in jwt.issuers() {
            if iss.key_count() == 0 {
                match iss.refresh_now().await {
                    Ok(n) => tracing::info!(issuer = %iss.issuer, keys = n, "JWKS loaded"),
                    Err(e) => {
                        tracing::warn!(issuer = %iss.issuer, error = %e, "JWKS not loaded yet; will retry")
                    }
                }
                let iss = iss.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        // The IdP's Cache-Control (bounded) or the configured interval.
                        tokio::time::sleep(iss.next_refresh()).await;
                        if let Err(e) = iss.refresh_now().await {
                            tracing::warn!(issuer = %iss.issuer, error = %e, "periodic JWKS refresh failed; keeping last good keys");
                        }
                    }
                }));
            }
        }
        let vault = Arc::new(vault);
        tasks.push(vault.spawn_reloader(config.vault.reload_interval.0));
        if let Some(p) = &personal {
            tasks.push(p.spawn_reloader(config.vault.reload_interval.0));
        }
        let l = &config.limits;
        let limits = Limits {
            max_concurrent: l.max_concurrent_requests,
            max_header_bytes: l.max_header_bytes.0 as usize,
            parse: ParseLimits {
                php: PhpLimits {
                    max_input_vars: l.max_input_vars,
                    max_input_nesting_level: l.max_input_nesting_level,
                },
                max_urlencoded: l.max_urlencoded_body.0,
                max_multipart: l.max_multipart_body.0,
                max_multipart_field: l.max_multipart_field.0 as usize,
                body_timeout: l.body_timeout.0,
            },
        };
        let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent));
        Ok(Gateway {
            upstream_timeout: config.upstream.request_timeout.0,
            config,
            jwt,
            vault,
            personal,
            policy: Arc::new(Policy::new(policies)),
            client,
            api,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
            in_flight,
            metrics,
            audit,
            limits_rt: Arc::new(limits_rt),
            tasks,
        })
    }

    pub fn project_names(&self) -> Vec<String> {
        self.config.projects.keys().cloned().collect()
    }

    /// Ready when every project has a token, every issuer has keys and the audit log
    /// can be written.
    pub fn ready(&self) -> Result<(), String> {
        if !self.audit.healthy() {
            return Err("the audit log cannot be written".into());
        }
        if !self.vault.ready() {
            return Err("a project token is not loaded".into());
        }
        if let Some(i) = self.jwt.issuers().find(|i| i.key_count() == 0) {
            return Err(format!("issuer {} has no keys loaded", i.issuer));
        }
        Ok(())
    }
}

/// Serves the gateway until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish within the configured grace period.
///
/// Thread per core: `server.workers` threads each run a current-thread runtime that
/// accepts on the shared listening socket and serves its connections with its own copy of
/// the stack and its own upstream pool, so a request is never handed between threads
/// (what nginx's workers do). Shared state (policy, vault, audit, limits, metrics) is
/// behind `Arc`s.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let workers = gateway
        .config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listener = listener.into_std()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut done = Vec::new();
    for i in 0..workers {
        let l = listener.try_clone()?;
        let g = gateway.clone();
        let mut stopped = stopped.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(serve_thread(l, g, async move {
                            let _ = stopped.wait_for(|v| *v).await;
                        }))
                    });
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    drop(listener);
    shutdown.await;
    gateway.draining.store(true, Ordering::SeqCst);
    let grace = gateway.config.server.shutdown_grace.0;
    tracing::info!(grace_secs = grace.as_secs(), "draining in-flight requests");
    let _ = stop.send(true);
    let mut result = Ok(());
    for rx in done {
        if let Ok(Err(e)) = rx.await {
            result = Err(e);
        }
    }
    // Every record queued by the drained requests reaches the log before we return.
    if let Err(e) = gateway.audit.flush().await {
        tracing::error!(error = %e, "audit log not flushed at shutdown");
    }
    result
}

/// One serving thread: accept, serve, and on shutdown drain within the grace period.
async fn serve_thread(
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let client = ClientHandle::new(&gateway.config.upstream.client_options())
        .map_err(std::io::Error::other)?;
    let stack = crate::stack::build(&gateway, client);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(gateway.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stack = stack.clone();
        let peer = PeerAddr::new(peer);
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(boxed);
            req.extensions_mut().insert(peer.clone());
            stack.serve(req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(gateway.config.server.shutdown_grace.0) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// The admin listener: `/healthz` (alive) and `/readyz` (tokens and keys loaded).
pub async fn run_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
            _ = &mut shutdown => return Ok(()),
        };
        let g = gateway.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let g = g.clone();
            async move {
                let (status, text) = match req.uri().path() {
                    "/metrics" => (200, g.metrics.render()),
                    "/healthz" => (200, "ok".to_string()),
                    "/readyz" => match g.ready() {
                        Ok(()) => (200, "ready".to_string()),
                        Err(e) => (503, e),
                    },
                    _ => (404, "not found".to_string()),
                };
                let mut resp = http::Response::new(full(text));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
