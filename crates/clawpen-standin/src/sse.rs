//! Server-sent event answers that really stream: one body frame per event, paced.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use crate::log::Progress;

/// `data: <json>` (OpenAI's events carry no name).
pub(crate) fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `event: <name>` + `data: <json>` (Anthropic names each event by its type).
pub(crate) fn event(v: &Value) -> Bytes {
    let name = v["type"].as_str().unwrap_or_default();
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// Sends `events` in order, waiting `delay` before each but the first. Each event is paired with
/// the output tokens it carries, counted in `progress` when the event is produced.
pub(crate) fn response(events: Vec<(Bytes, u64)>, delay: Duration, progress: Progress) -> Response {
    let stream = futures_util::stream::iter(events).enumerate().then(move |(i, (event, tokens))| {
        let progress = progress.clone();
        async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            progress.generated(tokens);
            Ok::<_, Infallible>(event)
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(stream)).into_response()
}
