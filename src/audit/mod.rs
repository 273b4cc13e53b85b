//! The audit log: one record per request (and an intent record before every mutating
//! call), hash-chained, written by a dedicated thread so the runtime never blocks.
//! Mutating calls fail closed (503) when the intent cannot be written.

pub mod chain;
mod line;

pub use line::rfc3339_millis;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditConfig, AuditSink, WhenAuditFails};
use crate::secret::Secret;

/// One audit record, borrowing from the request's context (no copies on the request
/// path). Never a token, a JWT or record data. What is unknown or empty is left out of
/// the line (shorter lines: less to hash, write and store). Written by `line::to_json`,
/// which matches this derived serializer byte for byte (tested); a new field goes in both.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record<'a> {
    pub time: String,
    /// "intent" (before a mutating call is forwarded) or "final".
    pub phase: &'static str,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub groups: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_format: Option<&'static str>,
    /// allow, deny, or none (refused before a decision).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub reasons: &'a [String],
    /// Users affected (deleted, imported, mapped).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub users: &'a [String],
    /// Rights, DAGs and roles set: `user: field=value`.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub changes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The client's IP address, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<&'a str>,
    /// False when the client went away before the response was complete.
    pub complete: bool,
}

enum Msg {
    Write {
        line: String,
        /// Flush (and fsync if configured) before answering.
        ack: Option<oneshot::Sender<Result<(), String>>>,
    },
}

/// A handle to the audit writer.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    /// The writer thread: woken at once for intents and flushes; final records wait for
    /// its next round (at most `DRAIN_EVERY`), so requests never pay for a wake-up.
    writer: std::thread::Thread,
    healthy: Arc<AtomicBool>,
    pub on_failure_reads: WhenAuditFails,
    pub writes_ok: prometheus::IntCounter,
    pub writes_failed: prometheus::IntCounter,
}

#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written: {0}")]
pub struct AuditUnavailable(pub String);

trait Sink: Send {
    fn write_line(&mut self, line: &str) -> std::io::Result<()>;
    fn flush(&mut self, sync: bool) -> std::io::Result<()>;
}

struct Stdout(std::io::Stdout);

impl Sink for Stdout {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let mut l = self.0.lock();
        l.write_all(line.as_bytes())?;
        l.write_all(b"\n")
    }
    fn flush(&mut self, _sync: bool) -> std::io::Result<()> {
        self.0.lock().flush()
    }
}

struct FileSink {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    size: u64,
    max: u64,
    keep: usize,
    /// Only regular files are rotated (never a device, FIFO or /dev/stdout).
    regular: bool,
}

impl FileSink {
    fn open(path: &Path, max: u64, keep: usize) -> std::io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(FileSink {
            path: path.to_path_buf(),
            file: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            size: meta.len(),
            max,
            keep,
            regular: meta.is_file(),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let name = |k: usize| PathBuf::from(format!("{}.{k}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for k in (1..self.keep).rev() {
            if name(k).exists() {
                std::fs::rename(name(k), name(k + 1))?;
            }
        }
        std::fs::rename(&self.path, name(1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }
}

impl Sink for FileSink {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.regular && self.size > 0 && self.size + n > self.max {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += n;
        Ok(())
    }
    fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        self.file.flush()?;
        if sync {
            self.file.get_ref().sync_data()?;
        }
        Ok(())
    }
}

/// The hash of the last sealed line of a file, to continue its chain after a restart.
/// Only regular files are read, and only their last 64 KiB: a device or FIFO as the
/// audit path (e.g. /dev/full, which reads as endless zeros) must not be read at all.
fn last_hash(path: &Path) -> Option<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(meta.len().saturating_sub(64 * 1024)))
        .ok()?;
    let mut tail = Vec::new();
    f.take(64 * 1024).read_to_end(&mut tail).ok()?;
    let last = BufReader::new(tail.as_slice())
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .last()?;
    chain::open(&last).map(|(h, _, _)| h.to_string())
}

impl Audit {
    /// Starts the writer thread.
    pub fn start(cfg: &AuditConfig) -> Result<Arc<Audit>, String> {
        let (sink, prev): (Box<dyn Sink>, String) = match cfg.sink {
            AuditSink::Stdout => (
                Box::new(Stdout(std::io::stdout())),
                chain::GENESIS.to_string(),
            ),
            AuditSink::File => {
                let path = cfg.path.as_ref().ok_or("audit.path is required")?;
                let prev = last_hash(path).unwrap_or_else(|| chain::GENESIS.to_string());
                let sink = FileSink::open(path, cfg.max_bytes.0, cfg.keep)
                    .map_err(|e| format!("audit.path {}: {e}", path.display()))?;
                (Box::new(sink), prev)
            }
        };
        let (tx, rx) = mpsc::channel(16_384);
        let healthy = Arc::new(AtomicBool::new(true));
        let writes_ok = prometheus::IntCounter::new(
            "redcap_gateway_audit_writes_total",
            "Audit records written",
        )
        .map_err(|e| e.to_string())?;
        let writes_failed = prometheus::IntCounter::new(
            "redcap_gateway_audit_write_failures_total",
            "Audit records that could not be written",
        )
        .map_err(|e| e.to_string())?;
        let w = Writer {
            sink,
            prev,
            key: cfg.hmac_key.clone(),
            fsync: cfg.fsync,
            healthy: healthy.clone(),
            ok: writes_ok.clone(),
            failed: writes_failed.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Audit {
            tx,
            writer: handle.thread().clone(),
            healthy,
            on_failure_reads: cfg.on_failure_reads,
            writes_ok,
            writes_failed,
        }))
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn line(r: &Record<'_>) -> String {
        line::to_json(r)
    }

    /// Writes and flushes an intent record; only then may a mutating call be forwarded.
    pub async fn intent(&self, r: &Record<'_>) -> Result<(), AuditUnavailable> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Write {
                line: Self::line(r),
                ack: Some(ack),
            })
            .await
            .map_err(|_| AuditUnavailable("the writer stopped".into()))?;
        self.writer.unpark();
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditUnavailable(e)),
            Err(_) => Err(AuditUnavailable("the writer stopped".into())),
        }
    }

    /// Queues a final record. Never blocks and never drops: when the queue is full the
    /// record waits on a task (the queue is bounded; backpressure, not loss).
    pub fn record(&self, r: &Record<'_>) {
        let msg = Msg::Write {
            line: Self::line(r),
            ack: None,
        };
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.writer.unpark();
                let tx = self.tx.clone();
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let _ = tx.send(msg).await;
                    });
                } else {
                    let _ = tx.blocking_send(msg);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.writes_failed.inc();
                tracing::error!("audit writer stopped; a record was lost");
            }
        }
    }

    /// Waits until everything queued so far is written (shutdown, tests).
    pub async fn flush(&self) -> Result<(), AuditUnavailable> {
        let (ack, done) = oneshot::channel();
        if self
            .tx
            .send(Msg::Write {
                line: String::new(),
                ack: Some(ack),
            })
            .await
            .is_err()
        {
            return Err(AuditUnavailable("the writer stopped".into()));
        }
        self.writer.unpark();
        done.await
            .map_err(|_| AuditUnavailable("the writer stopped".into()))?
            .map_err(AuditUnavailable)
    }
}

struct Writer {
    sink: Box<dyn Sink>,
    prev: String,
    key: Option<Secret>,
    fsync: bool,
    healthy: Arc<AtomicBool>,
    ok: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

/// How long a final record may wait for the writer's next round.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
/// One drain's records usually go out in one write.
const WRITE_BUFFER: usize = 256 * 1024;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        loop {
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if batch.is_empty() {
                            let _ = self.sink.flush(true);
                            return;
                        }
                        break;
                    }
                }
            }
            if batch.is_empty() {
                std::thread::park_timeout(DRAIN_EVERY);
                continue;
            }
            let full = batch.len() >= 4096;
            let mut acks = Vec::new();
            let mut result: Result<(), String> = Ok(());
            for Msg::Write { line, ack } in batch.drain(..) {
                if !line.is_empty() {
                    let (sealed, hash) = chain::seal(self.key.as_ref(), &self.prev, &line);
                    match self.sink.write_line(&sealed) {
                        Ok(()) => {
                            self.prev = hash;
                            self.ok.inc();
                        }
                        Err(e) => {
                            self.failed.inc();
                            result = Err(e.to_string());
                        }
                    }
                }
                acks.extend(ack);
            }
            let sync = self.fsync && !acks.is_empty();
            if let Err(e) = self.sink.flush(sync) {
                result = Err(e.to_string());
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, "audit write failed");
            }
            self.healthy.store(result.is_ok(), Ordering::Relaxed);
            let answered = !acks.is_empty();
            for a in acks {
                let _ = a.send(result.clone());
            }
            // Under a steady load, final records gather for one drain period and go out
            // in one write, instead of a write per handful of records. Intents unpark.
            if !full && !answered {
                std::thread::park_timeout(DRAIN_EVERY);
            }
        }
    }
}

/// The files of a log in chain order: rotated ones (oldest first), then the live file.
pub fn chain_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = (1..=10_000)
        .map(|k| (k, PathBuf::from(format!("{}.{k}", path.display()))))
        .take_while(|(_, p)| p.exists())
        .collect();
    rotated.reverse();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(path.to_path_buf());
    out
}
