//! DAG scoping: a caller whose grants list data access groups reads and changes only the
//! records of those DAGs (docs/ARCHITECTURE.md, "Records scoped by DAG").
//! - Record exports: `exportDataAccessGroups=true` is forced and REDCap's answer streams
//!   through `redcap::dag_filter`, which drops other DAGs' rows (and the DAG column when
//!   the caller did not ask for it). The answer is held until the filter knows it carries
//!   DAGs, so a token owner in a DAG is a 503 before any byte is sent.
//! - Record imports: every row names an allowed DAG, and the records that exist already
//!   are in allowed DAGs (asked of REDCap with the vault token, never taken from the
//!   client). Record deletes, renames and file calls on a record: the same check.
//! - Every other content that returns or changes per-record data is refused.
//!
//! Unscoped callers pass untouched.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tower::Layer;

use super::parse::with_post;
use super::step::Handler;
use super::vault::Overrides;
use super::{call_parts, metadata_of, Req, Resp, Result};
use crate::body::{Body, BoxError};
use crate::context::{DagAudit, RequestContext};
use crate::error::GatewayError;
use crate::metadata_cache::MetadataCache;
use crate::policy::export::NO_RECORD_DATA;
use crate::policy::Policy;
use crate::redcap::dag_filter::{DagFilter, FilterError, Format, DAG_COLUMN};
use crate::redcap::metadata;
use crate::redcap::php_form::PhpArray;
use crate::redcap::{user_data, Operation, RedcapCall};

#[derive(Clone)]
pub struct DagScopeLayer {
    policy: Arc<Policy>,
    cache: Arc<MetadataCache>,
}

impl DagScopeLayer {
    pub fn new(policy: Arc<Policy>, cache: Arc<MetadataCache>) -> Self {
        DagScopeLayer { policy, cache }
    }
}

impl<S> Layer<S> for DagScopeLayer {
    type Service = ScopeDags<S>;
    fn layer(&self, next: S) -> ScopeDags<S> {
        ScopeDags {
            policy: self.policy.clone(),
            cache: self.cache.clone(),
            next,
        }
    }
}

pub struct ScopeDags<S> {
    policy: Arc<Policy>,
    cache: Arc<MetadataCache>,
    next: S,
}

/// What a scoped call needs.
enum Plan {
    Pass,
    /// A record export: the answer is filtered.
    Export {
        format: Format,
        eav: bool,
        keep_column: bool,
    },
    /// These records must exist in allowed DAGs (delete, rename, file calls).
    Existing(Vec<String>),
    /// A record import (`type=eav` or flat): every row's DAG allowed; the records that
    /// exist in allowed DAGs.
    Import {
        eav: bool,
    },
}

fn refused(content: &str, why: &str) -> GatewayError {
    GatewayError::Forbidden(format!(
        "content={content} is not available to callers scoped to data access groups: {why}"
    ))
}

/// The plan for a scoped caller's call, from the call and its `$_POST`.
fn plan(call: &RedcapCall, post: &PhpArray) -> Result<Plan> {
    let (content, op) = (call.content, call.operation);
    let eav = post.text("type").as_deref() == Some("eav");
    match (content, op) {
        ("record", Operation::Export) => {
            let format = post.text("format").unwrap_or_else(|| "xml".into());
            let delimiter = post.text("csvDelimiter");
            let format = Format::of(&format, delimiter.as_deref()).ok_or_else(|| {
                refused(
                    "record",
                    "the gateway filters rows in json, csv (with REDCap's delimiters) and xml only",
                )
            })?;
            // Labels would put DAG labels (and CSV header labels) where the filter reads
            // unique group names.
            for p in ["rawOrLabel", "rawOrLabelHeaders"] {
                if post.text(p).is_some_and(|v| v != "raw") {
                    return Err(GatewayError::Forbidden(format!(
                        "{p}=label is not available to callers scoped to data access groups (the gateway reads each row's group by its unique name); ask for raw values"
                    )));
                }
            }
            Ok(Plan::Export {
                format,
                eav,
                keep_column: metadata::flag(post, "exportDataAccessGroups")?,
            })
        }
        ("record", Operation::Import) => Ok(Plan::Import { eav }),
        ("record", Operation::Delete) => Ok(Plan::Existing(metadata::list(post, "records")?)),
        ("record", Operation::Other("rename")) => {
            Ok(Plan::Existing(post.text("record").into_iter().collect()))
        }
        ("file" | "fileInfo", _) => match post.text("record") {
            Some(r) => Ok(Plan::Existing(vec![r])),
            None => Err(refused(content, "name the record")),
        },
        ("record", _) => Err(refused(
            "record",
            "this action is not scoped by the gateway",
        )),
        _ if NO_RECORD_DATA.contains(&content) => Ok(Plan::Pass),
        ("user", _) => Ok(Plan::Pass),
        // Metadata, arm, event and project imports change no record.
        _ if op.is_mutating() && !matches!(content, "fileRepository") => Ok(Plan::Pass),
        _ => Err(refused(
            content,
            "it returns or changes records the gateway cannot scope to your groups",
        )),
    }
}

impl<S: Handler> ScopeDags<S> {
    async fn record_id_field(&self, project: &str) -> Result<String> {
        let snap = metadata_of(&self.cache, project).await?;
        Ok(snap.meta.fields[snap.meta.record_id].name.clone())
    }

    /// Each of `records` exists in an allowed DAG.
    async fn check_existing(
        &self,
        project: &str,
        allowed: &BTreeSet<String>,
        records: &[String],
        new_ok: bool,
    ) -> Result<()> {
        if records.is_empty() {
            return if new_ok {
                Ok(())
            } else {
                Err(GatewayError::BadRequest(
                    "name the records (the parameter \"records\" or \"record\")".into(),
                ))
            };
        }
        let id = self.record_id_field(project).await?;
        let dags = self
            .cache
            .record_dags(project, &id, records)
            .await
            .map_err(|e| {
                tracing::warn!(project, error = %e, "DAG-scoped call refused: the records' groups could not be read");
                GatewayError::DagScopeUnavailable
            })?;
        let outside: Vec<&str> = records
            .iter()
            .filter(|r| match dags.get(*r) {
                Some(d) => !allowed.contains(d),
                None => !new_ok,
            })
            .map(String::as_str)
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        // Records of other groups and records that do not exist get the same answer.
        Err(GatewayError::Forbidden(format!(
            "these records are not in your data access groups ({}): {}",
            join(allowed),
            outside.join(", ")
        )))
    }

    async fn check_import(
        &self,
        project: &str,
        allowed: &BTreeSet<String>,
        call: &RedcapCall,
        eav: bool,
    ) -> Result<()> {
        let data = call.data.as_deref().unwrap_or(b"");
        let rows = user_data::parse(call.format.as_str(), data)
            .map_err(|e| GatewayError::BadRequest(format!("data: {e}")))?;
        let id = self.record_id_field(project).await?;
        let mut records: Vec<String> = Vec::new();
        let mut dag_of: std::collections::HashMap<String, String> = Default::default();
        for (i, row) in rows.iter().enumerate() {
            let (record, dag) = if eav {
                let record = row.text("record").unwrap_or("").to_string();
                let dag = (row.text("field_name") == Some(DAG_COLUMN))
                    .then(|| row.text("value").unwrap_or("").to_string());
                (record, dag)
            } else {
                let record = row.text(&id).unwrap_or("").to_string();
                let dag = row.text(DAG_COLUMN).map(str::to_string);
                if dag.is_none() {
                    return Err(GatewayError::Forbidden(format!(
                        "row {}: a caller scoped to data access groups must give each row's redcap_data_access_group (one of {})",
                        i + 1,
                        join(allowed)
                    )));
                }
                (record, dag)
            };
            if let Some(d) = dag {
                if !allowed.contains(&d) {
                    return Err(GatewayError::Forbidden(format!(
                        "row {}: redcap_data_access_group {d:?} is not one of your data access groups ({})",
                        i + 1,
                        join(allowed)
                    )));
                }
                dag_of.insert(record.clone(), d);
            }
            if !records.contains(&record) {
                records.push(record);
            }
        }
        if let Some(r) = records.iter().find(|r| !dag_of.contains_key(*r)) {
            return Err(GatewayError::Forbidden(format!(
                "record {r}: a caller scoped to data access groups must give its redcap_data_access_group (one of {})",
                join(allowed)
            )));
        }
        // Records that exist already must be in allowed groups: an import could move
        // another group's record into one of the caller's.
        self.check_existing(project, allowed, &records, true).await
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

impl<S: Handler> Handler for ScopeDags<S> {
    async fn handle(&self, mut req: Req) -> Result<Resp> {
        let (project, who, call) = call_parts(&req)?;
        let Some(allowed) = self.policy.dag_scope(&project.0, &who, &call) else {
            return self.next.handle(req).await;
        };
        let plan = with_post(&req, |post| plan(&call, post))??;
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        if let Some(c) = &ctx {
            let _ = c.dag_scope.set(DagAudit {
                dags: join(&allowed),
                ..Default::default()
            });
        }
        let (format, eav, keep_column) = match plan {
            Plan::Pass => return self.next.handle(req).await,
            Plan::Existing(records) => {
                self.check_existing(&project.0, &allowed, &records, false)
                    .await?;
                return self.next.handle(req).await;
            }
            Plan::Import { eav } => {
                self.check_import(&project.0, &allowed, &call, eav).await?;
                return self.next.handle(req).await;
            }
            Plan::Export {
                format,
                eav,
                keep_column,
            } => (format, eav, keep_column),
        };
        req.extensions_mut()
            .get_or_insert_default::<Overrides>()
            .dags = true;
        let resp = self.next.handle(req).await?;
        if !resp.status().is_success() {
            // REDCap's error: no records in it.
            return Ok(resp);
        }
        let filter = DagFilter::new(format, eav, allowed, keep_column);
        let (mut parts, body) = resp.into_parts();
        let scoped = Scoped::prime(body, filter, ctx).await.map_err(|e| match e {
            FilterError::NoDagColumn => {
                tracing::warn!(
                    project = %project.0,
                    "DAG-scoped export refused: REDCap's answer has no redcap_data_access_group column; the project token's owner must be in no data access group"
                );
                GatewayError::DagScopeUnavailable
            }
            FilterError::Unreadable(m) => GatewayError::UpstreamUnreadable(m),
        })?;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Ok(http::Response::from_parts(parts, Body::new(scoped)))
    }
}

/// REDCap's answer through the filter. Once the answer is known to carry DAGs, large
/// stretches of it are filtered on a blocking thread while the connection's thread goes on
/// reading REDCap and writing to the caller (one stretch in flight: bounded memory); small
/// ones, as a slow REDCap sends them, are filtered in place.
struct Scoped {
    inner: Body,
    /// None while a stretch is being filtered on a blocking thread.
    filter: Option<Box<DagFilter>>,
    job: Option<tokio::task::JoinHandle<Filtered>>,
    /// The end of REDCap's answer has gone to the filter (in the job in flight, if any).
    finished: bool,
    /// REDCap's answer gathered for the next stretch, and its size.
    next: Vec<Bytes>,
    gathered: usize,
    ready: Option<Bytes>,
    /// REDCap's answer has ended (what is left is the job in flight, if any).
    ended: bool,
    done: bool,
    ctx: Option<Arc<RequestContext>>,
}

/// What filtering a stretch gave: the filter back, its output, whether it failed, and
/// the stretch itself, so that its buffers are freed on the connection's thread.
type Filtered = (
    Box<DagFilter>,
    Vec<u8>,
    std::result::Result<(), FilterError>,
    Vec<Bytes>,
);

/// A stretch at least this large goes to a blocking thread.
const OFFLOAD: usize = 64 << 10;
/// At most this much of REDCap's answer is gathered into one stretch.
const STRETCH: usize = 512 << 10;

impl Scoped {
    /// Reads REDCap's answer until the filter knows it carries DAGs (or it ends), so a
    /// refusal can still be answered whole.
    async fn prime(
        inner: Body,
        filter: DagFilter,
        ctx: Option<Arc<RequestContext>>,
    ) -> std::result::Result<Scoped, FilterError> {
        use http_body_util::BodyExt;
        let mut s = Scoped {
            inner,
            filter: Some(Box::new(filter)),
            job: None,
            finished: false,
            next: Vec::new(),
            gathered: 0,
            ready: None,
            ended: false,
            done: false,
            ctx,
        };
        let mut out = Vec::new();
        while !s.decided() {
            let frame =
                s.inner.frame().await.transpose().map_err(|e| {
                    FilterError::Unreadable(format!("REDCap's answer broke off: {e}"))
                })?;
            let data = s.data(frame);
            let filter = s.filter.as_deref_mut().ok_or_else(Scoped::lost)?;
            filter_stretch(filter, &data, s.ended, &mut out)?;
            s.finished = s.ended;
        }
        if !out.is_empty() {
            s.ready = Some(out.into());
        }
        Ok(s)
    }

    fn decided(&self) -> bool {
        self.filter.as_deref().is_some_and(DagFilter::decided)
    }

    fn lost() -> FilterError {
        FilterError::Unreadable("the filter was lost".into())
    }

    /// The data of one frame of REDCap's answer (`None`: its end, noted).
    fn data(&mut self, frame: Option<Frame<Bytes>>) -> Vec<Bytes> {
        match frame {
            // Trailers: nothing to filter.
            Some(frame) => frame.into_data().map(|d| vec![d]).unwrap_or_default(),
            None => {
                self.ended = true;
                Vec::new()
            }
        }
    }

    fn record(&self) {
        if let (Some(a), Some(f)) = (
            self.ctx.as_ref().and_then(|c| c.dag_scope.get()),
            self.filter.as_deref(),
        ) {
            a.rows_dropped.store(f.counts().1, Ordering::Relaxed);
        }
    }

    /// Starts filtering what has been gathered (and the end, if it has come): on a
    /// blocking thread for a large stretch, else in place (only while no output waits, so
    /// outputs keep their order). Returns whether it started.
    fn dispatch(&mut self) -> std::result::Result<bool, FilterError> {
        let large = self.gathered >= OFFLOAD;
        if self.job.is_some()
            || self.finished
            || (self.next.is_empty() && !self.ended)
            || (!large && self.ready.is_some())
        {
            return Ok(false);
        }
        let mut filter = self.filter.take().ok_or_else(Scoped::lost)?;
        let stretch = std::mem::take(&mut self.next);
        let size = std::mem::take(&mut self.gathered);
        // The end goes with the last stretch.
        let end = self.ended;
        self.finished = end;
        if large {
            // Every buffer is allocated and freed on the connection's thread (the output
            // here, the stretch when it comes back): buffers freed on the other thread
            // were kept by the allocator (three scoped 1 GiB exports from a fresh
            // gateway: RSS +18 MB that way, +12 MB this way; the unscoped relay +5 MB).
            let mut out = Vec::with_capacity(size + size / 16);
            self.job = Some(tokio::task::spawn_blocking(move || {
                let result = filter_stretch(&mut filter, &stretch, end, &mut out);
                (filter, out, result, stretch)
            }));
            return Ok(true);
        }
        let mut out = Vec::with_capacity(size);
        let result = filter_stretch(&mut filter, &stretch, end, &mut out);
        self.filter = Some(filter);
        result?;
        self.stash(out);
        Ok(true)
    }

    fn stash(&mut self, out: Vec<u8>) {
        if !out.is_empty() {
            self.ready = Some(out.into());
        }
    }

    /// Cut off: the caller's transfer ends in an error, never with rows the filter could
    /// not read.
    fn cut(&mut self, e: FilterError) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.record();
        tracing::warn!(error = %e, "DAG-scoped export cut off");
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

/// Feeds a stretch of REDCap's answer to the filter (and the end, if it has come).
fn filter_stretch(
    filter: &mut DagFilter,
    stretch: &[Bytes],
    end: bool,
    out: &mut Vec<u8>,
) -> std::result::Result<(), FilterError> {
    for data in stretch {
        filter.feed(data, out)?;
    }
    if end {
        filter.finish(out)?;
    }
    Ok(())
}

impl http_body::Body for Scoped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            // Gather what REDCap has sent, up to a stretch (also while a job runs).
            while !self.ended && self.gathered < STRETCH {
                let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(f) => f,
                };
                let frame = match frame.transpose() {
                    Ok(f) => f,
                    Err(e) => {
                        self.done = true;
                        self.record();
                        return Poll::Ready(Some(Err(e)));
                    }
                };
                for d in self.data(frame) {
                    self.gathered += d.len();
                    self.next.push(d);
                }
            }
            let mut progressed = false;
            if let Some(job) = self.job.as_mut() {
                if let Poll::Ready(joined) = Pin::new(job).poll(cx) {
                    self.job = None;
                    let Ok((filter, out, result, _stretch)) = joined else {
                        return self.cut(Scoped::lost());
                    };
                    self.filter = Some(filter);
                    if let Err(e) = result {
                        return self.cut(e);
                    }
                    self.stash(out);
                    progressed = true;
                }
            }
            // The next stretch starts before this output is written, so the filter's
            // thread and the connection's overlap.
            match self.dispatch() {
                Ok(started) => progressed |= started,
                Err(e) => return self.cut(e),
            }
            if let Some(b) = self.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.finished && self.job.is_none() {
                self.done = true;
                self.record();
                return Poll::Ready(None);
            }
            if !progressed {
                // Woken by REDCap's next bytes or the job's end.
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// A CSV answer of `n` rows, every fourth in site_b, cut into `chunk`-byte frames.
    fn answer(n: usize, chunk: usize, tail: &[u8]) -> (Body, Vec<u8>) {
        let mut all = b"record_id,redcap_data_access_group,age\n".to_vec();
        let mut kept = b"record_id,age\n".to_vec();
        for i in 0..n {
            let dag = if i % 4 == 3 { "site_b" } else { "site_a" };
            all.extend_from_slice(format!("{i},{dag},{}\n", i % 90).as_bytes());
            if dag == "site_a" {
                kept.extend_from_slice(format!("{i},{}\n", i % 90).as_bytes());
            }
        }
        all.extend_from_slice(tail);
        let frames: Vec<std::result::Result<Frame<Bytes>, BoxError>> = all
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        (
            Body::new(StreamBody::new(futures_util::stream::iter(frames))),
            kept,
        )
    }

    async fn scoped(body: Body) -> Scoped {
        let allowed = Arc::new(BTreeSet::from(["site_a".to_string()]));
        let filter = DagFilter::new(Format::Csv(b','), false, allowed, false);
        match Scoped::prime(body, filter, None).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Small frames are filtered in place, large stretches on a blocking thread: the
    /// caller gets exactly site_a's rows either way, in order.
    #[tokio::test]
    async fn stretches_filtered_in_place_and_offloaded_give_the_same_rows() {
        for (rows, chunk) in [(50, 7), (200_000, 1 << 20), (200_000, 4096), (3000, 100)] {
            let (body, kept) = answer(rows, chunk, b"");
            let out = scoped(body).await.collect().await.unwrap().to_bytes();
            assert!(out == kept[..], "{rows} rows in {chunk}-byte frames");
        }
    }

    /// An answer that turns unreadable deep into a large export (an offloaded stretch) ends
    /// the caller's transfer with an error after the rows before it, never cleanly.
    #[tokio::test]
    async fn an_unreadable_stretch_cuts_the_transfer_off() {
        for chunk in [1 << 20, 4096] {
            let (body, kept) = answer(200_000, chunk, b"\"unclosed,site_a,1\n");
            let mut s = scoped(body).await;
            let mut got = Vec::new();
            let err = loop {
                match s.frame().await {
                    Some(Ok(f)) => got.extend_from_slice(f.data_ref().unwrap()),
                    Some(Err(e)) => break e,
                    None => panic!("a clean end after an unreadable answer"),
                }
            };
            assert!(err.to_string().contains("CSV"), "{err}");
            assert!(
                kept.starts_with(&got),
                "only whole rows of site_a before the cut"
            );
            assert!(s.frame().await.is_none(), "nothing after the error");
        }
    }
}
