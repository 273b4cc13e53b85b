//! The floor for the benchmark: a bare hyper reverse proxy built like the gateway's
//! serving loop (one current-thread runtime per core, each accepting on its own
//! `SO_REUSEPORT` socket, and the gateway's per-thread upstream pool), with none of the
//! gateway's layers. What it costs is what hyper and tokio cost; the gateway's distance
//! from it is what its own work costs.
//! Usage: bench_floor LISTEN UPSTREAM_URL

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use redcap_gateway::body::Body;
use redcap_gateway::http_client::{ClientHandle, ClientOptions};
use redcap_gateway::upstream::Target;

#[global_allocator]
static GLOBAL: redcap_gateway::alloc::Mimalloc = redcap_gateway::alloc::Mimalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect("LISTEN");
    let upstream: hyper::Uri = args.next().expect("UPSTREAM_URL").parse().expect("url");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listeners =
        redcap_gateway::server::bind_serving(listen.parse().expect("LISTEN"), cores).expect("bind");
    let opts = ClientOptions {
        ca_file: None,
        connect_timeout: std::time::Duration::from_secs(5),
        pool_idle_timeout: std::time::Duration::from_secs(90),
        pool_max_idle_per_host: 256,
    };
    let tls = ClientHandle::new(&opts).expect("client");
    let target = Target::new(&upstream, tls.tls(), &opts).expect("upstream");
    let path: hyper::Uri = upstream.path().parse().expect("path");
    let threads: Vec<_> = (0..cores)
        .map(|i| {
            let l = listeners[i % listeners.len()].try_clone().expect("clone");
            let target = target.clone();
            let upstream = path.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    let client = target.pool();
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
                                            .send(hyper::Request::from_parts(
                                                parts,
                                                Body::new(Full::new(body)),
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
