//! Prometheus metrics: one registry built at start and injected (tests get their own).
//! Every label comes from a bounded set: configured project names, REDCap's content
//! whitelist, the gateway's actions, decisions and status classes; never user names.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: Histogram,
    pub in_flight: IntGauge,
    /// Open client connections per serving thread (`server.workers` labels at most).
    pub open_connections: IntGaugeVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub redis_errors: IntCounter,
    /// Project metadata fetches (export rights), by project and result.
    pub metadata_refreshes: IntCounterVec,
    /// When each project's metadata copy was fetched (its age is `time() - this`).
    pub metadata_fetched: IntGaugeVec,
    /// Connections closed with a lingering close (`linger.rs`).
    pub lingering_closes: IntCounter,
    /// Connections answered 503 because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Connections closed because no request began within `server.header_read_timeout`.
    pub header_timeouts: IntCounter,
    /// REDCap's 429 answers: its per-IP ban of the gateway's address.
    pub upstream_banned: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("redcap_gateway_requests_total", "Requests handled, by project, REDCap content and action, decision and status class"),
            &["project", "content", "action", "decision", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "redcap_gateway_request_duration_seconds",
                "Time to the response head, by project",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["project"],
        )?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "redcap_gateway_upstream_duration_seconds",
                "Time REDCap took to start answering",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let in_flight = IntGauge::new(
            "redcap_gateway_requests_in_flight",
            "Requests being handled",
        )?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "redcap_gateway_open_connections",
                "Open client connections, by serving thread",
            ),
            &["worker"],
        )?;
        let bytes_in = IntCounter::new(
            "redcap_gateway_request_bytes_total",
            "Request body bytes received",
        )?;
        let bytes_out = IntCounter::new(
            "redcap_gateway_response_bytes_total",
            "Response body bytes sent",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "redcap_gateway_rate_limited_total",
                "Calls refused by a rate or concurrency limit",
            ),
            &["limit"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "redcap_gateway_auth_failures_total",
                "Refused credentials, by reason",
            ),
            &["reason"],
        )?;
        let jwks_refreshes = IntCounterVec::new(
            Opts::new(
                "redcap_gateway_jwks_refreshes_total",
                "JWKS fetches, by result",
            ),
            &["result"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "redcap_gateway_reloads_total",
                "Reloads of the config (what=config), project token files (token, one per changed token) and the personal-token file (personal_tokens), by result (ok, error)",
            ),
            &["what", "result"],
        )?;
        let redis_errors = IntCounter::new(
            "redcap_gateway_redis_errors_total",
            "Rate-limit calls to Redis that failed",
        )?;
        let metadata_refreshes = IntCounterVec::new(
            Opts::new(
                "redcap_gateway_metadata_refreshes_total",
                "Fetches of a project's metadata for export rights, by project and result (ok, error)",
            ),
            &["project", "result"],
        )?;
        let metadata_fetched = IntGaugeVec::new(
            Opts::new(
                "redcap_gateway_metadata_fetched_timestamp_seconds",
                "Unix time of the project's metadata copy in use (its age: time() - this)",
            ),
            &["project"],
        )?;
        let lingering_closes = IntCounter::new(
            "redcap_gateway_lingering_closes_total",
            "Client connections the gateway closed while the client might still be sending: read and discarded for at most limits.linger_time and limits.linger_bytes first",
        )?;
        registry.register(Box::new(lingering_closes.clone()))?;
        let connections_refused = IntCounter::new(
            "redcap_gateway_connections_refused_total",
            "Client connections answered 503 and closed because server.max_connections were open",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let header_timeouts = IntCounter::new(
            "redcap_gateway_header_timeouts_total",
            "Client connections closed because no request began within server.header_read_timeout",
        )?;
        registry.register(Box::new(header_timeouts.clone()))?;
        let upstream_banned = IntCounter::new(
            "redcap_gateway_upstream_banned_total",
            "Calls REDCap answered 429: its per-IP rate limit banned the gateway's address, for every user",
        )?;
        registry.register(Box::new(upstream_banned.clone()))?;
        registry.register(Box::new(metadata_refreshes.clone()))?;
        registry.register(Box::new(metadata_fetched.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(bytes_in.clone()))?;
        registry.register(Box::new(bytes_out.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(jwks_refreshes.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            upstream_duration,
            in_flight,
            open_connections,
            bytes_in,
            bytes_out,
            rate_limited,
            auth_failures,
            jwks_refreshes,
            config_reloads,
            redis_errors,
            metadata_refreshes,
            metadata_fetched,
            lingering_closes,
            connections_refused,
            header_timeouts,
            upstream_banned,
        })
    }

    /// Registers collectors owned elsewhere (the audit writer's counters).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        let _ = self.registry.register(c);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
