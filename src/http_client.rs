//! The pooled HTTP(S) client used for REDCap and for JWKS: rustls with the system roots
//! plus an optional CA file; plain HTTP only where the config allowed it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::{collect_limited, empty, Body};

pub type HttpClient = ClientHandle;

#[derive(Clone)]
pub struct ClientHandle {
    pub inner: Client<HttpsConnector<HttpConnector>, Body>,
}

pub struct ClientOptions<'a> {
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl ClientHandle {
    pub fn new(opts: &ClientOptions<'_>) -> Result<ClientHandle, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = opts.ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading CA file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("parsing CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificates", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .build(https);
        Ok(ClientHandle { inner })
    }

    /// GET a small document (a JWKS), bounded in size and time.
    pub async fn get_bytes(
        &self,
        url: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            collect_limited(resp.into_body(), limit)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }
}
