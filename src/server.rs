//! Serving a gateway (`gateway.rs` builds it) on bound listeners, one per serving thread,
//! with connections balanced over the threads (`admin.rs` serves the admin endpoints).
//! `run` takes the listener and a shutdown future, so tests bind 127.0.0.1:0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::boxed;
use crate::context::PeerAddr;
use crate::layers::step::{Handler, Pipeline};
use crate::reload::Live;
use crate::telemetry::Metrics;

pub use crate::gateway::Gateway;

/// How many serving threads: `server.workers`, else one per core.
pub fn workers(s: &crate::config::ServerConfig) -> usize {
    s.workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The serving sockets for `addr`: one per serving thread, bound together with
/// `SO_REUSEPORT`, so the kernel spreads new connections over the threads. With one
/// shared socket, the thread that wakes first accepts the whole backlog: a burst of
/// connections (a client pool opening) can land on one thread and leave the other cores
/// idle for as long as those connections live. Port 0 picks one port for all. Where
/// `SO_REUSEPORT` is not available, one socket is shared by every thread.
///
/// `SO_REUSEPORT` would also let a second process of the same user bind the same port
/// and silently take part of the connections (a forgotten old instance, with another
/// config). So the address is first bound without it: if anything listens there, that
/// fails with "address in use", as a plain bind would.
pub fn bind_serving(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |addr: SocketAddr, reuse_port: bool| -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        #[cfg(not(unix))]
        let _ = reuse_port;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let group = cfg!(unix) && count > 1;
    let addr = if group {
        // The probe: a plain bind, released at once (port 0 picks the group's port).
        let probe = open(addr, false)?;
        probe.local_addr()?
    } else {
        addr
    };
    let mut all = vec![open(addr, group)?];
    if group {
        for _ in 1..count {
            match open(addr, true) {
                Ok(l) => all.push(l),
                Err(e) => {
                    tracing::warn!(error = %e, "SO_REUSEPORT unavailable; the serving threads share one socket");
                    all.truncate(1);
                    break;
                }
            }
        }
    }
    Ok(all)
}

/// Serves the gateway until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish within the configured grace period.
///
/// Thread per core: `server.workers` threads each run a current-thread runtime that
/// accepts on its own socket (`bind_serving`) and serves its connections with its own
/// copy of the stack and its own upstream pool, so a request is never handed between
/// threads (what nginx's workers do). Shared state (policy, vault, audit, limits,
/// metrics) is behind `Arc`s.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_live(
        vec![listener.into_std()?],
        Live::new(gateway, None),
        shutdown,
    )
    .await
}

/// `run` for a gateway that reloads: each serving thread follows `live`. Thread `i`
/// accepts on `listeners[i]`; with fewer sockets than threads, they share them.
pub async fn run_live(
    listeners: Vec<std::net::TcpListener>,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Held only for what reloads keep (restart-only settings, the drain flag, the audit
    // log), so a replaced gateway is dropped and its background tasks stop.
    let (workers, grace, draining, audit, metrics) = {
        let g = live.gateway();
        let s = &g.config.server;
        (
            workers(s),
            s.shutdown_grace.0,
            g.draining.clone(),
            g.audit.clone(),
            g.metrics.clone(),
        )
    };
    if listeners.is_empty() {
        return Err(std::io::Error::other("no listening socket"));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (balance, inboxes) = Balance::new(workers, &metrics);
    drop(metrics);
    let mut done = Vec::new();
    for (i, inbox) in inboxes.into_iter().enumerate() {
        let balance = balance.clone();
        let l = listeners[i % listeners.len()].try_clone()?;
        let g = live.clone();
        let mut stopped = stopped.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        let seat = Seat {
                            index: i,
                            balance,
                            inbox,
                        };
                        rt.block_on(serve_thread(l, seat, g, async move {
                            let _ = stopped.wait_for(|v| *v).await;
                        }))
                    });
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    drop(listeners);
    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    tracing::info!(grace_secs = grace.as_secs(), "draining in-flight requests");
    let _ = stop.send(true);
    let mut result = Ok(());
    for rx in done {
        if let Ok(Err(e)) = rx.await {
            result = Err(e);
        }
    }
    // Every record queued by the drained requests reaches the log before we return.
    if let Err(e) = audit.flush().await {
        tracing::error!(error = %e, "audit log not flushed at shutdown");
    }
    result
}

/// A new connection handed from the thread that accepted it to another.
type Handed = (std::net::TcpStream, SocketAddr);

/// Least-connections across the serving threads. Whichever thread accepts a connection
/// (the kernel picks the socket by a hash of the addresses), it goes to the thread with
/// the fewest open connections, the accepting one on a tie. By hash alone, 4 client
/// connections land all on one of 2 threads one time in 8 (seen in the benchmark's
/// moderate runs: one thread idle, p99 up); with one shared socket, the first thread to
/// wake took a whole burst. A handoff costs one cross-thread wake per connection, never
/// per request.
struct Balance {
    /// Open connections per thread: `redcap_gateway_open_connections{worker}`.
    open: Vec<prometheus::IntGauge>,
    inboxes: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
}

impl Balance {
    fn new(
        n: usize,
        metrics: &Metrics,
    ) -> (
        Arc<Balance>,
        Vec<tokio::sync::mpsc::UnboundedReceiver<Handed>>,
    ) {
        let (senders, receivers) = (0..n)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let open = (0..n)
            .map(|i| {
                let g = metrics
                    .open_connections
                    .with_label_values(&[&i.to_string()]);
                g.set(0);
                g
            })
            .collect();
        (
            Arc::new(Balance {
                open,
                inboxes: senders,
            }),
            receivers,
        )
    }

    /// Connections open on all threads.
    fn total(&self) -> i64 {
        self.open.iter().map(|g| g.get()).sum()
    }

    /// The thread that takes a connection accepted by thread `me`; counted as open there.
    fn pick(&self, me: usize) -> usize {
        let load = |i: usize| self.open[i].get();
        let mut best = me;
        for i in 0..self.open.len() {
            if load(i) < load(best) {
                best = i;
            }
        }
        self.open[best].inc();
        best
    }
}

/// A serving thread's place in the balance.
struct Seat {
    index: usize,
    balance: Arc<Balance>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handed>,
}

/// Counts a connection as open on its thread until it ends (or its task is dropped).
struct OpenConnection(Arc<Balance>, usize);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open[self.1].dec();
    }
}

/// A serving thread's stack, rebuilt (with a fresh upstream pool) when the live gateway's
/// generation moves on; requests in flight keep the chain they started on.
struct ThreadStack<H> {
    generation: AtomicU64,
    chain: ArcSwap<H>,
}

impl<H: Handler> ThreadStack<H> {
    fn current(&self, live: &Live, build: impl Fn(&Gateway) -> Arc<H>) -> Arc<H> {
        let generation = live.generation();
        if generation != self.generation.load(Ordering::Relaxed) {
            self.chain.store(build(&live.gateway()));
            self.generation.store(generation, Ordering::Relaxed);
        }
        self.chain.load_full()
    }
}

/// One serving thread: accept, serve (or hand to a less busy thread), and on shutdown
/// drain within the grace period.
async fn serve_thread(
    listener: std::net::TcpListener,
    mut seat: Seat,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    // The generation first: the gateway loaded after it is at least that new.
    let generation = live.generation();
    let gateway = live.gateway();
    // Each thread has its own upstream pool; the TLS setup is the gateway's.
    let build = |g: &Gateway| crate::stack::build(g, g.upstream.pool()).into_chain();
    let first = build(&gateway);
    let stacks = Arc::new(ThreadStack {
        generation: AtomicU64::new(generation),
        chain: ArcSwap::new(first),
    });
    let head_timeout = gateway.config.server.header_read_timeout.0;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(
            gateway.limits.max_header_bytes.max(8192) + crate::layers::limits::HEAD_HEADROOM,
        );
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let grace = gateway.config.server.shutdown_grace.0;
    let linger = crate::linger::Linger {
        time: gateway.limits.linger_time,
        bytes: gateway.limits.linger_bytes,
        count: gateway.metrics.lingering_closes.clone(),
    };
    let max_connections = gateway.config.server.max_connections;
    let refused = gateway.metrics.connections_refused.clone();
    let timed_out = gateway.metrics.header_timeouts.clone();
    drop(gateway);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let me = seat.index;
    let serve = |stream: tokio::net::TcpStream, peer: SocketAddr| {
        let _ = stream.set_nodelay(true);
        let open = OpenConnection(seat.balance.clone(), me);
        let stream = crate::linger::LingeringStream::new(stream, linger.clone());
        if seat.balance.total() > max_connections as i64 {
            refused.inc();
            let conn = builder
                .serve_connection(TokioIo::new(stream), service_fn(too_many(max_connections)))
                .into_owned();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(head_timeout, conn).await;
                drop(open);
            });
            return;
        }
        let stacks = stacks.clone();
        let live = live.clone();
        let peer = PeerAddr::new(peer);
        let started = Arc::new(AtomicBool::new(false));
        let begun = started.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            begun.store(true, Ordering::Relaxed);
            let mut req = req.map(boxed);
            req.extensions_mut().insert(peer.clone());
            Pipeline::serve_owned(stacks.current(&live, build), req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let timed_out = timed_out.clone();
        tokio::spawn(async move {
            if let Err(e) = first_request_within(conn, &started, head_timeout, &timed_out).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(open);
        });
    };
    let adopt = |(stream, peer): Handed| match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => Some((s, peer)),
        Err(e) => {
            seat.balance.open[me].dec();
            tracing::warn!(error = %e, "a handed connection could not be adopted");
            None
        }
    };
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
            Some(handed) = seat.inbox.recv() => {
                if let Some((s, p)) = adopt(handed) {
                    serve(s, p);
                }
                continue;
            }
            _ = &mut shutdown => break,
        };
        let to = seat.balance.pick(me);
        if to == me {
            serve(stream, peer);
            continue;
        }
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                seat.balance.open[to].dec();
                tracing::warn!(error = %e, "a connection could not be handed over");
                continue;
            }
        };
        if let Err(tokio::sync::mpsc::error::SendError(back)) =
            seat.balance.inboxes[to].send((stream, peer))
        {
            // That thread has stopped taking connections (shutting down): serve it here.
            seat.balance.open[to].dec();
            seat.balance.open[me].inc();
            if let Some((s, p)) = adopt(back) {
                serve(s, p);
            }
        }
    }
    drop(listener);
    // Connections handed over before the stop are served (and drained) too.
    seat.inbox.close();
    while let Ok(handed) = seat.inbox.try_recv() {
        if let Some((s, p)) = adopt(handed) {
            serve(s, p);
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// The answer on a connection over `server.max_connections`: 503 in REDCap's shape (in
/// the default format: the request is not read), and the connection closed after it.
fn too_many(
    max: usize,
) -> impl Fn(
    http::Request<hyper::body::Incoming>,
)
    -> std::future::Ready<Result<http::Response<crate::body::Body>, std::convert::Infallible>>
       + Clone {
    move |_| {
        let err = crate::error::GatewayError::TooManyConnections(max);
        let mut resp = crate::layers::rescue::error_response(&err, Default::default());
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        std::future::ready(Ok(resp))
    }
}

/// Serves a connection, closing it if no request has begun within `timeout`.
/// hyper-util's auto connection reads the first bytes (HTTP/1.1 or HTTP/2's preface?)
/// with no timer, and hyper's header timer starts only once it knows: a client that
/// connects and sends nothing, or part of the preface, would hold its connection and task
/// for as long as it likes. After the first request, hyper's own timer bounds each head
/// and each idle wait between requests on HTTP/1.1.
async fn first_request_within<E>(
    conn: impl Future<Output = Result<(), E>>,
    started: &AtomicBool,
    timeout: Duration,
    timed_out: &prometheus::IntCounter,
) -> Result<(), E> {
    tokio::pin!(conn);
    tokio::select! {
        ended = &mut conn => ended,
        () = tokio::time::sleep(timeout) => {
            if started.load(Ordering::Relaxed) {
                conn.await
            } else {
                tracing::debug!("no request within the header read timeout: closed");
                timed_out.inc();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group shares one port, the kernel spreads connections over its sockets, and
    /// nothing else can bind the port while it listens, not even another group.
    #[cfg(unix)]
    #[test]
    fn serving_sockets_share_a_port_and_keep_it() {
        let group = bind_serving("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(group.len(), 2);
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr);
        let clients: Vec<_> = (0..24)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let accepted: Vec<usize> = group
            .iter()
            .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        assert!(
            accepted.iter().all(|&n| n > 0),
            "both sockets accept: {accepted:?}"
        );

        let again = bind_serving(addr, 2).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(plain.kind(), std::io::ErrorKind::AddrInUse);
        drop(group);
        drop(clients);
        assert!(bind_serving(addr, 2).is_ok(), "free again once closed");
    }
}
