//! `clawpen-probe …`: attacks run inside a tenant's sandbox by the isolation tests. A test-only
//! program: the production `clawpen` executable does not contain it. The tests build it, pack it
//! into a copy of the sandbox image (`/probe`), and run it with `docker exec` inside a real
//! sandbox of that image (same uid, mounts, limits and seccomp profile as any agent).
//!
//! Each subcommand tries its attack, never panics when the attack fails, and prints ONE JSON line
//! on stdout describing what happened (errors as the `io::Error` text, e.g. "Permission denied
//! (os error 13)"). The exit code is 0 whenever the probe itself ran; the memory bomb normally
//! never returns (the kernel kills it: 137).
//!
//! Single-threaded on purpose: the fork bomb calls `fork()`.

mod attacks;
mod sockets;

use std::io::{self, Write};
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clawpen-probe", about = "Attacks from inside a sandbox (isolation tests only)")]
struct Cli {
    #[command(subcommand)]
    cmd: ProbeCmd,
}

#[derive(Debug, Subcommand)]
enum ProbeCmd {
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
        /// Spawn threads instead of processes.
        #[arg(long)]
        threads: bool,
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
    /// Replaces NAME in the run dir with a symlink to TO (a host path: the server would follow it).
    Relink {
        #[arg(long)]
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Renames fresh symlinks to TO over NAME in the run dir as fast as it can, for SECS.
    RaceLinks {
        #[arg(long)]
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        secs: u64,
    },
    /// Takes agent.sock over and answers every request with a body of BYTES, for SECS.
    ServeHuge {
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        secs: u64,
        /// Chunked instead of a content-length.
        #[arg(long)]
        chunked: bool,
    },
    /// Takes agent.sock over and never answers, for SECS.
    Hang {
        #[arg(long)]
        secs: u64,
    },
    /// Writes TEXT to the sandbox's log (its first process's stdout and stderr).
    ForgeLog {
        #[arg(long)]
        text: String,
    },
    /// Opens up to COUNT connections to NAME in the run dir and holds them for HOLD_SECS.
    Flood {
        #[arg(long)]
        name: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        hold_secs: u64,
        #[arg(long, value_enum, default_value = "idle")]
        mode: sockets::FloodMode,
    },
    /// Writes into DIR until a write fails.
    FillDisk {
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 1 << 20)]
        max_mib: u64,
    },
    /// Creates empty files in DIR until one fails.
    FillInodes {
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 10_000_000)]
        max: u64,
    },
    /// Calls the broker's tools on control.sock as the sandbox pleases: GET /v1/tools, then
    /// TOOL with ARGS (JSON) once per RUN (`-` for no run header at all).
    ToolCalls {
        #[arg(long)]
        tool: String,
        #[arg(long)]
        args: String,
        #[arg(long = "run", value_name = "RUN", required = true)]
        runs: Vec<String>,
    },
    /// Makes PATH a sparse file of BYTES.
    Sparse {
        #[arg(long)]
        path: String,
        #[arg(long)]
        bytes: u64,
    },
}

/// Runs the probe, prints its one JSON line, returns the exit code.
fn main() {
    let cmd = Cli::parse().cmd;
    let out = match cmd {
        ProbeCmd::ReadPaths { paths, marker } => attacks::read_paths(&paths, &marker),
        ProbeCmd::Network { tcp, dns } => clawpen_selfcheck::network(&tcp, &dns),
        ProbeCmd::ForkBomb { max, hold_ms, threads: false } => attacks::fork_bomb(max, hold_ms),
        ProbeCmd::ForkBomb { max, hold_ms, threads: true } => attacks::thread_bomb(max, hold_ms),
        ProbeCmd::MemoryBomb { max_mib } => attacks::memory_bomb(max_mib),
        ProbeCmd::Identity => clawpen_selfcheck::identity(),
        ProbeCmd::Filesystem => clawpen_selfcheck::filesystem(),
        ProbeCmd::DockerSocket => attacks::docker_socket(),
        ProbeCmd::Secrets { needles } => attacks::secrets(&needles),
        ProbeCmd::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            serde_json::json!({ "slept_ms": ms })
        }
        ProbeCmd::Relink { name, to } => sockets::relink(&name, &to),
        ProbeCmd::RaceLinks { name, to, secs } => sockets::race_links(&name, &to, secs),
        ProbeCmd::ServeHuge { bytes, secs, chunked } => sockets::serve_huge(bytes, secs, chunked),
        ProbeCmd::Hang { secs } => sockets::hang(secs),
        ProbeCmd::ForgeLog { text } => sockets::forge_log(&text),
        ProbeCmd::Flood { name, count, hold_secs, mode } => sockets::flood(&name, count, hold_secs, mode),
        ProbeCmd::FillDisk { dir, max_mib } => sockets::fill_disk(&dir, max_mib),
        ProbeCmd::FillInodes { dir, max } => sockets::fill_inodes(&dir, max),
        ProbeCmd::Sparse { path, bytes } => sockets::sparse(&path, bytes),
        ProbeCmd::ToolCalls { tool, args, runs } => sockets::tool_calls(&tool, &args, &runs),
    };
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
}