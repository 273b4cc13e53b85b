//! Per-request facts that outer layers (rescue, audit, metrics) need after inner layers
//! learned them. Inner layers fill it in; it travels in the request's extensions.

use std::sync::{Arc, Mutex, OnceLock};

use crate::auth::Principal;
use crate::redcap::ReturnFormat;

/// A summary of the call, safe to log (no data, no token).
#[derive(Debug, Clone)]
pub struct CallSummary {
    /// One of REDCap's contents (`RedcapCall::content`), so never a copy.
    pub content: &'static str,
    pub action: &'static str,
    pub format: &'static str,
    pub return_format: &'static str,
    pub users: Vec<String>,
}

#[derive(Debug, Default)]
pub struct RequestContext {
    pub project: OnceLock<Arc<str>>,
    pub principal: OnceLock<Arc<Principal>>,
    pub call: OnceLock<CallSummary>,
    error_format: Mutex<Option<ReturnFormat>>,
    /// The policy decision (rule, reasons, users and rights changed).
    pub decision: OnceLock<crate::policy::Decision>,
    /// The error kind (and auth failure reason) when the request was refused.
    pub error: OnceLock<(&'static str, Option<&'static str>)>,
    pub upstream_status: OnceLock<u16>,
    pub request_id: OnceLock<String>,
    pub client: OnceLock<PeerAddr>,
    pub bytes_in: OnceLock<u64>,
    /// The request's places under the in-flight cap and the concurrency caps. The context
    /// lives until the response body has been sent (the final audit record's guard holds
    /// it), so a long export keeps its place while it streams, not only until its head.
    pub in_flight: OnceLock<tokio::sync::OwnedSemaphorePermit>,
    /// A restricted export's effective rights and the field set asked of REDCap.
    pub export: OnceLock<ExportAudit>,
    pub concurrency: OnceLock<crate::ratelimit::Permit>,
    /// A DAG-scoped call: the DAGs, and the rows the response filter dropped.
    pub dag_scope: OnceLock<DagAudit>,
}

/// What the audit record says of a DAG-scoped call.
#[derive(Debug, Default)]
pub struct DagAudit {
    /// `site_a,site_b`.
    pub dags: String,
    /// Rows of other DAGs the response filter dropped (set when the answer has ended).
    pub rows_dropped: std::sync::atomic::AtomicU64,
}

impl RequestContext {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The request's context, created (and attached) on first use, so each layer works
    /// alone as well as in the stack.
    pub fn of<B>(req: &mut http::Request<B>) -> Arc<Self> {
        if let Some(c) = req.extensions().get::<Arc<Self>>() {
            return c.clone();
        }
        let c = Self::new();
        req.extensions_mut().insert(c.clone());
        c
    }

    /// The format errors are answered in; JSON until the body says otherwise.
    pub fn error_format(&self) -> ReturnFormat {
        self.error_format
            .lock()
            .map(|g| g.unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn set_error_format(&self, f: ReturnFormat) {
        if let Ok(mut g) = self.error_format.lock() {
            *g = Some(f);
        }
    }
}

/// What the audit record says of a restricted export.
#[derive(Debug, Clone)]
pub struct ExportAudit {
    /// `deidentified; consent=none`.
    pub rights: String,
    /// The fields asked of REDCap, or `sha256:<hex> (<n> fields)` past 512 characters.
    pub fields: String,
    /// Named fields and instruments the rights removed.
    pub dropped: Vec<String>,
}

impl ExportAudit {
    pub fn new(rights: &crate::policy::ExportRights, fields: &str, dropped: Vec<String>) -> Self {
        let fields = if fields.len() <= 512 {
            fields.to_string()
        } else {
            use sha2::Digest;
            let h = sha2::Sha256::digest(fields.as_bytes());
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex} ({} fields)", fields.split(',').count())
        };
        ExportAudit {
            rights: rights.describe(),
            fields,
            dropped,
        }
    }
}

/// The peer's address, set by the server for each connection, with its IP as the
/// `X-Forwarded-For` value sent upstream (formatted once per connection).
#[derive(Debug, Clone)]
pub struct PeerAddr(pub std::net::SocketAddr, pub http::HeaderValue);

impl PeerAddr {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let ip = http::HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        PeerAddr(addr, ip)
    }
}
