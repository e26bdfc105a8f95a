//! HTTP/1.1 over a Unix socket: how the control plane talks to an agent. One connection per
//! request keeps it simple and lets a dead agent show up as a connect error at once.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{Health, MessageIn, MessageOut};
use crate::uds::{self, ConnectError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent's socket does not answer: {0}")]
    Connect(std::io::Error),
    #[error("the agent did not answer in time")]
    Timeout,
    #[error("the agent broke the connection: {0}")]
    Http(String),
    #[error("the agent answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the agent's answer is not valid: {0}")]
    Decode(String),
}

/// Sends one request to the agent listening on `socket` and decodes its JSON answer.
pub async fn call<B: Serialize, R: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<R, ClientError> {
    tokio::time::timeout(timeout, call_inner(socket, method, path, body)).await.map_err(|_| ClientError::Timeout)?
}

async fn call_inner<B: Serialize, R: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<R, ClientError> {
    let mut conn = uds::connect(socket).await.map_err(|e| match e {
        ConnectError::Io(e) => ClientError::Connect(e),
        ConnectError::Handshake(e) => ClientError::Http(e.to_string()),
    })?;
    let bytes = match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?,
        None => Vec::new(),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let res = conn.sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
    drop(conn);
    if !status.is_success() {
        return Err(ClientError::Status { status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
}

pub async fn health(socket: &Path, timeout: Duration) -> Result<Health, ClientError> {
    call::<(), Health>(socket, Method::GET, "/health", None, timeout).await
}

/// Tells a warm-pool sandbox to take the identity in its run dir; answers as the claimed agent.
pub async fn claim(socket: &Path, timeout: Duration) -> Result<Health, ClientError> {
    call::<(), Health>(socket, Method::POST, "/claim", None, timeout).await
}

pub async fn message(socket: &Path, msg: &MessageIn, timeout: Duration) -> Result<MessageOut, ClientError> {
    call(socket, Method::POST, "/messages", Some(msg), timeout).await
}

/// Polls `/health` until it answers or `deadline` passes. Returns the first answer.
pub async fn wait_healthy(socket: &Path, deadline: Duration) -> Result<Health, ClientError> {
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        match health(socket, Duration::from_secs(2)).await {
            Ok(h) => return Ok(h),
            Err(e) if start.elapsed() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(20));
            }
        }
    }
}
