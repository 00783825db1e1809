//! The response body sent to the client: streamed frame by frame (never buffered whole),
//! counted, and tied to the bookkeeping that must happen when a request ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::exchange::{Ending, Exchange};
use crate::downstream::ConnState;

enum Source {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The response body sent to the client. It owns the request's [`Exchange`], which is finished
/// (logged, counted, its backend connection returned to the pool) when the body ends or is
/// dropped, whichever comes first.
pub(crate) struct ClientBody {
    source: Source,
    bytes: u64,
    exchange: Option<Exchange>,
    /// The client connection, told when a frame waits for hyper to come back (`send` timeout).
    conn: Option<Arc<ConnState>>,
    /// A frame was handed to hyper and hyper has not asked for the next one yet.
    handed: bool,
}

impl ClientBody {
    pub(crate) fn upstream(body: Incoming, exchange: Exchange) -> Self {
        let conn = Some(exchange.conn_state().clone());
        Self { source: Source::Upstream(body), bytes: 0, exchange: Some(exchange), conn, handed: false }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>, exchange: Option<Exchange>) -> Self {
        let bytes = bytes.into();
        let source = Source::Full((!bytes.is_empty()).then_some(bytes));
        let conn = exchange.as_ref().map(|e| e.conn_state().clone());
        Self { source, bytes: 0, exchange, conn, handed: false }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.bytes, ending);
        }
    }

    /// hyper is back for more (or gave up): the frame it was handed moved on.
    fn taken(&mut self) {
        if std::mem::take(&mut self.handed)
            && let Some(conn) = &self.conn
        {
            conn.frame_taken();
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        this.taken();
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(conn) = &this.conn {
                        conn.frame_handed();
                        this.handed = true;
                    }
                }
            }
            Poll::Ready(None) => this.finish(Ending::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(Ending::CutShort),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // A body that is never polled to its end (client gone, HEAD, 204) still ends the
        // request; an upstream body cut short leaves its connection in an unknown state.
        let ending = match &self.source {
            Source::Upstream(body) if !body.is_end_stream() => Ending::CutShort,
            _ => Ending::Complete,
        };
        self.taken();
        self.finish(ending);
    }
}
