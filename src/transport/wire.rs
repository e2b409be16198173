//! One upgraded WebSocket's socket, taken out of the HTTP dispatcher: a reader the
//! connection's actor polls as a stream, and a writer task that drains the outbox.
//!
//! Why out of the dispatcher: actix-http keeps an 8 KiB read and an 8 KiB write buffer for
//! every connection for its whole life, and passes every message through its payload
//! channel and response-body machinery. Here an idle connection holds no buffer at all:
//! reads go into one scratch buffer per thread, and each frame's payload is unmasked from
//! it into a buffer of exactly its size; the writer hands the outbox's frames to the kernel
//! as they are (vectored writes), with no copy into a write buffer.
//!
//! The two halves share the socket. When the writer has sent the close frame (or the
//! outbox was closed), it shuts down its side and, once the reader is done too, reads and
//! discards what the peer still sends for a bounded time (a lingering close), so the peer
//! reads the close frame rather than a reset. A socket cut through the [`KillSwitch`] is
//! closed at once.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::Stream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::decode::{Inbound, Reader};
use super::kill::{KillSwitch, Linger};
use super::outbox::Outbox;

/// Bytes read from a socket at once (one buffer per thread, shared by its connections).
const SCRATCH_BYTES: usize = 64 * 1024;
/// Most frames the writer hands the kernel in one vectored write.
const MAX_BATCH: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Lends this thread's read buffer (`f` must not read a socket through the relay's reader
/// meanwhile).
pub fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|scratch| f(&mut scratch.borrow_mut()))
}

/// What a peer sends, as whole messages. Ends (`None`) when the socket is lost, cut or
/// closed without a close frame; a fatal event ([`Inbound::TooLarge`], …) is the last one.
pub struct InboundStream {
    kill: Arc<KillSwitch>,
    source: Source,
    done: bool,
}

/// Where a connection's messages come from.
enum Source {
    /// Its socket.
    Socket(SocketReader),
    /// A tunnel's queue: a virtual connection (see `transport::fed`).
    Fed(mpsc::Receiver<Inbound>, Arc<AtomicUsize>),
}

/// The reading half of a socket.
struct SocketReader {
    tcp: Arc<TcpStream>,
    /// The decoder and the start of a frame cut by the end of a read.
    reader: Reader,
    /// Events decoded from the last read, not yet taken (at most one read's worth).
    ready: VecDeque<Inbound>,
    /// Dropped with the stream: tells the writer the reader is done with the socket.
    _gone: oneshot::Sender<()>,
}

impl InboundStream {
    /// The stream of a virtual connection, read from `queue`; ends when its sender is
    /// dropped or the connection is cut.
    /// `queued` counts the bytes of the text messages in `queue`.
    pub(super) fn fed(
        kill: Arc<KillSwitch>,
        queue: mpsc::Receiver<Inbound>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            kill,
            source: Source::Fed(queue, queued),
            done: false,
        }
    }
}

impl Stream for InboundStream {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let next = match &mut this.source {
            Source::Socket(socket) => socket.poll_next(cx, &this.kill),
            Source::Fed(..) if this.kill.watch_reader(cx) => Poll::Ready(None),
            Source::Fed(queue, queued) => {
                let next = queue.poll_recv(cx);
                if let Poll::Ready(Some(Inbound::Text(text))) = &next {
                    queued.fetch_sub(text.len(), Ordering::Relaxed);
                }
                next
            }
        };
        if matches!(next, Poll::Ready(None)) {
            this.done = true;
        }
        next
    }
}

impl SocketReader {
    fn poll_next(&mut self, cx: &mut Context<'_>, kill: &KillSwitch) -> Poll<Option<Inbound>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.reader.done() || kill.watch_reader(cx) {
                return Poll::Ready(None);
            }
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                match self.tcp.try_read(&mut scratch) {
                    Ok(0) => Err(None),
                    Ok(n) => {
                        self.reader.absorb(&scratch[..n], &mut self.ready);
                        Ok(())
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(err) => Err(Some(err)),
                }
            });
            if read.is_err() {
                return Poll::Ready(None);
            }
        }
    }
}

/// Drains one connection's outbox into its socket, then closes it (lingering unless cut).
/// The future ends when the connection is over.
pub struct Writer {
    tcp: Option<Arc<TcpStream>>,
    outbox: Arc<Outbox>,
    kill: Arc<KillSwitch>,
    linger: Option<Linger>,
    /// Frames taken from the outbox and not yet all written; the first may be partly sent.
    batch: VecDeque<Bytes>,
    /// Resolves when the reader is done with the socket.
    reader_gone: Option<oneshot::Receiver<()>>,
}

impl Writer {
    /// Writes what is batched; `Ready(Ok)` once all of it is in the kernel.
    fn poll_flush_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tcp) = &self.tcp else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.batch.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_BATCH];
            let count = self.batch.len().min(MAX_BATCH);
            for (slice, frame) in slices.iter_mut().zip(&self.batch) {
                *slice = IoSlice::new(frame);
            }
            match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(mut written) => {
                    while written > 0 {
                        let Some(first) = self.batch.front_mut() else {
                            break;
                        };
                        if written >= first.len() {
                            written -= first.len();
                            self.batch.pop_front();
                        } else {
                            first.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if tcp.poll_write_ready(cx)?.is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Future for Writer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.kill.watch_writer(cx) {
                this.tcp = None;
                return Poll::Ready(());
            }
            match this.poll_flush_batch(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    this.tcp = None;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            match this.outbox.poll_take(cx, &mut this.batch, MAX_BATCH) {
                Poll::Ready(true) => continue,
                Poll::Pending => return Poll::Pending,
                // Closed and written: the connection is over on our side.
                Poll::Ready(false) => break,
            }
        }
        // Wait for the reader to be done (it may still be waiting for the peer's close
        // frame) before lingering on the socket; the relay cuts it if that takes too long.
        if let Some(gone) = this.reader_gone.as_mut() {
            if Pin::new(gone).poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.reader_gone = None;
        }
        if let (Some(tcp), Some(linger)) = (this.tcp.take(), this.linger.take()) {
            if let Ok(tcp) = Arc::try_unwrap(tcp) {
                linger.close(tcp);
            }
        }
        Poll::Ready(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Nothing will write these any more: free them, and refuse later pushes so a
        // partner still forwarding here learns the socket is gone.
        self.outbox.abandon();
    }
}

/// Splits an upgraded socket into the reader its actor polls and the writer that drains
/// `outbox`. `early` holds bytes read with the upgrade request (frames sent right after it).
pub fn open(
    tcp: TcpStream,
    early: &[u8],
    outbox: Arc<Outbox>,
    kill: Arc<KillSwitch>,
    linger: Option<Linger>,
    max_message_bytes: usize,
) -> (InboundStream, Writer) {
    let tcp = Arc::new(tcp);
    let (gone_tx, gone_rx) = oneshot::channel();
    let mut socket = SocketReader {
        tcp: Arc::clone(&tcp),
        reader: Reader::new(max_message_bytes),
        ready: VecDeque::new(),
        _gone: gone_tx,
    };
    if !early.is_empty() {
        socket.reader.absorb(early, &mut socket.ready);
    }
    let stream = InboundStream {
        kill: Arc::clone(&kill),
        source: Source::Socket(socket),
        done: false,
    };
    let writer = Writer {
        tcp: Some(tcp),
        outbox,
        kill,
        linger,
        batch: VecDeque::new(),
        reader_gone: Some(gone_rx),
    };
    (stream, writer)
}
