//! Closing connections whose client takes no byte of an answer for
//! `response_idle_timeout_secs`. hyper 1 has no write timeout for HTTP/1, and an answer's
//! pieces hold their share of the byte budget until the client takes them (see
//! `engine::reader`), so a client that stops reading would hold that share for as long as it
//! keeps the connection open. A write that makes progress starts the time again, so a client
//! that takes a few bytes now and then is not cut off, and keeps its share meanwhile; and as
//! the kernel reports a socket writable only once part of its send buffer is free, a client
//! slower than about that much per timeout is cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's transport, failing its writes once one has waited `timeout` for the client.
pub struct StalledWrites<T> {
    inner: T,
    timeout: Duration,
    /// When the write waiting now fails; meaningful while `waiting`.
    deadline: Pin<Box<Sleep>>,
    waiting: bool,
    /// Counts the connections closed this way.
    closed: Counter,
}

impl<T> StalledWrites<T> {
    pub fn new(inner: T, timeout: Duration, closed: Counter) -> StalledWrites<T> {
        let timeout = timeout.min(crate::ids::LONGEST_TIMEOUT);
        StalledWrites { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)), waiting: false, closed }
    }

    /// Passes on a write's outcome; a write that cannot go on starts (or goes on) waiting, and
    /// fails once it has waited `timeout`.
    fn timed<R>(&mut self, polled: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !self.waiting {
            self.waiting = true;
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Counted once: a later poll of the failed connection starts waiting anew.
                self.waiting = false;
                self.closed.inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, StalledClient(self.timeout.as_secs()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The client took no byte of the answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the client took no byte of the answer for {0} seconds")]
pub struct StalledClient(u64);

impl<T: AsyncRead + Unpin> AsyncRead for StalledWrites<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StalledWrites<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed(polled, cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.timed(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.timed(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(16);
        let closed = Counter::default();
        let mut writes = StalledWrites::new(near, Duration::from_secs(5), closed.clone());
        let error = writes.write_all(&[7u8; 64]).await.expect_err("the peer takes nothing");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_taking_bytes_is_not_cut_off() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(16);
        let mut writes = StalledWrites::new(near, Duration::from_secs(5), Counter::default());
        let reader = tokio::spawn(async move {
            let mut taken = Vec::new();
            let mut piece = [0u8; 16];
            while taken.len() < 256 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let read = far.read(&mut piece).await.unwrap();
                taken.extend_from_slice(&piece[..read]);
            }
            taken
        });
        writes.write_all(&[9u8; 256]).await.expect("every write makes progress within the timeout");
        assert_eq!(reader.await.unwrap(), vec![9u8; 256]);
    }
}
