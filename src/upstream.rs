//! The connections to REDCap: a serving thread's own pool of HTTP/1.1 connections, made
//! with hyper's connection-level client.
//!
//! hyper_util's pooled client does the same job for any number of hosts and protocols,
//! and pays for it on every request: a checkout future, a pool lock and map lookup, a
//! `Pooled` wrapper and its return path (about 7,700 instructions a request, a fifth of
//! a bare proxy's: `bench/instructions`). The gateway talks to one host, over HTTP/1.1,
//! from one thread per pool, so its pool is a stack of idle senders.
//!
//! - A connection goes back to the pool when its response body has been read to the end;
//!   one dropped earlier is closed with it (hyper cannot reuse it).
//! - A request that a pooled connection closed before sending (REDCap's keep-alive
//!   timeout) is sent again on another connection, as hyper_util does; one that was sent
//!   is never repeated.
//! - Idle connections are closed after `pool_idle_timeout`, and at most
//!   `pool_max_idle_per_host` are kept.
//! - `https` is TLS through rustls (the gateway's roots and CA file), offering only
//!   HTTP/1.1 by ALPN; `http` is plain TCP (the config allows it only when told to).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::http_client::ClientOptions;

/// Why a request did not get a response from REDCap.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: DNS, TCP or TLS failed, or timed out.
    #[error("connecting to REDCap: {0}")]
    Connect(String),
    /// The connection failed while the request was sent or the answer read (the cause
    /// may be the request body's own error).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A serving thread's connections to one REDCap. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    idle: Mutex<Vec<Idle>>,
}

/// Where and how to connect to REDCap: checked once per config, shared by the pools of
/// every serving thread. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Target(Arc<TargetInner>);

struct TargetInner {
    /// `host` for connecting (without an IPv6 address's brackets) and its port.
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct Idle {
    conn: SendRequest<Body>,
    since: Instant,
}

impl Target {
    /// REDCap at `url`'s host (`http` or `https`). `tls` is the gateway's rustls setup
    /// (system roots plus `upstream.ca_file`); ALPN is set to HTTP/1.1 here.
    pub fn new(
        url: &Uri,
        tls: &rustls::ClientConfig,
        opts: &ClientOptions<'_>,
    ) -> Result<Target, String> {
        let raw_host = url.host().ok_or("the upstream URL has no host")?;
        let host = raw_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the upstream URL must be http or https".into()),
        };
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut cfg = tls.clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("the upstream host is not a TLS server name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Target(Arc::new(TargetInner {
            host,
            port,
            tls,
            connect_timeout: opts.connect_timeout,
            idle_timeout: opts.pool_idle_timeout,
            max_idle: opts.pool_max_idle_per_host,
        })))
    }

    /// A new, empty pool: one per serving thread, so a connection and its task stay on
    /// the thread that uses them. Starts the pool's idle reaper when called on a runtime.
    pub fn pool(&self) -> Upstream {
        let inner = Arc::new(Inner {
            target: self.clone(),
            idle: Mutex::new(Vec::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&inner)));
        }
        Upstream { inner }
    }
}

impl Upstream {
    /// Sends `req` (its URI in origin form, `/api/`, and its `Host` header set) and
    /// returns REDCap's response head; the body streams from the connection.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.inner.checkout().await {
                Some(c) => (c, true),
                // Boxed: connecting (TCP, TLS) is rare and its future is large; inline,
                // it would grow every request's future, which is moved into place level
                // by level down the handler chain.
                None => (Box::pin(self.inner.connect()).await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        body,
                        conn: Some((conn, Arc::downgrade(&self.inner))),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection was closing. Once more on another.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// Idle connections now (tests).
    pub fn idle(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and within the idle
    /// timeout; closed and expired ones are dropped on the way.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if conn.is_closed() || since.elapsed() >= self.target.0.idle_timeout {
                continue;
            }
            // Ready at once unless the connection is still finishing the last response.
            if conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    fn put_back(&self, conn: SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.target.0.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let t = &*self.target.0;
        let connecting = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            match &t.tls {
                None => handshake(tcp).await,
                Some((tls, name)) => {
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| SendError::Connect(format!("TLS: {e}")))?;
                    handshake(stream).await
                }
            }
        };
        tokio::time::timeout(t.connect_timeout, connecting)
            .await
            .map_err(|_| SendError::Connect(format!("timed out after {:?}", t.connect_timeout)))?
    }
}

/// HTTP/1.1 over `io`; the connection is driven by a task on this thread's runtime.
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(send)
}

/// Closes the connections idle for longer than the idle timeout; ends with the pool.
async fn reap(pool: Weak<Inner>) {
    let every = match pool.upgrade() {
        Some(p) => (p.target.0.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        let timeout = p.target.0.idle_timeout;
        p.lock()
            .retain(|i| !i.conn.is_closed() && i.since.elapsed() < timeout);
    }
}

/// REDCap's response body; its connection returns to the pool when it has been read to
/// the end.
pub struct PooledBody {
    body: Incoming,
    conn: Option<(SendRequest<Body>, Weak<Inner>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.conn.take() {
            if let Some(pool) = pool.upgrade() {
                pool.put_back(conn);
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.conn.is_some())
            .finish()
    }
}

impl Drop for PooledBody {
    /// A body that was complete before anyone read it (no content) frees its connection.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => this.release(),
            std::task::Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            std::task::Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
