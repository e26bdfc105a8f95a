//! [`UdsConn`]: one HTTP/1.1 connection over a Unix socket, shared by the client of the agent
//! ([`crate::client`]) and the agent's client of the meter ([`crate::meter_client`]).

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

/// A connection ready for requests. The task driving it stops when this is dropped, so an
/// abandoned call (a timeout, an early error) never leaves a connection behind.
pub struct UdsConn {
    pub sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for UdsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `socket` and performs the HTTP/1.1 handshake. (Inside a sandbox, to the meter;
/// the server reaches a sandbox through [`handshake`] on a verified stream instead.)
pub async fn connect(socket: &Path) -> Result<UdsConn, ConnectError> {
    let stream = UnixStream::connect(socket).await.map_err(ConnectError::Io)?;
    handshake(stream).await
}

/// The HTTP/1.1 handshake on a connected stream. Response heads are bounded (hyper's read
/// buffer), so a peer cannot make the caller hold more than that before the body.
pub async fn handshake(stream: UnixStream) -> Result<UdsConn, ConnectError> {
    let (sender, conn) = hyper::client::conn::http1::Builder::new().max_buf_size(64 * 1024).handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
    Ok(UdsConn { sender, task: tokio::spawn(conn) })
}
