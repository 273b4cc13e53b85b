//! Lingering close, as nginx's `lingering_close`: when the gateway ends a connection whose
//! client may still be sending (an early 413, 431 or 401, a refused head, a body cut
//! short), closing the socket at once makes the kernel answer the unread bytes with a
//! reset, and a client that writes its whole request before reading (Python's
//! `http.client`, and so `urllib`) gets a broken pipe instead of the status. So the
//! write side is shut down first (the client reads the answer, then end of file), and
//! what the client still sends is read and thrown away for at most `linger_time` and
//! `linger_bytes` before the socket closes. A connection the client closed first (end
//! of file seen) closes at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long and how much a lingering close reads.
#[derive(Clone)]
pub struct Linger {
    pub time: Duration,
    pub bytes: u64,
    /// Lingering closes begun.
    pub count: IntCounter,
}

/// A client connection that lingers when dropped before its client closed it.
pub struct LingeringStream {
    stream: Option<TcpStream>,
    /// The client has closed its side: nothing more will come.
    eof: bool,
    linger: Linger,
}

impl LingeringStream {
    pub fn new(stream: TcpStream, linger: Linger) -> Self {
        LingeringStream {
            stream: Some(stream),
            eof: false,
            linger,
        }
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let Some(s) = self.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(s).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            self.eof = true;
        }
        r
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        if self.eof {
            return;
        }
        let (Some(stream), Ok(rt)) = (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        self.linger.count.inc();
        rt.spawn(linger(stream, self.linger.time, self.linger.bytes));
    }
}

/// Shuts the write side, then reads and discards until end of file, `time` or `bytes`.
async fn linger(mut s: TcpStream, time: Duration, bytes: u64) {
    let _ = s.shutdown().await;
    let deadline = tokio::time::Instant::now() + time;
    let mut buf = vec![0u8; 16 << 10];
    let mut left = bytes;
    while left > 0 {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            _ => break,
        }
    }
}
