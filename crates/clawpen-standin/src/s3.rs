//! An S3-compatible server for tests: `moto_server` (PyPI's `moto[server]`, which `.ci/run`
//! installs) on a loopback port of its own, killed when dropped. Not a stand-in of ours: the
//! real S3 wire protocol, spoken to by `object_store`'s S3 client.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts one. `None` (with a note) when `moto_server` is not installed, except under
    /// `CI=true`, where that fails the test.
    pub fn start() -> Option<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = match Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(c) => c,
            Err(e) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "an S3-compatible server is needed under CI=true: pip install 'moto[server]' ({e})");
                eprintln!("skipped: moto_server is not installed (pip install 'moto[server]')");
                return None;
            }
        };
        let s = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(s)
    }

    /// Makes a bucket (moto takes CreateBucket unsigned).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket {bucket}: {answer}");
    }

    /// A `storage.url` for `bucket/prefix` on this server.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}?endpoint=http://127.0.0.1:{}&allow_http=true&region=us-east-1", self.port)
    }

    /// Writes a 0600 credentials file (moto takes any) at `path`.
    pub fn write_credentials(path: &std::path::Path) {
        std::fs::write(path, "access_key_id = \"testing\"\nsecret_access_key = \"testing-secret-key\"\n").expect("write credentials");
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod credentials");
    }
}
