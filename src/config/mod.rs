//! The gateway's configuration: typed TOML, `${ENV}` references, validated in full before
//! any socket is bound. Every key is documented in `config/gateway.example.toml`.

mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use values::{Dur, Size};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub vault: VaultConfig,
    /// Gateway-issued tokens for clients that cannot send a Bearer header.
    pub personal_tokens: Option<PersonalTokensConfig>,
    /// The sign-in portal (off unless configured): analysts sign in with SSO in a
    /// browser and manage their own personal tokens.
    pub portal: Option<PortalConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// /metrics, /healthz and /readyz live on their own listener.
    pub admin_listen: Option<SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Dur,
    /// How long a client has to send a whole request head, counted from the connection's
    /// start and, on a kept-alive connection, from the end of the last answer: slow heads
    /// (slowloris), silent connections and idle keep-alive connections close after it.
    pub header_read_timeout: Dur,
    /// Client connections open at once, over all serving threads; more are answered 503
    /// and closed. Bounds memory: an idle kept-alive connection holds about 30 KB
    /// (hyper's read and write buffers and the connection's task).
    pub max_connections: usize,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Serving threads, each with its own runtime and upstream connection pool, so a
    /// request never crosses threads (default: one per core).
    pub workers: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            shutdown_grace: Dur(Duration::from_secs(30)),
            header_read_timeout: Dur(Duration::from_secs(30)),
            max_connections: 4096,
            log_format: LogFormat::Text,
            workers: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_urlencoded_body: Size,
    pub max_multipart_body: Size,
    /// The largest non-file field of a multipart body.
    pub max_multipart_field: Size,
    /// PHP's max_input_vars on the REDCap server: bodies with more are rejected.
    pub max_input_vars: usize,
    /// PHP's max_input_nesting_level on the REDCap server.
    pub max_input_nesting_level: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Dur,
    /// Requests handled at once; more are answered 503.
    pub max_concurrent_requests: usize,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: Size,
    /// After an early answer (413, 431, 401 before the body), how long and how much of
    /// what the client still sends is read and discarded before the connection closes,
    /// so that the client can read the answer (a lingering close, as nginx's).
    pub linger_time: Dur,
    pub linger_bytes: Size,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_urlencoded_body: Size(64 << 20),
            max_multipart_body: Size(100 << 20),
            max_multipart_field: Size(16 << 20),
            max_input_vars: 1000,
            max_input_nesting_level: 64,
            body_timeout: Dur(Duration::from_secs(60)),
            max_concurrent_requests: 1024,
            max_header_bytes: Size(64 << 10),
            linger_time: Dur(Duration::from_secs(5)),
            linger_bytes: Size(128 << 20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// REDCap's base URL; the gateway calls `{url}/api/`.
    pub url: String,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time until REDCap starts answering (large exports stream after that).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Longest REDCap may go without sending a byte once its answer has begun; then the
    /// caller's transfer is cut off with an error (a stalled REDCap would hold the
    /// connection and its place under the caps for ever).
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Dur,
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout: Dur,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Plain http:// to a non-loopback host must be allowed explicitly.
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_body_idle_timeout() -> Dur {
    Dur(Duration::from_secs(120))
}
fn default_pool_idle() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_pool_max_idle() -> usize {
    64
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// An OIDC provider (Keycloak, Entra ID, Okta, ...).
    #[default]
    Oidc,
    /// A Kubernetes cluster's service-account token issuer: the user is
    /// `system:serviceaccount:NAMESPACE:NAME`, the groups `system:serviceaccounts` and
    /// `system:serviceaccounts:NAMESPACE`.
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    #[serde(default)]
    pub kind: IssuerKind,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claim naming the user; dotted paths reach nested claims.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim holding groups: an array of strings or a space-separated string.
    pub groups_claim: Option<String>,
    /// Prefix added to every group of this issuer, so two issuers cannot collide.
    #[serde(default)]
    pub group_prefix: String,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_interval: Dur,
    /// Least time between two fetches caused by unknown key ids.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_refresh_cooldown: Dur,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_user_claim() -> String {
    "preferred_username".into()
}
fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_jwks_cooldown() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// How often token files are checked for changes (Kubernetes replaces them).
    pub reload_interval: Dur,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            reload_interval: Dur(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    File,
    Stdout,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenAuditFails {
    /// Keep serving reads (mutating calls are always refused).
    Serve,
    /// Refuse reads too (503).
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// The file, for sink = "file".
    pub path: Option<PathBuf>,
    /// Rotate when the file would pass this size; keep this many rotated files.
    pub max_bytes: Size,
    pub keep: usize,
    /// Key the hash chain with HMAC-SHA256 (verify-audit then needs the key).
    pub hmac_key: Option<crate::secret::Secret>,
    /// fsync intent records before forwarding (flush always happens).
    pub fsync: bool,
    /// What reads do while the sink cannot write.
    pub on_failure_reads: WhenAuditFails,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSink::Stdout,
            path: None,
            max_bytes: Size(100 << 20),
            keep: 10,
            hmac_key: None,
            fsync: false,
            on_failure_reads: WhenAuditFails::Serve,
        }
    }
}

/// A rate: `limit` units per `per`, with bursts up to `burst` (default: limit).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub limit: u32,
    pub per: Dur,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenRedisFails {
    /// Fall back to in-process limits divided by `replicas`.
    Local,
    /// Refuse calls (503) until Redis answers again.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_user: Option<RateConfig>,
    pub per_project: Option<RateConfig>,
    pub per_user_project: Option<RateConfig>,
    /// The cap on everything sent to REDCap, below REDCap's own per-IP ban threshold.
    pub upstream: Option<RateConfig>,
    /// How long a call may wait for room under the upstream cap before 429.
    pub upstream_queue: Dur,
    /// What an import, delete or other change costs (a read costs 1).
    pub mutating_cost: u32,
    /// Calls one user may have in flight at once.
    pub per_user_concurrency: Option<usize>,
    /// Calls in flight to REDCap at once.
    pub upstream_concurrency: Option<usize>,
    /// Share limits across replicas through Redis (redis://host:port/).
    pub redis_url: Option<String>,
    pub redis_timeout: Dur,
    pub on_redis_error: WhenRedisFails,
    /// Replicas sharing the limits (local fallback divides by this).
    pub replicas: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user: None,
            per_project: None,
            per_user_project: None,
            upstream: None,
            upstream_queue: Dur(Duration::from_secs(2)),
            mutating_cost: 5,
            per_user_concurrency: None,
            upstream_concurrency: None,
            redis_url: None,
            redis_timeout: Dur(Duration::from_millis(250)),
            on_redis_error: WhenRedisFails::Local,
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalTokensConfig {
    /// The token file (hashes only); the gateway re-reads it when it changes.
    pub file: PathBuf,
    /// HMAC key for the stored hashes (at least 32 characters); keep it out of the
    /// file, e.g. key = "${REDCAP_GATEWAY_TOKEN_KEY}".
    pub key: crate::secret::Secret,
    /// Longest lifetime `token issue` accepts; tokens without --expires get this.
    #[serde(default = "default_token_lifetime")]
    pub max_lifetime: Dur,
    /// Self-service: a user signed in with SSO gets their own token for a project they
    /// hold a grant on, with `POST /p/{project}/tokens` and their Bearer JWT.
    #[serde(default)]
    pub self_service: bool,
    /// Longest lifetime of a self-issued token; those without `expires` get this.
    #[serde(default = "default_self_service_lifetime")]
    pub self_service_max_lifetime: Dur,
    /// Most unexpired tokens one user may hold for one project (self-service only).
    #[serde(default = "default_self_service_per_user")]
    pub self_service_max_per_user: usize,
}

fn default_token_lifetime() -> Dur {
    Dur(Duration::from_secs(365 * 24 * 3600))
}

fn default_self_service_lifetime() -> Dur {
    Dur(Duration::from_secs(90 * 24 * 3600))
}

fn default_self_service_per_user() -> usize {
    5
}

/// The sign-in portal: an OIDC authorization-code flow (PKCE, state, nonce) against one
/// of `auth.issuers`, a session in an encrypted cookie, pages to get and revoke personal
/// tokens through the same code as the self-service endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// The gateway's address as browsers reach it (`https://gateway.example.edu`); the
    /// redirect URI registered at the IdP is `{public_url}/portal/callback`. Plain http
    /// only on a loopback host (dev).
    pub public_url: String,
    /// The issuer users sign in with: one of `auth.issuers`, whose keys and claims
    /// config (user, groups, prefix) verify the ID token as they verify API JWTs.
    pub issuer: String,
    pub client_id: String,
    /// `env:NAME` or `file:/path`. Left out: a public client (PKCE only).
    pub client_secret: Option<String>,
    /// `env:NAME` or `file:/path`: at least 32 bytes of random, which encrypt and sign
    /// the session cookies. Replicas share it; changing it signs everyone out.
    pub cookie_key: String,
    /// Scopes asked of the IdP (`openid` is required; add the one that brings groups).
    #[serde(default = "default_portal_scopes")]
    pub scopes: Vec<String>,
    /// How long a sign-in lasts (at most 24h); the groups are those of the sign-in.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: Dur,
    /// How long a user may take at the IdP's login page.
    #[serde(default = "default_login_timeout")]
    pub login_timeout: Dur,
}

fn default_portal_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_session_lifetime() -> Dur {
    Dur(Duration::from_secs(8 * 3600))
}

fn default_login_timeout() -> Dur {
    Dur(Duration::from_secs(600))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// `env:NAME`, `file:/path` or `dir:/path` (a file named after the project).
    pub token: String,
    /// REDCap username that owns the token (protected from user changes).
    pub token_owner: Option<String>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    /// Rules on user, role and DAG changes (user import/delete, userDagMapping,
    /// userRoleMapping, userRole). Strict defaults apply when left out.
    #[serde(default)]
    pub user_rules: UserRulesConfig,
}

/// What user-changing calls may do; every default is the strict choice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserRulesConfig {
    /// Usernames that may be imported, mapped or deleted (a regex, matched whole).
    pub username_pattern: Option<String>,
    /// Users never changed or deleted (the project's token_owner always is).
    pub protected_users: Vec<String>,
    /// An `expiration` (YYYY-MM-DD) is required on user imports.
    pub expiration_required: bool,
    /// ... and may be at most this many days ahead.
    pub expiration_max_days: Option<u32>,
    /// DAGs (unique group names) that may be assigned; "*" for any.
    pub assignable_dags: Vec<String>,
    /// Whether "no DAG" (access to all records) may be given. A user-import row without
    /// data_access_group counts as this, since REDCap may clear the user's DAG.
    pub allow_all_dags: bool,
    /// Roles (unique role names) that may be assigned through userRoleMapping; "*" any.
    pub assignable_roles: Vec<String>,
    /// Most users one delete call may remove.
    pub max_users_per_delete: usize,
    /// "reject" (default): a field the gateway does not know fails the call, since a
    /// future REDCap field may grant rights; "allow": it passes unchecked.
    pub unknown_fields: UnknownFields,
    /// Highest value each right may be given (user imports and role definitions).
    pub ceilings: CeilingsConfig,
}

impl Default for UserRulesConfig {
    fn default() -> Self {
        Self {
            username_pattern: None,
            protected_users: Vec::new(),
            expiration_required: false,
            expiration_max_days: None,
            assignable_dags: Vec::new(),
            allow_all_dags: false,
            assignable_roles: Vec::new(),
            max_users_per_delete: 25,
            unknown_fields: UnknownFields::Reject,
            ceilings: CeilingsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    Reject,
    Allow,
}

/// Per-right ceilings. Numeric rights name a number; `forms` a per-form level
/// (none, read-only, view-edit, edit-survey, full); `forms_export` an export level
/// (none, deidentified, remove-identifiers, full). Rights left out are not limited.
/// (Unknown right names are refused by `UserRules::compile`: serde cannot combine
/// `flatten` with `deny_unknown_fields`.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CeilingsConfig {
    #[serde(flatten)]
    pub numeric: std::collections::BTreeMap<String, i64>,
    pub forms: Option<String>,
    pub forms_export: Option<String>,
}

impl Default for CeilingsConfig {
    /// By default nobody can be given rights over users, design, the API's import,
    /// record deletion, DAGs or unlocking through the gateway.
    fn default() -> Self {
        let numeric = [
            ("user_rights", 0),
            ("design", 0),
            ("data_access_groups", 0),
            ("api_import", 0),
            ("api_modules", 0),
            ("record_delete", 0),
            ("lock_records_customization", 0),
            ("lock_records_all_forms", 0),
            ("random_setup", 0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            numeric,
            forms: None,
            forms_export: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    /// `content:action` pairs (`record:export`, `user:*`) or bundles (`read`).
    pub allow: Vec<String>,
    /// REDCap's Data Export right for the grant's members on every instrument not named
    /// in `export_forms`. Left out: `none` (no record data), so a grant never silently
    /// hands out the token owner's full data set.
    #[serde(default)]
    pub export: Option<ExportLevel>,
    /// Per-instrument export rights (unique instrument name -> level).
    #[serde(default)]
    pub export_forms: BTreeMap<String, ExportLevel>,
    /// Data access groups (unique group names) whose records the grant's members may
    /// read and change. Left out: every record. A caller is scoped when every grant
    /// naming them that allows the call lists DAGs: to the union of those lists.
    #[serde(default)]
    pub dags: Option<Vec<String>>,
}

/// REDCap's Data Export rights levels (codes 0, 2, 3, 1 in REDCap's Users API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportLevel {
    /// No Access: no field of the instrument.
    None,
    /// De-Identified: no identifier, free text, notes or date fields.
    Deidentified,
    /// Remove All Identifier Fields: no identifier-tagged fields.
    RemoveIdentifiers,
    /// Full Data Set.
    Full,
}

/// The project metadata the gateway keeps to apply export rights.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// How often each project's metadata is fetched again (the last good copy is kept
    /// when REDCap cannot be reached).
    pub refresh_interval: Dur,
    /// Longest wait for one fetch (metadata, field names, events).
    pub timeout: Dur,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Dur(Duration::from_secs(300)),
            timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// Everything wrong with a config, listed together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A TOML syntax error by its message and line, without the quoted source line that
/// toml's own text includes: that line may hold a secret written into the file.
fn syntax_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let line = e.span().map(|s| {
        let at = s.start.min(text.len());
        text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let message = e.message().trim_end();
    ConfigError::Parse(match line {
        Some(n) => format!("TOML syntax error at line {n}: {message}"),
        None => format!("TOML syntax error: {message}"),
    })
}

impl Config {
    /// Reads and parses a config file (`parse`), `${NAME}` from the environment. Its
    /// problems are `problems` and those only the runtime parts can tell: a config is
    /// loaded with both by `gateway::load_config`.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &|k| std::env::var(k).ok())
    }

    /// Parses TOML, expands `${NAME}` in string values (after parsing, so an environment
    /// value can never change the file's structure), then checks types and unknown keys.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| syntax_error(&e, text))?;
        let mut missing = Vec::new();
        expand_env(&mut value, "", env, &mut missing);
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(missing));
        }
        value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    /// Semantic checks that types cannot express, every one (the config's own: the
    /// runtime parts check the rest, see `gateway::load_config`).
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match http::Uri::try_from(self.upstream.url.as_str()) {
            Ok(uri) => {
                let scheme = uri.scheme_str().unwrap_or("");
                let host = uri.host().unwrap_or("");
                if scheme != "https" && scheme != "http" {
                    // The scheme only: a URL may carry credentials.
                    errs.push(format!("upstream.url must be http(s)://, got {scheme:?}"));
                }
                if scheme == "http" && !is_loopback_host(host) && !self.upstream.allow_plain_http {
                    errs.push(
                        "upstream.url is plain http to a non-loopback host: use https, or set upstream.allow_plain_http = true".into(),
                    );
                }
                if uri.query().is_some() {
                    errs.push("upstream.url must not have a query string".into());
                }
            }
            Err(e) => errs.push(format!("upstream.url is not a URL: {e}")),
        }
        if let Some(ca) = &self.upstream.ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                errs.push(format!("upstream.ca_file {}: {e}", ca.display()));
            }
        }
        let head = self.server.header_read_timeout.0;
        if head < Duration::from_millis(100) || head > Duration::from_secs(600) {
            errs.push("server.header_read_timeout must be between 100ms and 10m".into());
        }
        if !(16..=1_000_000).contains(&self.server.max_connections) {
            errs.push("server.max_connections must be between 16 and 1000000".into());
        }
        if matches!(self.server.workers, Some(0) | Some(257..)) {
            errs.push("server.workers must be between 1 and 256".into());
        }
        let l = &self.limits;
        if l.max_input_vars < 10 {
            errs.push("limits.max_input_vars must be at least 10".into());
        }
        if l.max_input_nesting_level < 1 {
            errs.push("limits.max_input_nesting_level must be at least 1".into());
        }
        if l.max_concurrent_requests == 0 {
            errs.push("limits.max_concurrent_requests must be at least 1".into());
        }
        if l.max_header_bytes.0 < 8192 {
            errs.push("limits.max_header_bytes must be at least 8192".into());
        }
        if l.linger_time.0 > Duration::from_secs(60) {
            errs.push("limits.linger_time must be at most 60s".into());
        }
        // Each refresh is three or four API calls per restricted project.
        if self.metadata.refresh_interval.0 < Duration::from_secs(10) {
            errs.push("metadata.refresh_interval must be at least 10s".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.metadata.timeout.0) {
            errs.push("metadata.timeout must be between 1s and 10m".into());
        }
        let mut seen_iss = std::collections::HashSet::new();
        for (i, iss) in self.auth.issuers.iter().enumerate() {
            let at = format!("auth.issuers[{i}]");
            if !seen_iss.insert(&iss.issuer) {
                errs.push(format!("{at}: issuer {:?} is configured twice", iss.issuer));
            }
            match (&iss.jwks_url, &iss.jwks_file) {
                (None, None) if iss.discovery => {
                    if !(iss.issuer.starts_with("https://") || iss.issuer.starts_with("http://")) {
                        errs.push(format!("{at}: discovery needs an http(s) issuer URL"));
                    }
                }
                (None, None) => {
                    errs.push(format!("{at}: set jwks_url, jwks_file or discovery = true"))
                }
                (Some(_), Some(_)) => {
                    errs.push(format!("{at}: set only one of jwks_url and jwks_file"))
                }
                _ if iss.discovery => errs.push(format!(
                    "{at}: discovery finds the JWKS itself; remove jwks_url/jwks_file"
                )),
                (None, Some(f)) => {
                    if let Err(e) = std::fs::metadata(f) {
                        errs.push(format!("{at}: jwks_file {}: {e}", f.display()));
                    }
                }
                (Some(u), None) => {
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        errs.push(format!("{at}: jwks_url must be an http(s) URL"));
                    }
                }
            }
            if iss.audiences.is_empty() {
                errs.push(format!("{at}: audiences must list at least one audience"));
            }
            if iss.algorithms.is_empty() {
                errs.push(format!("{at}: algorithms must list at least one algorithm"));
            }
            if iss.leeway.0 > Duration::from_secs(300) {
                errs.push(format!("{at}: leeway over 5 minutes is not allowed"));
            }
        }
        if self.audit.sink == AuditSink::File && self.audit.path.is_none() {
            errs.push("audit.path is required when audit.sink = \"file\"".into());
        }
        if self.audit.keep == 0 || self.audit.max_bytes.0 < 4096 {
            errs.push("audit.keep must be at least 1 and audit.max_bytes at least 4096".into());
        }
        let rl = &self.rate_limit;
        for (name, r) in [
            ("per_user", rl.per_user),
            ("per_project", rl.per_project),
            ("per_user_project", rl.per_user_project),
            ("upstream", rl.upstream),
        ] {
            if let Some(r) = r {
                if r.limit == 0 || r.per.0.is_zero() || r.burst == Some(0) {
                    errs.push(format!(
                        "rate_limit.{name}: limit, per and burst must be positive"
                    ));
                }
            }
        }
        if rl.mutating_cost == 0 || rl.replicas == 0 {
            errs.push("rate_limit.mutating_cost and rate_limit.replicas must be at least 1".into());
        }
        if let Some(u) = &rl.redis_url {
            if !u.starts_with("redis://") && !u.starts_with("rediss://") {
                errs.push("rate_limit.redis_url must be redis://... or rediss://...".into());
            }
        }
        if let Some(pt) = &self.personal_tokens {
            if pt.key.expose().len() < 32 {
                errs.push("personal_tokens.key must be at least 32 characters".into());
            }
            if pt.max_lifetime.0 > Duration::from_secs(100 * 365 * 86_400) {
                errs.push("personal_tokens.max_lifetime must be at most 100 years".into());
            }
            if pt.self_service_max_lifetime.0 > pt.max_lifetime.0
                || pt.self_service_max_lifetime.0 < Duration::from_secs(86_400)
            {
                errs.push("personal_tokens.self_service_max_lifetime must be at least a day and at most max_lifetime".into());
            }
            if pt.self_service_max_per_user == 0 {
                errs.push("personal_tokens.self_service_max_per_user must be at least 1".into());
            }
        }
        if let Some(portal) = &self.portal {
            self.validate_portal(portal, &mut errs);
        }
        for (name, p) in &self.projects {
            let at = format!("projects.{name}");
            if !is_project_name(name) {
                errs.push(format!(
                    "{at}: project names may use letters, digits, '-' and '_' only"
                ));
            }
            for (i, g) in p.grants.iter().enumerate() {
                if g.groups.is_empty() && g.users.is_empty() {
                    errs.push(format!("{at}.grants[{i}]: name at least one group or user"));
                }
                for form in g.export_forms.keys() {
                    if !is_instrument_name(form) {
                        errs.push(format!(
                            "{at}.grants[{i}].export_forms: {form:?} is not a unique instrument name (lower-case letters, digits and _)"
                        ));
                    }
                }
                match &g.dags {
                    Some(d) if d.is_empty() => errs.push(format!(
                        "{at}.grants[{i}].dags: list at least one data access group (leave dags out for every record)"
                    )),
                    Some(d) => {
                        for dag in d.iter().filter(|d| !is_instrument_name(d)) {
                            errs.push(format!(
                                "{at}.grants[{i}].dags: {dag:?} is not a unique group name (lower-case letters, digits and _)"
                            ));
                        }
                    }
                    None => {}
                }
            }
        }
        errs
    }
}

impl Config {
    fn validate_portal(&self, p: &PortalConfig, errs: &mut Vec<String>) {
        match http::Uri::try_from(p.public_url.as_str()) {
            Ok(uri) => {
                let scheme = uri.scheme_str().unwrap_or("");
                let host = uri.host().unwrap_or("");
                let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
                if host.is_empty() || !path_ok || !(scheme == "https" || scheme == "http") {
                    errs.push("portal.public_url must be an origin such as https://gateway.example.edu (no path or query)".into());
                } else if scheme == "http" && !is_loopback_host(host) {
                    errs.push("portal.public_url must be https outside loopback: the session cookie is Secure".into());
                }
                if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                    errs.push("portal.public_url must not hold credentials".into());
                }
            }
            Err(_) => errs.push("portal.public_url is not a URL".into()),
        }
        match self.auth.issuers.iter().find(|i| i.issuer == p.issuer) {
            None => errs.push(format!(
                "portal.issuer {:?} must be one of auth.issuers (its keys and claims verify the ID token)",
                p.issuer
            )),
            Some(i) if i.kind == IssuerKind::Kubernetes => {
                errs.push("portal.issuer is a Kubernetes issuer; people sign in with an OIDC one".into())
            }
            Some(_) if !(p.issuer.starts_with("https://") || p.issuer.starts_with("http://")) => {
                errs.push("portal.issuer must be an http(s) URL with OIDC discovery".into())
            }
            Some(_) => {}
        }
        if p.client_id.is_empty() || p.client_id.len() > 256 {
            errs.push("portal.client_id must be 1 to 256 characters".into());
        }
        if let Some(s) = &p.client_secret {
            if let Err(e) = crate::secret::read_ref(s) {
                errs.push(format!("portal.client_secret: {e}"));
            }
        }
        match crate::secret::read_ref(&p.cookie_key) {
            Ok(k) if k.expose().len() < 32 => {
                errs.push("portal.cookie_key must be at least 32 bytes".into())
            }
            Ok(_) => {}
            Err(e) => errs.push(format!("portal.cookie_key: {e}")),
        }
        if !p.scopes.iter().any(|s| s == "openid") {
            errs.push("portal.scopes must include \"openid\"".into());
        }
        if let Some(bad) = p.scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            errs.push(format!("portal.scopes: {bad:?} is not a scope token"));
        }
        let life = p.session_lifetime.0;
        if !(Duration::from_secs(300)..=Duration::from_secs(86_400)).contains(&life) {
            errs.push("portal.session_lifetime must be between 5m and 24h".into());
        }
        let login = p.login_timeout.0;
        if !(Duration::from_secs(60)..=Duration::from_secs(1800)).contains(&login) {
            errs.push("portal.login_timeout must be between 1m and 30m".into());
        }
        if !self
            .personal_tokens
            .as_ref()
            .is_some_and(|t| t.self_service)
        {
            errs.push("portal: set personal_tokens with self_service = true (the portal hands out personal tokens)".into());
        }
    }
}

/// REDCap's unique instrument names: lower-case letters, digits and `_`.
pub fn is_instrument_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub fn is_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Replaces `${NAME}` in every string; `$${` stands for a literal `${`.
fn expand_env(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) {
    match v {
        toml::Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(out) => *s = out,
            Err(name) => missing.push(format!("{path}: environment variable {name} is not set")),
        },
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_env(x, &format!("{path}[{i}]"), env, missing);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand_env(x, &p, env, missing);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("(unclosed ${{ in {s:?})"));
        };
        let name = &after[..end];
        out.push_str(&env(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed and checked as the config alone can (gateway's tests check the rest).
    fn checked(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let c = Config::parse(text, env)?;
        match c.problems() {
            errs if errs.is_empty() => Ok(c),
            errs => Err(ConfigError::Invalid(errs)),
        }
    }

    const MIN: &str = r#"
        [upstream]
        url = "http://127.0.0.1:1"
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = checked(MIN, &no_env).unwrap();
        assert_eq!(c.limits.max_input_vars, 1000);
        assert_eq!(c.upstream.request_timeout.0, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = checked(&format!("{MIN}\nlimts = 1"), &no_env).unwrap_err();
        assert!(e.to_string().contains("limts"), "{e}");
        let e = checked(&format!("{MIN}\nverify = false"), &no_env).unwrap_err();
        assert!(e.to_string().contains("verify"), "{e}");
    }

    #[test]
    fn env_references_expand_and_missing_ones_are_named() {
        let text = "[upstream]\nurl = \"${UP}/redcap\"\n";
        let c = checked(text, &|k| (k == "UP").then(|| "https://r.example".into())).unwrap();
        assert_eq!(c.upstream.url, "https://r.example/redcap");
        let e = checked(text, &no_env).unwrap_err().to_string();
        assert!(e.contains("upstream.url") && e.contains("UP"), "{e}");
    }

    #[test]
    fn env_values_cannot_inject_toml() {
        let text = "[upstream]\nurl = \"${UP}\"\n";
        let evil = "http://127.0.0.1:1\"\nallow_plain_http = true\n#";
        let e = checked(text, &|_| Some(evil.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a URL") || e.contains("upstream.url"), "{e}");
    }

    #[test]
    fn literal_dollar_brace() {
        assert_eq!(expand_str("a$${b}", &no_env).unwrap(), "a${b}");
    }

    #[test]
    fn plain_http_to_remote_needs_opt_in() {
        let text = "[upstream]\nurl = \"http://redcap.example.edu\"\n";
        let e = checked(text, &no_env).unwrap_err().to_string();
        assert!(e.contains("allow_plain_http"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line_but_never_quote_it() {
        let text = format!("{MIN}\n[audit]\nhmac_key = \"k3y-s3cret-value\n");
        let e = checked(&text, &no_env).unwrap_err().to_string();
        assert!(e.starts_with("TOML syntax error at line 6"), "{e}");
        assert!(!e.contains("k3y-s3cret"), "the secret was quoted: {e}");
    }

    #[test]
    fn personal_token_lifetimes_are_bounded() {
        let with = |lines: &str| {
            let text = format!(
                "{MIN}\n[personal_tokens]\nfile = \"/tmp/t.json\"\nkey = \"{}\"\n{lines}\n",
                "k".repeat(32)
            );
            checked(&text, &no_env).map_err(|e| e.to_string())
        };
        assert!(with("").is_ok());
        let e = with("max_lifetime = \"200years\"").unwrap_err();
        assert!(e.contains("at most 100 years"), "{e}");
        let e = with("self_service_max_lifetime = \"400days\"").unwrap_err();
        assert!(e.contains("self_service_max_lifetime"), "{e}");
        let e = with("self_service_max_per_user = 0").unwrap_err();
        assert!(e.contains("self_service_max_per_user"), "{e}");
    }
}
