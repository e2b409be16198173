//! A TCP stream the relay can cut from outside its HTTP dispatcher.
//!
//! actix-http's dispatcher stops polling a response body while its write buffer is full,
//! so a peer that stops reading can never be told "your body failed" and would keep its
//! socket forever. Wrapping the stream lets a connection actor fail the socket's next read
//! and write and wake the dispatcher, which then drops the connection and frees its fd.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Cuts one connection. Cloned into the request's connection data by `on_connect_ext`.
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    /// The dispatcher task that last polled the stream: woken so it sees the kill at once.
    waker: AtomicWaker,
}

impl KillSwitch {
    /// Makes every later read and write of the stream fail, and wakes its dispatcher.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
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

/// An I/O stream paired with the [`KillSwitch`] that can cut it.
#[derive(Debug)]
pub struct Killable<T> {
    io: T,
    switch: Arc<KillSwitch>,
}

impl<T> Killable<T> {
    /// Wraps `io` with a fresh switch.
    pub fn new(io: T) -> Self {
        Self {
            io,
            switch: Arc::default(),
        }
    }

    /// The switch that cuts this stream.
    pub fn switch(&self) -> Arc<KillSwitch> {
        Arc::clone(&self.switch)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
