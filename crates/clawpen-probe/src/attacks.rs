//! The attacks of the first isolation suite: reading others' files, the network, fork and memory
//! bombs, Docker sockets, secrets.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

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

pub fn read_paths(paths: &[String], marker: &str) -> Value {
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
// fork-bomb

pub fn fork_bomb(max: u64, hold_ms: u64) -> Value {
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

/// Spawns threads that wait until it fails or `max` run, holds them, then lets them end.
pub fn thread_bomb(max: u64, hold_ms: u64) -> Value {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut stopped: Option<io::Error> = None;
    let started = Instant::now();
    while (threads.len() as u64) < max {
        let stop = stop.clone();
        match std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    let spawned = threads.len();
    let spawn_ms = started.elapsed().as_millis() as u64;
    eprintln!("thread-bomb: stopped at {spawned} threads ({})", stopped.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "max reached".into()));
    std::thread::sleep(Duration::from_millis(hold_ms));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let joined = threads.into_iter().filter_map(|t| t.join().ok()).count();
    json!({
        "forked": spawned,
        "stopped_by_error": stopped.as_ref().map(|e| e.to_string()),
        "errno": stopped.as_ref().and_then(|e| e.raw_os_error()),
        "fork_ms": spawn_ms,
        "held_ms": hold_ms,
        "reaped": joined,
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

pub fn memory_bomb(max_mib: u64) -> Value {
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
// docker-socket

/// Bounds for the whole-filesystem walks.
const FS_BUDGET: usize = 1_000_000;

pub fn docker_socket() -> Value {
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

pub fn secrets(needles: &[String]) -> Value {
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
}
