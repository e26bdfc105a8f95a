//! The record of requests received, and when their answers were fully handed over.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

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
    /// Output tokens the "model" had generated for this request so far: a whole answer's at once,
    /// a stream's as each event is produced (before it is written). What a provider would bill.
    pub output_generated: u64,
    /// When the client went away before the answer's end (the connection dropped the answer):
    /// a meter that closes the upstream as soon as its own caller leaves is seen here.
    pub hung_up_at: Option<Instant>,
    /// When its body had been read.
    pub received_at: Instant,
    /// The bearer key it came with (chat completions), to tell whose key a call used.
    pub key: Option<String>,
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
            output_generated: 0,
            hung_up_at: None,
            received_at: Instant::now(),
            key: None,
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
    /// The answer, with a body that marks the request completed after its last frame (or hung up
    /// when it is dropped before).
    pub(crate) fn answer(self, response: Response) -> Response {
        response.map(|inner| Body::new(Tracked { inner, entry: Some(self) }))
    }

    /// Where the answer's generated tokens are counted.
    pub(crate) fn progress(&self) -> Progress {
        Progress { log: self.log.clone(), index: self.index }
    }

    fn complete(self) {
        self.log.entries()[self.index].completed = true;
    }

    fn hang_up(self) {
        self.log.entries()[self.index].hung_up_at = Some(Instant::now());
    }
}

/// Counts the output tokens generated for one recorded request.
#[derive(Clone)]
pub(crate) struct Progress {
    log: Arc<RequestLog>,
    index: usize,
}

impl Progress {
    pub(crate) fn generated(&self, tokens: u64) {
        self.log.entries()[self.index].output_generated += tokens;
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

impl Drop for Tracked {
    fn drop(&mut self) {
        // Dropped before its end: the connection went away mid-answer.
        if let Some(entry) = self.entry.take() {
            entry.hang_up();
        }
    }
}
