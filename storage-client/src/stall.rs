//! Cutting off a node's output that stops: a git process that hangs, or a node the
//! network no longer reaches, would otherwise hold its client (and a pack cache
//! producer) forever. The stream ends with [`GitStreamError::Stalled`], an error, so
//! whatever relays it never ends a truncated pack cleanly; dropping the inner stream
//! stops the node's git process.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use gitgate_storage_node::api::{GitStream, GitStreamError};
use tokio::time::{Instant, Sleep};

/// `stream`, failing once it has been waited on for `idle` without sending anything
/// (no item, not even an empty one). Only time spent waiting for the node counts: a
/// consumer that is slow to ask (a client not reading) never makes the node look stalled.
pub(crate) fn cut_when_idle(stream: GitStream, node: &str, idle: Duration) -> GitStream {
    Box::pin(IdleLimit {
        inner: Some(stream),
        node: node.to_owned(),
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
        waiting: false,
    })
}

struct IdleLimit {
    /// `None` once it ended or was cut off.
    inner: Option<GitStream>,
    node: String,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Whether the last poll found nothing: the deadline runs from the first of those.
    waiting: bool,
}

impl Stream for IdleLimit {
    type Item = <GitStream as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = inner.as_mut().poll_next(cx) {
            this.waiting = false;
            if item.is_none() {
                this.inner = None;
            }
            return Poll::Ready(item);
        }
        if !this.waiting {
            this.waiting = true;
            let deadline = Instant::now() + this.idle;
            this.deadline.as_mut().reset(deadline);
        }
        ready!(this.deadline.as_mut().poll(cx));
        // Dropping the inner stream stops the node's git process (or the request).
        this.inner = None;
        tracing::warn!(node = %this.node, idle = ?this.idle, "node output stalled; cutting it off");
        Poll::Ready(Some(Err(GitStreamError::Stalled {
            node: std::mem::take(&mut this.node),
            idle: this.idle,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_fails_after_the_idle_time_and_a_steady_one_never_does() {
        // Items every 5 s, then silence.
        let steady = futures_util::stream::iter(0..4).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, GitStreamError>(Bytes::from(vec![i; 3]))
        });
        let silent = steady.chain(futures_util::stream::pending());
        let mut cut = cut_when_idle(Box::pin(silent), "n1", Duration::from_secs(8));
        for i in 0..4u8 {
            let item = cut.next().await.expect("an item").expect("not cut off");
            assert_eq!(&item[..], &[i; 3]);
        }
        let start = Instant::now();
        match cut.next().await {
            Some(Err(GitStreamError::Stalled { node, idle })) => {
                assert_eq!((node.as_str(), idle), ("n1", Duration::from_secs(8)));
            }
            other => panic!("expected a stall, got {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        assert!(cut.next().await.is_none(), "nothing after the cut");
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_is_slow_to_ask_does_not_count_against_the_node() {
        let quick = futures_util::stream::iter(0..3u8).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, GitStreamError>(Bytes::from(vec![i]))
        });
        let mut s = cut_when_idle(Box::pin(quick), "n1", Duration::from_secs(2));
        for i in 0..3u8 {
            // The consumer goes away for far longer than the idle limit between items.
            tokio::time::sleep(Duration::from_secs(60)).await;
            let item = s.next().await.expect("an item").expect("not cut off");
            assert_eq!(&item[..], &[i]);
        }
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_ends() {
        let short = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]);
        let mut s = cut_when_idle(Box::pin(short), "n1", Duration::from_secs(1));
        assert!(matches!(s.next().await, Some(Ok(_))));
        assert!(s.next().await.is_none());
    }
}
