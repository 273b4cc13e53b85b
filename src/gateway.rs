//! The gateway built from a validated config: every part the request path needs (JWT
//! verification, the vault, policies, rate limits, audit, metrics, the upstream target,
//! the metadata cache, the token desk, the portal), built once at start and again on each
//! accepted reload (`reload.rs`). Serving it is `server.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use crate::audit::Audit;
use crate::auth::jwt::{Issuer, JwtVerifier};
use crate::auth::personal::PersonalTokens;
use crate::config::{Config, ConfigError};
use crate::http_client::ClientHandle;
use crate::layers::forward::api_uri;
use crate::layers::parse::ParseLimits;
use crate::policy::{Policy, ProjectPolicy};
use crate::ratelimit::RateLimits;
use crate::redcap::PhpLimits;
use crate::telemetry::Metrics;
use crate::vault::{TokenSource, Vault};

/// Reads a config file and checks it whole: the config's own checks and those only the
/// runtime parts can tell (a JWT algorithm, a grant's permissions, user rules, a project
/// token that must be readable), every problem in one list. Used by `serve`,
/// `check-config`, the token commands and reloads.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    checked(Config::read(path)?)
}

/// `load_config` for a config's text (`env` resolves `${NAME}`).
pub fn config_from_toml(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    checked(Config::parse(text, env)?)
}

fn checked(config: Config) -> Result<Config, ConfigError> {
    let mut errs = config.problems();
    errs.extend(runtime_problems(&config));
    if errs.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errs))
    }
}

/// What the config's values mean to the parts built from them: the same code as the
/// build, so `check-config` and `serve` name the same problems in the same words.
fn runtime_problems(config: &Config) -> Vec<String> {
    Parts::build(config, &[], true).err().unwrap_or_default()
}

/// The runtime parts made from a config's values. Local work only (token files, the TLS
/// roots): nothing is fetched, no file is opened for writing and no thread started, so
/// `check-config` builds them too.
struct Parts {
    client: ClientHandle,
    api: Uri,
    upstream: crate::upstream::Target,
    /// Empty when the caller keeps its verifier (same `[auth]`).
    issuers: Vec<Arc<Issuer>>,
    vault: Vault,
    personal: Option<Arc<PersonalTokens>>,
    policies: HashMap<String, ProjectPolicy>,
}

impl Parts {
    /// Every problem at once. `extra`: issuers made in code (the dev issuer).
    fn build(
        config: &Config,
        extra: &[Arc<Issuer>],
        with_issuers: bool,
    ) -> Result<Parts, Vec<String>> {
        let mut errs = Vec::new();
        let up = &config.upstream;
        let options = crate::http_client::ClientOptions::of(up);
        let client = ClientHandle::new(&options)
            .map_err(|e| errs.push(format!("upstream: {e}")))
            .ok();
        let api = api_uri(&up.url).map_err(|e| errs.push(e)).ok();
        let upstream = match (&client, &api) {
            (Some(c), Some(a)) => crate::upstream::Target::new(a, c.tls(), &options)
                .map_err(|e| errs.push(format!("upstream.url: {e}")))
                .ok(),
            _ => None,
        };
        let mut issuers = Vec::new();
        if with_issuers {
            issuers.extend(extra.iter().cloned());
            for (i, cfg) in config.auth.issuers.iter().enumerate() {
                match Issuer::new(cfg, client.clone()) {
                    Ok(iss) => issuers.push(Arc::new(iss)),
                    Err(e) => errs.push(format!("auth.issuers[{i}]: {e}")),
                }
            }
        }
        let sources = config
            .projects
            .iter()
            .filter_map(|(name, p)| match TokenSource::parse(&p.token) {
                Ok(s) => Some((name.clone(), s)),
                Err(e) => {
                    errs.push(format!("projects.{name}.token: {e}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        let vault = Vault::load(sources).map_err(|e| errs.extend(e)).ok();
        let personal = match &config.personal_tokens {
            Some(pt) => PersonalTokens::load(pt)
                .map(Arc::new)
                .map_err(|e| errs.push(format!("personal_tokens.file: {e}")))
                .ok(),
            None => None,
        };
        let mut policies = HashMap::new();
        for (name, p) in &config.projects {
            match ProjectPolicy::from_config(p) {
                Ok(pp) => {
                    policies.insert(name.clone(), pp);
                }
                Err(e) => errs.extend(e.into_iter().map(|e| format!("projects.{name}.{e}"))),
            }
        }
        match (client, api, upstream, vault) {
            (Some(client), Some(api), Some(upstream), Some(vault)) if errs.is_empty() => {
                Ok(Parts {
                    client,
                    api,
                    upstream,
                    issuers,
                    vault,
                    personal,
                    policies,
                })
            }
            _ => Err(errs),
        }
    }
}

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_concurrent: usize,
    pub parse: ParseLimits,
    pub max_header_bytes: usize,
    pub linger_time: Duration,
    pub linger_bytes: u64,
}

/// Background tasks of a gateway's parts; aborted when the last gateway using them goes.
#[derive(Default)]
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Everything the request path needs, built from the config (at start, and again on
/// each accepted reload: see `reload.rs`).
pub struct Gateway {
    pub config: Config,
    pub jwt: Arc<JwtVerifier>,
    pub vault: Arc<Vault>,
    pub personal: Option<Arc<PersonalTokens>>,
    pub policy: Arc<Policy>,
    /// For JWKS and OIDC discovery.
    pub client: ClientHandle,
    pub api: Uri,
    /// REDCap's address and TLS setup; each serving thread makes its own pool of it.
    pub upstream: crate::upstream::Target,
    pub upstream_timeout: Duration,
    pub limits: Limits,
    pub draining: Arc<AtomicBool>,
    /// Requests in flight across all serving threads (`limits.max_concurrent_requests`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub limits_rt: Arc<RateLimits>,
    /// Metadata of the projects whose grants restrict exports.
    pub metadata: Arc<crate::metadata_cache::MetadataCache>,
    /// Self-service personal tokens (`personal_tokens.self_service`), for both doors.
    pub desk: Option<Arc<crate::desk::TokenDesk>>,
    /// The sign-in portal (`[portal]`).
    pub portal: Option<Arc<crate::portal::Portal>>,
    /// Issuers made in code (the dev issuer); a reload keeps them.
    extra_issuers: Vec<Arc<Issuer>>,
    /// JWKS refreshes, shared with a reloaded gateway that keeps the same issuers.
    jwt_tasks: Arc<Tasks>,
    /// Token file reloads.
    _tasks: Tasks,
}

/// The parts of the config a running gateway cannot change (sockets, threads, the audit
/// chain's sink and key): a reload that changes them keeps the running values.
pub const RESTART_ONLY: &[&str] = &["server", "audit", "limits.max_header_bytes"];

impl Gateway {
    /// Builds from a config; `extra_issuers` adds issuers made in code (the dev issuer).
    /// Every problem is reported at once, before any socket is bound.
    pub async fn build(config: Config, extra_issuers: Vec<Issuer>) -> Result<Gateway, Vec<String>> {
        let extra = extra_issuers.into_iter().map(Arc::new).collect();
        Self::assemble(config, extra, None).await
    }

    /// The gateway for a new config, for a reload: the audit log, metrics, drain flag and
    /// (when their settings are unchanged) the in-flight cap, rate-limit state and
    /// verified issuers carry over. Returns the sections left at their running values
    /// because they need a restart (`RESTART_ONLY`).
    pub async fn reconfigured(
        &self,
        mut config: Config,
    ) -> Result<(Gateway, Vec<&'static str>), Vec<String>> {
        let old = &self.config;
        let mut kept = Vec::new();
        if config.server != old.server {
            kept.push(RESTART_ONLY[0]);
            config.server = old.server.clone();
        }
        if config.audit != old.audit {
            kept.push(RESTART_ONLY[1]);
            config.audit = old.audit.clone();
        }
        if config.limits.max_header_bytes != old.limits.max_header_bytes {
            kept.push(RESTART_ONLY[2]);
            config.limits.max_header_bytes = old.limits.max_header_bytes;
        }
        let g = Self::assemble(config, self.extra_issuers.clone(), Some(self)).await?;
        Ok((g, kept))
    }

    async fn assemble(
        config: Config,
        extra: Vec<Arc<Issuer>>,
        carry: Option<&Gateway>,
    ) -> Result<Gateway, Vec<String>> {
        let mut errs = Vec::new();
        // Same issuers: keep the verifier, its keys, its cache and its refreshes.
        let same_auth = carry.filter(|c| c.config.auth == config.auth);
        let parts = Parts::build(&config, &extra, same_auth.is_none())
            .map_err(|e| errs.extend(e))
            .ok();
        let (metrics, audit) = match carry {
            Some(c) => (Some(c.metrics.clone()), Some(c.audit.clone())),
            None => {
                let metrics = Metrics::new()
                    .map_err(|e| errs.push(format!("metrics: {e}")))
                    .ok();
                let audit = Audit::start(&config.audit)
                    .map_err(|e| errs.push(format!("audit: {e}")))
                    .ok();
                if let (Some(m), Some(a)) = (&metrics, &audit) {
                    m.register(Box::new(a.writes_ok.clone()));
                    m.register(Box::new(a.writes_failed.clone()));
                }
                (metrics.map(Arc::new), audit)
            }
        };
        let (Some(parts), Some(metrics), Some(audit), true) =
            (parts, metrics, audit, errs.is_empty())
        else {
            return Err(errs);
        };
        let Parts {
            client,
            api,
            upstream,
            issuers,
            vault,
            personal,
            policies,
        } = parts;
        let limits_rt = match carry.filter(|c| c.config.rate_limit == config.rate_limit) {
            Some(c) => c.limits_rt.clone(),
            None => Arc::new(
                RateLimits::new(&config.rate_limit, metrics.clone())
                    .await
                    .map_err(|e| vec![format!("rate_limit: {e}")])?,
            ),
        };

        let (jwt, jwt_tasks) = match same_auth {
            Some(c) => (c.jwt.clone(), c.jwt_tasks.clone()),
            None => {
                let jwt = Arc::new(JwtVerifier::shared(issuers, 10_000));
                for iss in jwt.issuers() {
                    iss.count_fetches_in(metrics.jwks_refreshes.clone());
                }
                (jwt.clone(), Arc::new(start_jwks_refresh(&jwt).await))
            }
        };
        let vault = Arc::new(vault);
        let every = config.vault.reload_interval.0;
        let counted = metrics.config_reloads.clone();
        let mut tasks = vec![vault.spawn_reloader(every, counted.clone())];
        if let Some(p) = &personal {
            tasks.push(p.spawn_reloader(every, counted));
        }
        let policy = Arc::new(Policy::new(policies));
        let desk = crate::desk::TokenDesk::new(
            config.personal_tokens.as_ref(),
            personal.clone(),
            policy.clone(),
            limits_rt.clone(),
        );
        let portal = match (&config.portal, &desk) {
            (Some(cfg), Some(desk)) => {
                let issuer = jwt.issuer(&cfg.issuer).cloned().ok_or_else(|| {
                    vec![format!(
                        "portal.issuer {:?} is not a trusted issuer",
                        cfg.issuer
                    )]
                })?;
                let mut portal = crate::portal::Portal::new(
                    cfg,
                    issuer,
                    desk.clone(),
                    policy.clone(),
                    client.clone(),
                )
                .map_err(|e| vec![e])?;
                if let Some(old) = carry.and_then(|c| c.portal.as_deref()) {
                    portal.keep_memory_of(old);
                }
                Some(Arc::new(portal))
            }
            (Some(_), None) => {
                return Err(vec![
                    "portal: set personal_tokens with self_service = true".into()
                ])
            }
            _ => None,
        };
        let restricted = config
            .projects
            .keys()
            .filter(|p| policy.keeps_metadata(p))
            .cloned();
        let metadata = crate::metadata_cache::MetadataCache::new(
            restricted,
            client.clone(),
            api.clone(),
            vault.clone(),
            config.metadata.timeout.0,
            metrics.clone(),
            carry.map(|c| &*c.metadata),
        );
        metadata.load_missing().await;
        tasks.push(metadata.spawn_refresher(config.metadata.refresh_interval.0));
        let l = &config.limits;
        let limits = Limits {
            max_concurrent: l.max_concurrent_requests,
            max_header_bytes: l.max_header_bytes.0 as usize,
            linger_time: l.linger_time.0,
            linger_bytes: l.linger_bytes.0,
            parse: ParseLimits {
                php: PhpLimits {
                    max_input_vars: l.max_input_vars,
                    max_input_nesting_level: l.max_input_nesting_level,
                },
                max_urlencoded: l.max_urlencoded_body.0,
                max_multipart: l.max_multipart_body.0,
                max_multipart_field: l.max_multipart_field.0 as usize,
                body_timeout: l.body_timeout.0,
            },
        };
        // A new cap starts empty: requests admitted under the old one finish under it.
        let in_flight = match carry.filter(|c| c.limits.max_concurrent == limits.max_concurrent) {
            Some(c) => c.in_flight.clone(),
            None => Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent)),
        };
        Ok(Gateway {
            upstream_timeout: config.upstream.request_timeout.0,
            config,
            jwt,
            vault,
            personal,
            policy,
            metadata,
            desk,
            portal,
            client,
            api,
            upstream,
            limits,
            draining: carry
                .map_or_else(|| Arc::new(AtomicBool::new(false)), |c| c.draining.clone()),
            in_flight,
            metrics,
            audit,
            limits_rt,
            extra_issuers: extra,
            jwt_tasks,
            _tasks: Tasks(tasks),
        })
    }

    pub fn project_names(&self) -> Vec<String> {
        self.config.projects.keys().cloned().collect()
    }

    /// Ready when every project has a token, every issuer has keys and the audit log
    /// can be written.
    pub fn ready(&self) -> Result<(), String> {
        if !self.audit.healthy() {
            return Err("the audit log cannot be written".into());
        }
        if !self.vault.ready() {
            return Err("a project token is not loaded".into());
        }
        if let Some(i) = self.jwt.issuers().find(|i| i.key_count() == 0) {
            return Err(format!("issuer {} has no keys loaded", i.issuer));
        }
        Ok(())
    }
}

/// Loads the keys of each issuer that has none yet, and keeps them fresh.
async fn start_jwks_refresh(jwt: &JwtVerifier) -> Tasks {
    let mut tasks = Vec::new();
    for iss in jwt.issuers() {
        if iss.key_count() > 0 {
            continue;
        }
        match iss.refresh_now().await {
            Ok(n) => tracing::info!(issuer = %iss.issuer, keys = n, "JWKS loaded"),
            Err(e) => {
                tracing::warn!(issuer = %iss.issuer, error = %e, "JWKS not loaded yet; will retry")
            }
        }
        let iss = iss.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // The IdP's Cache-Control (bounded) or the configured interval.
                tokio::time::sleep(iss.next_refresh()).await;
                if let Err(e) = iss.refresh_now().await {
                    tracing::warn!(issuer = %iss.issuer, error = %e, "periodic JWKS refresh failed; keeping last good keys");
                }
            }
        }));
    }
    Tasks(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run lists every problem: the config's own and the runtime parts' alike.
    #[test]
    fn every_error_is_listed() {
        let text = r#"
            [upstream]
            url = "ftp://x"
            [limits]
            max_input_vars = 1
            [metadata]
            refresh_interval = "1s"
            timeout = "0s"
            [[auth.issuers]]
            issuer = "https://idp"
            audiences = []
            algorithms = ["HS256", "none"]
            [projects."bad name"]
            token = "vault:x"
        "#;
        let e = config_from_toml(text, &|_| None).unwrap_err().to_string();
        for needle in [
            "ftp",
            "max_input_vars",
            "metadata.refresh_interval",
            "metadata.timeout",
            "jwks_url",
            "audiences",
            "HS256",
            "none",
            "bad name",
            "vault:x",
        ] {
            assert!(e.contains(needle), "missing {needle} in {e}");
        }
    }
}
