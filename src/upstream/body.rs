//! The request body sent to a backend: streamed frame by frame (never buffered whole) and
//! counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The request body sent to a backend: the client's body (or nothing), with its bytes counted.
pub(crate) struct UpstreamBody {
    inner: Option<Incoming>,
    counted: Arc<AtomicU64>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, counted: Arc<AtomicU64>) -> Self {
        Self { inner: Some(inner), counted }
    }

    pub(crate) fn empty() -> Self {
        Self { inner: None, counted: Arc::default() }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counted.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
