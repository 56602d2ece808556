//! A connection whose replies are bounded in size.
//!
//! The `redis` crate buffers and parses a whole reply before handing it over, and a
//! writer to the stream decides how large an entry is (up to Redis's own limits, about
//! 512 MB a field). The feed therefore reads through [`Capped`], which counts the bytes
//! of the reply to the one command in flight and breaks the connection once they pass
//! the budget. The feed then reads that stream through a server-side script that
//! strips oversized entries (see `consumer.rs`), so no step holds more than the budget.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The byte budget of the reply in flight, shared by the consumer and its connection.
#[derive(Debug, Default)]
pub(crate) struct ReplyBudget {
    remaining: AtomicUsize,
    tripped: AtomicBool,
}

impl ReplyBudget {
    /// Allow the next reply `bytes` bytes. The feed sends one command at a time, so
    /// the budget always belongs to the command about to be sent.
    pub(crate) fn arm(&self, bytes: usize) {
        self.remaining.store(bytes, Ordering::Release);
    }

    /// Whether a reply went over its budget (the connection is then broken).
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    /// Account for `n` bytes read; `false` once the budget is exceeded.
    fn take(&self, n: usize) -> bool {
        let mut cur = self.remaining.load(Ordering::Acquire);
        loop {
            let Some(next) = cur.checked_sub(n) else {
                self.tripped.store(true, Ordering::Release);
                return false;
            };
            match self.remaining.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// A stream that fails reads past the armed [`ReplyBudget`].
pub(crate) struct Capped<S> {
    inner: S,
    budget: Arc<ReplyBudget>,
}

impl<S> Capped<S> {
    pub(crate) fn new(inner: S, budget: Arc<ReplyBudget>) -> Self {
        Self { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget.tripped() {
            return Poll::Ready(Err(over_budget()));
        }
        // Never read more than one byte past the budget in one call: a parser that
        // reserved room for a huge bulk string would otherwise have the kernel copy
        // megabytes into it before the count is checked.
        let limit = self
            .budget
            .remaining()
            .saturating_add(1)
            .min(buf.remaining());
        let mut window = ReadBuf::new(buf.initialize_unfilled_to(limit));
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut window);
        let n = window.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(n);
            if !self.budget.take(n) {
                return Poll::Ready(Err(over_budget()));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn over_budget() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "reply larger than the feed's size bound",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_fail_once_the_armed_budget_is_spent() {
        let budget = Arc::new(ReplyBudget::default());
        budget.arm(10);
        let data: &[u8] = &[7u8; 64];
        let mut s = Capped::new(data, budget.clone());
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 8);
        assert!(!budget.tripped());
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(budget.tripped());
        // No single read goes more than a byte past the budget.
        let budget = Arc::new(ReplyBudget::default());
        budget.arm(3);
        let mut s2 = Capped::new(data, budget.clone());
        let mut big = [0u8; 64];
        assert_eq!(
            s2.read(&mut big).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let budget2 = Arc::new(ReplyBudget::default());
        budget2.arm(64);
        let mut s3 = Capped::new(data, budget2.clone());
        assert_eq!(s3.read(&mut big).await.unwrap(), 64);
        assert!(!budget2.tripped());
        // Broken for good: re-arming does not revive the connection.
        budget.arm(1000);
        assert!(s.read(&mut buf).await.is_err());
    }
}
