//! The record of requests received, and when their answers were fully handed over.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde_json::Value;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub path: String,
    /// `model` of the body, or empty.
    pub model: String,
    /// `stream` of the body, or false.
    pub stream: bool,
    /// Whether the request carried the right key for its protocol.
    pub authorized: bool,
    /// The max tokens the request asked for, read as its protocol defines it.
    pub max_tokens: Option<u64>,
    /// The parsed body, or `null` when it was not JSON.
    pub body: Value,
    /// True once the whole answer was handed to the connection: false while a stream runs, and
    /// for good when the client went away before its end.
    pub completed: bool,
}

impl RecordedRequest {
    pub(crate) fn new(path: &str, body: Value, authorized: bool, max_tokens: Option<u64>) -> Self {
        Self {
            path: path.to_owned(),
            model: body.get("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            authorized,
            max_tokens,
            body,
            completed: false,
        }
    }
}

#[derive(Default)]
pub(crate) struct RequestLog(Mutex<Vec<RecordedRequest>>);

impl RequestLog {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A panicking handler must not hide the record from the test that wants to see it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request; its answer goes through the returned [`Entry`].
    pub(crate) fn record(self: &Arc<Self>, request: RecordedRequest) -> Entry {
        let mut entries = self.entries();
        entries.push(request);
        Entry { log: self.clone(), index: entries.len() - 1 }
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.entries().clone()
    }
}

/// A recorded request whose answer is still to be sent.
pub(crate) struct Entry {
    log: Arc<RequestLog>,
    index: usize,
}

impl Entry {
    /// The answer, with a body that marks the request completed after its last frame.
    pub(crate) fn answer(self, response: Response) -> Response {
        response.map(|inner| Body::new(Tracked { inner, entry: Some(self) }))
    }

    fn complete(self) {
        self.log.entries()[self.index].completed = true;
    }
}

/// A body that calls [`Entry::complete`] once its last frame has been taken.
struct Tracked {
    inner: Body,
    entry: Option<Entry>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A sized body (JSON) is over with its data frame: hyper may never poll it again.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(entry) = self.entry.take() {
                entry.complete();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
