//! `clawpen probe …` (hidden): attacks run inside a tenant's sandbox by the isolation tests and by
//! `clawpen doctor`.
//!
//! The sandbox image holds nothing but this executable, so every attack is written here with std
//! and libc. Each subcommand tries its attack, never panics when the attack fails, and prints ONE
//! JSON line on stdout describing what happened (errors as the `io::Error` text, e.g.
//! "Permission denied (os error 13)"). The exit code is 0 whenever the probe itself ran; the memory
//! bomb normally never returns (the kernel kills it: 137).
//!
//! Single-threaded on purpose: the fork bomb calls `fork()`.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

#[derive(Debug, clap::Subcommand)]
pub enum ProbeCmd {
    /// Read, list and walk paths directly, by `..`, through a planted symlink and through
    /// `/proc/*/root` and `/proc/*/cwd`, looking for a marker.
    ReadPaths {
        /// A path to reach (repeatable).
        #[arg(long = "path", value_name = "PATH", required = true)]
        paths: Vec<String>,
        /// The string to look for in what was read.
        #[arg(long)]
        marker: String,
    },
    /// TCP connects, name resolution, DNS over UDP to the configured resolvers, interfaces, routes.
    Network {
        /// HOST:PORT to connect to (repeatable).
        #[arg(long = "tcp", value_name = "HOST:PORT")]
        tcp: Vec<String>,
        /// A name to resolve (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
    },
    /// fork() until it fails or MAX children run, hold them, then kill them all.
    ForkBomb {
        /// Stop after this many children.
        #[arg(long)]
        max: u64,
        /// Keep the children alive this long once the limit is reached.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// Allocate and touch 1 MiB chunks until MAX_MIB (or until the kernel kills the process).
    MemoryBomb {
        #[arg(long)]
        max_mib: u64,
    },
    /// uid, gid, capability sets, no_new_privs, seccomp; tries setuid, setgid, raw sockets, mount, chroot.
    Identity,
    /// Writes to the root filesystem and the mounts, executes from /tmp, reports mount options.
    Filesystem,
    /// Looks for Docker or containerd sockets, and for any socket in the filesystem.
    DockerSocket,
    /// Searches the environment, /proc and every readable file for the needles (never printed).
    Secrets {
        /// A secret to look for (repeatable).
        #[arg(long = "needle", value_name = "SECRET", required = true)]
        needles: Vec<String>,
    },
    /// Sleep, then print {"slept_ms": N}.
    Sleep {
        #[arg(long)]
        ms: u64,
    },
}

/// Runs the probe, prints its one JSON line, returns the exit code.
pub fn run(cmd: ProbeCmd) -> i32 {
    let out = match cmd {
        ProbeCmd::ReadPaths { paths, marker } => read_paths(&paths, &marker),
        ProbeCmd::Network { tcp, dns } => network(&tcp, &dns),
        ProbeCmd::ForkBomb { max, hold_ms } => fork_bomb(max, hold_ms),
        ProbeCmd::MemoryBomb { max_mib } => memory_bomb(max_mib),
        ProbeCmd::Identity => identity(),
        ProbeCmd::Filesystem => filesystem(),
        ProbeCmd::DockerSocket => docker_socket(),
        ProbeCmd::Secrets { needles } => secrets(&needles),
        ProbeCmd::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            json!({ "slept_ms": ms })
        }
    };
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
    0
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

const MIB: usize = 1 << 20;
/// Files bigger than this are not read whole (read-paths reads their first 4 MiB; secrets skips them).
const READ_LIMIT: u64 = 4 * MIB as u64;

fn err(e: &io::Error) -> Value {
    Value::String(e.to_string())
}

fn os_err() -> io::Error {
    io::Error::last_os_error()
}

/// `{"ok": true}` or `{"ok": false, "errno": n, "error": "…"}` for a libc call's return value.
fn libc_outcome(rc: libc::c_int) -> Value {
    if rc == 0 {
        json!({ "ok": true, "errno": null, "error": null })
    } else {
        let e = os_err();
        json!({ "ok": false, "errno": e.raw_os_error(), "error": e.to_string() })
    }
}

fn cstring(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads at most `limit` bytes of a regular file; `Ok(None)` when the path is not a regular file.
/// Opened non-blocking so a FIFO can never hang the probe.
fn read_regular(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(md.len().min(limit) as usize);
    f.take(limit).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

fn kind(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_block_device() {
        "block-device"
    } else if ft.is_char_device() {
        "char-device"
    } else {
        "other"
    }
}

/// Walks `root` without following symlinked dirs, calling `visit` on every entry. Directories are
/// read down to `max_depth` levels below `root`; `skip` prunes paths; `budget` bounds the entries.
/// Returns how many directories or entries could not be read.
fn walk(root: &Path, max_depth: usize, skip: &dyn Fn(&Path) -> bool, budget: &mut usize, visit: &mut dyn FnMut(&Path, fs::FileType)) -> u64 {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut errors = 0;
    while let Some((dir, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                errors += 1;
                continue;
            };
            if *budget == 0 {
                return errors;
            }
            *budget -= 1;
            let path = entry.path();
            if skip(&path) {
                continue;
            }
            // lstat, not the dirent's type: a file bind-mounted over another (a socket mounted on
            // an empty placeholder) shows the placeholder's type in the directory listing.
            let Ok(ft) = fs::symlink_metadata(&path).map(|m| m.file_type()).or_else(|_| entry.file_type()) else {
                errors += 1;
                continue;
            };
            visit(&path, ft);
            if ft.is_dir() && depth < max_depth {
                stack.push((path, depth + 1));
            }
        }
    }
    errors
}

/// The pids listed in /proc (this pid namespace), numeric, sorted.
fn proc_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

fn join_abs(prefix: &str, p: &str) -> String {
    if p.starts_with('/') {
        format!("{prefix}{p}")
    } else {
        format!("{prefix}/{p}")
    }
}

// ---------------------------------------------------------------------------------------------
// read-paths

/// How deep read-paths walks a directory it reached, and how many entries it looks at per walk.
const WALK_DEPTH: usize = 4;
const WALK_BUDGET: usize = 20_000;

/// Walks a directory reading every regular file (symlinks to files too) for the marker.
/// Returns (marker found, entries seen, files read).
fn hunt(dir: &Path, marker: &[u8], skip_top: &[&str]) -> (bool, u64, u64) {
    let mut found = false;
    let (mut seen, mut read) = (0u64, 0u64);
    let mut budget = WALK_BUDGET;
    let skip = |p: &Path| p.parent() == Some(dir) && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| skip_top.contains(&n));
    walk(dir, WALK_DEPTH, &skip, &mut budget, &mut |path, ft| {
        seen += 1;
        let is_file = ft.is_file() || (ft.is_symlink() && fs::metadata(path).is_ok_and(|m| m.is_file()));
        if is_file {
            if let Ok(Some(bytes)) = read_regular(path, READ_LIMIT) {
                read += 1;
                found |= contains(&bytes, marker);
            }
        }
    });
    (found, seen, read)
}

/// One attempt at reaching `path` (already composed for its route).
fn attempt(route: &str, path: &str, marker: &[u8]) -> Value {
    let p = Path::new(path);
    let mut o = Map::new();
    o.insert("route".into(), route.into());
    o.insert("path".into(), path.into());
    let (ok, error, found): (bool, Option<String>, bool) = match fs::metadata(p) {
        Err(e) => (false, Some(e.to_string()), false),
        Ok(md) => {
            o.insert("kind".into(), kind(md.file_type()).into());
            if md.is_dir() {
                match fs::read_dir(p) {
                    Err(e) => (false, Some(e.to_string()), false),
                    Ok(rd) => {
                        let names: Vec<String> = rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).take(50).collect();
                        let (found, seen, read) = hunt(p, marker, &[]);
                        o.insert("names".into(), json!(names));
                        o.insert("entries_walked".into(), json!(seen));
                        o.insert("files_read".into(), json!(read));
                        (true, None, found)
                    }
                }
            } else if md.is_file() {
                match read_regular(p, READ_LIMIT) {
                    Ok(Some(bytes)) => (true, None, contains(&bytes, marker)),
                    Ok(None) => (false, Some("changed to a non-regular file while opening".into()), false),
                    Err(e) => (false, Some(e.to_string()), false),
                }
            } else if md.file_type().is_socket() {
                match UnixStream::connect(p) {
                    Ok(_) => (true, None, false),
                    Err(e) => (false, Some(e.to_string()), false),
                }
            } else if md.file_type().is_fifo() {
                match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p) {
                    Ok(_) => (true, None, false),
                    Err(e) => (false, Some(e.to_string()), false),
                }
            } else {
                (false, Some(format!("not opened: a {}", kind(md.file_type()))), false)
            }
        }
    };
    o.insert("ok".into(), ok.into());
    if let Some(e) = error {
        o.insert("error".into(), e.into());
    }
    o.insert("marker_found".into(), found.into());
    Value::Object(o)
}

fn read_paths(paths: &[String], marker: &str) -> Value {
    let m = marker.as_bytes();
    let own = std::process::id();
    let mut pid_names: Vec<String> = vec!["self".into()];
    pid_names.extend(proc_pids().into_iter().filter(|&p| p != own).map(|p| p.to_string()));
    if !pid_names.iter().any(|p| p == "1") {
        pid_names.push("1".into());
    }

    let mut attempts = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        attempts.push(attempt("direct", p, m));
        attempts.push(attempt("dotdot-data", &join_abs("/data/../..", p), m));
        attempts.push(attempt("dotdot-run", &join_abs("/run/clawpen/../../..", p), m));

        // A symlink planted in the workspace, read through, then removed.
        let link = format!("/data/.probe-link-{i}");
        let _ = fs::remove_file(&link);
        match symlink(p, &link) {
            Ok(()) => {
                let mut a = attempt("symlink", &link, m);
                a["target"] = json!(p);
                attempts.push(a);
                let _ = fs::remove_file(&link);
            }
            Err(e) => attempts.push(json!({ "route": "symlink", "path": link, "target": p, "ok": false, "error": format!("creating the link: {e}"), "marker_found": false })),
        }

        for pid in &pid_names {
            attempts.push(attempt("proc-root", &join_abs(&format!("/proc/{pid}/root"), p), m));
            attempts.push(attempt("proc-cwd", &join_abs(&format!("/proc/{pid}/cwd/../../../../.."), p), m));
        }
    }

    // Each process's root as a whole: this is the sandbox's own root (so listing it works); what
    // matters is that nothing under it holds the marker.
    let mut proc_roots = Vec::new();
    for pid in &pid_names {
        let root = format!("/proc/{pid}/root/");
        let entry = match fs::read_dir(&root) {
            Err(e) => json!({ "path": root, "ok": false, "error": e.to_string(), "marker_found": false }),
            Ok(rd) => {
                let mut names: Vec<String> = rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
                names.sort();
                let (found, seen, read) = hunt(Path::new(&root), m, &["proc", "sys", "dev"]);
                json!({ "path": root, "ok": true, "names": names, "entries_walked": seen, "files_read": read, "marker_found": found })
            }
        };
        proc_roots.push(entry);
    }

    let any_marker_found = attempts.iter().chain(&proc_roots).any(|a| a["marker_found"] == true);
    let any_ok = attempts.iter().any(|a| a["ok"] == true);
    json!({ "attempts": attempts, "proc_roots": proc_roots, "any_marker_found": any_marker_found, "any_ok": any_ok })
}

// ---------------------------------------------------------------------------------------------
// network

fn network(tcp: &[String], dns: &[String]) -> Value {
    let timeout = Duration::from_secs(1);
    let tcp_results: Vec<Value> = tcp
        .iter()
        .map(|target| {
            let addrs: io::Result<Vec<SocketAddr>> = match target.parse::<SocketAddr>() {
                Ok(a) => Ok(vec![a]),
                Err(_) => target.to_socket_addrs().map(|a| a.collect()),
            };
            match addrs {
                Err(e) => json!({ "target": target, "ok": false, "error": format!("resolving: {e}") }),
                Ok(addrs) if addrs.is_empty() => json!({ "target": target, "ok": false, "error": "resolved to no address" }),
                Ok(addrs) => {
                    let mut last = None;
                    for a in &addrs {
                        match TcpStream::connect_timeout(a, timeout) {
                            Ok(_) => return json!({ "target": target, "ok": true, "error": null, "addr": a.to_string() }),
                            Err(e) => last = Some(e.to_string()),
                        }
                    }
                    json!({ "target": target, "ok": false, "error": last })
                }
            }
        })
        .collect();

    let dns_results: Vec<Value> = dns
        .iter()
        .map(|name| match (name.as_str(), 80).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                json!({ "name": name, "ok": !addrs.is_empty(), "error": null, "addrs": addrs })
            }
            Err(e) => json!({ "name": name, "ok": false, "error": e.to_string(), "addrs": [] }),
        })
        .collect();

    let (nameservers, resolv_error) = match fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => (
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some("nameserver")).then(|| f.next().map(str::to_owned)).flatten()
                })
                .collect::<Vec<_>>(),
            Value::Null,
        ),
        Err(e) => (Vec::new(), err(&e)),
    };
    let qname = dns.first().map(String::as_str).unwrap_or("example.com");
    let udp_dns: Vec<Value> = nameservers.iter().map(|ns| udp_query(ns, qname, timeout)).collect();

    let interfaces: Value = match fs::read_to_string("/proc/net/dev") {
        Ok(text) => json!(text.lines().skip(2).filter_map(|l| Some(l.split(':').next()?.trim().to_owned())).filter(|n| !n.is_empty()).collect::<Vec<_>>()),
        Err(e) => err(&e),
    };
    let routes: Value = match fs::read_to_string("/proc/net/route") {
        Ok(text) => json!(text.lines().skip(1).filter(|l| !l.trim().is_empty()).count()),
        Err(e) => err(&e),
    };
    // Informational: IPv6 routes other than the loopback ones.
    let routes_v6: Value = match fs::read_to_string("/proc/net/ipv6_route") {
        Ok(text) => json!(text.lines().filter(|l| l.split_whitespace().last().is_some_and(|dev| dev != "lo")).count()),
        Err(e) => err(&e),
    };

    json!({
        "tcp": tcp_results,
        "dns": dns_results,
        "nameservers": nameservers,
        "resolv_conf_error": resolv_error,
        "udp_dns": udp_dns,
        "interfaces": interfaces,
        "routes": routes,
        "routes_v6_non_lo": routes_v6,
    })
}

/// A DNS query for `name` (type A) as a UDP payload.
fn dns_query(name: &str) -> Vec<u8> {
    let id = (std::process::id() & 0xffff) as u16;
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        q.push(label.len() as u8);
        q.extend_from_slice(label);
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // type A, class IN
    q
}

fn udp_query(server: &str, name: &str, timeout: Duration) -> Value {
    let ip: IpAddr = match server.split('%').next().unwrap_or(server).parse() {
        Ok(ip) => ip,
        Err(e) => return json!({ "server": server, "ok": false, "error": format!("not an IP address: {e}") }),
    };
    let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0".parse().expect("literal") } else { "[::]:0".parse().expect("literal") };
    let result = (|| -> io::Result<usize> {
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send_to(&dns_query(name), SocketAddr::new(ip, 53))?;
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(n)
    })();
    match result {
        Ok(n) => json!({ "server": server, "ok": true, "error": null, "answer_bytes": n }),
        Err(e) => json!({ "server": server, "ok": false, "error": e.to_string() }),
    }
}

// ---------------------------------------------------------------------------------------------
// fork-bomb

fn fork_bomb(max: u64, hold_ms: u64) -> Value {
    let parent = std::process::id() as libc::pid_t;
    // Children die on their own at the latest this long after the hold, should the parent vanish
    // without killing them (they also get SIGKILL when the parent dies).
    let alarm_s = (hold_ms / 1000 + 60).min(u32::MAX as u64) as libc::c_uint;
    let mut children: Vec<libc::pid_t> = Vec::with_capacity(max.min(100_000) as usize);
    let mut stopped: Option<io::Error> = None;
    let started = Instant::now();
    while (children.len() as u64) < max {
        // SAFETY: the probe is single-threaded; the child only makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            stopped = Some(os_err());
            break;
        }
        if pid == 0 {
            child_wait(parent, alarm_s);
        }
        children.push(pid);
        if children.len().is_multiple_of(16) {
            eprintln!("fork-bomb: {} children", children.len());
        }
    }
    let forked = children.len();
    let fork_ms = started.elapsed().as_millis() as u64;
    eprintln!("fork-bomb: stopped at {forked} children ({})", stopped.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "max reached".into()));
    if hold_ms > 0 {
        std::thread::sleep(Duration::from_millis(hold_ms));
    }
    for &pid in &children {
        // SAFETY: `pid` is a child this process forked and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut reaped = 0u64;
    for &pid in &children {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                reaped += 1;
                break;
            }
            if rc < 0 && os_err().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
    }
    json!({
        "forked": forked,
        "stopped_by_error": stopped.as_ref().map(|e| e.to_string()),
        "errno": stopped.as_ref().and_then(|e| e.raw_os_error()),
        "fork_ms": fork_ms,
        "held_ms": hold_ms,
        "reaped": reaped,
    })
}

/// A fork-bomb child: waits for SIGKILL, never returns.
fn child_wait(parent: libc::pid_t, alarm_s: libc::c_uint) -> ! {
    // SAFETY: async-signal-safe syscalls only; asks for SIGKILL when the parent dies.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    // SAFETY: async-signal-safe syscall.
    if unsafe { libc::getppid() } != parent {
        // SAFETY: leaves at once without running any of the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: async-signal-safe syscall; SIGALRM's default action ends the child.
    unsafe { libc::alarm(alarm_s) };
    loop {
        // SAFETY: async-signal-safe syscall, sleeps until a signal arrives.
        unsafe { libc::pause() };
    }
}

// ---------------------------------------------------------------------------------------------
// memory-bomb

fn memory_bomb(max_mib: u64) -> Value {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 1..=max_mib {
        // A non-zero fill: every page is written, so every page is really charged.
        let chunk = vec![0xA5u8; MIB];
        chunks.push(std::hint::black_box(chunk));
        if i.is_multiple_of(8) {
            eprintln!("memory-bomb: {i} MiB");
        }
    }
    let touched: u64 = chunks.iter().map(|c| u64::from(c[c.len() - 1])).sum();
    std::hint::black_box(touched);
    json!({ "allocated_mib": max_mib, "killed": false })
}

// ---------------------------------------------------------------------------------------------
// identity

fn identity() -> Value {
    let mut o = Map::new();
    match fs::read_to_string("/proc/self/status") {
        Ok(status) => {
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim));
            let nums = |name: &str| field(name).map(|v| v.split_whitespace().filter_map(|x| x.parse::<u64>().ok()).collect::<Vec<_>>());
            let uids = nums("Uid").unwrap_or_default();
            let gids = nums("Gid").unwrap_or_default();
            o.insert("uid".into(), json!(uids.first()));
            o.insert("euid".into(), json!(uids.get(1)));
            o.insert("gid".into(), json!(gids.first()));
            o.insert("egid".into(), json!(gids.get(1)));
            o.insert("groups".into(), json!(nums("Groups").unwrap_or_default()));
            for (key, name) in [("cap_inh", "CapInh"), ("cap_prm", "CapPrm"), ("cap_eff", "CapEff"), ("cap_bnd", "CapBnd"), ("cap_amb", "CapAmb")] {
                o.insert(key.into(), json!(field(name)));
            }
            for (key, name) in [("no_new_privs", "NoNewPrivs"), ("seccomp", "Seccomp"), ("seccomp_filters", "Seccomp_filters")] {
                o.insert(key.into(), json!(field(name).and_then(|v| v.parse::<u64>().ok())));
            }
        }
        Err(e) => {
            o.insert("status_error".into(), err(&e));
        }
    }

    // SAFETY: plain syscall wrapper; failure is reported, not assumed.
    o.insert("setuid_0".into(), libc_outcome(unsafe { libc::setuid(0) }));
    // SAFETY: plain syscall wrapper; failure is reported, not assumed.
    o.insert("setgid_0".into(), libc_outcome(unsafe { libc::setgid(0) }));

    // SAFETY: plain syscall wrapper; the fd is closed below if one was returned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    let raw = if fd >= 0 {
        // SAFETY: `fd` is the socket just opened and owned here.
        unsafe { libc::close(fd) };
        json!({ "ok": true, "errno": null, "error": null })
    } else {
        libc_outcome(-1)
    };
    o.insert("raw_socket".into(), raw);

    let mount_dir = format!("/tmp/probe-mnt-{}", std::process::id());
    let mount = match fs::create_dir_all(&mount_dir).and_then(|()| cstring(&mount_dir)) {
        Err(e) => json!({ "ok": false, "errno": e.raw_os_error(), "error": format!("preparing {mount_dir}: {e}") }),
        Ok(target) => {
            // SAFETY: every pointer is a valid NUL-terminated string or null for `data`.
            let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
            let outcome = libc_outcome(rc);
            if rc == 0 {
                // SAFETY: `target` is a valid NUL-terminated path we just mounted on.
                unsafe { libc::umount(target.as_ptr()) };
            }
            outcome
        }
    };
    let _ = fs::remove_dir(&mount_dir);
    o.insert("mount_tmpfs".into(), mount);

    // Last: should it ever work, the process is confined to /tmp from here on.
    // SAFETY: the argument is a valid NUL-terminated path.
    o.insert("chroot_tmp".into(), libc_outcome(unsafe { libc::chroot(c"/tmp".as_ptr()) }));
    // SAFETY: plain syscall wrapper; only this process is affected, and nothing runs after it.
    o.insert("unshare_userns".into(), libc_outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER) }));
    Value::Object(o)
}

// ---------------------------------------------------------------------------------------------
// filesystem

/// A statically linked executable that only exits 0, for the architectures we know; elsewhere a
/// copy of this executable is used.
fn tiny_elf() -> Option<Vec<u8>> {
    let (machine, code): (u16, &[u8]) = if cfg!(target_arch = "x86_64") {
        // xor edi, edi; mov eax, 60 (exit); syscall
        (62, &[0x31, 0xff, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05])
    } else if cfg!(target_arch = "aarch64") {
        // mov x0, #0; mov x8, #93 (exit); svc #0
        (183, &[0x00, 0x00, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4])
    } else {
        return None;
    };
    let base: u64 = 0x40_0000;
    let code_off: u64 = 64 + 56;
    let total = code_off + code.len() as u64;
    let mut f = Vec::with_capacity(total as usize);
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(base + code_off).to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&0u64.to_le_bytes()); // offset
    f.extend_from_slice(&base.to_le_bytes()); // vaddr
    f.extend_from_slice(&base.to_le_bytes()); // paddr
    f.extend_from_slice(&total.to_le_bytes()); // filesz
    f.extend_from_slice(&total.to_le_bytes()); // memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    f.extend_from_slice(code);
    Some(f)
}

/// Creates (or opens, for `create == false`) `path` for writing; removes what it created.
fn try_write(path: &str, create: bool) -> Value {
    let result = if create {
        OpenOptions::new().write(true).create_new(true).open(path).and_then(|mut f| {
            let w = f.write_all(b"probe\n");
            let _ = fs::remove_file(path);
            w
        })
    } else {
        // Never truncate nor write: opening for writing is the attack.
        OpenOptions::new().write(true).open(path).map(|_| ())
    };
    match result {
        Ok(()) => json!({ "path": path, "ok": true, "error": null }),
        Err(e) => json!({ "path": path, "ok": false, "error": e.to_string() }),
    }
}

/// Decodes the octal escapes (`\040`) of /proc/mounts fields.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn filesystem() -> Value {
    let pid = std::process::id();
    let writes = vec![
        try_write(&format!("/probe-file-{pid}"), true),
        try_write(&format!("/etc/probe-{pid}"), true),
        try_write("/clawpen", false),
        try_write(&format!("/data/probe-ok-{pid}"), true),
        try_write(&format!("/run/clawpen/probe-ok-{pid}"), true),
    ];

    // Executing from /tmp: a tiny valid executable (so only noexec can stop it), or a copy of
    // this one on other architectures (/tmp may be too small for it).
    let exe = format!("/tmp/probe-exec-{pid}");
    let _ = fs::remove_file(&exe);
    let (method, prepared) = match tiny_elf() {
        Some(bytes) => ("tiny-elf", fs::write(&exe, bytes)),
        None => ("copy-self", fs::copy("/proc/self/exe", &exe).map(|_| ())),
    };
    let prepared = prepared.and_then(|()| fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)));
    let tmp_exec = match prepared {
        Err(e) => json!({ "path": exe, "method": method, "written": false, "ok": false, "error": format!("preparing: {e}") }),
        Ok(()) => {
            let status = std::process::Command::new(&exe)
                .args(["probe", "identity"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            match status {
                Ok(s) => json!({ "path": exe, "method": method, "written": true, "ok": true, "error": null, "exit_code": s.code() }),
                Err(e) => json!({ "path": exe, "method": method, "written": true, "ok": false, "error": e.to_string() }),
            }
        }
    };
    let _ = fs::remove_file(&exe);

    let mut mounts = Map::new();
    let mut fstypes = Map::new();
    let mut mounts_error = Value::Null;
    match fs::read_to_string("/proc/mounts") {
        Ok(text) => {
            // The last line for a mount point is the mount on top.
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 4 {
                    continue;
                }
                let point = unescape_mount(f[1]);
                if ["/", "/tmp", "/data", "/run/clawpen"].contains(&point.as_str()) {
                    mounts.insert(point.clone(), f[3].into());
                    fstypes.insert(point, f[2].into());
                }
            }
        }
        Err(e) => mounts_error = err(&e),
    }
    for point in ["/", "/tmp", "/data", "/run/clawpen"] {
        mounts.entry(point).or_insert(Value::Null);
    }
    json!({ "writes": writes, "tmp_exec": tmp_exec, "mounts": mounts, "mount_types": fstypes, "mounts_error": mounts_error })
}

// ---------------------------------------------------------------------------------------------
// docker-socket

/// Bounds for the whole-filesystem walks.
const FS_BUDGET: usize = 1_000_000;

fn docker_socket() -> Value {
    let paths = ["/var/run/docker.sock", "/run/docker.sock", "/var/run/containerd/containerd.sock", "/run/containerd/containerd.sock", "/run/docker/"];
    let checks: Vec<Value> = paths
        .iter()
        .map(|p| {
            let meta = fs::symlink_metadata(p);
            let exists = meta.is_ok();
            let (connect_ok, error) = match UnixStream::connect(p) {
                Ok(_) => (true, Value::Null),
                Err(e) => (false, err(&e)),
            };
            json!({ "path": p, "exists": exists, "kind": meta.ok().map(|m| kind(m.file_type())), "connect_ok": connect_ok, "error": error })
        })
        .collect();

    let mut sockets = Vec::new();
    let mut walked = 0u64;
    let mut budget = FS_BUDGET;
    let skip = |p: &Path| p == Path::new("/proc") || p == Path::new("/sys");
    let errors = walk(Path::new("/"), usize::MAX, &skip, &mut budget, &mut |path, ft| {
        walked += 1;
        if ft.is_socket() {
            sockets.push(path.display().to_string());
        }
    });
    sockets.sort();
    json!({ "checks": checks, "sockets_found": sockets, "entries_walked": walked, "walk_errors": errors, "walk_truncated": budget == 0 })
}

// ---------------------------------------------------------------------------------------------
// secrets

fn secrets(needles: &[String]) -> Value {
    // Everything printed goes through `redact`: a needle inside a variable's name or a file's
    // path must not be printed either.
    let redact = |text: &str| -> String {
        needles.iter().enumerate().filter(|(_, n)| !n.is_empty()).fold(text.to_owned(), |t, (i, n)| t.replace(n.as_str(), &format!("<needle {i}>")))
    };
    let needle_bytes: Vec<&[u8]> = needles.iter().map(|n| n.as_bytes()).collect();
    let mut found: Vec<Value> = Vec::new();
    let note = |hay: &[u8], place: &str, found: &mut Vec<Value>| {
        for (i, n) in needle_bytes.iter().enumerate() {
            if contains(hay, n) {
                found.push(json!({ "needle_index": i, "where": redact(place) }));
            }
        }
    };

    // The environment: keys are printed, values never.
    let mut env_keys = Vec::new();
    for (k, v) in std::env::vars_os() {
        let key = k.to_string_lossy().into_owned();
        note(k.as_bytes(), "env-key", &mut found);
        note(v.as_bytes(), &format!("env:{key}"), &mut found);
        env_keys.push(redact(&key));
    }
    env_keys.sort();

    // Every process's environment and command line, except this probe's own command line (it
    // holds the needles).
    let own = std::process::id();
    let mut proc_files: Vec<String> = vec!["/proc/self/environ".into(), "/proc/1/environ".into(), "/proc/1/cmdline".into()];
    for pid in proc_pids() {
        if pid == own || pid == 1 {
            continue;
        }
        proc_files.push(format!("/proc/{pid}/environ"));
        proc_files.push(format!("/proc/{pid}/cmdline"));
    }
    let mut proc_read = Vec::new();
    let mut proc_errors = Vec::new();
    for path in &proc_files {
        match fs::read(path) {
            Ok(bytes) => {
                note(&bytes, path, &mut found);
                proc_read.push(path.clone());
            }
            Err(e) => proc_errors.push(json!({ "path": path, "error": e.to_string() })),
        }
    }

    // Every readable regular file.
    let exe_id = fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino()));
    let mut files_scanned = 0u64;
    let mut skipped_large = 0u64;
    let mut unreadable = 0u64;
    let mut unreadable_sample = Vec::new();
    let mut budget = FS_BUDGET;
    let skip = |p: &Path| [Path::new("/proc"), Path::new("/sys"), Path::new("/dev")].contains(&p) || p == Path::new("/clawpen");
    let mut files: Vec<PathBuf> = Vec::new();
    let walk_errors = walk(Path::new("/"), usize::MAX, &skip, &mut budget, &mut |path, ft| {
        if ft.is_file() {
            files.push(path.to_path_buf());
        }
    });
    for path in files {
        let Ok(md) = fs::symlink_metadata(&path) else { continue };
        if Some((md.dev(), md.ino())) == exe_id {
            continue;
        }
        if md.len() > READ_LIMIT {
            skipped_large += 1;
            continue;
        }
        match read_regular(&path, READ_LIMIT) {
            Ok(Some(bytes)) => {
                files_scanned += 1;
                note(&bytes, &path.display().to_string(), &mut found);
            }
            Ok(None) => {}
            Err(e) => {
                unreadable += 1;
                if unreadable_sample.len() < 20 {
                    unreadable_sample.push(json!({ "path": redact(&path.display().to_string()), "error": e.to_string() }));
                }
            }
        }
    }

    json!({
        "env_keys": env_keys,
        "found": found,
        "files_scanned": files_scanned,
        "files_skipped_large": skipped_large,
        "files_unreadable": unreadable,
        "unreadable_sample": unreadable_sample,
        "proc_files_read": proc_read.len(),
        "proc_errors": proc_errors,
        "walk_errors": walk_errors,
        "walk_truncated": budget == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles() {
        assert!(contains(b"abc secret def", b"secret"));
        assert!(!contains(b"abc", b""));
        assert!(!contains(b"ab", b"abc"));
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount("/tmp"), "/tmp");
    }

    #[test]
    fn dns_query_shape() {
        let q = dns_query("example.com");
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
    }
}
