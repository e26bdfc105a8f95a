//! The meter's HTTP/1.1 client for model providers.
//!
//! hyper's client connection is a future that must be polled to move bytes. A pooled client
//! (reqwest, hyper-util's) runs each connection on a task of its own, so every call crosses
//! tasks twice (request to the connection task, response back) and wakes a thread each way.
//! Here the task handling the call drives its connection itself ([`Conn::drive`]), so a call
//! is one task from the agent's socket to the provider and back. Idle connections wait in a
//! small per-origin pool; one that the provider closed meanwhile is noticed when it is taken
//! out, and a request that could not be sent on a reused connection is sent once more on a new
//! one (a request that was sent is never sent twice: the provider may have run it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long an idle connection is kept (providers close idle ones after a minute or more).
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per origin.
const IDLE_MAX: usize = 256;

/// What went wrong on the way to the provider. Never holds the request (it carries the key).
#[derive(Debug)]
pub struct ClientError(String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

fn err(context: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError(format!("{context}: {e}"))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

/// A parsed upstream base URL (`http(s)://host[:port][/prefix]`).
#[derive(Debug, Clone)]
pub struct BaseUrl {
    origin: Origin,
    authority: String,
    prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(BaseUrl { origin: Origin { tls, host, port }, authority, prefix })
    }

    /// The request target for `path` (which starts with `/`) under this base.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// The `host` header's value.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Body = Full<Bytes>;
type Driver = Pin<Box<Connection<TokioIo<Box<dyn Io>>, Body>>>;

/// One connection to a provider, driven by whoever holds it.
pub struct Conn {
    sender: SendRequest<Body>,
    driver: Driver,
    origin: Origin,
    reused: bool,
}

impl Conn {
    /// Runs `fut` (a request or a read of its answer) while moving this connection's bytes.
    /// Fails when the connection ends before `fut` does.
    pub async fn drive<F: Future>(&mut self, fut: F) -> Result<F::Output, ClientError> {
        let mut fut = std::pin::pin!(fut);
        let driver = &mut self.driver;
        std::future::poll_fn(move |cx| {
            // The connection first: what it reads is then ready for `fut` in the same turn.
            let conn = driver.as_mut().poll(cx);
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match conn {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Err(ClientError("the provider closed the connection".into()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(err("connection to the provider", e))),
            }
        })
        .await
    }
}

/// Connections to providers: a pool of idle ones per origin, TLS by rustls (aws-lc-rs).
pub struct UpstreamClient {
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<Origin, Vec<(Conn, Instant)>>>,
}

impl UpstreamClient {
    /// Trusts the system's roots, plus the PEM certificates in `extra_ca` (a private gateway's CA).
    pub fn new(extra_ca: Option<&[u8]>) -> Result<UpstreamClient, String> {
        crate::tls::install_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_ca {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
                roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("not a PEM certificate: no CERTIFICATE block found".into());
            }
        }
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), idle: Mutex::new(HashMap::new()) })
    }

    /// An idle connection to `base`'s origin that is still open, or a new one.
    async fn checkout(&self, base: &BaseUrl) -> Result<Conn, ClientError> {
        loop {
            let found = self.idle.lock().expect("idle connections").get_mut(&base.origin).and_then(Vec::pop);
            let Some((mut conn, since)) = found else { break };
            // One turn of the connection: a provider that closed it meanwhile shows here.
            if since.elapsed() > IDLE_FOR || conn.sender.is_closed() || (&mut conn.driver).now_or_never().is_some() {
                continue;
            }
            conn.reused = true;
            return Ok(conn);
        }
        self.connect(&base.origin).await
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn, ClientError> {
        let tcp = tokio::net::TcpStream::connect((origin.host.as_str(), origin.port)).await.map_err(|e| err(&format!("connect to {}:{}", origin.host, origin.port), e))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if origin.tls {
            let name = ServerName::try_from(origin.host.clone()).map_err(|e| err("provider host name", e))?;
            Box::new(self.tls.connect(name, tcp).await.map_err(|e| err(&format!("TLS with {}", origin.host), e))?)
        } else {
            Box::new(tcp)
        };
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| err("HTTP handshake", e))?;
        Ok(Conn { sender, driver: Box::pin(driver), origin: origin.clone(), reused: false })
    }

    /// Sends `req` and waits for the answer's head. The connection comes back with it: the
    /// caller reads the body through [`Conn::drive`] and then gives it back with
    /// [`UpstreamClient::checkin`].
    pub async fn send(&self, base: &BaseUrl, req: Request<Body>) -> Result<(Response<Incoming>, Conn), ClientError> {
        let mut conn = self.checkout(base).await?;
        let sent = conn.sender.try_send_request(req);
        match conn.drive(sent).await? {
            Ok(resp) => Ok((resp, conn)),
            Err(mut e) => match e.take_message() {
                // Never written: safe to send on a fresh connection.
                Some(req) if conn.reused => {
                    let mut conn = self.connect(&base.origin).await?;
                    let sent = conn.sender.send_request(req);
                    let resp = conn.drive(sent).await?.map_err(|e| err("request to the provider", e))?;
                    Ok((resp, conn))
                }
                _ => Err(err("request to the provider", e.into_error())),
            },
        }
    }

    /// Sends `req` and reads the whole answer.
    pub async fn call(&self, base: &BaseUrl, req: Request<Body>) -> Result<(hyper::http::response::Parts, Bytes), ClientError> {
        let (resp, mut conn) = self.send(base, req).await?;
        let (parts, body) = resp.into_parts();
        let body = conn.drive(body.collect()).await?.map_err(|e| err("reading the provider's answer", e))?.to_bytes();
        self.checkin(conn);
        Ok((parts, body))
    }

    /// Gives back a connection whose exchange is over, to be used again if it stays open.
    pub fn checkin(&self, mut conn: Conn) {
        // One more turn lets the connection finish the exchange and get ready for the next.
        if (&mut conn.driver).now_or_never().is_some() || !conn.sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle connections");
        let list = idle.entry(conn.origin.clone()).or_default();
        if list.len() < IDLE_MAX {
            list.push((conn, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A provider that answers each connection's requests, and closes a connection once it has
    /// been idle for 50 ms (as providers close idle keep-alive connections).
    async fn closing_provider() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let read = tokio::time::timeout(Duration::from_millis(50), sock.read(&mut buf)).await;
                        let Ok(Ok(n)) = read else { return };
                        if n == 0 {
                            return;
                        }
                        let body = b"{\"ok\":true}";
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
                        sock.write_all(head.as_bytes()).await.unwrap();
                        sock.write_all(body).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}/v1"), accepted)
    }

    fn request(base: &BaseUrl) -> Request<Body> {
        Request::post(base.path("/chat/completions")).header("host", base.authority()).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    #[tokio::test]
    async fn reuses_open_connections_and_replaces_closed_ones() {
        let (url, accepted) = closing_provider().await;
        let base = BaseUrl::parse(&url).unwrap();
        let client = UpstreamClient::new(None).unwrap();
        for _ in 0..3 {
            let (parts, body) = client.call(&base, request(&base)).await.unwrap();
            assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"{\"ok\":true}"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "back-to-back calls share one connection");
        // The provider closes the idle connection; the next call notices and connects anew.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (parts, _) = client.call(&base, request(&base)).await.unwrap();
        assert_eq!(parts.status.as_u16(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_an_error_that_names_no_secret() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let base = BaseUrl::parse(&format!("http://{addr}")).unwrap();
        let req = Request::post("/x").header("authorization", "Bearer sk-secret-value").body(Full::new(Bytes::new())).unwrap();
        let e = UpstreamClient::new(None).unwrap().call(&base, req).await.unwrap_err().to_string();
        assert!(e.contains("connect to 127.0.0.1"), "{e}");
        assert!(!e.contains("sk-secret"), "{e}");
    }

    #[test]
    fn a_bad_extra_ca_is_refused() {
        assert!(UpstreamClient::new(Some(b"not a pem")).is_err());
    }

    #[test]
    fn parses_base_urls() {
        let b = BaseUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!((b.origin.tls, b.origin.host.as_str(), b.origin.port), (true, "api.openai.com", 443));
        assert_eq!(b.path("/chat/completions"), "/v1/chat/completions");
        assert_eq!(b.authority(), "api.openai.com");
        let b = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((b.origin.tls, b.origin.port, b.path("/messages").as_str()), (false, 8080, "/messages"));
        let b = BaseUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((b.origin.host.as_str(), b.authority()), ("::1", "[::1]:9"));
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("not a url").is_err());
    }
}
