//! The token vault: where each project's REDCap token comes from, kept in memory as a
//! `Secret` and re-read when its file changes (Kubernetes replaces mounted Secrets).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::secret::{is_redcap_token, Secret};

/// A token's source, as written in `projects.NAME.token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
    /// A directory holding one file per project, named after the project.
    Dir(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("token source {0:?} must be env:NAME, file:/path or dir:/path")]
    BadSource(String),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read token file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the token from {0} is not a REDCap token (32 or 64 upper-case hex characters)")]
    BadToken(String),
}

impl TokenSource {
    pub fn parse(s: &str) -> Result<TokenSource, VaultError> {
        let bad = || VaultError::BadSource(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" => Ok(TokenSource::Env(rest.to_string())),
            "file" => Ok(TokenSource::File(PathBuf::from(rest))),
            "dir" => Ok(TokenSource::Dir(PathBuf::from(rest))),
            _ => Err(bad()),
        }
    }

    fn describe(&self, project: &str) -> String {
        match self {
            TokenSource::Env(n) => format!("env:{n}"),
            TokenSource::File(p) => format!("file:{}", p.display()),
            TokenSource::Dir(d) => format!("{}", d.join(project).display()),
        }
    }

    /// Reads and checks the token. Never puts the token itself into an error.
    pub fn read(&self, project: &str) -> Result<Secret, VaultError> {
        let raw = match self {
            TokenSource::Env(n) => {
                std::env::var(n).map_err(|_| VaultError::MissingEnv(n.clone()))?
            }
            TokenSource::File(p) => read_file(p)?,
            TokenSource::Dir(d) => read_file(&d.join(project))?,
        };
        let token = Secret::new(raw.trim().to_string());
        drop(zeroize::Zeroizing::new(raw));
        if !is_redcap_token(token.expose()) {
            return Err(VaultError::BadToken(self.describe(project)));
        }
        Ok(token)
    }
}

fn read_file(p: &std::path::Path) -> Result<String, VaultError> {
    std::fs::read_to_string(p).map_err(|e| VaultError::Unreadable {
        path: p.display().to_string(),
        reason: e.kind().to_string(),
    })
}

struct Entry {
    source: TokenSource,
    token: ArcSwapOption<Secret>,
}

/// All projects' tokens.
pub struct Vault {
    entries: HashMap<String, Entry>,
}

impl Vault {
    /// Loads every token now: a missing or malformed token is a startup error.
    pub fn load(
        sources: impl IntoIterator<Item = (String, TokenSource)>,
    ) -> Result<Vault, Vec<String>> {
        let mut entries = HashMap::new();
        let mut errs = Vec::new();
        for (project, source) in sources {
            match source.read(&project) {
                Ok(t) => {
                    entries.insert(
                        project,
                        Entry {
                            source,
                            token: ArcSwapOption::from_pointee(t),
                        },
                    );
                }
                Err(e) => errs.push(format!("projects.{project}.token: {e}")),
            }
        }
        if errs.is_empty() {
            Ok(Vault { entries })
        } else {
            Err(errs)
        }
    }

    pub fn token(&self, project: &str) -> Option<Arc<Secret>> {
        self.entries.get(project)?.token.load_full()
    }

    /// Re-reads file and directory tokens. A token that became unreadable or malformed
    /// keeps the last good one and is reported, so a half-written file cannot take a
    /// project down.
    pub fn reload(&self) -> Vec<String> {
        self.reload_counted().1
    }

    /// `reload`, also counting the tokens that changed.
    fn reload_counted(&self) -> (usize, Vec<String>) {
        let mut changed_tokens = 0;
        let mut problems = Vec::new();
        for (project, e) in &self.entries {
            if matches!(e.source, TokenSource::Env(_)) {
                continue;
            }
            match e.source.read(project) {
                Ok(t) => {
                    let changed = e.token.load().as_deref() != Some(&t);
                    if changed {
                        e.token.store(Some(Arc::new(t)));
                        changed_tokens += 1;
                        tracing::info!(project = %project, "project token reloaded");
                    }
                }
                Err(err) => problems.push(format!("{project}: {err}")),
            }
        }
        (changed_tokens, problems)
    }

    /// True when every project has a token.
    pub fn ready(&self) -> bool {
        self.entries.values().all(|e| e.token.load().is_some())
    }

    /// Reloads every `every`; `counted` is `redcap_gateway_reloads_total`
    /// (what = "token": ok per changed token, error per problem).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        every: std::time::Duration,
        counted: prometheus::IntCounterVec,
    ) -> tokio::task::JoinHandle<()> {
        let vault = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(v) = vault.upgrade() else { return };
                let v2 = v.clone();
                let (changed, problems) = tokio::task::spawn_blocking(move || v2.reload_counted())
                    .await
                    .unwrap_or_default();
                counted
                    .with_label_values(&["token", "ok"])
                    .inc_by(changed as u64);
                if !problems.is_empty() {
                    counted
                        .with_label_values(&["token", "error"])
                        .inc_by(problems.len() as u64);
                }
                for p in problems {
                    tracing::error!(problem = %p, "token reload failed; keeping the last good token");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789ABCDEF0123456789ABCDEF";
    const T2: &str = "FEDCBA9876543210FEDCBA9876543210";

    #[test]
    fn sources_parse() {
        assert_eq!(
            TokenSource::parse("env:X").unwrap(),
            TokenSource::Env("X".into())
        );
        assert_eq!(
            TokenSource::parse("file:/a").unwrap(),
            TokenSource::File("/a".into())
        );
        assert!(TokenSource::parse("vault:x").is_err());
        assert!(TokenSource::parse("env:").is_err());
    }

    #[test]
    fn file_tokens_reload_and_bad_ones_keep_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("demo");
        std::fs::write(&f, format!("{T1}\n")).unwrap();
        let v = Vault::load([("demo".to_string(), TokenSource::Dir(dir.path().into()))]).unwrap();
        assert_eq!(v.token("demo").unwrap().expose(), T1);
        std::fs::write(&f, T2).unwrap();
        assert!(v.reload().is_empty());
        assert_eq!(v.token("demo").unwrap().expose(), T2);
        std::fs::write(&f, "not-a-token-but-secret").unwrap();
        let problems = v.reload();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("not-a-token-but-secret"));
        assert_eq!(v.token("demo").unwrap().expose(), T2);
    }

    #[test]
    fn load_errors_name_the_source_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p"), "lowercase0123456789abcdef0123456").unwrap();
        let errs = Vault::load([
            ("p".to_string(), TokenSource::Dir(dir.path().into())),
            (
                "q".to_string(),
                TokenSource::File(dir.path().join("missing")),
            ),
        ])
        .err()
        .unwrap();
        let all = errs.join("\n");
        assert!(
            all.contains("projects.p.token") && all.contains("projects.q.token"),
            "{all}"
        );
        assert!(!all.contains("lowercase"), "{all}");
    }
}
