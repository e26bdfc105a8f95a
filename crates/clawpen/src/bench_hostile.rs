//! `clawpen bench hostile`: what a hostile neighbour costs. Case `flood`: tenant B's message
//! round trip while tenant A's sandbox holds as many connections to its `control.sock` as it
//! can open, against B's round trip on the quiet server, measured in the same run (half of the
//! quiet samples before the flood, half after it).
//!
//! The connections are opened from inside A's real sandbox (`docker exec` of the sandbox's own
//! executable, `clawpen bench-flood`), so they count against A's limits exactly as an attacker's
//! would.

use std::os::unix::io::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bench::{BenchServer, Case};

pub async fn run(n: usize, connections: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(n >= 2, "--requests must be at least 2");
    let server = BenchServer::start(4).await?;
    let result = run_on(&server, n, connections).await;
    server.teardown().await;
    result
}

async fn run_on(server: &BenchServer, n: usize, connections: usize) -> anyhow::Result<Vec<Case>> {
    let app = &server.app;
    let http = reqwest::Client::new();
    let mut tenants = Vec::new();
    for name in ["attacker", "neighbour"] {
        let tenant = app.store.create_tenant(name, "bench", app.config.sandbox.uid_base).await?;
        let (_, token) = app.store.create_api_key(&tenant.id).await?;
        let res = http.post(format!("{}/api/v1/agents", server.base)).bearer_auth(&token).json(&json!({"name": name, "start": true})).send().await?;
        anyhow::ensure!(res.status().as_u16() == 201, "create failed: {}", res.text().await.unwrap_or_default());
        let agent: Value = res.json().await?;
        tenants.push((token, agent["id"].as_str().unwrap_or_default().to_owned()));
    }
    let (a, (b_token, b)) = (tenants[0].1.clone(), tenants[1].clone());
    let round_trip = |i: usize| {
        let (http, token, url) = (http.clone(), b_token.clone(), format!("{}/api/v1/agents/{b}/messages", server.base));
        async move {
            let t0 = Instant::now();
            let res = http.post(url).bearer_auth(token).json(&json!({"text": format!("hello {i}")})).send().await?;
            anyhow::ensure!(res.status().is_success(), "B's message failed: {} {}", res.status(), res.text().await.unwrap_or_default());
            anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0)
        }
    };
    for i in 0..10 {
        round_trip(i).await?;
    }
    let mut quiet = Vec::with_capacity(n);
    for i in 0..n / 2 {
        quiet.push(round_trip(i).await?);
    }

    eprintln!("hostile: A's sandbox opens up to {connections} connections to its control.sock");
    let container = clawpen_core::spec::container_name(&app.instance, &clawpen_core::ids::AgentId::parse(&a).map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut flood = tokio::process::Command::new("docker")
        .args(["exec", &container, "/clawpen", "bench-flood", "--socket", "/run/clawpen/control.sock", "--count", &connections.to_string(), "--hold-secs", "3600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // The flooder prints one line once it holds what it could open.
    let mut line = String::new();
    let stdout = flood.stdout.take().ok_or_else(|| anyhow::anyhow!("no output from the flood"))?;
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(120), tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)).await??;
    let held: Value = serde_json::from_str(line.trim()).map_err(|e| anyhow::anyhow!("the flood said {line:?}: {e}"))?;
    eprintln!("hostile: A holds {held}");
    let server_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let mut flooded = Vec::with_capacity(n);
    for i in 0..n {
        flooded.push(round_trip(i).await?);
    }
    let _ = flood.kill().await;
    // The held connections end with the flooder; the server lets go of what it accepted.
    let _ = tokio::process::Command::new("docker").args(["exec", &container, "/clawpen", "bench-flood", "--stop"]).output().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in n / 2..n {
        quiet.push(round_trip(i).await?);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("baseline".into(), json!("the same message round trip of tenant B on the quiet server"));
    extra.insert("attacker".into(), held);
    extra.insert("server_fds_during_flood".into(), json!(server_fds));
    Ok(vec![Case { name: "flood".into(), samples_ms: flooded, baseline_ms: Some(quiet), extra }])
}

/// `clawpen bench-flood` (hidden; run inside a sandbox by `bench hostile`): opens up to `count`
/// non-blocking connections to `socket`, prints `{"connected", "would_block", "errors"}` once,
/// and holds them for `hold_secs`. `--stop` ends a running flood in this sandbox.
pub fn flood(socket: &str, count: usize, hold_secs: u64, stop: bool) -> i32 {
    let marker = "/tmp/bench-flood.pid";
    if stop {
        if let Some(pid) = std::fs::read_to_string(marker).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: a plain kill(2) of the flood this sandbox started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        return 0;
    }
    let _ = std::fs::write(marker, std::process::id().to_string());
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to read and write.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let (mut held, mut would_block, mut errors) = (Vec::new(), 0u64, 0u64);
    for _ in 0..count {
        match connect_nonblocking(socket) {
            Ok(s) => held.push(s),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => would_block += 1,
            Err(e) => {
                errors += 1;
                if e.raw_os_error() == Some(libc::EMFILE) {
                    break;
                }
            }
        }
    }
    println!("{}", json!({"attempted": count, "connected": held.len(), "would_block": would_block, "errors": errors}));
    std::thread::sleep(Duration::from_secs(hold_secs));
    drop(held);
    0
}

fn connect_nonblocking(path: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    // SAFETY: a plain socket(2); the fd is owned by the UnixStream made next.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket, owned from here on.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid; the path is copied within its bounds below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    anyhow_free_ensure(bytes.len() < addr.sun_path.len())?;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(stream.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn anyhow_free_ensure(ok: bool) -> std::io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "socket path too long"))
    }
}
