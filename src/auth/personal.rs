//! Personal tokens: gateway-issued 32-character tokens for clients that can only send
//! REDCap's `token` field (redcaplite, REDCapR, plain scripts). Only an HMAC of each token
//! is stored; a token is bound to one user and one project.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{AuthError, CredentialKind, Principal};
use crate::config::PersonalTokensConfig;
use crate::secret::{is_redcap_token, Secret};

pub const ISSUER: &str = "redcap-gateway/personal-token";

/// One issued token as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    /// Hex HMAC-SHA256 of the token under the configured key.
    pub hash: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub project: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
    pub created: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub version: u32,
    pub tokens: Vec<TokenRecord>,
}

type HmacSha256 = Hmac<Sha256>;

fn digest(key: &Secret, token: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        HmacSha256::new_from_slice(key.expose().as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(token);
    mac.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

pub use crate::clock::now_unix;

/// `YYYY-MM-DD` -> the first second after that day ends (UTC).
pub fn end_of_day(date: &str) -> Option<u64> {
    let mut it = date.split('-');
    let (y, m, d) = (
        it.next()?.parse::<i64>().ok()?,
        it.next()?.parse::<i64>().ok()?,
        it.next()?.parse::<i64>().ok()?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days + 1) * 86_400).ok()
}

fn read_file(path: &Path) -> Result<TokenFile, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile {
            version: 1,
            tokens: Vec::new(),
        }),
        Err(e) => Err(format!("{}: {}", path.display(), e.kind())),
    }
}

/// Writes atomically (temp file + rename), readable by the owner only.
fn write_file(path: &Path, f: &TokenFile) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
    serde_json::to_writer_pretty(&mut tmp, f).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.to_string())?;
    Ok(())
}

/// Issues a token: returns the token (shown once) and its stored record.
pub fn issue(
    cfg: &PersonalTokensConfig,
    user: &str,
    project: &str,
    groups: Vec<String>,
    expires: Option<&str>,
    note: &str,
) -> Result<(Secret, TokenRecord), String> {
    let expires_at = expiry(expires, cfg.max_lifetime.0, "personal_tokens.max_lifetime")
        .map_err(|e| format!("--expires: {e}"))?;
    issue_at(cfg, user, project, groups, expires_at, note, None)?
        .map_err(|live| format!("{user} already holds {live} tokens for {project}"))
}

/// When a token asked to expire on `date` (`YYYY-MM-DD`, the end of that day, UTC)
/// stops working; None means as late as `longest` allows. `what` names the limit.
pub fn expiry(date: Option<&str>, longest: Duration, what: &str) -> Result<u64, String> {
    let now = now_unix();
    let latest = now + longest.as_secs();
    let expires_at = match date {
        Some(d) => end_of_day(d).ok_or_else(|| format!("{d:?} is not a date (YYYY-MM-DD)"))?,
        None => latest,
    };
    if expires_at <= now {
        return Err("the date is in the past".into());
    }
    // A date is the end of a day: allow the day `latest` falls on.
    if expires_at > latest + 86_400 {
        return Err(format!(
            "the date is further ahead than {what} ({})",
            humantime::format_duration(longest)
        ));
    }
    Ok(expires_at)
}

/// Issues a token that expires at `expires_at` (Unix seconds). With `max_live`, refuses
/// (inner `Err`, with the count) when the user already holds that many unexpired tokens
/// for the project. The file is changed under its lock, so concurrent issuers (the CLI,
/// self-service, replicas sharing the file) never lose each other's tokens.
pub fn issue_at(
    cfg: &PersonalTokensConfig,
    user: &str,
    project: &str,
    groups: Vec<String>,
    expires_at: u64,
    note: &str,
    max_live: Option<usize>,
) -> Result<Result<(Secret, TokenRecord), usize>, String> {
    if user.is_empty() || user.len() > 256 {
        return Err("the user name must be 1 to 256 characters".into());
    }
    let token = crate::secret::random_redcap_token();
    let mut id_bytes = [0u8; 6];
    let _ =
        aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut id_bytes);
    let record = TokenRecord {
        id: format!("pt_{}", hex(&id_bytes)),
        hash: hex(&digest(&cfg.key, token.expose().as_bytes())),
        user: user.to_string(),
        groups,
        project: project.to_string(),
        expires_at,
        // Through `now_unix`, which reads a clock before 1970 as 1970 (humantime panics).
        created: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now_unix()))
            .to_string(),
        note: note.to_string(),
    };
    with_locked_file(&cfg.file, |file| {
        if let Some(max) = max_live {
            let now = now_unix();
            let live = file
                .tokens
                .iter()
                .filter(|t| t.user == user && t.project == project && t.expires_at > now)
                .count();
            if live >= max {
                return Ok((false, Err(live)));
            }
        }
        file.version = 1;
        file.tokens.push(record.clone());
        Ok((true, Ok(())))
    })
    .map(|r| r.map(|()| (token, record)))
}

pub fn list(cfg: &PersonalTokensConfig) -> Result<Vec<TokenRecord>, String> {
    read_file(&cfg.file).map(|f| f.tokens)
}

/// Removes a token by id; true when it existed.
pub fn revoke(cfg: &PersonalTokensConfig, id: &str) -> Result<bool, String> {
    remove(cfg, |t| t.id == id)
}

/// Removes a token by id if it belongs to `user` on `project` (self-service); true when
/// it did.
pub fn revoke_own(
    cfg: &PersonalTokensConfig,
    id: &str,
    user: &str,
    project: &str,
) -> Result<bool, String> {
    remove(cfg, |t| {
        t.id == id && t.user == user && t.project == project
    })
}

/// Removes the tokens `matches` picks, under the file's lock; true when there were any.
fn remove(
    cfg: &PersonalTokensConfig,
    matches: impl Fn(&TokenRecord) -> bool,
) -> Result<bool, String> {
    with_locked_file(&cfg.file, |file| {
        let before = file.tokens.len();
        file.tokens.retain(|t| !matches(t));
        let removed = file.tokens.len() != before;
        Ok((removed, removed))
    })
}

/// Reads the token file, lets `change` edit it (it returns whether it did, and a result),
/// and writes it back if changed, all under an exclusive lock on `FILE.lock`.
fn with_locked_file<T>(
    path: &Path,
    change: impl FnOnce(&mut TokenFile) -> Result<(bool, T), String>,
) -> Result<T, String> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut open = std::fs::OpenOptions::new();
    open.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let lock = open
        .open(&lock_path)
        .map_err(|e| format!("{}.lock: {}", path.display(), e.kind()))?;
    lock.lock()
        .map_err(|e| format!("{}.lock: {}", path.display(), e.kind()))?;
    let mut file = read_file(path)?;
    let (changed, out) = change(&mut file)?;
    if changed {
        write_file(path, &file)?;
    }
    Ok(out)
}

/// The running gateway's view of the token file, reloaded when it changes.
pub struct PersonalTokens {
    path: PathBuf,
    key: Secret,
    entries: ArcSwap<HashMap<[u8; 32], Arc<TokenRecord>>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// When each token (by id) was last accepted by this process, to the minute: what
    /// the portal shows as "last used" (kept in memory only, so per replica and since
    /// start).
    last_used: Mutex<HashMap<String, u64>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PersonalTokens {
    pub fn load(cfg: &PersonalTokensConfig) -> Result<PersonalTokens, String> {
        let pt = PersonalTokens {
            path: cfg.file.clone(),
            key: cfg.key.clone(),
            entries: ArcSwap::from_pointee(HashMap::new()),
            stamp: Mutex::new(None),
            last_used: Mutex::new(HashMap::new()),
        };
        pt.reload()?;
        Ok(pt)
    }

    /// Re-reads the file if it changed. A broken file keeps the last good set.
    pub fn reload(&self) -> Result<bool, String> {
        let now = stamp(&self.path);
        if let Ok(g) = self.stamp.lock() {
            if g.is_some() && *g == now {
                return Ok(false);
            }
        }
        let file = read_file(&self.path)?;
        let mut map = HashMap::new();
        for t in file.tokens {
            let h = unhex(&t.hash).ok_or_else(|| format!("token {} has a malformed hash", t.id))?;
            map.insert(h, Arc::new(t));
        }
        tracing::info!(tokens = map.len(), "personal tokens loaded");
        self.entries.store(Arc::new(map));
        if let Ok(mut g) = self.stamp.lock() {
            *g = now;
        }
        Ok(true)
    }

    /// Reloads every `every`; `counted` is `redcap_gateway_reloads_total`
    /// (what = "personal_tokens").
    pub fn spawn_reloader(
        self: &Arc<Self>,
        every: Duration,
        counted: prometheus::IntCounterVec,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pt) = weak.upgrade() else { return };
                match tokio::task::spawn_blocking(move || pt.reload()).await {
                    Ok(Ok(true)) => counted.with_label_values(&["personal_tokens", "ok"]).inc(),
                    Ok(Err(e)) => {
                        counted
                            .with_label_values(&["personal_tokens", "error"])
                            .inc();
                        tracing::error!(error = %e, "personal token file not reloaded; keeping the last good one");
                    }
                    _ => {}
                }
            }
        })
    }

    fn mark_used(&self, id: &str) {
        let now = now_unix() / 60 * 60;
        if let Ok(mut seen) = self.last_used.lock() {
            match seen.get_mut(id) {
                Some(t) => *t = now,
                None => {
                    // Bounded by the tokens the file holds; forget revoked ones.
                    if seen.len() >= self.entries.load().len().max(1024) {
                        seen.clear();
                    }
                    seen.insert(id.to_string(), now);
                }
            }
        }
    }

    /// When this process last accepted the token `id` (Unix seconds, to the minute).
    pub fn last_used(&self, id: &str) -> Option<u64> {
        self.last_used.lock().ok()?.get(id).copied()
    }

    /// Checks a presented token for a project (None: the token names the project).
    pub fn verify(
        &self,
        presented: &[u8],
        project: Option<&str>,
    ) -> Result<(Principal, String), AuthError> {
        let text = std::str::from_utf8(presented).map_err(|_| AuthError::UnknownToken)?;
        if !is_redcap_token(text) || text.len() != 32 {
            return Err(AuthError::UnknownToken);
        }
        let d = digest(&self.key, presented);
        let entries = self.entries.load();
        let rec = entries.get(&d).ok_or(AuthError::UnknownToken)?;
        // The map lookup found it by digest; compare again in constant time regardless.
        let stored = unhex(&rec.hash).ok_or(AuthError::UnknownToken)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &d[..])) {
            return Err(AuthError::UnknownToken);
        }
        if rec.expires_at <= now_unix() {
            return Err(AuthError::Expired);
        }
        if let Some(p) = project {
            if p != rec.project {
                return Err(AuthError::WrongProject);
            }
        }
        self.mark_used(&rec.id);
        Ok((
            Principal {
                user: rec.user.clone(),
                groups: rec.groups.clone(),
                issuer: ISSUER.into(),
                credential: CredentialKind::PersonalToken,
            },
            rec.project.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg(dir: &Path) -> PersonalTokensConfig {
        PersonalTokensConfig {
            file: dir.join("tokens.json"),
            key: Secret::new("k".repeat(32)),
            max_lifetime: Dur(Duration::from_secs(30 * 86_400)),
            self_service: false,
            self_service_max_lifetime: Dur(Duration::from_secs(7 * 86_400)),
            self_service_max_per_user: 1,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(end_of_day("1970-01-01"), Some(86_400));
        assert_eq!(end_of_day("2000-03-01"), Some(951_955_200));
        assert_eq!(end_of_day("2027-13-01"), None);
        assert_eq!(end_of_day("2027-1-01"), None);
    }

    #[test]
    fn issue_verify_scope_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (tok, rec) = issue(&c, "alice", "demo", vec!["g".into()], None, "laptop").unwrap();
        assert!(is_redcap_token(tok.expose()));
        let text = std::fs::read_to_string(&c.file).unwrap();
        assert!(
            !text.contains(tok.expose()),
            "the token itself is never stored"
        );
        let pt = PersonalTokens::load(&c).unwrap();
        let (p, project) = pt.verify(tok.expose().as_bytes(), Some("demo")).unwrap();
        assert_eq!(
            (p.user.as_str(), project.as_str(), p.credential),
            ("alice", "demo", CredentialKind::PersonalToken)
        );
        assert_eq!(pt.verify(tok.expose().as_bytes(), None).unwrap().1, "demo");
        assert_eq!(
            pt.verify(tok.expose().as_bytes(), Some("other")).err(),
            Some(AuthError::WrongProject)
        );
        assert_eq!(
            pt.verify(b"0123456789ABCDEF0123456789ABCDEF", None).err(),
            Some(AuthError::UnknownToken)
        );
        assert_eq!(
            pt.verify(tok.expose().to_lowercase().as_bytes(), None)
                .err(),
            Some(AuthError::UnknownToken)
        );
        assert!(revoke(&c, &rec.id).unwrap());
        // Same-second rewrites keep mtime; the length changes, so the reload sees it.
        pt.reload().unwrap();
        assert_eq!(
            pt.verify(tok.expose().as_bytes(), None).err(),
            Some(AuthError::UnknownToken)
        );
    }

    #[test]
    fn lifetimes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        assert!(issue(&c, "a", "p", vec![], Some("2001-01-01"), "").is_err());
        assert!(issue(&c, "a", "p", vec![], Some("2999-01-01"), "").is_err());
        assert!(issue(&c, "a", "p", vec![], Some("tomorrow"), "").is_err());
    }

    #[test]
    fn a_different_key_verifies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let (tok, _) = issue(&c, "alice", "demo", vec![], None, "").unwrap();
        let mut other = c.clone();
        other.key = Secret::new("z".repeat(32));
        let pt = PersonalTokens::load(&other).unwrap();
        assert_eq!(
            pt.verify(tok.expose().as_bytes(), None).err(),
            Some(AuthError::UnknownToken)
        );
    }
}
