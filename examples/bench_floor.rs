//! The floor for the benchmark: a bare hyper reverse proxy built like the gateway's
//! serving loop (one current-thread runtime per core, a pooled hyper client per thread),
//! with none of the gateway's layers. What it costs is what hyper and tokio cost; the
//! gateway's distance from it is what its own work costs.
//! Usage: bench_floor LISTEN UPSTREAM_URL

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect("LISTEN");
    let upstream: hyper::Uri = args.next().expect("UPSTREAM_URL").parse().expect("url");
    let listener = std::net::TcpListener::bind(&listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let l = listener.try_clone().expect("clone");
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    let client: Client<_, Full<bytes::Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    loop {
                        let Ok((stream, _)) = l.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let client = client.clone();
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let svc =
                                service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                    let client = client.clone();
                                    let upstream = upstream.clone();
                                    async move {
                                        let (mut parts, body) = req.into_parts();
                                        let body = body
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        parts.uri = upstream;
                                        let resp = client
                                            .request(hyper::Request::from_parts(
                                                parts,
                                                Full::new(body),
                                            ))
                                            .await;
                                        Ok::<_, Infallible>(match resp {
                                            Ok(r) => r.map(|b| b.boxed()),
                                            Err(_) => hyper::Response::builder()
                                                .status(502)
                                                .body(
                                                    Full::new(bytes::Bytes::new())
                                                        .map_err(|e| match e {})
                                                        .boxed(),
                                                )
                                                .unwrap(),
                                        })
                                    }
                                });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
