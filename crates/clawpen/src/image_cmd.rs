//! `clawpen image build`, and the check `up` and `serve` make before serving.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clawpen_runtime::image::{self, BuildProgress};
use clawpen_runtime::DockerRuntime;
use clawpen_server::Config;
use indicatif::{ProgressBar, ProgressStyle};

/// The running executable: what the sandbox image packs.
pub fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the clawpen executable")
}

/// The image tag this executable runs agents in.
pub fn expected_tag() -> anyhow::Result<String> {
    let exe = current_exe()?;
    let digest = image::file_sha256(&exe).with_context(|| format!("reading {}", exe.display()))?;
    Ok(image::tag_for_digest(&digest))
}

/// Builds the sandbox image, showing progress on stderr when `show` is set.
pub async fn build(show: bool) -> anyhow::Result<String> {
    let rt = DockerRuntime::connect_local().await.context("connecting to Docker")?;
    let exe = current_exe()?;
    let bar = if show { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}").expect("template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(format!("packing {}", exe.display()));
    let tag = image::build(&rt, &exe, |p| match p {
        BuildProgress::Packing { total, .. } => bar.set_message(format!("sending {} MiB to the engine", total / (1 << 20))),
        BuildProgress::Engine(line) => bar.set_message(line),
    })
    .await?;
    bar.finish_with_message(format!("built {tag}"));
    Ok(tag)
}

/// The image to run agents in: the configured one, or the one built from this executable,
/// building it when `build_missing` is set.
pub async fn ensure(config: &Config, build_missing: bool) -> anyhow::Result<String> {
    if let Some(image) = &config.sandbox.image {
        return Ok(image.clone());
    }
    let tag = expected_tag()?;
    let rt = DockerRuntime::connect_local().await.context("connecting to Docker; is it running? `clawpen doctor` checks")?;
    if image::image_present(&rt, &tag).await? {
        return Ok(tag);
    }
    anyhow::ensure!(build_missing, "the sandbox image {tag} for this executable is missing; run `clawpen image build` (or use `clawpen up`, which builds it)");
    eprintln!("the sandbox image {tag} is missing or stale; building it");
    build(true).await
}
