//! Serving each agent's `control.sock` (the meter today, the broker next) so that one sandbox
//! cannot use up what the server and the other tenants need.
//!
//! - **Connections.** A sandbox holds at most its plan's `control_connections` at once; all
//!   sandboxes together at most [`SandboxFds`]'s share of the server's file descriptors. Past
//!   either, the server simply stops accepting on that socket: further connections wait in the
//!   kernel's backlog (then are refused), which costs the server no descriptor.
//! - **Time.** Headers must arrive within [`HEADER_TIMEOUT`] and a body within
//!   [`BODY_TIMEOUT`]; a connection carries one request (no keep-alive), so nothing is held open
//!   idle.
//! - **Size.** Request heads are capped at [`MAX_HEAD_BYTES`]; bodies by the meter's own limit.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How long a caller may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller may take to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// File descriptors the server lets sandboxes hold (their connections to it, and the upstream
/// connections those open), shared by all: whatever is left stays for the API, the store and
/// the Docker Engine.
#[derive(Clone)]
pub struct SandboxFds(Arc<Semaphore>);

impl SandboxFds {
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit and gives sandboxes two thirds of it
    /// (each of their connections may need a second descriptor upstream, so this counts pairs).
    pub fn from_rlimit() -> SandboxFds {
        let limit = raise_nofile();
        SandboxFds::new((limit / 3) as usize)
    }

    pub fn new(pairs: usize) -> SandboxFds {
        SandboxFds(Arc::new(Semaphore::new(pairs.max(1))))
    }

    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    pub(crate) fn semaphore(&self) -> Arc<Semaphore> {
        self.0.clone()
    }
}

/// Sets the soft limit of open files to the hard one; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Reads the whole request body (the meter's routes take it whole anyway) within
/// [`BODY_TIMEOUT`], however it trickles in: 408 past it.
async fn whole_body_in_time(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let limit = clawpen_meter::router::MAX_REQUEST_BYTES + 1;
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(_)) => too(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the request body is larger than the meter takes").into_response(),
        Err(_) => too(axum::http::StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time").into_response(),
    }
}

fn too(status: axum::http::StatusCode, message: &str) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (status, axum::Json(serde_json::json!({"type": "error", "error": {"type": "clawpen_meter", "code": "bad_request", "message": message}})))
}

/// Serves `router` on `listener` with the bounds above, until the task is dropped.
pub async fn serve(listener: UnixListener, router: axum::Router, per_sandbox: u32, fds: SandboxFds) {
    let router = router.layer(axum::middleware::from_fn(whole_body_in_time));
    let own = Arc::new(Semaphore::new(per_sandbox.max(1) as usize));
    loop {
        // Permits first: while this sandbox (or all of them) is at its bound, nothing more is
        // accepted, so waiting connections cost the server nothing.
        let Ok(mine) = own.clone().acquire_owned().await else { return };
        let Ok(shared) = fds.semaphore().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permits = (mine, shared);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "control socket: connection ended with an error");
            }
        });
    }
}
