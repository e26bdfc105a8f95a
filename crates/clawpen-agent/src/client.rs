//! HTTP/1.1 over a Unix socket: how the control plane talks to an agent. One connection per
//! request keeps it simple and lets a dead agent show up as a connect error at once.
//!
//! The socket is in a dir the sandbox owns, so it is reached through [`AgentAddr`]: never by
//! following a link, and only once the listener is shown to be that sandbox's process
//! (`clawpen_hostfs::connect`). Whatever comes back is bounded: a sandbox that answers with a
//! gigabyte makes the server hold at most [`MAX_ANSWER_BYTES`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clawpen_hostfs::{ConnectError as HostConnectError, Peer};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{Health, MessageIn, MessageOut};
use crate::uds::{self, ConnectError};

/// Largest answer body read from an agent (a reply, a health answer).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent's socket does not answer: {0}")]
    Connect(std::io::Error),
    /// What is at the socket's name is not this sandbox's listener (a link, another process):
    /// nothing was sent to it.
    #[error("the agent's socket is not its sandbox's: {0}")]
    Untrusted(String),
    #[error("the agent did not answer in time")]
    Timeout,
    #[error("the agent broke the connection: {0}")]
    Http(String),
    #[error("the agent answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the agent's answer is not valid: {0}")]
    Decode(String),
    #[error("the agent's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Where a sandbox's agent listens (`agent.sock` in its run dir) and who must be listening.
#[derive(Debug, Clone)]
pub struct AgentAddr {
    run_dir: PathBuf,
    peer: Option<Peer>,
}

impl AgentAddr {
    /// The agent of the sandbox `peer` describes, in `run_dir`.
    pub fn new(run_dir: PathBuf, peer: Peer) -> AgentAddr {
        AgentAddr { run_dir, peer: Some(peer) }
    }

    /// For tests that run the agent in their own process: links are still refused, but the
    /// listener is not checked against a container.
    pub fn unverified(run_dir: PathBuf) -> AgentAddr {
        AgentAddr { run_dir, peer: None }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// A stream to the agent's socket, refused unless it leads to the expected sandbox.
    pub async fn connect(&self) -> Result<tokio::net::UnixStream, ClientError> {
        match clawpen_hostfs::connect(&self.run_dir, clawpen_core::spec::AGENT_SOCKET, self.peer.as_ref()).await {
            Ok(s) => Ok(s),
            Err(HostConnectError::Io(e)) => Err(ClientError::Connect(e)),
            Err(e) => Err(ClientError::Untrusted(e.to_string())),
        }
    }
}

/// Sends one request to the agent at `addr` and decodes its JSON answer.
pub async fn call<B: Serialize, R: DeserializeOwned>(
    addr: &AgentAddr,
    method: Method,
    path: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<R, ClientError> {
    tokio::time::timeout(timeout, call_inner(addr, method, path, body)).await.map_err(|_| ClientError::Timeout)?
}

async fn call_inner<B: Serialize, R: DeserializeOwned>(
    addr: &AgentAddr,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<R, ClientError> {
    let stream = addr.connect().await?;
    let mut conn = uds::handshake(stream).await.map_err(|e| match e {
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
    let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ClientError::TooLarge
        } else {
            ClientError::Http(e.to_string())
        }
    })?;
    let body = body.to_bytes();
    drop(conn);
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        return Err(ClientError::Status { status, body: text });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
}

pub async fn health(socket: &AgentAddr, timeout: Duration) -> Result<Health, ClientError> {
    call::<(), Health>(socket, Method::GET, "/health", None, timeout).await
}

/// Tells a warm-pool sandbox to take the identity in its run dir; answers as the claimed agent.
pub async fn claim(socket: &AgentAddr, timeout: Duration) -> Result<Health, ClientError> {
    call::<(), Health>(socket, Method::POST, "/claim", None, timeout).await
}

pub async fn message(socket: &AgentAddr, msg: &MessageIn, timeout: Duration) -> Result<MessageOut, ClientError> {
    call(socket, Method::POST, "/messages", Some(msg), timeout).await
}

/// Polls `/health` until it answers or `deadline` passes. Returns the first answer.
pub async fn wait_healthy(socket: &AgentAddr, deadline: Duration) -> Result<Health, ClientError> {
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

/// Most bytes read from one streamed answer, all events together.
pub const MAX_STREAM_BYTES: usize = 4 * 1024 * 1024;

/// Sends a message and follows the agent's reply as it is written (`POST /messages` with
/// `Accept: text/event-stream`): the events arrive on the receiver. The stream ends after a
/// `done` or `error` event, at `timeout`, past [`MAX_STREAM_BYTES`], or when the agent breaks
/// off (an `Err`). Dropping the receiver hangs up on the agent, which stops the run.
pub async fn message_stream(
    addr: &AgentAddr,
    msg: &MessageIn,
    timeout: Duration,
) -> Result<tokio::sync::mpsc::Receiver<Result<crate::protocol::StreamEvent, ClientError>>, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, addr.connect()).await.map_err(|_| ClientError::Timeout)??;
    let mut conn = uds::handshake(stream).await.map_err(|e| match e {
        ConnectError::Io(e) => ClientError::Connect(e),
        ConnectError::Handshake(e) => ClientError::Http(e.to_string()),
    })?;
    let body = serde_json::to_vec(msg).map_err(|e| ClientError::Decode(e.to_string()))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/messages")
        .header("host", "agent")
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let res = tokio::time::timeout_at(deadline, conn.sender.send_request(req)).await.map_err(|_| ClientError::Timeout)?.map_err(|e| ClientError::Http(e.to_string()))?;
    let status = res.status();
    if !status.is_success() {
        let body = Limited::new(res.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(ClientError::Status { status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut body = res.into_body();
    tokio::spawn(async move {
        // The connection lives as long as this task: the receiver's going ends both.
        let _conn = conn;
        let mut decoder = crate::sse::SseDecoder::default();
        let mut read = 0usize;
        loop {
            let frame = tokio::select! {
                f = tokio::time::timeout_at(deadline, body.frame()) => f,
                _ = tx.closed() => return,
            };
            let data = match frame {
                Err(_) => Err(ClientError::Timeout),
                Ok(None) => Err(ClientError::Http("the agent ended its answer before it was done".into())),
                Ok(Some(Err(e))) => Err(ClientError::Http(e.to_string())),
                Ok(Some(Ok(f))) => Ok(f.into_data().unwrap_or_default()),
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            read += data.len();
            if read > MAX_STREAM_BYTES {
                let _ = tx.send(Err(ClientError::TooLarge)).await;
                return;
            }
            let events = match decoder.push(&data) {
                Ok(ev) => ev,
                Err(e) => {
                    let _ = tx.send(Err(ClientError::Decode(e.to_string()))).await;
                    return;
                }
            };
            for ev in events {
                let parsed = serde_json::from_str::<crate::protocol::StreamEvent>(&ev).map_err(|e| ClientError::Decode(e.to_string()));
                let last = matches!(parsed, Ok(crate::protocol::StreamEvent::Done { .. } | crate::protocol::StreamEvent::Error { .. }) | Err(_));
                if tx.send(parsed).await.is_err() || last {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
