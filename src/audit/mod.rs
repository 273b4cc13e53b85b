//! The audit log: one record per request (and an intent record before every mutating
//! call), hash-chained, written by a dedicated thread so the runtime never blocks.
//! Mutating calls fail closed (503) when the intent cannot be written.

pub mod chain;
mod line;

pub use line::rfc3339_millis;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
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
    /// A restricted export's effective rights (`deidentified; consent=none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_rights: Option<&'a str>,
    /// The field set asked of REDCap (or its hash when long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_fields: Option<&'a str>,
    /// Named fields and instruments the rights removed.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub export_dropped: &'a [String],
    /// A DAG-scoped call's groups (`site_a,site_b`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dag_scope: Option<&'a str>,
    /// Rows of other groups the response filter dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_dropped: Option<u64>,
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
    /// The chain and its sink, shared by the writer thread and (for intents, when the
    /// sink is a regular file without fsync) the serving threads.
    log: Arc<Log>,
    pub on_failure_reads: WhenAuditFails,
    pub writes_ok: prometheus::IntCounter,
    pub writes_failed: prometheus::IntCounter,
}

/// The end of the chain: the sink and the hash of the last line written to it.
struct Chain {
    sink: Box<dyn Sink>,
    prev: String,
}

struct Log {
    chain: std::sync::Mutex<Chain>,
    key: Option<Secret>,
    fsync: bool,
    /// Intents and the final records of complete answers may be written by the thread
    /// that asks for them (`write_inline`): the sink is a regular
    /// file (a write lands in the page cache; a pipe or terminal could block on a slow
    /// reader) and nothing waits for fsync.
    inline_writes: bool,
    healthy: AtomicBool,
    ok: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `lock`, unless the writer thread holds the chain at this moment.
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, Chain>> {
        match self.chain.try_lock() {
            Ok(c) => Some(c),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Seals and writes `lines` (empty ones are skipped), then flushes, and fsyncs if
    /// `sync`. The first failure is returned, and the log marked unhealthy until a
    /// write succeeds again.
    fn append<'l>(
        &self,
        chain: &mut Chain,
        lines: impl Iterator<Item = &'l str>,
        sync: bool,
    ) -> Result<(), String> {
        let mut result = Ok(());
        for line in lines.filter(|l| !l.is_empty()) {
            let (sealed, hash) = chain::seal(self.key.as_ref(), &chain.prev, line);
            match chain.sink.write_line(&sealed) {
                Ok(()) => {
                    chain.prev = hash;
                    self.ok.inc();
                }
                Err(e) => {
                    self.failed.inc();
                    result = Err(e.to_string());
                }
            }
        }
        if let Err(e) = chain.sink.flush(sync) {
            result = Err(e.to_string());
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit write failed");
        }
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result
    }
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

/// Where a file's chain ends, read at start-up to continue it.
struct Tail {
    /// The hash of the last whole line (None: no whole line in the last 64 KiB).
    last_hash: Option<String>,
    /// The last line is torn (a crash cut it short): its length, and whether it lacks its
    /// line end.
    torn: Option<(usize, bool)>,
}

/// Reads the end of a file's chain. Only regular files are read, and only their last
/// 64 KiB: a device or FIFO as the audit path (e.g. /dev/full, which reads as endless
/// zeros) must not be read at all.
fn read_tail(path: &Path, key: Option<&Secret>) -> Tail {
    let none = Tail {
        last_hash: None,
        torn: None,
    };
    let Some(tail) = file_tail(path) else {
        return none;
    };
    let text = String::from_utf8_lossy(&tail);
    let unterminated = !text.is_empty() && !text.ends_with('\n');
    let mut lines = text.split_terminator('\n').filter(|l| !l.is_empty()).rev();
    let Some(last) = lines.next() else {
        return none;
    };
    if chain::is_whole(key, last) {
        let hash = chain::open(last).map(|(h, _, _)| h.to_string());
        // A whole line missing only its line end: ended, and the chain goes on from it.
        let torn = unterminated.then_some((0, true));
        return Tail {
            last_hash: hash,
            torn,
        };
    }
    Tail {
        last_hash: lines.find_map(|l| chain::open(l).map(|(h, _, _)| h.to_string())),
        torn: Some((last.len(), unterminated)),
    }
}

fn file_tail(path: &Path) -> Option<Vec<u8>> {
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
    Some(tail)
}

/// Where the chain ends, for a restart: the file's own last whole line, else (a file
/// just rotated) the newest rotated file's. Ends a torn last line and writes the notice
/// that reports it (chain.rs), so the chain continues across the crash.
fn continue_chain(path: &Path, key: Option<&Secret>) -> Result<String, String> {
    let tail = read_tail(path, key);
    let prev = tail
        .last_hash
        .or_else(|| read_tail(&PathBuf::from(format!("{}.1", path.display())), key).last_hash)
        .unwrap_or_else(|| chain::GENESIS.to_string());
    let Some((torn_bytes, unterminated)) = tail.torn else {
        return Ok(prev);
    };
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("audit.path {}: {e}", path.display()))?;
    let mut text = String::new();
    if unterminated {
        text.push('\n');
    }
    if torn_bytes == 0 {
        f.write_all(text.as_bytes())
            .map_err(|e| format!("audit.path {}: {e}", path.display()))?;
        return Ok(prev);
    }
    let now = line::rfc3339_millis(std::time::SystemTime::now());
    let (sealed, hash) = chain::seal(key, &prev, &chain::torn_notice(&now, torn_bytes));
    text.push_str(&sealed);
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| format!("audit.path {}: {e}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        torn_bytes,
        "the audit log ended with a line cut short (the gateway stopped while writing it); \
         a notice after it continues the chain"
    );
    Ok(hash)
}

impl Audit {
    /// Starts the writer thread.
    pub fn start(cfg: &AuditConfig) -> Result<Arc<Audit>, String> {
        let (sink, prev, regular): (Box<dyn Sink>, String, bool) = match cfg.sink {
            AuditSink::Stdout => (
                Box::new(Stdout(std::io::stdout())),
                chain::GENESIS.to_string(),
                false,
            ),
            AuditSink::File => {
                let path = cfg.path.as_ref().ok_or("audit.path is required")?;
                let prev = continue_chain(path, cfg.hmac_key.as_ref())?;
                let sink = FileSink::open(path, cfg.max_bytes.0, cfg.keep)
                    .map_err(|e| format!("audit.path {}: {e}", path.display()))?;
                let regular = sink.regular;
                (Box::new(sink), prev, regular)
            }
        };
        let (tx, rx) = mpsc::channel(16_384);
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
        let log = Arc::new(Log {
            chain: std::sync::Mutex::new(Chain { sink, prev }),
            key: cfg.hmac_key.clone(),
            fsync: cfg.fsync,
            inline_writes: regular && !cfg.fsync,
            healthy: AtomicBool::new(true),
            ok: writes_ok.clone(),
            failed: writes_failed.clone(),
        });
        let w = Writer { log: log.clone() };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Audit {
            tx,
            writer: handle.thread().clone(),
            log,
            on_failure_reads: cfg.on_failure_reads,
            writes_ok,
            writes_failed,
        }))
    }

    pub fn healthy(&self) -> bool {
        self.log.healthy.load(Ordering::Relaxed)
    }

    fn line(r: &Record<'_>) -> String {
        line::to_json(r)
    }

    /// Writes `line` on the calling thread, when the sink allows it and the writer thread
    /// is not writing at this moment (None: the writer thread must do it).
    fn write_inline(&self, line: &str) -> Option<Result<(), String>> {
        if !self.log.inline_writes {
            return None;
        }
        let mut chain = self.log.try_lock()?;
        Some(self.log.append(&mut chain, std::iter::once(line), false))
    }

    /// Writes and flushes an intent record; only then may a mutating call be forwarded.
    ///
    /// Into a regular file without fsync, the calling thread writes it itself when the
    /// writer thread is not writing at that moment: one `write` into the page cache
    /// instead of waking the writer and being woken by its answer (two thread switches,
    /// most of what an import cost over an export). Otherwise the writer thread writes it.
    pub async fn intent(&self, r: &Record<'_>) -> Result<(), AuditUnavailable> {
        let line = Self::line(r);
        if let Some(written) = self.write_inline(&line) {
            return written.map_err(AuditUnavailable);
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Write {
                line,
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

    /// Writes a final record before its response's last byte goes out (the observe
    /// layer holds that byte back until this is done), so a crash (SIGKILL, the OOM
    /// killer) right after a caller got an answer cannot lose the record of it: into a
    /// regular file the calling thread writes it itself (one `write` into the page cache,
    /// as for intents) when the writer thread is not writing at that moment; otherwise
    /// the writer thread writes it, woken at once, and the returned receiver says when.
    pub fn record_before_answer(
        &self,
        r: &Record<'_>,
    ) -> Option<oneshot::Receiver<Result<(), String>>> {
        let line = Self::line(r);
        // A failure is counted and logged, and the log marked unhealthy; the answer
        // still goes (the caller already has all but its last bytes).
        if self.write_inline(&line).is_some() {
            return None;
        }
        let (ack, done) = oneshot::channel();
        let queued = self.enqueue(Msg::Write {
            line,
            ack: Some(ack),
        });
        self.writer.unpark();
        queued.then_some(done)
    }

    /// Queues a final record. Never blocks and never drops: when the queue is full the
    /// record waits on a task (the queue is bounded; backpressure, not loss).
    pub fn record(&self, r: &Record<'_>) {
        self.enqueue(Msg::Write {
            line: Self::line(r),
            ack: None,
        });
    }

    /// Queues a message for the writer thread. Never blocks and never drops: when the
    /// queue is full the message waits on a task (backpressure, not loss). False only
    /// when the writer has stopped (counted and logged: the record is lost).
    fn enqueue(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
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
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.writes_failed.inc();
                tracing::error!("audit writer stopped; a record was lost");
                false
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
    log: Arc<Log>,
}

/// How long a final record may wait for the writer's next round.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
/// One drain's records usually go out in one write.
const WRITE_BUFFER: usize = 256 * 1024;

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        loop {
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if batch.is_empty() {
                            let _ = self.log.lock().sink.flush(true);
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
            let mut lines = Vec::with_capacity(batch.len());
            for Msg::Write { line, ack } in batch.drain(..) {
                lines.push(line);
                acks.extend(ack);
            }
            let sync = self.log.fsync && !acks.is_empty();
            let result = {
                let mut chain = self.log.lock();
                self.log
                    .append(&mut chain, lines.iter().map(String::as_str), sync)
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    fn record(phase: &'static str, id: &str) -> String {
        line::to_json(&Record {
            time: "2026-12-03T00:00:00.000Z".into(),
            phase,
            request_id: id,
            decision: "allow",
            ..Record::default()
        })
    }

    /// Intents written by the asking threads and final records written by the writer
    /// thread, at once from several threads and across rotations, form one chain with
    /// every record in it.
    /// After a crash: a torn last line is ended and reported by a sealed notice, and the
    /// chain continues from the last whole line; a whole line missing its line end is
    /// just ended; a file rotated just before the stop continues the rotated file's chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_after_a_crash_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = Secret::new("k".repeat(32));
        let cfg = AuditConfig {
            sink: AuditSink::File,
            path: Some(path.clone()),
            hmac_key: Some(key.clone()),
            ..AuditConfig::default()
        };
        let write = |n: usize| {
            let cfg = cfg.clone();
            async move {
                let audit = Audit::start(&cfg).unwrap();
                for i in 0..n {
                    let id = i.to_string();
                    audit.record(&Record {
                        time: "2026-12-06T00:00:00.000Z".into(),
                        phase: "final",
                        request_id: &id,
                        decision: "allow",
                        ..Record::default()
                    });
                }
                audit.flush().await.unwrap();
            }
        };
        let verify = || {
            let texts: Vec<(String, String)> = chain_files(&path)
                .iter()
                .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
                .collect();
            chain::verify(&texts, Some(&key))
        };
        let append = |bytes: &str| {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(bytes.as_bytes()).unwrap();
        };

        write(5).await;
        // Killed while writing a line: 120 of its bytes reached the file.
        let text = std::fs::read_to_string(&path).unwrap();
        let cut = &text.lines().next().unwrap()[..120];
        append(cut);
        write(2).await;
        let v = verify().unwrap();
        assert_eq!(v.records, 5 + 1 + 2, "the notice is a record");
        assert_eq!(v.torn, vec![(path.display().to_string(), 6)]);
        let text = std::fs::read_to_string(&path).unwrap();
        let notice = text.lines().nth(6).unwrap();
        assert!(
            notice.contains("\"event\":\"torn_line\",\"torn_bytes\":120"),
            "{notice}"
        );

        // Killed after a whole line, before its line end.
        std::fs::write(&path, text.strip_suffix('\n').unwrap()).unwrap();
        write(1).await;
        let v = verify().unwrap();
        assert_eq!((v.records, v.torn.len()), (9, 1));

        // Rotated, then stopped before writing to the new file.
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        write(1).await;
        let v = verify().unwrap();
        assert_eq!((v.records, v.starts_mid_chain), (10, false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inline_intents_and_queued_records_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = Secret::new("k".repeat(32));
        for (fsync, expect_inline) in [(false, true), (true, false)] {
            let cfg = AuditConfig {
                sink: AuditSink::File,
                path: Some(path.clone()),
                max_bytes: Size(64 * 1024),
                keep: 1000,
                hmac_key: Some(key.clone()),
                fsync,
                ..AuditConfig::default()
            };
            let audit = Audit::start(&cfg).unwrap();
            assert_eq!(audit.log.inline_writes, expect_inline);
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let audit = audit.clone();
                    tokio::spawn(async move {
                        for i in 0..150 {
                            let id = format!("{t}-{i}");
                            let r = Record {
                                time: "2026-12-03T00:00:00.000Z".into(),
                                phase: "intent",
                                request_id: &id,
                                decision: "allow",
                                ..Record::default()
                            };
                            audit.intent(&r).await.unwrap();
                            audit.record(&Record {
                                phase: "final",
                                ..r
                            });
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            audit.flush().await.unwrap();
        }
        let texts: Vec<(String, String)> = chain_files(&path)
            .iter()
            .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
            .collect();
        assert!(texts.len() > 3, "rotated several times");
        let v = chain::verify(&texts, Some(&key)).unwrap();
        assert_eq!(v.records, 2 * 2 * 8 * 150);
        let all: String = texts.iter().map(|(_, t)| t.as_str()).collect();
        for phase in ["intent", "final"] {
            let line = record(phase, "7-149");
            let body = line.trim_start_matches('{');
            assert_eq!(all.matches(body).count(), 2, "{phase} once per round");
        }
    }
}
