//! Hot reload: on SIGHUP, and when the config file's content changes, the file is read,
//! checked and built into a new `Gateway` exactly as at start. A config that fails any
//! check is rejected, with every problem logged, and the running one keeps serving. An
//! accepted one takes over request by request: each serving thread rebuilds its stack
//! when it sees a new generation, and requests already in flight finish on the stack
//! they started on. What a running gateway cannot change (`gateway::RESTART_ONLY`) keeps
//! its running value, and the log says a restart is needed for it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::gateway::Gateway;

/// The gateway currently serving, and where its config came from.
pub struct Live {
    current: ArcSwap<Gateway>,
    generation: AtomicU64,
    path: Option<PathBuf>,
    /// The content last acted on (applied or rejected), so a rejected file is not
    /// rejected again on every poll.
    seen: Mutex<Option<[u8; 32]>>,
    /// Serialises reloads (a signal during a poll's reload waits for it).
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new config serves; these sections kept their running values.
    Applied { kept: Vec<&'static str> },
    /// The file has the content already acted on (polls only).
    Unchanged,
}

impl Live {
    /// `path` is the config file to reload from; None for a gateway built in code.
    pub fn new(gateway: Arc<Gateway>, path: Option<PathBuf>) -> Arc<Live> {
        let seen = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|text| Sha256::digest(&text).into());
        Arc::new(Live {
            current: ArcSwap::new(gateway),
            generation: AtomicU64::new(0),
            path,
            seen: Mutex::new(seen),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Bumped by every accepted reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the config file and, if it is valid, serves it. `force` reloads an unchanged
    /// file too (SIGHUP: the files it names may have changed). On error the running
    /// config keeps serving and every problem is returned.
    pub async fn reload(&self, force: bool) -> Result<Reloaded, Vec<String>> {
        let _one = self.reloading.lock().await;
        let Some(path) = &self.path else {
            return Err(vec!["the gateway was not started from a config file".into()]);
        };
        let read = tokio::fs::read(path).await;
        // A file that cannot be read is acted on (logged, counted) once, like bad content.
        let digest: [u8; 32] = match &read {
            Ok(text) => Sha256::digest(text).into(),
            Err(e) => Sha256::digest(format!("\0unreadable: {:?}", e.kind())).into(),
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == Some(digest) {
                return Ok(Reloaded::Unchanged);
            }
            *seen = Some(digest);
        }
        let old = self.gateway();
        let result = async {
            let text = read.map_err(|e| vec![format!("{}: {e}", path.display())])?;
            let text = String::from_utf8(text).map_err(|_| vec!["not UTF-8".to_string()])?;
            let config = crate::gateway::config_from_toml(&text, &|k| std::env::var(k).ok())
                .map_err(|e| {
                    e.to_string()
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })?;
            old.reconfigured(config).await
        }
        .await;
        let metrics = &old.metrics.config_reloads;
        match result {
            Ok((gateway, kept)) => {
                self.current.store(Arc::new(gateway));
                self.generation.fetch_add(1, Ordering::AcqRel);
                metrics.with_label_values(&["config", "ok"]).inc();
                Ok(Reloaded::Applied { kept })
            }
            Err(errs) => {
                metrics.with_label_values(&["config", "error"]).inc();
                Err(errs)
            }
        }
    }

    /// Reloads and logs the outcome (what the signal handler and the file watcher do).
    pub async fn reload_and_log(&self, force: bool, why: &'static str) {
        let file = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match self.reload(force).await {
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Applied { kept }) => {
                tracing::info!(file = %file, trigger = why, generation = self.generation(), "config reloaded");
                for section in kept {
                    tracing::warn!(file = %file, section, "this section changed but needs a restart; the running value stays");
                }
            }
            Err(errs) => {
                for e in &errs {
                    tracing::error!(file = %file, trigger = why, problem = %e, "config reload rejected; the running config keeps serving");
                }
            }
        }
    }

    /// Reloads on every SIGHUP.
    #[cfg(unix)]
    pub fn spawn_sighup(self: &Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let live = self.clone();
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                live.reload_and_log(true, "SIGHUP").await;
            }
        }))
    }

    /// Polls the file's content (not its mtime: a Kubernetes ConfigMap changes by a
    /// symlink swap) every `every`, and reloads when it changed.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                live.reload_and_log(false, "file changed").await;
            }
        })
    }
}
