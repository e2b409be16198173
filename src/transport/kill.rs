//! A TCP stream the relay can cut from outside its HTTP dispatcher, and that lingers when
//! it is closed.
//!
//! actix-http's dispatcher stops polling a response body while its write buffer is full,
//! so a peer that stops reading can never be told "your body failed" and would keep its
//! socket forever. Wrapping the stream lets a connection actor fail the socket's next read
//! and write and wake the dispatcher, which then drops the connection and frees its fd.
//!
//! Lingering close: when the relay answers before it has read everything the client sends
//! (a 413 while the body is still coming, a close 1009 while the rest of an oversized
//! message is), closing the socket with unread bytes makes the kernel send a reset, which
//! destroys the answer on its way: the client sees a reset (a browser sees 1006). So when
//! the dispatcher lets go of a stream, it is handed to a small task that shuts down the
//! writing side (the client reads the answer, then end-of-stream) and reads and discards
//! what still arrives, until the client closes or [`Linger`]'s bytes or time run out. A
//! stream cut on purpose through its [`KillSwitch`] is closed at once.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Cuts one connection. Cloned into the request's connection data by `on_connect_ext`.
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    /// The dispatcher task that last polled the stream: woken so it sees the kill at once.
    waker: AtomicWaker,
    /// An upgraded WebSocket's reader (its actor) and writer, woken likewise.
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl KillSwitch {
    /// Makes every later read and write of the stream fail, and wakes its dispatcher.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
        self.reader.wake();
        self.writer.wake();
    }

    /// Whether the socket was cut; wakes the polling reader when it is.
    pub fn watch_reader(&self, cx: &Context<'_>) -> bool {
        self.reader.register(cx.waker());
        self.is_killed()
    }

    /// Whether the socket was cut; wakes the polling writer when it is.
    pub fn watch_writer(&self, cx: &Context<'_>) -> bool {
        self.writer.register(cx.waker());
        self.is_killed()
    }

    /// Whether [`Self::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.is_killed() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut by the relay",
            ))
        } else {
            Ok(())
        }
    }
}

/// How closed connections linger, and how many may at once; shared by the whole server.
#[derive(Debug, Clone)]
pub struct Linger {
    time: Duration,
    bytes: usize,
    max: usize,
    /// Connections lingering now, over every worker.
    active: Arc<AtomicUsize>,
}

impl Linger {
    /// Reads and discards at most `bytes` for at most `time` after a close, with at most
    /// `max` connections lingering at once. A zero `time` closes at once.
    pub fn new(time: Duration, bytes: usize, max: usize) -> Self {
        Self {
            time,
            bytes,
            max,
            active: Arc::default(),
        }
    }

    /// Connections lingering now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A place among the lingering connections, if there is room.
    fn admit(&self) -> Option<LingerPlace> {
        if self.time.is_zero() {
            return None;
        }
        if self.active.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(LingerPlace(Arc::clone(&self.active)))
    }

    /// Closes `io` lingering (if there is room among the lingering; else at once). Outside
    /// a runtime (a test dropping it, the runtime going away) `io` closes at once.
    pub fn close<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, io: T) {
        let Some(place) = self.admit() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.clone().drain(io, place));
        }
    }

    /// Reads and discards until the peer closes, an error, `bytes` or `time`, whichever
    /// comes first, shutting down `io`'s writing side once the peer is quiet; then `io`
    /// is closed.
    async fn drain<T: AsyncRead + AsyncWrite + Unpin>(self, mut io: T, _place: LingerPlace) {
        let mut left = self.bytes;
        let drain = async {
            // The FIN waits until the peer has been quiet for LINGER_QUIET (or closed): a
            // proxy such as nginx that sees the relay's FIN while the client is still
            // sending closes the client's connection with those bytes unread, and the
            // client's reset destroys the close frame or 413 it was about to read.
            let mut shut = false;
            // Most peers answer the close and go: a small buffer sees that. Only a peer
            // that fills it gets a large one (zeroing 16 KiB for every closed
            // connection was a tenth of what a pairing cost).
            let mut small = [0u8; 256];
            let mut large: Vec<u8> = Vec::new();
            while left > 0 {
                let buf = match large.is_empty() {
                    true => &mut small[..],
                    false => &mut large[..],
                };
                let read = match shut {
                    true => io.read(buf).await,
                    false => match tokio::time::timeout(LINGER_QUIET, io.read(buf)).await {
                        Ok(read) => read,
                        Err(_quiet) => {
                            let _ = io.shutdown().await;
                            shut = true;
                            continue;
                        }
                    },
                };
                let full = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        left = left.saturating_sub(n);
                        n == buf.len()
                    }
                };
                // A close frame fits the small buffer; only a read that fills it means
                // the peer is still sending in earnest.
                if full && large.is_empty() {
                    large = vec![0u8; 16 * 1024];
                }
            }
        };
        let _ = tokio::time::timeout(self.time, drain).await;
    }
}

/// How long a lingering peer must send nothing before the relay sends its FIN: long enough
/// for a client's last bytes in flight (the rest of an oversized message, its close frame)
/// to arrive, short enough that an ordinary close is not held up noticeably.
const LINGER_QUIET: Duration = Duration::from_millis(100);

/// One connection's place among the lingering; given back when its task ends or is
/// dropped (at shutdown).
struct LingerPlace(Arc<AtomicUsize>);

impl Drop for LingerPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream paired with the [`KillSwitch`] that can cut it.
#[derive(Debug)]
pub struct Killable<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always `Some` until dropped, when it is handed to the lingering task.
    io: Option<T>,
    switch: Arc<KillSwitch>,
    linger: Option<Linger>,
    /// Something that must live exactly as long as the connection (its place in a count).
    guard: Option<Arc<dyn Any + Send + Sync>>,
    /// Bytes already read from `io` by someone else, read again before anything from `io`
    /// (a first request looked at before the HTTP layer got the connection).
    replay: Bytes,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Killable<T> {
    /// Wraps `io` with a fresh switch; closes at once when dropped.
    pub fn new(io: T) -> Self {
        Self {
            io: Some(io),
            switch: Arc::default(),
            linger: None,
            guard: None,
            replay: Bytes::new(),
        }
    }

    /// Reads `bytes` (already taken from the stream) again before the rest of the stream.
    pub fn replaying(mut self, bytes: Bytes) -> Self {
        self.replay = bytes;
        self
    }

    /// The stream itself, to wait for it to be readable and read it (nothing replayed).
    pub fn get_ref(&self) -> Option<&T> {
        self.io.as_ref()
    }

    /// Keeps `guard` alive as long as the stream (dropped before it lingers).
    pub fn holding<G: Any + Send + Sync>(mut self, guard: Arc<G>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The guard given to [`Self::holding`], if it is a `G`.
    pub fn guard<G: Any + Send + Sync>(&self) -> Option<Arc<G>> {
        Arc::clone(self.guard.as_ref()?).downcast().ok()
    }

    /// Lingers as `linger` says when dropped, unless cut.
    pub fn lingering(mut self, linger: Linger) -> Self {
        self.linger = Some(linger);
        self
    }

    /// The switch that cuts this stream.
    pub fn switch(&self) -> Arc<KillSwitch> {
        Arc::clone(&self.switch)
    }

    /// Takes the stream out (an upgraded WebSocket, which does its own reading, writing and
    /// lingering): the stream, its switch, how it should linger, and what of the replayed
    /// bytes was not read yet. What it was counted in as a plain HTTP connection is released.
    pub fn into_parts(mut self) -> Option<(T, Arc<KillSwitch>, Option<Linger>, Bytes)> {
        self.guard = None;
        let io = self.io.take()?;
        let unread = std::mem::take(&mut self.replay);
        Some((io, Arc::clone(&self.switch), self.linger.take(), unread))
    }

    fn io(&mut self) -> io::Result<Pin<&mut T>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection already closed"))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Killable<T> {
    fn drop(&mut self) {
        // The connection is over for whatever it was counted in, lingering or not.
        self.guard = None;
        let Some(io) = self.io.take() else { return };
        if self.switch.is_killed() {
            return;
        }
        if let Some(linger) = self.linger.take() {
            linger.close(io);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            if self.replay.is_empty() {
                // Let go of the whole first read, not only its view.
                self.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        self.io()?.poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.check(cx)?;
        self.io()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.switch.check(cx)?;
        self.io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_connections_linger_at_once_and_zero_time_never_lingers() {
        let linger = Linger::new(Duration::from_secs(1), 1024, 2);
        let a = linger.admit();
        let b = linger.admit();
        assert!(a.is_some() && b.is_some());
        assert!(linger.admit().is_none());
        drop(a);
        assert_eq!(linger.active(), 1);
        assert!(linger.admit().is_some());
        assert!(Linger::new(Duration::ZERO, 1024, 2).admit().is_none());
    }
}
