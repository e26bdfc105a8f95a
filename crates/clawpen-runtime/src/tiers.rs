//! The sandbox runtimes a plan may name, and what the Docker daemon must register each with so
//! that a sandbox keeps its contract: no network at all, and the Unix sockets of its run dir
//! (`agent.sock`, `control.sock`) reachable across the wall.

use std::collections::BTreeMap;

use clawpen_core::plan::SandboxRuntime;

/// The arguments the daemon must run `rt` with. runsc: `--network=none` (gVisor refuses a
/// `--network none` container without it) and `--host-uds=all` (without it the sockets in the
/// run dir's bind mount do not cross the wall). Its own seccomp (`--oci-seccomp`) is not asked
/// for: this gVisor answers `clone3` with EPERM under Docker's profile, which stops glibc
/// making threads; see docs/SECURITY.md.
pub fn required_args(rt: SandboxRuntime) -> &'static [&'static str] {
    match rt {
        SandboxRuntime::Runc => &[],
        SandboxRuntime::Runsc => &["--network=none", "--host-uds=all"],
    }
}

/// Arguments that would break the contract when the daemon runs `rt` with them.
fn forbidden_args(rt: SandboxRuntime) -> &'static [&'static str] {
    match rt {
        SandboxRuntime::Runc => &[],
        SandboxRuntime::Runsc => &["--network=host", "--network=sandbox", "--host-uds=none", "--host-uds=open", "--host-uds=create", "--oci-seccomp"],
    }
}

/// Exactly how to register `rt` with a Docker daemon.
pub fn advice(rt: SandboxRuntime) -> String {
    match rt {
        SandboxRuntime::Runc => "runc is Docker's default runtime; reinstall Docker Engine (docker.io) if it is missing".to_owned(),
        SandboxRuntime::Runsc => format!(
            "install gVisor (`apt-get install runsc`), add to /etc/docker/daemon.json \
             {{\"runtimes\": {{\"runsc\": {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": {}}}}}}} \
             (merged with what is there), then reload the daemon: `systemctl reload docker` \
             (or `kill -HUP $(pidof dockerd)`); running sandboxes are not touched",
            serde_json::to_string(required_args(rt)).expect("strings serialize")
        ),
    }
}

/// What is wrong with how the daemon registered `rt`, given what it registered (runtime name →
/// its arguments); `None` when it keeps the contract.
pub fn problem(registered: &BTreeMap<String, Vec<String>>, rt: SandboxRuntime) -> Option<String> {
    let Some(args) = registered.get(rt.name()) else {
        let known = registered.keys().cloned().collect::<Vec<_>>().join(", ");
        return Some(format!("the Docker daemon has no runtime named {} (it has: {known})", rt.name()));
    };
    let missing: Vec<&str> = required_args(rt).iter().copied().filter(|need| !args.iter().any(|a| a == need)).collect();
    if !missing.is_empty() {
        return Some(format!("the Docker daemon runs {} without {} (its arguments: {:?})", rt.name(), missing.join(" and "), args));
    }
    let wrong: Vec<&String> = args.iter().filter(|a| forbidden_args(rt).contains(&a.as_str())).collect();
    if !wrong.is_empty() {
        return Some(format!("the Docker daemon runs {} with {:?}, which breaks the sandbox contract", rt.name(), wrong));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn runsc_needs_its_contract_arguments() {
        let ok = reg(&[("runc", &[]), ("runsc", &["--network=none", "--host-uds=all"])]);
        assert_eq!(problem(&ok, SandboxRuntime::Runsc), None);
        assert_eq!(problem(&ok, SandboxRuntime::Runc), None);
        let missing = problem(&reg(&[("runc", &[])]), SandboxRuntime::Runsc).unwrap();
        assert!(missing.contains("no runtime named runsc") && missing.contains("runc"), "{missing}");
        let no_uds = problem(&reg(&[("runsc", &["--network=none"])]), SandboxRuntime::Runsc).unwrap();
        assert!(no_uds.contains("--host-uds=all"), "{no_uds}");
        let host_net = problem(&reg(&[("runsc", &["--network=none", "--host-uds=all", "--network=host"])]), SandboxRuntime::Runsc).unwrap();
        assert!(host_net.contains("--network=host"), "{host_net}");
        let a = advice(SandboxRuntime::Runsc);
        assert!(a.contains(r#""runtimeArgs": ["--network=none","--host-uds=all"]"#) && a.contains("apt-get install runsc"), "{a}");
    }
}
