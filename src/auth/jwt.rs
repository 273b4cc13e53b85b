//! JWT verification against issuers' JWKS: the token's `iss` selects the issuer, its
//! `kid` the key; algorithms come from an explicit allowlist (never `none`, never HMAC).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::Digest;

use super::{AuthError, CredentialKind, Principal};
use crate::config::{IssuerConfig, IssuerKind};
use crate::http_client::HttpClient;

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// JWKS documents larger than this are refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Bounds on how often a JWKS is refreshed when the IdP sends Cache-Control.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Parses one entry of an issuer's `algorithms` list. Only asymmetric algorithms are
/// allowed: an HMAC "key" would be the issuer's public key, which anyone can read.
pub fn parse_allowed_algorithm(s: &str) -> Result<Algorithm, String> {
    let alg = match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" | "HS384" | "HS512" => {
            return Err(format!(
                "algorithm {s} is symmetric and not allowed (use RS256, ES256 or EdDSA)"
            ))
        }
        other => return Err(format!("algorithm {other:?} is not supported")),
    };
    Ok(alg)
}

/// Where an issuer's keys come from.
#[derive(Clone)]
pub enum JwksSource {
    Url(String),
    /// `{issuer}/.well-known/openid-configuration` names the JWKS URL.
    Discovery,
    File(PathBuf),
    /// Keys given in memory (the dev issuer, tests).
    Static(JwkSet),
}

struct Key {
    alg: Option<KeyAlgorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Arc<Key>>>,
    all: Vec<Arc<Key>>,
}

fn key_alg_matches(k: Option<KeyAlgorithm>, alg: Algorithm) -> bool {
    let Some(k) = k else { return true };
    matches!(
        (k, alg),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::RS384, Algorithm::RS384)
            | (KeyAlgorithm::RS512, Algorithm::RS512)
            | (KeyAlgorithm::PS256, Algorithm::PS256)
            | (KeyAlgorithm::PS384, Algorithm::PS384)
            | (KeyAlgorithm::PS512, Algorithm::PS512)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::ES384, Algorithm::ES384)
            | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
    )
}

impl KeySet {
    /// Keeps signing keys of asymmetric types; skips `use: enc` and symmetric keys.
    fn from_jwks(set: &JwkSet) -> KeySet {
        let mut ks = KeySet::default();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(Key {
                alg: jwk.common.key_algorithm,
                key,
            });
            if let Some(kid) = &jwk.common.key_id {
                ks.by_kid.entry(kid.clone()).or_default().push(key.clone());
            }
            ks.all.push(key);
        }
        ks
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let candidates = match kid {
            Some(kid) => self.by_kid.get(kid)?,
            None => &self.all,
        };
        let mut fitting = candidates.iter().filter(|k| key_alg_matches(k.alg, alg));
        let first = fitting.next()?;
        // Without a kid, an unambiguous key is required.
        if kid.is_none() && fitting.next().is_some() {
            return None;
        }
        Some(first.clone())
    }
}

/// One trusted issuer and its keys.
pub struct Issuer {
    pub issuer: String,
    kind: IssuerKind,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    user_claim: String,
    groups_claim: Option<String>,
    group_prefix: String,
    source: JwksSource,
    keys: ArcSwap<KeySet>,
    refresh: tokio::sync::Mutex<Option<Instant>>,
    cooldown: Duration,
    pub refresh_interval: Duration,
    /// When the IdP's Cache-Control asks for another interval, it is kept here.
    next_refresh: Mutex<Duration>,
    /// The JWKS URL found by discovery.
    discovered: Mutex<Option<String>>,
    client: Option<HttpClient>,
    /// JWKS fetches attempted (for readiness, metrics and tests).
    pub fetches: AtomicU64,
    /// `redcap_gateway_jwks_refreshes_total{result}`, once the gateway has attached it.
    counted: std::sync::OnceLock<prometheus::IntCounterVec>,
}

/// An issuer's algorithms; every one not allowed is named at once.
fn allowed_algorithms(cfg: &IssuerConfig) -> Result<Vec<Algorithm>, String> {
    let (algorithms, refused): (Vec<_>, Vec<_>) = cfg
        .algorithms
        .iter()
        .map(|a| parse_allowed_algorithm(a))
        .partition(Result::is_ok);
    if refused.is_empty() {
        Ok(algorithms.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(refused
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

impl Issuer {
    pub fn new(cfg: &IssuerConfig, client: Option<HttpClient>) -> Result<Issuer, String> {
        let source = match (&cfg.jwks_url, &cfg.jwks_file, cfg.discovery) {
            (Some(u), None, false) => JwksSource::Url(u.clone()),
            (None, Some(f), false) => JwksSource::File(f.clone()),
            (None, None, true) => JwksSource::Discovery,
            _ => {
                // The algorithms' problems too, so that one run names every problem.
                let mut e =
                    vec!["set exactly one of jwks_url, jwks_file and discovery".to_string()];
                e.extend(allowed_algorithms(cfg).err());
                return Err(e.join("; "));
            }
        };
        Self::with_source(cfg, source, client)
    }

    pub fn with_source(
        cfg: &IssuerConfig,
        source: JwksSource,
        client: Option<HttpClient>,
    ) -> Result<Issuer, String> {
        let algorithms = allowed_algorithms(cfg)?;
        let keys = match &source {
            JwksSource::Static(set) => KeySet::from_jwks(set),
            _ => KeySet::default(),
        };
        Ok(Issuer {
            issuer: cfg.issuer.clone(),
            kind: cfg.kind,
            audiences: cfg.audiences.clone(),
            algorithms,
            leeway: cfg.leeway.0,
            user_claim: cfg.user_claim.clone(),
            groups_claim: cfg.groups_claim.clone(),
            group_prefix: cfg.group_prefix.clone(),
            source,
            keys: ArcSwap::from_pointee(keys),
            refresh: tokio::sync::Mutex::new(None),
            cooldown: cfg.jwks_refresh_cooldown.0,
            refresh_interval: cfg.jwks_refresh_interval.0,
            next_refresh: Mutex::new(cfg.jwks_refresh_interval.0),
            discovered: Mutex::new(None),
            client,
            fetches: AtomicU64::new(0),
            counted: std::sync::OnceLock::new(),
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().all.len()
    }

    /// How long until the next periodic refresh (Cache-Control, bounded, or the config).
    pub fn next_refresh(&self) -> Duration {
        self.next_refresh
            .lock()
            .map(|d| *d)
            .unwrap_or(self.refresh_interval)
    }

    async fn get(&self, url: &str) -> Result<(bytes::Bytes, Option<Duration>), String> {
        let client = self.client.as_ref().ok_or("no HTTP client for JWKS")?;
        client
            .get_bytes(url, MAX_JWKS_BYTES, Duration::from_secs(10))
            .await
    }

    /// The JWKS URL from OIDC discovery; the document must name this exact issuer.
    async fn discover(&self) -> Result<String, String> {
        if let Some(u) = self.discovered.lock().ok().and_then(|g| g.clone()) {
            return Ok(u);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let (body, _) = self
            .get(&url)
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("discovery document: {e}"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err("the discovery document names another issuer".into());
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?
            .to_string();
        if let Ok(mut g) = self.discovered.lock() {
            *g = Some(jwks.clone());
        }
        Ok(jwks)
    }

    /// Counts this issuer's JWKS fetches by result in `counter`.
    pub fn count_fetches_in(&self, counter: prometheus::IntCounterVec) {
        let _ = self.counted.set(counter);
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch_uncounted().await;
        if let Some(c) = self.counted.get() {
            let result = if fetched.is_ok() { "ok" } else { "error" };
            c.with_label_values(&[result]).inc();
        }
        fetched
    }

    async fn fetch_uncounted(&self) -> Result<JwkSet, String> {
        let (bytes, max_age) = match &self.source {
            JwksSource::Static(set) => return Ok(set.clone()),
            JwksSource::File(p) => (
                tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("reading {}: {e}", p.display()))?
                    .into(),
                None,
            ),
            JwksSource::Url(u) => self.get(u).await?,
            JwksSource::Discovery => {
                let u = self.discover().await?;
                self.get(&u).await?
            }
        };
        let next = max_age.map_or(self.refresh_interval, |d| d.clamp(MIN_REFRESH, MAX_REFRESH));
        if let Ok(mut g) = self.next_refresh.lock() {
            *g = next;
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("JWKS is not valid JSON: {e}"))
    }

    /// Fetches keys now; on failure the last good keys stay in use.
    pub async fn refresh_now(&self) -> Result<usize, String> {
        let mut last = self.refresh.lock().await;
        *last = Some(Instant::now());
        let set = self.fetch().await?;
        let ks = KeySet::from_jwks(&set);
        let n = ks.all.len();
        if n == 0 {
            return Err("the JWKS holds no usable signing keys".into());
        }
        self.keys.store(Arc::new(ks));
        Ok(n)
    }

    /// On an unknown kid: one fetch for a whole burst (single-flight), and none within
    /// the cooldown of the previous one, so bad tokens cannot make us hammer the IdP.
    async fn refresh_for_unknown_kid(&self, seen: &Arc<KeySet>) {
        let mut last = self.refresh.lock().await;
        if !Arc::ptr_eq(seen, &self.keys.load_full()) {
            return; // someone refreshed while we waited
        }
        if matches!(*last, Some(t) if t.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let ks = KeySet::from_jwks(&set);
                if !ks.all.is_empty() {
                    self.keys.store(Arc::new(ks));
                }
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping last good keys")
            }
        }
    }

    async fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<(Principal, u64), AuthError> {
        let claims = self.verified_claims(token, header, &self.audiences).await?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::Invalid)?;
        Ok((self.principal(&claims)?, exp))
    }

    /// The claims of a token signed by one of this issuer's keys with an allowed
    /// algorithm, for this issuer, for one of `audiences`, and within its lifetime.
    async fn verified_claims(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        audiences: &[String],
    ) -> Result<Value, AuthError> {
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let mut keys = self.keys.load_full();
        let key = match keys.find(kid, alg) {
            Some(k) => k,
            None => {
                if !matches!(self.source, JwksSource::Static(_)) {
                    self.refresh_for_unknown_kid(&keys).await;
                    keys = self.keys.load_full();
                }
                if keys.all.is_empty() {
                    return Err(AuthError::KeysUnavailable);
                }
                keys.find(kid, alg).ok_or(AuthError::UnknownKey)?
            }
        };
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.validate_exp = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(map_jwt_error)?;
        Ok(data.claims)
    }

    /// An OIDC ID token from a sign-in (the portal): the same keys, algorithms, lifetime
    /// checks and claims config as an API JWT, but for `client_id` as audience (and as
    /// `azp` when several audiences are named), carrying the `nonce` the sign-in sent.
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if unverified_issuer(token).as_deref() != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let claims = self
            .verified_claims(token, &header, &[client_id.to_string()])
            .await?;
        let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        let same = subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), nonce.as_bytes());
        if nonce.is_empty() || !bool::from(same) {
            return Err(AuthError::WrongNonce);
        }
        let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
        let azp = claims.get("azp").and_then(Value::as_str);
        if (several || azp.is_some()) && azp != Some(client_id) {
            return Err(AuthError::WrongAudience);
        }
        self.principal(&claims)
    }

    fn principal(&self, claims: &Value) -> Result<Principal, AuthError> {
        if self.kind == IssuerKind::Kubernetes {
            return self.service_account(claims);
        }
        let user = claim_path(claims, &self.user_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| AuthError::MissingUser(self.user_claim.clone()))?
            .to_string();
        let mut groups = Vec::new();
        if let Some(gc) = &self.groups_claim {
            match claim_path(claims, gc) {
                Some(Value::Array(a)) => {
                    groups.extend(a.iter().filter_map(Value::as_str).map(str::to_string))
                }
                Some(Value::String(s)) => groups.extend(s.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        groups.truncate(512);
        let groups = groups
            .into_iter()
            .map(|g| format!("{}{g}", self.group_prefix))
            .collect();
        Ok(Principal {
            user,
            groups,
            issuer: self.issuer.clone(),
            credential: CredentialKind::Jwt,
        })
    }
}

impl Issuer {
    /// A Kubernetes projected service-account token: `sub` is
    /// `system:serviceaccount:NAMESPACE:NAME`, which must agree with the
    /// `kubernetes.io` claim.
    fn service_account(&self, claims: &Value) -> Result<Principal, AuthError> {
        let missing = || AuthError::MissingUser("sub".into());
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(missing)?;
        let rest = sub
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(missing)?;
        let (ns, name) = rest.split_once(':').ok_or_else(missing)?;
        let k8s = claims.get("kubernetes.io");
        let claimed_ns = k8s.and_then(|k| k.get("namespace")).and_then(Value::as_str);
        let claimed_name = k8s
            .and_then(|k| k.get("serviceaccount"))
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str);
        if ns.is_empty() || name.is_empty() || claimed_ns != Some(ns) || claimed_name != Some(name)
        {
            return Err(AuthError::Invalid);
        }
        let p = &self.group_prefix;
        Ok(Principal {
            user: sub.to_string(),
            groups: vec![
                format!("{p}system:serviceaccounts"),
                format!("{p}system:serviceaccounts:{ns}"),
            ],
            issuer: self.issuer.clone(),
            credential: CredentialKind::Jwt,
        })
    }
}

/// A dotted claim path (`realm_access.roles`); an exact top-level key wins first, since
/// some IdPs use URLs with dots as claim names.
fn claim_path<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => AuthError::Malformed,
        K::MissingRequiredClaim(_) => AuthError::Invalid,
        _ => AuthError::Invalid,
    }
}

/// A verified token's principal and its `exp`.
type Cached = (Arc<Principal>, u64);

/// Verified tokens, so a token's signature is checked once, not on every call. Keyed
/// by SHA-256 of the token (the token itself is never kept); entries end at `exp`.
struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    capacity: usize,
}

use crate::clock::now_unix;

impl TokenCache {
    fn get(&self, key: &[u8; 32]) -> Option<Arc<Principal>> {
        let map = self.entries.lock().ok()?;
        let (p, exp) = map.get(key)?;
        (*exp > now_unix()).then(|| p.clone())
    }

    fn put(&self, key: [u8; 32], p: Arc<Principal>, exp: u64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            let now = now_unix();
            map.retain(|_, (_, e)| *e > now);
            if map.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow without bound.
                map.clear();
            }
        }
        map.insert(key, (p, exp));
    }
}

/// All trusted issuers.
pub struct JwtVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
    cache: TokenCache,
    /// Signature verifications performed (cache misses).
    pub verifications: AtomicU64,
}

impl Default for JwtVerifier {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl JwtVerifier {
    pub fn new(issuers: Vec<Issuer>) -> Self {
        Self::with_cache_capacity(issuers, 10_000)
    }

    pub fn with_cache_capacity(issuers: Vec<Issuer>, capacity: usize) -> Self {
        Self::shared(issuers.into_iter().map(Arc::new).collect(), capacity)
    }

    /// A verifier over issuers that may also serve another verifier (a reload keeps
    /// issuers made in code, with their keys).
    pub fn shared(issuers: Vec<Arc<Issuer>>, capacity: usize) -> Self {
        JwtVerifier {
            issuers: issuers.into_iter().map(|i| (i.issuer.clone(), i)).collect(),
            cache: TokenCache {
                entries: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
            },
            verifications: AtomicU64::new(0),
        }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.values()
    }

    /// The trusted issuer named exactly `issuer`.
    pub fn issuer(&self, issuer: &str) -> Option<&Arc<Issuer>> {
        self.issuers.get(issuer)
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cache.get(&key) {
            return Ok(p);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let iss = unverified_issuer(token).ok_or(AuthError::Malformed)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::UnknownIssuer)?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (principal, exp) = issuer.verify(token, &header).await?;
        let principal = Arc::new(principal);
        self.cache.put(key, principal.clone(), exp);
        Ok(principal)
    }
}

/// The `iss` claim read without verification, only to choose which keys to verify with.
fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_refuses_symmetric_and_none() {
        assert!(parse_allowed_algorithm("RS256").is_ok());
        assert!(parse_allowed_algorithm("EdDSA").is_ok());
        assert!(parse_allowed_algorithm("HS256").is_err());
        assert!(parse_allowed_algorithm("none").is_err());
        assert!(parse_allowed_algorithm("rs256").is_err());
    }

    #[test]
    fn claim_paths() {
        let v = serde_json::json!({"realm_access": {"roles": ["a"]}, "https://x.org/g": ["b"]});
        assert_eq!(
            claim_path(&v, "realm_access.roles"),
            Some(&serde_json::json!(["a"]))
        );
        assert_eq!(
            claim_path(&v, "https://x.org/g"),
            Some(&serde_json::json!(["b"]))
        );
        assert_eq!(claim_path(&v, "nope.x"), None);
    }
}
