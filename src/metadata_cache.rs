//! Each project's metadata, compiled for export rights (`redcap::metadata`), fetched
//! from REDCap with the project's vault token: at start, every `metadata.refresh_interval`,
//! and again right after a call that changes the project's structure passed through the
//! gateway. A failed fetch keeps the last good copy; a project that never had one fails
//! closed for restricted callers (503).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Uri;

use crate::http_client::ClientHandle;
use crate::policy::ExportRights;
use crate::redcap::metadata::{ExportView, ProjectMetadata};
use crate::telemetry::Metrics;
use crate::vault::Vault;

/// Largest metadata answer read (a project of several thousand fields is a few MB).
const MAX_ANSWER: usize = 32 << 20;
/// After a failed fetch, requests wait this long before asking REDCap again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Distinct rights whose field sets are kept per copy (they are few: one per mix of grants).
const MAX_VIEWS: usize = 256;

/// One fetched copy of a project's metadata.
pub struct Snapshot {
    pub meta: ProjectMetadata,
    pub fetched: SystemTime,
    views: Mutex<HashMap<ExportRights, Arc<ExportView>>>,
}

impl Snapshot {
    pub fn new(meta: ProjectMetadata) -> Snapshot {
        Snapshot {
            meta,
            fetched: SystemTime::now(),
            views: Mutex::new(HashMap::new()),
        }
    }

    /// The field set of `rights`, computed once per copy and rights.
    pub fn view(&self, rights: &ExportRights) -> Arc<ExportView> {
        if let Ok(v) = self.views.lock() {
            if let Some(view) = v.get(rights) {
                return view.clone();
            }
        }
        let view = Arc::new(self.meta.view(rights));
        if let Ok(mut v) = self.views.lock() {
            if v.len() >= MAX_VIEWS {
                v.clear();
            }
            v.insert(rights.clone(), view.clone());
        }
        view
    }
}

#[derive(Default)]
struct Entry {
    snap: ArcSwapOption<Snapshot>,
    /// Set when a structure change passed through: the next restricted call waits for a
    /// fresh copy.
    stale: AtomicBool,
    /// Completed fetch attempts: a caller that waited for another's fetch uses its result.
    attempts: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<(Instant, String)>>,
}

pub struct MetadataCache {
    projects: HashMap<String, Entry>,
    client: ClientHandle,
    api: Uri,
    vault: Arc<Vault>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Fetches run on the main runtime, whichever serving thread asked.
    runtime: tokio::runtime::Handle,
}

impl MetadataCache {
    /// A cache for `projects` (those whose grants restrict exports). Copies carried over
    /// from `carry` (a reload) stay in use until the next fetch.
    pub fn new(
        projects: impl IntoIterator<Item = String>,
        client: ClientHandle,
        api: Uri,
        vault: Arc<Vault>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        carry: Option<&MetadataCache>,
    ) -> Arc<MetadataCache> {
        let projects = projects
            .into_iter()
            .map(|p| {
                let e = Entry::default();
                if let Some(old) = carry.and_then(|c| c.projects.get(&p)) {
                    e.snap.store(old.snap.load_full());
                }
                (p, e)
            })
            .collect();
        Arc::new(MetadataCache {
            projects,
            client,
            api,
            vault,
            timeout,
            metrics,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn keeps(&self, project: &str) -> bool {
        self.projects.contains_key(project)
    }

    /// The copy to decide with: the current one, or (when there is none, or a structure
    /// change made it stale) a fresh one. A failed fetch falls back to the last good
    /// copy; with none, the error.
    pub async fn current(self: &Arc<Self>, project: &str) -> Result<Arc<Snapshot>, String> {
        let entry = self
            .projects
            .get(project)
            .ok_or("the gateway keeps no metadata for this project")?;
        if let Some(s) = entry.snap.load_full() {
            if !entry.stale.load(Ordering::Acquire) {
                return Ok(s);
            }
        }
        let me = self.clone();
        let name = project.to_string();
        let outcome = self
            .runtime
            .spawn(async move { me.refresh(&name).await })
            .await
            .unwrap_or_else(|e| Err(format!("metadata fetch stopped: {e}")));
        match (entry.snap.load_full(), outcome) {
            (Some(s), _) => Ok(s),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err("no metadata".into()),
        }
    }

    /// Marks the project's copy stale (a structure change passed through).
    pub fn invalidate(&self, project: &str) {
        if let Some(e) = self.projects.get(project) {
            e.stale.store(true, Ordering::Release);
        }
    }

    /// Fetches the project's metadata now (one fetch at a time per project; a caller
    /// that waited for another's fetch takes its outcome).
    pub async fn refresh(&self, project: &str) -> Result<(), String> {
        let Some(entry) = self.projects.get(project) else {
            return Ok(());
        };
        let seen = entry.attempts.load(Ordering::Acquire);
        let _one = entry.fetching.lock().await;
        if entry.attempts.load(Ordering::Acquire) != seen {
            return match entry.snap.load().is_some() {
                true => Ok(()),
                false => Err(self.failure(entry)),
            };
        }
        if entry.snap.load().is_none() {
            if let Ok(f) = entry.last_failure.lock() {
                if let Some((at, e)) = &*f {
                    if at.elapsed() < RETRY_AFTER_FAILURE {
                        return Err(e.clone());
                    }
                }
            }
        }
        // Cleared before the fetch: a change passing through meanwhile marks it again.
        entry.stale.store(false, Ordering::Release);
        let outcome = self.fetch(project).await;
        entry.attempts.fetch_add(1, Ordering::AcqRel);
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .metadata_refreshes
            .with_label_values(&[project, result])
            .inc();
        match outcome {
            Ok(meta) => {
                let fields = meta.fields.len();
                entry.snap.store(Some(Arc::new(Snapshot::new(meta))));
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                self.metrics
                    .metadata_fetched
                    .with_label_values(&[project])
                    .set(now.as_secs() as i64);
                tracing::debug!(project, fields, "project metadata loaded");
                Ok(())
            }
            Err(e) => {
                let kept = entry.snap.load().is_some();
                tracing::warn!(project, error = %e, last_good_copy_kept = kept, "project metadata not loaded");
                if let Ok(mut f) = entry.last_failure.lock() {
                    *f = Some((Instant::now(), e.clone()));
                }
                Err(e)
            }
        }
    }

    fn failure(&self, entry: &Entry) -> String {
        entry
            .last_failure
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(|(_, e)| e.clone()))
            .unwrap_or_else(|| "no metadata".into())
    }

    /// Loads each project that has no copy yet (at start; a failure is logged and the
    /// project fails closed until a later fetch succeeds).
    pub async fn load_missing(&self) {
        for (p, e) in &self.projects {
            if e.snap.load().is_none() {
                let _ = self.refresh(p).await;
            }
        }
    }

    /// Fetches every project again every `every` (sooner after a failure).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let missing = me.projects.values().any(|e| e.snap.load().is_none());
                let wait = if missing {
                    every.min(RETRY_AFTER_FAILURE * 6)
                } else {
                    every
                };
                tokio::time::sleep(wait).await;
                for p in me.projects.keys() {
                    let _ = me.refresh(p).await;
                }
            }
        })
    }

    /// Asks REDCap with the project's vault token: `params` (urlencoded, without the
    /// token) and the token go in one buffer, wiped when dropped.
    async fn ask(&self, project: &str, mut params: Vec<u8>) -> Result<Bytes, String> {
        let token = self
            .vault
            .token(project)
            .ok_or("the project's token is not loaded")?;
        // Room for the token first, so the buffer never moves once it holds it.
        params.reserve_exact(7 + token.expose().len());
        params.extend_from_slice(b"&token=");
        params.extend_from_slice(token.expose().as_bytes());
        let body = Bytes::from_owner(zeroize::Zeroizing::new(params));
        self.client
            .post_form(&self.api, body, MAX_ANSWER, self.timeout)
            .await
    }

    async fn fetch(&self, project: &str) -> Result<ProjectMetadata, String> {
        let call = |content: &'static str| async move {
            let params = format!("content={content}&format=json&returnFormat=json");
            self.ask(project, params.into_bytes())
                .await
                .map_err(|e| format!("content={content}: {e}"))
        };
        let metadata = call("metadata").await?;
        let names = call("exportFieldNames").await?;
        let info = call("project").await?;
        let events: Option<Bytes> = if longitudinal(&info) {
            Some(call("event").await?)
        } else {
            None
        };
        ProjectMetadata::from_json(&metadata, &names, events.as_deref())
    }
}

impl MetadataCache {
    /// The DAG of each of `records` (`""`: none), asked of REDCap with the vault token
    /// (Export Records: the record id field and `exportDataAccessGroups=true`). Records
    /// REDCap does not know are absent from the map.
    pub async fn record_dags(
        &self,
        project: &str,
        record_id_field: &str,
        records: &[String],
    ) -> Result<HashMap<String, String>, String> {
        let mut b =
            Vec::with_capacity(160 + records.iter().map(|r| r.len() * 3 + 16).sum::<usize>());
        b.extend_from_slice(b"content=record&action=export&format=json&type=flat&exportDataAccessGroups=true&fields=");
        percent_encode(&mut b, record_id_field);
        for (i, r) in records.iter().enumerate() {
            b.extend_from_slice(format!("&records[{i}]=").as_bytes());
            percent_encode(&mut b, r);
        }
        let answer = self.ask(project, b).await?;
        let rows: Vec<HashMap<String, serde_json::Value>> = serde_json::from_slice(&answer)
            .map_err(|e| format!("the records' DAGs could not be read: {e}"))?;
        let mut out = HashMap::new();
        for row in rows {
            let text = |k: &str| row.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let (Some(id), Some(dag)) = (text(record_id_field), text("redcap_data_access_group"))
            else {
                return Err("REDCap's answer has no redcap_data_access_group column (is the project token's owner in a data access group?)".into());
            };
            out.insert(id, dag);
        }
        Ok(out)
    }
}

/// application/x-www-form-urlencoded, for record names in a body the gateway writes.
/// (Eight lines; the form_urlencoded crate would bring a dependency for them.)
fn percent_encode(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
}

/// `is_longitudinal` from Export Project Information (json: an object).
fn longitudinal(info: &[u8]) -> bool {
    let v: serde_json::Value = serde_json::from_slice(info).unwrap_or_default();
    let flag = v
        .get("is_longitudinal")
        .or_else(|| v.get(0)?.get("is_longitudinal"));
    match flag {
        Some(serde_json::Value::String(s)) => s == "1",
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(1),
        Some(serde_json::Value::Bool(b)) => *b,
        _ => false,
    }
}
