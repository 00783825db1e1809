//! The request body sent to a backend: streamed frame by frame (never buffered whole),
//! counted, and bounded in time: a client that stops sending its body is not waited for
//! forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future as _;
use tokio::time::{Instant, Sleep};

/// Why a request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// No byte arrived for `timeouts.body_read`.
    #[error("no request body byte for {0:?}")]
    Stalled(Duration),
    /// The client's side failed.
    #[error("reading the request body failed")]
    Client(#[source] hyper::Error),
}

/// The request body sent to a backend: the client's body (or nothing), with its bytes counted.
pub(crate) struct UpstreamBody {
    inner: Option<Incoming>,
    counted: Arc<AtomicU64>,
    /// How long the client may leave the body waiting.
    patience: Duration,
    /// Armed while the client keeps us waiting; boxed because most bodies never wait.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, counted: Arc<AtomicU64>, patience: Duration) -> Self {
        Self { inner: Some(inner), counted, patience, deadline: None }
    }

    pub(crate) fn empty() -> Self {
        Self { inner: None, counted: Arc::default(), patience: Duration::MAX, deadline: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counted.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                this.deadline = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let patience = this.patience;
                let deadline =
                    this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + patience)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(patience)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
