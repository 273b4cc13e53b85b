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
use crate::config::UpstreamConfig;

pub type HttpClient = ClientHandle;

#[derive(Clone)]
pub struct ClientHandle {
    pub inner: Client<HttpsConnector<HttpConnector>, Body>,
    /// The TLS setup (roots loaded once), for the upstream pools (`upstream::Target`).
    tls: rustls::ClientConfig,
}

pub struct ClientOptions<'a> {
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl<'a> ClientOptions<'a> {
    /// The options `[upstream]` sets (used for REDCap and the IdPs alike).
    pub fn of(up: &'a UpstreamConfig) -> ClientOptions<'a> {
        ClientOptions {
            ca_file: up.ca_file.as_deref(),
            connect_timeout: up.connect_timeout.0,
            pool_idle_timeout: up.pool_idle_timeout.0,
            pool_max_idle_per_host: up.pool_max_idle_per_host,
        }
    }
}

/// rustls with the system's roots plus the configured CA file.
fn tls_config(opts: &ClientOptions<'_>) -> Result<rustls::ClientConfig, String> {
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
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ClientHandle {
    pub fn new(opts: &ClientOptions<'_>) -> Result<ClientHandle, String> {
        Ok(Self::with_tls(opts, tls_config(opts)?))
    }

    /// The TLS setup (system roots plus the CA file), for the upstream pools.
    pub fn tls(&self) -> &rustls::ClientConfig {
        &self.tls
    }

    fn with_tls(opts: &ClientOptions<'_>, tls: rustls::ClientConfig) -> ClientHandle {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .build(https);
        ClientHandle { inner, tls }
    }

    /// GET a small document (a JWKS, OIDC discovery), bounded in size and time. Returns
    /// the body and the response's Cache-Control max-age, if any.
    pub async fn get_bytes(
        &self,
        url: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<(Bytes, Option<Duration>), String> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let max_age = resp
                .headers()
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(max_age);
            let body = collect_limited(resp.into_body(), limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok((body, max_age))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }
}

impl ClientHandle {
    /// POST a form to REDCap's API (the gateway's own calls, e.g. metadata) and read a
    /// bounded answer. A status other than 200 is an error naming it (REDCap's message
    /// is not echoed: it could quote the request).
    pub async fn post_form(
        &self,
        url: &http::Uri,
        body: Bytes,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let req = http::Request::post(url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(crate::body::full(body))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("REDCap answered HTTP {}", resp.status()));
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

/// `max-age=N` from a Cache-Control value (`no-store`/`no-cache` mean 0).
pub fn max_age(v: &str) -> Option<Duration> {
    for d in v.split(',').map(str::trim) {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="))
        {
            return n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
    }
}
