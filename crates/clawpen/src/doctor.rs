//! `clawpen doctor`: checks the machine and says how to fix each problem. The last checks start
//! throwaway sandboxes with the full spec and run `clawpen self-check` in them, to prove the kernel honours
//! every flag.

use std::time::Duration;

use clap::Args;
use clawpen_core::ids::{AgentId, TenantId};
use clawpen_core::labels;
use clawpen_core::plan::SandboxRuntime;
use clawpen_core::spec::{AgentSandbox, SandboxSpec};
use clawpen_runtime::image;
use clawpen_runtime::{DockerRuntime, Runtime};
use futures_util::StreamExt;
use serde_json::Value;

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    server: crate::ServerArgs,
    /// Print the checks as one JSON object.
    #[arg(long)]
    json: bool,
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok: true, detail: detail.into(), fix: None }
}

fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), ok: false, detail: detail.into(), fix: Some(fix.into()) }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    let checks = collect(&args).await;
    let ok = checks.iter().all(|c| c.ok);
    if args.json {
        let list: Vec<Value> = checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", serde_json::json!({"ok": ok, "checks": list}));
    } else {
        for c in &checks {
            println!("{} {:<22} {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("     {:<22} fix: {fix}", "");
            }
        }
        println!("{}", if ok { "all checks passed" } else { "some checks failed" });
    }
    Ok(if ok { 0 } else { 1 })
}

async fn collect(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let data_dir = match crate::absolute(&args.server.data_dir) {
        Ok(d) => d,
        Err(e) => {
            checks.push(fail("data dir", format!("{e:#}"), "pass a writable --data-dir"));
            return checks;
        }
    };
    let layout = clawpen_server::Layout::new(data_dir.clone());
    match layout.init() {
        Ok(()) => checks.push(pass("data dir", data_dir.display().to_string())),
        Err(e) => checks.push(fail("data dir", format!("{e:#}"), "pass a writable, short --data-dir")),
    }
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    checks.push(if root {
        pass("privileges", "running as root: can give each tenant's dirs to its own uid")
    } else {
        fail("privileges", "not running as root: cannot chown tenant dirs to per-tenant uids", "run the server as root (or with CAP_CHOWN and CAP_FOWNER)")
    });
    let mut config = match crate::load_config(&args.server) {
        Ok(c) => {
            checks.push(pass("config", format!("{} plans, default {}", c.plans.len(), c.default_plan)));
            c
        }
        Err(e) => {
            checks.push(fail("config", format!("{e:#}"), "fix the config file named above"));
            return checks;
        }
    };
    let rt = match DockerRuntime::connect_local().await {
        Ok(rt) => rt,
        Err(e) => {
            checks.push(fail("docker", e.to_string(), "start Docker (`systemctl start docker`) or set DOCKER_HOST to its socket"));
            return checks;
        }
    };
    match rt.info().await {
        Ok(info) => {
            checks.push(pass("docker", format!("engine {}", info.version)));
            let (major, minor) = parse_api(&info.api_version);
            checks.push(if (major, minor) >= (1, 41) {
                pass("docker api", format!("negotiated {}", info.api_version))
            } else {
                fail("docker api", format!("negotiated {}", info.api_version), "upgrade Docker Engine to 20.10 or later (API 1.41)")
            });
        }
        Err(e) => {
            checks.push(fail("docker", e.to_string(), "start Docker (`systemctl start docker`) or fix the permissions of its socket"));
            return checks;
        }
    }
    let exe = match crate::image_cmd::current_exe() {
        Ok(e) => e,
        Err(e) => {
            checks.push(fail("executable", format!("{e:#}"), "run clawpen from its built path"));
            return checks;
        }
    };
    match image::check_static(&exe) {
        Ok(()) => checks.push(pass("static executable", exe.display().to_string())),
        Err(e) => checks.push(fail("static executable", e.to_string(), "build from the repository root with `cargo build` (its .cargo/config.toml links statically)")),
    }
    let tag = match crate::image_cmd::ensure(&config, false).await {
        Ok(tag) => {
            checks.push(pass("sandbox image", format!("{tag} is present and matches this executable")));
            tag
        }
        Err(e) => {
            checks.push(fail("sandbox image", format!("{e:#}"), "run `clawpen image build`"));
            return checks;
        }
    };
    // This installation's uid range (chosen at its first start) and its id, from its store.
    let (own_instance, base) = match clawpen_store::Store::open_sqlite_existing(&layout.db_path()).await {
        Ok(Some(store)) => (store.meta("instance_id").await.ok().flatten(), clawpen_server::uid_range::resolve(&store, config.sandbox.uid_base).await.ok()),
        _ => (None, (config.sandbox.uid_base != 0).then_some(config.sandbox.uid_base)),
    };
    checks.push(match base {
        Some(base) => uid_overlap(&rt, own_instance.as_deref(), base).await,
        None => pass("uid range", "chosen at the first start; none of another installation is checked yet"),
    });
    // The throwaway sandbox runs as the range's base, which is never a tenant's (they start at
    // base + 1), or below every range when there is none yet.
    config.sandbox.uid_base = base.unwrap_or(clawpen_server::uid_range::RANGE - 1);
    checks.push(match clawpen_hostfs::volume::self_check(&layout.data_dir) {
        Ok(()) => pass("sandbox filesystems", "an ext4 image is made and loop-mounted nosuid,nodev,noexec"),
        Err(e) => fail("sandbox filesystems", e, "install e2fsprogs and mount (util-linux) and run as root with loop devices available (modprobe loop)"),
    });
    // Every runtime a plan names must be registered as the sandbox contract needs; runsc is
    // looked at even when no plan names it yet, so the operator knows whether it could.
    let registered = match rt.runtimes().await {
        Ok(r) => r,
        Err(e) => {
            checks.push(fail("runtimes", e.to_string(), "check that Docker answers `docker info`"));
            return checks;
        }
    };
    // The self-check's own kernel report, run here on the host.
    let host_kernel = clawpen_selfcheck::kernel().unwrap_or_default();
    for runtime in SandboxRuntime::ALL {
        let plans: Vec<&String> = config.plans.iter().filter(|(_, p)| p.runtime == runtime).map(|(n, _)| n).collect();
        let name = format!("runtime {runtime}");
        match clawpen_runtime::tiers::problem(&registered, runtime) {
            Some(_) if plans.is_empty() && !registered.contains_key(runtime.name()) => {
                checks.push(pass(name, format!("not registered, and no plan names it; to offer the tier: {}", clawpen_runtime::tiers::advice(runtime))));
                continue;
            }
            Some(problem) => {
                checks.push(fail(name, problem, clawpen_runtime::tiers::advice(runtime)));
                continue;
            }
            None => {
                let used = if plans.is_empty() { "no plan names it yet".to_owned() } else { format!("plans {}", plans.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) };
                checks.push(pass(name, format!("registered with {:?}; {used}", registered[runtime.name()])));
            }
        }
        checks.extend(sandbox_checks(&rt, &layout, &config, &tag, runtime, &host_kernel).await);
    }
    checks
}

/// Fails when a sandbox of another installation on this engine runs as a uid in this
/// installation's range: its tenants and ours would share uids.
async fn uid_overlap(rt: &DockerRuntime, own: Option<&str>, base: u32) -> Check {
    let range = format!("{base}..{}", base as u64 + clawpen_server::uid_range::RANGE as u64);
    let opts = bollard::container::ListContainersOptions::<String> { all: true, filters: std::collections::HashMap::from([("label".to_owned(), vec![clawpen_core::labels::INSTANCE.to_owned()])]), ..Default::default() };
    let list = match rt.client().list_containers(Some(opts)).await {
        Ok(l) => l,
        Err(e) => return fail("uid range", e.to_string(), "check that Docker answers"),
    };
    for c in list {
        let instance = c.labels.as_ref().and_then(|l| l.get(clawpen_core::labels::INSTANCE)).cloned().unwrap_or_default();
        if Some(instance.as_str()) == own {
            continue;
        }
        let Some(id) = c.id else { continue };
        let Ok(inspect) = rt.client().inspect_container(&id, None).await else { continue };
        let uid = inspect.config.and_then(|c| c.user).and_then(|u| u.split(':').next().and_then(|u| u.parse::<u32>().ok()));
        if let Some(uid) = uid.filter(|u| clawpen_server::uid_range::contains(base, *u)) {
            return fail(
                "uid range",
                format!("installation {instance} runs a sandbox as uid {uid}, inside this installation's range {range}"),
                "give one of the two installations another `sandbox.uid_base` in clawpen.toml (before its first tenant), so that no two share a uid",
            );
        }
    }
    pass("uid range", format!("{range}, shared with no other installation on this engine"))
}

fn parse_api(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Runs `clawpen self-check <args>` in a throwaway sandbox built by `SandboxSpec::for_agent` (only the
/// arguments differ) and returns the JSON it printed.
async fn probe_in_sandbox(rt: &DockerRuntime, layout: &clawpen_server::Layout, config: &clawpen_server::Config, image: &str, runtime: SandboxRuntime, probe: &[&str]) -> anyhow::Result<Value> {
    let instance = format!("doctor-{}", &AgentId::new().as_str()[3..13]);
    let (tenant, agent) = (TenantId::new(), AgentId::new());
    let uid = config.sandbox.uid_base; // never a tenant's: tenant uids start at uid_base + 1
    let plan = &clawpen_core::plan::Plan { runtime, ..config.plans[&config.default_plan].clone() };
    layout.prepare_agent(&agent, uid, clawpen_core::spec::Volume::of(plan))?;
    let mut spec = SandboxSpec::for_agent(AgentSandbox {
        instance: &instance,
        tenant: &tenant,
        agent: &agent,
        uid,
        image,
        workspace_dir: layout.workspace_dir(&agent),
        run_dir: layout.run_dir(&agent),
        plan,
        limits: config.agent,
        executable: None,
    });
    spec.args = std::iter::once("self-check").chain(probe.iter().copied()).map(str::to_owned).collect();
    spec.labels.insert(labels::ROLE.into(), "doctor".into());
    let result = async {
        let id = rt.create_and_start(&spec).await?;
        let mut wait = rt.client().wait_container::<String>(&id, None);
        let _ = tokio::time::timeout(Duration::from_secs(30), wait.next()).await;
        let lines = rt.logs(&id, 50).await?;
        // Each line comes marked as the sandbox's (`sandbox stdout| …`).
        let line = lines.iter().rev().map(|l| l.split_once("| ").map_or(l.as_str(), |(_, text)| text)).find(|l| l.trim_start().starts_with('{')).unwrap_or_default().to_owned();
        serde_json::from_str::<Value>(&line).map_err(|e| anyhow::anyhow!("self-check printed no JSON ({e}); output: {}", lines.join(" | ")))
    }
    .await;
    let _ = rt.remove(&spec.name).await;
    let _ = layout.remove_agent(&tenant, &agent);
    let _ = layout.remove_tenant(&tenant);
    result
}

/// Throwaway sandboxes under `runtime`: who they run as, their filesystem, their network. Under
/// runc the host's kernel filters their system calls (seccomp 2); under runsc gVisor's kernel
/// serves them (it must not be the host's).
async fn sandbox_checks(rt: &DockerRuntime, layout: &clawpen_server::Layout, config: &clawpen_server::Config, image: &str, runtime: SandboxRuntime, host_kernel: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let fix = match runtime {
        SandboxRuntime::Runc => "the kernel or engine does not honour the sandbox spec; check `docker info` for cgroup and seccomp support".to_owned(),
        SandboxRuntime::Runsc => format!("the runsc runtime does not honour the sandbox spec; register it as the contract needs: {}", clawpen_runtime::tiers::advice(runtime)),
    };
    let fix = fix.as_str();
    let named = |what: &str| if runtime.is_runc() { format!("sandbox {what}") } else { format!("{runtime} sandbox {what}") };
    match probe_in_sandbox(rt, layout, config, image, runtime, &["identity"]).await {
        Ok(v) => {
            let uid_ok = v["uid"].as_u64() == Some(config.sandbox.uid_base as u64);
            let caps_ok = ["cap_eff", "cap_prm", "cap_bnd", "cap_amb"].iter().all(|k| v[*k].as_str().is_some_and(|c| c.trim_start_matches('0').is_empty()));
            let nnp_ok = v["no_new_privs"].as_u64() == Some(1);
            let kernel = v["kernel"].as_str().unwrap_or_default();
            let wall_ok = match runtime {
                SandboxRuntime::Runc => v["seccomp"].as_u64() == Some(2),
                SandboxRuntime::Runsc => !kernel.is_empty() && kernel != host_kernel,
            };
            let detail = format!("uid {} caps {} no_new_privs {} seccomp {} kernel {kernel:?}", v["uid"], v["cap_eff"], v["no_new_privs"], v["seccomp"]);
            checks.push(if uid_ok && caps_ok && nnp_ok && wall_ok { pass(named("identity"), detail) } else { fail(named("identity"), detail, fix) });
        }
        Err(e) => {
            let advice = if runtime.is_runc() { "run `clawpen image build`, then `clawpen doctor` again".to_owned() } else { format!("no sandbox starts under {runtime}: {}", clawpen_runtime::tiers::advice(runtime)) };
            checks.push(fail(named("identity"), format!("{e:#}"), advice));
            return checks;
        }
    }
    match probe_in_sandbox(rt, layout, config, image, runtime, &["filesystem"]).await {
        Ok(v) => {
            let root_ro = v["mounts"]["/"].as_str().is_some_and(|o| o.split(',').any(|x| x == "ro"));
            let tmp_noexec = v["tmp_exec"]["ok"].as_bool() == Some(false);
            // gVisor does not carry the host mount's noexec across its file proxy: there, what
            // runs from /data runs against gVisor's kernel like the agent itself (docs/SECURITY.md).
            let data_noexec = !runtime.is_runc() || (v["data_exec"]["ok"].as_bool() == Some(false) && v["run_exec"]["ok"].as_bool() == Some(false));
            let detail = format!("root {} ; exec refused from /tmp: {tmp_noexec}, from /data and /run/clawpen: {data_noexec}", v["mounts"]["/"]);
            checks.push(if root_ro && tmp_noexec && data_noexec { pass(named("filesystem"), detail) } else { fail(named("filesystem"), detail, fix) });
        }
        Err(e) => checks.push(fail(named("filesystem"), format!("{e:#}"), fix)),
    }
    match probe_in_sandbox(rt, layout, config, image, runtime, &["network", "--tcp", "127.0.0.1:9"]).await {
        Ok(v) => {
            let only_lo = v["interfaces"].as_array().is_some_and(|i| i.iter().all(|x| x == "lo"));
            let no_routes = v["routes"].as_u64() == Some(0);
            let detail = format!("interfaces {} routes {}", v["interfaces"], v["routes"]);
            checks.push(if only_lo && no_routes { pass(named("network"), detail) } else { fail(named("network"), detail, fix) });
        }
        Err(e) => checks.push(fail(named("network"), format!("{e:#}"), fix)),
    }
    checks
}
